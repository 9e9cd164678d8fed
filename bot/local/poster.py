"""The local channel's side of the poster seam: the bot's posts, edits and reactions appended to its own file in
the channel's folder (bot.local.channel), and recorded in the store like its Slack posts. Private answers go
where only their reader can read them, or, when the bot cannot give them such a file (it is not root and they
are not its own user), are not written at all: the thread is told, without the text, and the log has it."""

from __future__ import annotations

from dataclasses import replace

import anyio

from bot.core.renderer import STATUS_BLOCK_ID, SlackMessage, plain_text
from bot.core.store import Store, StoredMessage
from bot.local.channel import LocalChannel, Undeliverable
from bot.log import get_logger

log = get_logger("slackbus.local")


class LocalPoster:
    def __init__(self, directory: str, store: Store, *, bot_user_id: str) -> None:
        self._dir = directory
        self._store = store
        self._bot = bot_user_id
        self._channels: dict[str, LocalChannel] = {}

    def channel(self, name: str) -> LocalChannel:
        ch = self._channels.get(name)
        if ch is None:
            ch = self._channels[name] = LocalChannel(self._dir, name, bot=True)
        return ch

    async def post(self, channel: str, thread_ts: str | None, message: SlackMessage) -> str:
        text = plain_text(message)
        record: dict[str, object] = {"kind": "message", "thread_ts": thread_ts, "text": text}
        if _is_status(message):
            record["status"] = True
        rec = self.channel(channel).append(record)
        self._store.record_message(
            StoredMessage(channel=channel, ts=rec.ts, thread_ts=thread_ts, user=self._bot, bot_id=self._bot,
                          text=text, from_self=True)
        )
        await anyio.lowlevel.checkpoint()
        return rec.ts

    async def update(self, channel: str, ts: str, message: SlackMessage) -> None:
        text = plain_text(message)
        record: dict[str, object] = {"kind": "edit", "target": ts, "text": text}
        if _is_status(message):
            record["status"] = True
        self.channel(channel).append(record)
        existing = self._store.get_message(channel, ts)
        if existing is not None:
            self._store.record_message(replace(existing, text=text))
        await anyio.lowlevel.checkpoint()

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
        if attachment:  # no size limit here: the whole answer, as one message
            messages = [SlackMessage(text=attachment)]
        for i, message in enumerate(messages):
            if i == 0 and replace_ts:
                await self.update(channel, replace_ts, message)
            else:
                await self.post(channel, thread_ts, message)
        return True

    async def upload(self, channel: str, thread_ts: str, filename: str, content: bytes, *, title: str,
                     comment: str | None = None) -> None:
        """A copy in the channel folder's files/ (a text file masked), and a message in the thread with its path."""
        path = self.channel(channel).save_file(filename, content)
        note = f"{comment}\n" if comment else ""
        await self.post(channel, thread_ts, SlackMessage(text=f"{note}:paperclip: {title}: {path}"))

    async def post_ephemeral(self, channel: str, user: str, text: str, thread_ts: str | None = None) -> None:
        ch = self.channel(channel)
        try:
            ch.append_private(user, {"thread_ts": thread_ts, "text": text})
        except (Undeliverable, OSError) as exc:
            log.warning("local.private_undelivered", channel=channel, user=user, thread_ts=thread_ts,
                        reason=str(exc), text=text)
            ch.append({"kind": "message", "thread_ts": thread_ts,
                       "text": f"(a private answer for @{user} could not be delivered: {exc}. Run the bot as root, "
                               f"or use the console as the bot's own user, to get private answers here.)"})
        await anyio.lowlevel.checkpoint()

    async def react(self, channel: str, ts: str, name: str) -> bool:
        self.channel(channel).append({"kind": "reaction", "op": "add", "target": ts, "name": name})
        await anyio.lowlevel.checkpoint()
        return True

    async def unreact(self, channel: str, ts: str, name: str) -> None:
        self.channel(channel).append(
            {"kind": "reaction", "op": "remove", "target": ts, "name": name}
        )
        await anyio.lowlevel.checkpoint()

    async def run_outbox(self, interval: float = 15.0) -> None:
        """Nothing waits here: a local append cannot be refused."""
        await anyio.sleep_forever()


def _is_status(message: SlackMessage) -> bool:
    """A running task's status line (it carries the Stop button's block), not an answer: readers may show it
    as one line and let the next one replace it."""
    return any(block.get("block_id") == STATUS_BLOCK_ID for block in message.blocks)
