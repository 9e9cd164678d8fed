"""The shared record: every event a node takes in is stored in the SLACKBUS_EVENTS stream before it is acked, and
every node applies the stream, in order, to its own store. So any node builds a thread's context from its own
SQLite without an API call, whichever node the events reached. A node remembers how far it applied (a small file
in SLACKBUS_HOME) and goes on from there after a restart; applying twice changes nothing."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from nats.js.api import ConsumerConfig, DeliverPolicy

from bot.cluster.jetstream import EVENTS, EVENTS_SUBJECT, Link, dumps, subject_part
from bot.core.store import Store
from bot.log import get_logger

log = get_logger("slackbus.cluster")

WAIT_MESSAGE_S = 5.0


class Published:
    def __init__(self, seq: int, duplicate: bool) -> None:
        self.seq = seq
        self.duplicate = duplicate


class Record:
    def __init__(self, link: Link, me: str, store: Store, home: Path, apply: Callable[[dict[str, Any]], None]) -> None:
        self._link = link
        self.me = me
        self._store = store
        self._apply = apply  # the transport's: one event's body into the store (messages, edits, deletions, files)
        self._position = home / "cluster-record.seq"
        self.applied = 0
        self._changed = anyio.Event()

    async def publish(self, channel: str, body: dict[str, Any], msg_id: str | None) -> Published:
        headers = {"Slackbus-Node": self.me}
        if msg_id:
            headers["Nats-Msg-Id"] = msg_id
        ack = await self._link.js.publish(f"{EVENTS_SUBJECT}.{subject_part(channel)}", dumps(body), headers=headers,
                                          timeout=2.0)
        return Published(ack.seq, bool(ack.duplicate))

    def _saved(self) -> int:
        try:
            return int(self._position.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Apply the stream from where this node stopped; after a reconnection, again from there (the consumer
        is made anew, so a server restart cannot leave it stalled)."""
        self.applied = self._saved()
        started = False
        while True:
            async with anyio.create_task_group() as tg:
                sub = await self._subscribe()
                tg.start_soon(self._follow, sub)
                if not started:
                    started = True
                    task_status.started()
                await self._link.reconnects.next()
                tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0), contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _subscribe(self) -> Any:
        start = self.applied
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start + 1) if start \
            else ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        wait = 0.2
        while True:  # the server coming back (or JetStream not ready yet): again, each time a little later
            try:
                return await self._link.js.subscribe(f"{EVENTS_SUBJECT}.>", stream=EVENTS, ordered_consumer=True,
                                                     config=config)
            except Exception as exc:
                log.warning("cluster.record_subscribe_retry", error=type(exc).__name__)
                await anyio.sleep(wait)
                wait = min(wait * 2, 5.0)

    async def _follow(self, sub: Any) -> None:
        async for msg in sub.messages:
            seq = msg.metadata.sequence.stream
            if seq <= self.applied:
                continue
            try:
                body = json.loads(msg.data)
                if isinstance(body, dict):
                    self._apply(body)
            except Exception as exc:  # a malformed or unexpected event: logged and skipped
                log.warning("cluster.record_skipped", seq=seq, error=f"{type(exc).__name__}: {exc}")
            self.applied = seq
            with contextlib.suppress(OSError):
                self._position.write_text(str(seq))
            self._changed.set()
            self._changed = anyio.Event()

    async def wait_message(self, channel: str, ts: str) -> bool:
        """Until this node's store has the message (its event applied), at most WAIT_MESSAGE_S."""
        with anyio.move_on_after(WAIT_MESSAGE_S):
            while self._store.get_message(channel, ts) is None:
                changed = self._changed
                with anyio.move_on_after(0.25):  # the store is also written by this node's own listeners
                    await changed.wait()
            return True
        log.warning("cluster.message_not_in_record", channel=channel, ts=ts)
        return False
