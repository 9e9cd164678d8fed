"""The shared channel as the bot serves it to Claude Code sessions: who a session is, where it posts, what it reads.

The socket (bot.bridge.server) and the MCP tools (bot.bridge.mcp) are two doors to these operations. Every post is
tagged with the writing session (bot.core.identity), so a channel with several sessions reads clearly.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bot.bridge.protocol import MAX_POST_CHARS, BusError, BusMessage, author_of, clock
from bot.config import Settings
from bot.core import identity as ident
from bot.core.files_out import FilesOut, UploadRefused
from bot.core.poster import Poster
from bot.core.renderer import SlackMessage
from bot.core.store import Store
from bot.log import get_logger

log = get_logger("slackbus.blackboard")

ACTIVE_WINDOW_S = 3600.0


class Blackboard:
    def __init__(self, settings: Settings, store: Store, poster: Poster, *, name_of: Callable[[str], str],
                 files_out: FilesOut | None = None) -> None:
        self._settings = settings
        self._store = store
        self._poster = poster
        self._name_of = name_of
        self._files_out = files_out

    async def upload(self, session_id: str, path: str, title: str | None, comment: str | None) -> str:
        """A file a session the bot runs hands back to its thread; a sentence either way (BusError when refused)."""
        where = self.where(session_id)
        if where is None or self._files_out is None:
            raise BusError("This session has no thread to hand a file to.")
        try:
            real = self._files_out.allowed(*where, session_id, path)
            return await self._files_out.upload(*where, real, title=title, comment=comment)
        except UploadRefused as why:
            raise BusError(str(why)) from None

    # --- operations ----------------------------------------------------------------------------------
    def identity(self, session_id: str) -> ident.Identity:
        """The tag of a session the bot runs: its folder is the folder of the thread it serves (the store's)."""
        where = self.where(session_id)
        thread = self._store.get_thread(*where) if where else None
        cwd = thread.workdir if thread is not None and thread.workdir else None
        return ident.resolve(self._settings.child_env, session_id=session_id, cwd=cwd)

    def where(self, session_id: str | None) -> tuple[str, str] | None:
        return self._store.thread_of_session(session_id) if session_id else None

    async def post(
        self, text: str, *, channel: str | None, thread_ts: str | None, session_id: str | None
    ) -> tuple[str, str]:
        """Post already-tagged text; returns (channel, ts). Raises BusError with a sentence for the caller.

        With no channel, a session the bot runs posts in its own thread."""
        if not channel:
            where = self.where(session_id)
            if where is None:
                raise BusError("No channel to post to: set SLACKBUS_CHANNEL or pass --channel.")
            channel, thread_ts = where
        if not self._settings.is_channel_allowed(channel):
            raise BusError(f"slackbus is not enabled in {channel} (SLACKBUS_ALLOWED_CHANNELS).")
        text = text.strip()[: MAX_POST_CHARS]
        if not text:
            raise BusError("Nothing to post: the text is empty.")
        ts = await self._poster.post(channel, thread_ts or None, SlackMessage(text=text))
        log.info("blackboard.posted", channel=channel, thread_ts=thread_ts, ts=ts, session_id=session_id)
        return channel, ts

    def read(
        self, channel: str, *, since: str | None, limit: int, thread_ts: str | None = None
    ) -> list[BusMessage]:
        rows = self._store.messages_after(channel, since or "", limit, thread_ts=thread_ts)
        names = {m.user: self._name_of(m.user) for m in rows if m.user}
        out = []
        for m in rows:
            author, body = author_of(m.text, m.user, m.bot_id, m.from_self, names)
            out.append(BusMessage(channel, m.ts, m.thread_ts, author, body))
        return out

    def sessions(self, channel: str) -> list[str]:
        """Sessions active in the channel in the last hour: the bot's own runs, and every tagged writer."""
        since = time.time() - ACTIVE_WINDOW_S
        lines: list[str] = []
        seen: set[str] = set()
        for session_id, thread_ts, status, started in self._store.recent_runs(channel, since):
            short = ident.short_id(session_id)
            if short in seen:
                continue
            seen.add(short)
            who = self.identity(session_id)
            state = "working now" if status == "running" else f"last ran {clock(f'{started:.6f}')}"
            lines.append(f"{who.label}: run by the bot in thread {thread_ts}, {state}")
        for m in reversed(self._store.messages_after(channel, f"{since:.6f}", 500)):
            writer, _ = ident.parse(m.text)
            if writer is not None and writer.short not in seen:
                seen.add(writer.short)
                lines.append(f"{writer.label}: last posted {clock(m.ts)}")
        return lines
