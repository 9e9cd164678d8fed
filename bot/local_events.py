"""The local channel's side of the events seam: follow every channel file, turn new records into the same
typed messages Slack's events become (IncomingMessage for the dispatcher, /claude for the commands, 🛑 for a
cancel), so the core cannot tell the transports apart.

At start-up, a channel the store has never seen is read as history (recorded, nothing run); after that, and
for every channel created while the bot runs, each record the store does not hold yet is new, including
those appended while the bot was down.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio

from bot.dispatcher import Dispatcher, IncomingMessage
from bot.local_channel import LocalChannel, channels_in
from bot.log import get_logger
from bot.store import Store, StoredMessage

log = get_logger("slackbus.local")

LOCAL_BOT = "claude"  # the bot's user id on the local channel; people write "@claude …"
POLL_S = 0.005  # how often a channel file's size is checked (a stat per channel)
RESCAN_S = 0.5  # how often new channel files are looked for


class LocalDirectory:
    """Names on the local channel are the names people write under; history is the file itself."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def label(self, channel: str, is_dm: bool) -> str:
        return f"#{channel} (local)"

    def name_of(self, user_id: str) -> str:
        return user_id

    async def ensure(self, channel: str) -> None:
        return None

    async def resolve(self, user_ids: Iterable[str], within: float = 2.0) -> None:
        return None


def mentions_bot(text: str) -> bool:
    low = text.lower()
    i = low.find(f"@{LOCAL_BOT}")
    while i >= 0:
        after = low[i + len(LOCAL_BOT) + 1: i + len(LOCAL_BOT) + 2]
        if not (after.isalnum() or after in "-_"):
            return True
        i = low.find(f"@{LOCAL_BOT}", i + 1)
    return f"<@{LOCAL_BOT}>" in text


class LocalEvents:
    def __init__(
        self,
        directory: str,
        store: Store,
        dispatcher: Dispatcher,
        *,
        on_slash: Callable[[dict[str, Any], Any], Awaitable[None]],
        on_reaction: Callable[[dict[str, Any]], Awaitable[None]],
        ephemeral: Callable[[str, str, str, str | None], Awaitable[None]],
        spawn: Callable[..., None],
    ) -> None:
        self._ephemeral = ephemeral
        self._dir = directory
        self._store = store
        self._dispatcher = dispatcher
        self._on_slash = on_slash
        self._on_reaction = on_reaction
        self._spawn = spawn
        self._channels: dict[str, LocalChannel] = {}
        self._offsets: dict[str, int] = {}
        self.seen = 0

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        os.makedirs(self._dir, mode=0o700, exist_ok=True)
        self._scan(first=True)
        task_status.started()
        last_scan = time.monotonic()
        dir_stamp = _mtime(self._dir)
        while True:
            stamp = _mtime(self._dir)  # a new channel file changes the folder: look at once, not at the next rescan
            if stamp != dir_stamp or time.monotonic() - last_scan > RESCAN_S:
                dir_stamp = stamp
                self._scan(first=False)
                last_scan = time.monotonic()
            for name, ch in self._channels.items():
                if ch.size() > self._offsets[name]:
                    records, self._offsets[name] = ch.read(self._offsets[name])
                    for rec in records:
                        self._handle(name, rec, history=False)
            await anyio.sleep(POLL_S)

    def _scan(self, *, first: bool) -> None:
        for name in channels_in(self._dir):
            if name in self._channels:
                continue
            ch = self._channels[name] = LocalChannel(self._dir, name)
            records, self._offsets[name] = ch.read(0)
            # at start-up, a channel the store never saw is history; one created since is all new
            history = first and not self._store.is_backfilled(name)
            for rec in records:
                self._handle(name, rec, history=history)
            self._store.mark_backfilled(name, name)
            log.info("local.channel", channel=name, records=len(records), history=history)

    def _handle(self, channel: str, rec: dict[str, Any], *, history: bool) -> None:
        kind = rec.get("kind", "message")
        ts = str(rec["ts"])
        user = str(rec.get("user") or "someone")
        received = time.monotonic()
        if kind == "message":
            if rec.get("bot") or user == LOCAL_BOT:
                return  # the bot's own: recorded when it wrote them
            if self._store.get_message(channel, ts) is not None:
                return  # already recorded (before a restart)
            text = str(rec.get("text") or "")
            thread_ts = rec.get("thread_ts") or None
            session = bool(rec.get("session"))  # a Claude Code session's post (hooks, `slackbus post`): never run
            if history or session:
                self._store.record_message(StoredMessage(
                    channel=channel, ts=ts, thread_ts=thread_ts, user=None if session else user,
                    bot_id="session" if session else None, text=text,
                ))
                return
            self.seen += 1
            with contextlib.suppress(ValueError):  # appended → seen here (ts is the writer's clock, given on append)
                log.info("local.seen", channel=channel, ts=ts, lag_ms=round((time.time() - float(ts)) * 1000, 2))
            if text.startswith("/claude"):
                command = {"command": "/claude", "text": text[len("/claude"):].strip(), "user_id": user,
                           "user_name": user, "channel_id": channel, "thread_ts": thread_ts, "trigger_ts": ts}

                async def ack(text: str | None = None, **_: Any) -> None:  # Slack's ack(text=…): a private answer
                    if text:
                        await self._ephemeral(channel, user, text, thread_ts)

                self._spawn(self._on_slash, command, ack)
                return
            self._dispatcher.on_message(IncomingMessage(
                channel=channel, ts=ts, text=_with_bot_mention(text), user=user, thread_ts=thread_ts,
                channel_type="channel", bot_id=None, subtype=None, mentions_bot=mentions_bot(text),
                event_id=f"local:{channel}:{ts}", received=received,
            ))
        elif kind == "reaction" and not history and user != LOCAL_BOT and rec.get("op", "add") == "add":
            event = {"type": "reaction_added", "user": user, "reaction": rec.get("name"),
                     "item": {"type": "message", "channel": channel, "ts": rec.get("target")}, "event_ts": ts}
            self._spawn(self._on_reaction, event)


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def _with_bot_mention(text: str) -> str:
    """`@claude` as the Slack-style mention the context builder removes from the request."""
    if f"<@{LOCAL_BOT}>" in text:
        return text
    low = text.lower()
    i = low.find(f"@{LOCAL_BOT}")
    if i < 0:
        return text
    return text[:i] + f"<@{LOCAL_BOT}>" + text[i + len(LOCAL_BOT) + 1:]
