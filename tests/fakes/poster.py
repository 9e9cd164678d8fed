"""A Poster (bot.core.poster) in memory, for unit tests of the core: what the core asked of the place messages go.

Each post gets a Slack-like ts; its edits are kept in order; reactions are sets per message; every call is in
`calls`, in order. `fail` names the methods that raise (a transport refusing); `held` keeps a method waiting until
`release`, so a test can act while a post is on its way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from bot.core.renderer import SlackMessage, plain_text


@dataclass
class Posted:
    channel: str
    thread_ts: str | None
    ts: str
    versions: list[SlackMessage] = field(default_factory=list)  # as posted, then each edit

    @property
    def message(self) -> SlackMessage:
        return self.versions[-1]

    @property
    def text(self) -> str:
        return plain_text(self.message)


class PosterRefused(Exception):
    """What a FakePoster method in `fail` raises."""


class FakePoster:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []  # (method, channel, ts or thread_ts, what)
        self.posts: dict[str, Posted] = {}  # ts → the message and its edits
        self.reactions: dict[tuple[str, str], set[str]] = {}
        self.deliveries: list[tuple[str, str, list[SlackMessage], str | None, str | None]] = []
        self.ephemerals: list[tuple[str, str, str, str | None]] = []
        self.uploads: list[tuple[str, str, str, bytes, str, str | None]] = []  # channel, thread, name, bytes, ...
        self.fail: set[str] = set()
        self.held: dict[str, anyio.Event] = {}
        self._n = 0
        self._changed = anyio.Event()

    # --- for the test ------------------------------------------------------------------------------------------
    def in_thread(self, channel: str, thread_ts: str) -> list[Posted]:
        return [p for p in self.posts.values() if p.channel == channel and p.thread_ts == thread_ts]

    def on(self, channel: str, ts: str) -> set[str]:
        """The reactions on a message now."""
        return set(self.reactions.get((channel, ts), set()))

    def count(self, method: str) -> int:
        return sum(1 for c in self.calls if c[0] == method)

    def hold(self, method: str) -> None:
        self.held[method] = anyio.Event()

    def release(self, method: str) -> None:
        self.held.pop(method).set()

    async def until(self, predicate: Callable[[], object], timeout: float = 2.0) -> None:
        """Wait until `predicate()` is true; it is checked again after every call the core makes."""
        with anyio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()

    # --- the Poster protocol -------------------------------------------------------------------------------------
    async def _enter(self, method: str, *call: str) -> None:
        self.calls.append((method, *call))
        self._notify()
        if method in self.held:
            await self.held[method].wait()
        if method in self.fail:
            raise PosterRefused(f"{method} refused")

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def post(self, channel: str, thread_ts: str | None, message: SlackMessage) -> str:
        await self._enter("post", channel, thread_ts or "", message.text)
        self._n += 1
        ts = f"1800000000.{self._n:06d}"
        self.posts[ts] = Posted(channel, thread_ts, ts, [message])
        self._notify()
        return ts

    async def update(self, channel: str, ts: str, message: SlackMessage) -> None:
        await self._enter("update", channel, ts, message.text)
        self.posts[ts].versions.append(message)
        self._notify()

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
        await self._enter("deliver", channel, thread_ts, messages[0].text if messages else "")
        self.deliveries.append((channel, thread_ts, messages, replace_ts, attachment))
        for i, message in enumerate(messages):
            if i == 0 and replace_ts is not None:
                self.posts[replace_ts].versions.append(message)
            else:
                self._n += 1
                ts = f"1800000000.{self._n:06d}"
                self.posts[ts] = Posted(channel, thread_ts, ts, [message])
        self._notify()
        return True

    async def post_ephemeral(self, channel: str, user: str, text: str, thread_ts: str | None = None) -> None:
        await self._enter("post_ephemeral", channel, user, text)
        self.ephemerals.append((channel, user, text, thread_ts))

    async def upload(self, channel: str, thread_ts: str, filename: str, content: bytes, *, title: str,
                     comment: str | None = None) -> None:
        await self._enter("upload", channel, thread_ts, filename)
        self.uploads.append((channel, thread_ts, filename, content, title, comment))

    async def react(self, channel: str, ts: str, name: str) -> bool:
        await self._enter("react", channel, ts, name)
        self.reactions.setdefault((channel, ts), set()).add(name)
        self._notify()
        return True

    async def unreact(self, channel: str, ts: str, name: str) -> None:
        await self._enter("unreact", channel, ts, name)
        self.reactions.get((channel, ts), set()).discard(name)
        self._notify()

    async def run_outbox(self, interval: float = 15.0) -> None:
        await anyio.sleep_forever()
