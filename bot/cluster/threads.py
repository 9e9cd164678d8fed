"""The thread → owner and session map, shared in a KV bucket, and the sessions' transcripts in the object store.

A thread belongs to the node that took its first task (compare-and-set on the key), for as long as that node
beats (bot.cluster.nodes); another node takes it over only from a dead owner. After every turn the owner writes
the thread's session and saves the transcript, so the node that takes over resumes the same Claude session.
Each node keeps a copy of the map in its own store (the dispatcher asks it whether a reply is in a thread of ours).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import anyio
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from bot.cluster.jetstream import Link, dumps
from bot.core.store import Store, StoredMessage, ThreadSession
from bot.errors import StoreError
from bot.log import get_logger

log = get_logger("slackbus.cluster")


@dataclass(frozen=True)
class ThreadEntry:
    owner: str = ""  # the node holding the thread ("" while its first task waits for a node)
    first: str = ""  # the ts of the first task, while no node has taken it (later tasks wait behind it)
    session_id: str = ""
    started: bool = False
    workdir: str = ""
    requester: str = ""
    transcript: str = ""  # the transcript's path under the CLI's projects folder, e.g. "-work-repo/<id>.jsonl"


def thread_key(channel: str, thread_ts: str) -> str:
    return f"{channel}.{thread_ts}"


def _decode(raw: bytes | None) -> ThreadEntry | None:
    if not raw:
        return None
    try:
        data = json.loads(raw)
        return ThreadEntry(**{k: v for k, v in data.items() if k in ThreadEntry.__dataclass_fields__})
    except (ValueError, TypeError):
        log.warning("cluster.bad_thread_entry")
        return None


class Threads:
    def __init__(self, link: Link, store: Store, me: str, projects: Path) -> None:
        self._link = link
        self._kv = link.threads
        self._objects = link.sessions
        self._store = store
        self.me = me
        self._projects = projects  # $HOME/.claude/projects of the `claude` children
        # threads this node holds, as far as it knows: a follow-up in one is placed without reading the map (the
        # map's watch drops a thread another node took over, which it does only when it thinks this node dead)
        self.mine: set[tuple[str, str]] = set()

    async def get(self, channel: str, thread_ts: str) -> tuple[ThreadEntry | None, int]:
        """The entry and its revision (0 when there is none)."""
        try:
            e = await self._kv.get(thread_key(channel, thread_ts))
        except KeyNotFoundError:
            return None, 0
        return _decode(e.value), e.revision or 0

    async def create(self, channel: str, thread_ts: str, entry: ThreadEntry) -> bool:
        try:
            await self._kv.create(thread_key(channel, thread_ts), dumps(asdict(entry)))
        except KeyWrongLastSequenceError:
            return False
        return True

    async def swap(self, channel: str, thread_ts: str, entry: ThreadEntry, revision: int) -> bool:
        """Compare-and-set: False when another node changed it first (or made it, for revision 0)."""
        try:
            if revision == 0:
                await self._kv.create(thread_key(channel, thread_ts), dumps(asdict(entry)))
            else:
                await self._kv.update(thread_key(channel, thread_ts), dumps(asdict(entry)), last=revision)
        except KeyWrongLastSequenceError:
            return False
        return True

    async def release(self, channel: str, thread_ts: str) -> None:
        """This node lets the thread go (it is shutting down): the next node to take one of its tasks holds it."""
        for _ in range(5):
            entry, revision = await self.get(channel, thread_ts)
            self.mine.discard((channel, thread_ts))
            if entry is None or entry.owner != self.me:
                return
            if await self.swap(channel, thread_ts, replace(entry, owner=""), revision):
                return

    async def after_turn(self, channel: str, thread_ts: str, *, hold: bool = True) -> None:
        """The owner, after a turn: the thread's session (from this node's store) and its transcript, for a node
        that may take it over. hold=False (this node is shutting down): the thread stays free for the next node."""
        row = self._store.get_thread(channel, thread_ts)
        if row is None:
            return
        transcript = ""
        if row.session_id and row.started:
            transcript = await self._save_transcript(row.session_id)
        for _ in range(5):
            entry, revision = await self.get(channel, thread_ts)
            if entry is not None and entry.owner not in ("", self.me):
                return  # taken over meanwhile (this node was thought dead): the new owner writes it
            new = replace(entry or ThreadEntry(), owner=self.me if hold else "", first="", session_id=row.session_id,
                          started=row.started, workdir=row.workdir, requester=row.requester or "",
                          transcript=transcript or (entry.transcript if entry else ""))
            if await self.swap(channel, thread_ts, new, revision):
                if hold:
                    self.mine.add((channel, thread_ts))
                log.info("cluster.thread_saved", channel=channel, thread_ts=thread_ts, session_id=row.session_id,
                         transcript=bool(transcript))
                return

    async def _save_transcript(self, session_id: str) -> str:
        found = await anyio.to_thread.run_sync(lambda: next(self._projects.glob(f"*/{session_id}.jsonl"), None))
        if found is None:
            return ""
        try:
            data = await anyio.to_thread.run_sync(found.read_bytes)
            await self._objects.put(session_id, data)
        except Exception as exc:  # the answer is out; a takeover then starts the session again from the thread
            log.warning("cluster.transcript_save_failed", session_id=session_id, error=f"{type(exc).__name__}: {exc}")
            return ""
        return f"{found.parent.name}/{found.name}"

    async def restore(self, entry: ThreadEntry) -> bool:
        """Before resuming a session this node does not have: its transcript from the object store, at the same
        path (the same working folder on every node). False when there is none (the run starts the session again
        with the whole thread)."""
        if not (entry.session_id and entry.started and entry.transcript):
            return False
        path = self._projects / entry.transcript
        if path.name != f"{entry.session_id}.jsonl" or ".." in Path(entry.transcript).parts:
            return False  # not a path this code wrote
        if path.exists():
            return True
        try:
            result = await self._objects.get(entry.session_id)
        except Exception as exc:
            log.warning("cluster.transcript_missing", session_id=entry.session_id, error=f"{type(exc).__name__}")
            return False
        data = result.data or b""

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_suffix(".part")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            tmp.replace(path)

        await anyio.to_thread.run_sync(write)
        log.info("cluster.transcript_restored", session_id=entry.session_id, bytes=len(data))
        return True

    def message_data(self, channel: str, ts: str) -> dict[str, Any] | None:
        """A request as this node recorded it, to travel with its task."""
        msg = self._store.get_message(channel, ts)
        return None if msg is None else asdict(msg)

    def own_message(self, data: dict[str, Any] | None) -> None:
        """The request as the placing node recorded it, in this node's store (where the record may hold only the
        bot's heading posted at that ts, or nothing yet)."""
        if not data:
            return
        try:
            msg = StoredMessage(**{k: v for k, v in data.items() if k in StoredMessage.__dataclass_fields__})
            have = self._store.get_message(msg.channel, msg.ts)
            if have is not None and (have.user, have.text, have.from_self) == (msg.user, msg.text, msg.from_self):
                return
            if have is not None:
                self._store.delete_message(msg.channel, msg.ts)
            self._store.record_message(msg)
        except (TypeError, StoreError) as exc:
            log.warning("cluster.request_not_recorded", error=f"{type(exc).__name__}: {exc}")

    def finished(self, channel: str, ts: str) -> bool:
        """This node finished that request (its task came back: an ack that did not reach the server)."""
        try:
            return self._store.request_finished(channel, ts)
        except StoreError:
            return False

    def local(self, channel: str, thread_ts: str) -> ThreadSession | None:
        return self._store.get_thread(channel, thread_ts)

    def to_store(self, channel: str, thread_ts: str, entry: ThreadEntry) -> None:
        """This node's copy of a thread another node holds (or that this node takes over)."""
        row = self._store.get_thread(channel, thread_ts)
        new = ThreadSession(channel, thread_ts, entry.session_id, entry.workdir or (row.workdir if row else ""),
                            entry.started, row.last_ts if row else "0", entry.requester or (row.requester if row
                                                                                              else None))
        if row is not None and (row.session_id, row.started, row.workdir) == (new.session_id, new.started,
                                                                              new.workdir):
            return
        try:
            self._store.save_thread(new)
        except StoreError as exc:
            log.error("store.write_failed", what="cluster_thread", channel=channel, error=str(exc))

    async def mirror(self) -> None:
        """Keep this node's store knowing every thread of the cluster (a reply there is a follow-up). A watch does
        not survive a server restart: it starts again after each reconnection."""
        while True:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch)
                await self._link.reconnects.next()
                tg.cancel_scope.cancel()

    async def _watch(self) -> None:
        while True:
            try:
                watcher = await self._kv.watchall()
                async for e in watcher:
                    if e is None or not e.key or not e.value:
                        continue
                    entry = _decode(e.value)
                    channel, _, thread_ts = e.key.partition(".")
                    if entry is not None and entry.owner != self.me and thread_ts:
                        self.mine.discard((channel, thread_ts))
                        self.to_store(channel, thread_ts, entry)
            except Exception as exc:
                log.warning("cluster.watch_failed", what="threads", error=f"{type(exc).__name__}: {exc}")
                await anyio.sleep(0.5)
