"""Which nodes live: each node renews its key in the nodes bucket every second with what it is doing; a node whose
key has not changed for DEAD_AFTER_S (as seen by this node's own clock, so hosts' clocks need not agree) is dead.
The heartbeat is every lease the node holds: its threads are its while it beats."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import anyio
from nats.js.errors import KeyNotFoundError, NoKeysError

from bot.cluster.jetstream import Link, dumps
from bot.core.commands import NodeState
from bot.log import get_logger

log = get_logger("slackbus.cluster")

BEAT_S = 1.0
DEAD_AFTER_S = 5.0


class Nodes:
    def __init__(self, link: Link, me: str, report: Callable[[], dict[str, Any]]) -> None:
        self._link = link
        self.me = me
        self._report = report  # what this node runs now (for `/claude status` on any node)
        self._seen: dict[str, float] = {}
        self._revision: dict[str, int] = {}  # node → monotonic time its key last changed, by this node's clock
        self.states: dict[str, dict[str, Any]] = {}
        self._started = time.monotonic()

    def alive(self, node: str) -> bool:
        if node == self.me:
            return True
        seen = self._seen.get(node)
        if seen is None:
            return False
        # no node beat while this one was away from the server: none is judged on that gap
        return time.monotonic() - max(seen, self._link.reconnects.at) < DEAD_AFTER_S

    def dead(self) -> list[str]:
        """Nodes this node has seen that stopped beating (they may come back)."""
        return [n for n in self._seen if n != self.me and not self.alive(n)]

    async def view(self) -> list[NodeState]:
        """Every node, as each last reported (read now), for `/claude status`: this one first, then by name."""
        with anyio.move_on_after(1.0), contextlib.suppress(Exception):
            await self.look()
        now = time.monotonic()
        out = []
        for node in sorted({*self.states, self.me}, key=lambda n: (n != self.me, n)):
            state = {**self.states.get(node, {}), **(self._report() if node == self.me else {})}
            runs = tuple((str(r.get("channel")), str(r.get("thread_ts")), str(r.get("requester")),
                          str(r.get("run_id")), float(r.get("seconds") or 0))
                         for r in state.get("runs") or [] if isinstance(r, dict))
            processes = state.get("processes")
            out.append(NodeState(
                node=node, me=node == self.me, alive=self.alive(node),
                age_s=0.0 if node == self.me else now - self._seen.get(node, now),
                running=int(state.get("running") or 0), queued=int(state.get("queued") or 0),
                max_concurrent=int(state.get("max_concurrent") or 0),
                processes=int(processes.get("live") or 0) if isinstance(processes, dict) else 0,
                runs=runs))
        return out

    def living(self) -> list[str]:
        return sorted(n for n in {*self._seen, self.me} if self.alive(n))

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self.beat()
        await self.look()
        task_status.started()
        while True:
            await anyio.sleep(BEAT_S)
            try:
                await self.beat()
                await self.look()
            except Exception as exc:  # NATS away: the client reconnects; the next beat tries again
                log.warning("cluster.beat_failed", error=f"{type(exc).__name__}: {exc}")

    async def beat(self) -> None:
        state = {"node": self.me, "host": socket.gethostname(), "pid": os.getpid(), "at": time.time(),
                 **self._report()}
        await self._link.nodes.put(self.me, dumps(state))

    async def leave(self) -> None:
        """Shutdown: this node's key goes, so the others see at once that its threads are free."""
        with contextlib.suppress(Exception):
            await self._link.nodes.delete(self.me)

    async def look(self) -> None:
        """Every node's key: one whose revision changed since the last look is alive now, by this node's clock.
        (Read, not watched: a watch does not survive a server restart, and a missed beat must not make a living
        node look dead.)"""
        try:
            keys = await self._link.nodes.keys()
        except NoKeysError:
            keys = []
        now = time.monotonic()
        for key in keys:
            try:
                entry = await self._link.nodes.get(key)
            except KeyNotFoundError:
                continue
            if not entry.value or entry.revision == self._revision.get(key):
                continue
            try:
                state = json.loads(entry.value)
            except ValueError:
                continue
            if not isinstance(state, dict):
                continue
            first = key not in self._seen
            self._revision[key] = entry.revision or 0
            self.states[key] = state
            # a key first read that was not renewed lately counts its age (hosts' clocks roughly agree)
            at = state.get("at")
            age = time.time() - at if first and isinstance(at, (int, float)) else 0.0
            self._seen[key] = now - min(max(age, 0.0), DEAD_AFTER_S)
        for gone in set(self._seen) - set(keys):  # left (its key deleted at shutdown): dead from now on
            self._seen[gone] = float("-inf")
