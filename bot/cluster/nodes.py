"""Which nodes live: each node renews its key in the nodes bucket every second with what it is doing; a node whose
key has not changed for DEAD_AFTER_S (as seen by this node's own clock, so hosts' clocks need not agree) is dead.
The heartbeat is every lease the node holds: its threads are its while it beats."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import anyio

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
        self._seen: dict[str, float] = {}  # node → monotonic time its key last changed, by this node's clock
        self.states: dict[str, dict[str, Any]] = {}
        self._started = time.monotonic()

    def alive(self, node: str) -> bool:
        if node == self.me:
            return True
        seen = self._seen.get(node)
        return seen is not None and time.monotonic() - seen < DEAD_AFTER_S

    def dead(self) -> list[str]:
        """Nodes this node has seen that stopped beating (they may come back)."""
        return [n for n in self._seen if n != self.me and not self.alive(n)]

    def view(self) -> list[NodeState]:
        """Every node this node has seen, for `/claude status`: this one first, then by name."""
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
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch)
            task_status.started()
            while True:
                await anyio.sleep(BEAT_S)
                try:
                    await self.beat()
                except Exception as exc:  # NATS away: the client reconnects; the next beat tries again
                    log.warning("cluster.beat_failed", error=f"{type(exc).__name__}: {exc}")

    async def beat(self) -> None:
        state = {"node": self.me, "host": socket.gethostname(), "pid": os.getpid(), "at": time.time(),
                 **self._report()}
        await self._link.nodes.put(self.me, dumps(state))

    async def _watch(self) -> None:
        while True:
            try:
                watcher = await self._link.nodes.watchall()
                async for entry in watcher:
                    if entry is None or entry.key is None:
                        continue  # the end of the initial values
                    if entry.value:
                        try:
                            self.states[entry.key] = json.loads(entry.value)
                        except ValueError:
                            continue
                        # a key not renewed since before this node looked counts its age (clocks roughly agree)
                        at = self.states[entry.key].get("at")
                        age = time.time() - at if isinstance(at, (int, float)) and entry.key not in self._seen else 0.0
                        self._seen[entry.key] = time.monotonic() - min(max(age, 0.0), DEAD_AFTER_S)
                    else:  # deleted: gone for good
                        self._seen.pop(entry.key, None)
                        self.states.pop(entry.key, None)
            except Exception as exc:
                log.warning("cluster.watch_failed", what="nodes", error=f"{type(exc).__name__}: {exc}")
                await anyio.sleep(0.5)
