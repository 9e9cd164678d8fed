"""The local channel's side of the events seam: follow every channel folder's files, turn new records into the
same typed events Slack's payloads become (bot.core.events: IncomingMessage for the dispatcher, SlashCommand and
Reaction for the commands), so the core cannot tell the transports apart.

Who wrote a record is the OS owner of the file it is in (bot.local.channel); the bot's own file counts as the
bot's only when it is owned by the bot's uid. A malformed line, or a file that is not its owner's, is logged
(local.record_skipped, with file and line) and skipped; a record the core chokes on is logged
(local.record_failed) and skipped too, so no line in a channel can stop the bot or make it crash-loop.

At start-up, a channel the store has never seen is read as history (recorded, nothing run); after that, and
for every channel created while the bot runs, each record the store does not hold yet is new, including
those appended while the bot was down.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any

import anyio

from bot.core.dispatcher import Dispatcher
from bot.core.events import IncomingMessage, Reaction, Reply, SlashCommand
from bot.core.store import Store, StoredMessage
from bot.local.channel import (
    BOT_NAME,
    DIR_MODE,
    Follower,
    LocalChannel,
    Record,
    channels_in,
    legacy_files,
    make_dir,
)
from bot.local.files import refs_of
from bot.log import get_logger

log = get_logger("slackbus.local")

LOCAL_BOT = BOT_NAME  # the bot's user id on the local channel; people write "@claude …"
POLL_S = 0.005  # how often the channels' files are checked for growth (an fstat per file)
RESCAN_S = 0.5  # how often new channel folders are looked for


class LocalDirectory:
    """Names on the local channel are OS user names; history is the files themselves."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def label(self, channel: str, is_dm: bool) -> str:
        return f"#{channel} (local)"

    def name_of(self, user_id: str) -> str:
        return user_id

    async def ensure(self, channel: str) -> None:
        return None

    async def fetch_thread(self, channel: str, thread_ts: str) -> None:
        return None  # the local record is the whole channel

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
        on_slash: Callable[[SlashCommand, Reply], Awaitable[None]],
        on_reaction: Callable[[Reaction], Awaitable[None]],
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
        self._followers: dict[str, Follower] = {}
        self.seen = 0

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Read the channel folders from now on (the transport's events in; see bot.slack.connection)."""
        await tg.start(self.run)

    async def close(self) -> None:
        return None

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        make_dir(self._dir, DIR_MODE)
        for path in legacy_files(self._dir):
            log.warning("local.legacy_channel_file", file=path,
                        note="a channel of the old one-file layout is no longer read: its lines do not say "
                             "truthfully who wrote them; channels are now folders with a file per person")
        self._scan(first=True)
        task_status.started()
        last_scan = time.monotonic()
        dir_stamp = _mtime(self._dir)
        try:
            while True:
                stamp = _mtime(self._dir)  # a new channel folder changes the folder: look at once
                if stamp != dir_stamp or time.monotonic() - last_scan > RESCAN_S:
                    dir_stamp = stamp
                    self._scan(first=False)
                    last_scan = time.monotonic()
                for name, follower in self._followers.items():
                    for rec in follower.poll():
                        self._handle(name, rec, history=False)
                await anyio.sleep(POLL_S)
        finally:
            for follower in self._followers.values():
                follower.close()

    def _scan(self, *, first: bool) -> None:
        for name in channels_in(self._dir):
            if name in self._followers:
                continue
            follower = self._followers[name] = Follower(
                LocalChannel(self._dir, name, bot=True), on_skip=partial(_skipped, name),
                bot_uids=frozenset({os.geteuid()}),
            )
            records = follower.poll()
            # at start-up, a channel the store never saw is history; one created since is all new
            history = first and not self._store.is_backfilled(name)
            for rec in records:
                self._handle(name, rec, history=history)
            self._store.mark_backfilled(name, name)
            log.info("local.channel", channel=name, records=len(records), history=history)

    def _handle(self, channel: str, rec: Record, *, history: bool) -> None:
        """One record; whatever goes wrong with it is logged with its file and line, never fatal."""
        try:
            self._handle_record(channel, rec, history=history)
        except Exception as exc:  # one odd record must not stop the channel (or crash-loop the bot)
            file, _, line = rec.source.rpartition(":")
            log.exception("local.record_failed", channel=channel, file=file, line=line, ts=rec.ts, error=exc)

    def _handle_record(self, channel: str, rec: Record, *, history: bool) -> None:
        ts, user = rec.ts, rec.user  # user: the OS owner of the file it is in, never the record's say-so
        received = time.monotonic()
        if rec.bot:
            return  # the bot's own: recorded when it wrote them
        if rec.kind == "message":
            if self._store.get_message(channel, ts) is not None:
                return  # already recorded (before a restart)
            text, thread_ts = rec.text, rec.thread_ts
            if history or rec.session:  # a Claude Code session's post (hooks, `slackbus post`): never run
                self._store.record_message(StoredMessage(
                    channel=channel, ts=ts, thread_ts=thread_ts, user=None if rec.session else user,
                    bot_id="session" if rec.session else None, text=text,
                ))
                return
            self.seen += 1
            log.info("local.seen", channel=channel, ts=ts, user=user,
                     lag_ms=round((time.time() - float(ts)) * 1000, 2))  # appended → seen here
            if text.startswith("/claude"):
                command = SlashCommand(user=user, channel=channel, text=text[len("/claude"):].strip(),
                                       thread_ts=thread_ts or None)

                async def reply(text: str) -> None:  # what Slack puts in the command's ack: a private answer
                    if text:
                        await self._ephemeral(channel, user, text, thread_ts)

                self._spawn(self._on_slash, command, reply)
                return
            files = refs_of(rec.files, author=user, ts=ts)
            if files:  # named in the text too, as a Slack message with files is (context for later runs)
                text = f"{text}\n[attached: {', '.join(f.name for f in files)}]"
            self._dispatcher.on_message(IncomingMessage(
                channel=channel, ts=ts, text=_with_bot_mention(text), user=user, thread_ts=thread_ts,
                channel_type="channel", bot_id=None, subtype=None, mentions_bot=mentions_bot(text),
                event_id=f"local:{channel}:{ts}", received=received,
                files=files,
            ))
        elif rec.kind == "reaction" and not history and rec.op == "add":
            self._spawn(self._on_reaction, Reaction(user=user, channel=channel, ts=rec.target or "", name=rec.name))


def _skipped(channel: str, file: str, line: int | None, why: str) -> None:
    log.warning("local.record_skipped", channel=channel, file=file, line=line, why=why)


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
