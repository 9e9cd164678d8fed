"""The seam between the core and a transport: what the pipeline, progress, commands and approvals may ask of
the place messages go. Slack (slack_poster.SlackPoster) and the local channel (local_poster.LocalPoster)
implement it; nothing else in the core knows which one it talks to."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from bot.core.renderer import SlackMessage


class Poster(Protocol):
    async def post(self, channel: str, thread_ts: str | None, message: SlackMessage) -> str:
        """Post in a thread (or the channel when thread_ts is None); returns the new message's ts."""
        ...

    async def update(self, channel: str, ts: str, message: SlackMessage) -> None:
        """Replace a message this bot posted."""
        ...

    async def deliver(
        self,
        channel: str,
        thread_ts: str,
        messages: list[SlackMessage],
        *,
        replace_ts: str | None = None,
        attachment: str | None = None,
        filename: str = "answer.md",
        title: str = "The whole answer",
    ) -> bool:
        """Post an answer, durably (the first message may replace `replace_ts`); True if it all went out now."""
        ...

    async def post_ephemeral(self, channel: str, user: str, text: str, thread_ts: str | None = None) -> None: ...

    async def upload(self, channel: str, thread_ts: str, filename: str, content: bytes, *, title: str,
                     comment: str | None = None) -> None:
        """Put a file in the thread (text files masked on the way out, like every text)."""
        ...

    async def react(self, channel: str, ts: str, name: str) -> bool: ...

    async def unreact(self, channel: str, ts: str, name: str) -> None: ...

    async def run_outbox(self, interval: float = 15.0) -> None: ...


class Directory(Protocol):
    """Names and history a transport knows: Slack's (backfill.Backfill) or the local channel's."""

    def label(self, channel: str, is_dm: bool) -> str: ...

    def name_of(self, user_id: str) -> str: ...

    async def ensure(self, channel: str) -> None:
        """The channel's history is in the store (fetched once, on first contact)."""
        ...

    async def resolve(self, user_ids: Iterable[str], within: float = 2.0) -> None: ...

    async def fetch_thread(self, channel: str, thread_ts: str) -> None:
        """A linked message's thread, into the store, when the bot's record lacks it (one paced read)."""
        ...
