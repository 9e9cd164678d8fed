"""Everything the bot sends to Slack's Web API, and the record of what it posted.

The client retries 429 (honouring Retry-After) and 5xx; a failed reaction never fails a run. What the bot
posts is written to the store at once, so the next context includes it without a history call.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot.log import get_logger
from bot.renderer import SlackMessage, plain_text
from bot.store import Store, StoredMessage

log = get_logger("slackbus.slack")

INLINE_ATTEMPTS = 3  # beyond the client's own retries (429 × 5 with Retry-After, 5xx × 3)


def make_client(token: str, base_url: str) -> AsyncWebClient:
    client = AsyncWebClient(token=token, base_url=base_url, timeout=30)
    client.retry_handlers = [
        AsyncConnectionErrorRetryHandler(max_retry_count=2),
        AsyncRateLimitErrorRetryHandler(max_retry_count=5),
        AsyncServerErrorRetryHandler(max_retry_count=3),
    ]
    return client


class SlackPoster:
    def __init__(self, client: AsyncWebClient, store: Store, *, bot_user_id: str, bot_id: str | None) -> None:
        self.client = client
        self._store = store
        self._bot_user_id = bot_user_id
        self._bot_id = bot_id
        self._inflight: set[int] = set()

    async def post(self, channel: str, thread_ts: str | None, message: SlackMessage) -> str:
        """Post in a thread (or the channel when thread_ts is None); returns the new message's ts."""
        kwargs: dict[str, Any] = {"channel": channel, "text": message.text, "unfurl_links": False}
        if message.blocks:
            kwargs["blocks"] = message.blocks
        if thread_ts:
            kwargs["thread_ts"] = thread_ts
        resp = await self.client.chat_postMessage(**kwargs)
        ts = str(resp["ts"])
        self._store.record_message(
            StoredMessage(
                channel=channel,
                ts=ts,
                thread_ts=thread_ts,
                user=self._bot_user_id,
                bot_id=self._bot_id,
                text=plain_text(message),
                from_self=True,
            )
        )
        return ts

    # --- answers: kept in the outbox until Slack has them ------------------------------------------------
    async def deliver(
        self,
        channel: str,
        thread_ts: str,
        messages: list[SlackMessage],
        *,
        replace_ts: str | None = None,
        attachment: str | None = None,
    ) -> bool:
        """Post an answer (the first message may replace `replace_ts`), then the file, if any.

        It is written to the outbox first; each step that succeeds is struck off, so a retry never repeats
        it. After INLINE_ATTEMPTS failures the rest is left to the background retrier (`run_outbox`), which
        keeps trying, across restarts too. Returns whether everything went out now.
        """
        payload: dict[str, Any] = {
            "messages": [{"text": m.text, "blocks": m.blocks} for m in messages],
            "replace_ts": replace_ts,
            "attachment": attachment,
        }
        item = self._store.outbox_add(channel, thread_ts, json.dumps(payload))
        self._inflight.add(item)
        try:
            for attempt in range(INLINE_ATTEMPTS):
                if await self._drain(item, channel, thread_ts, payload):
                    return True
                await anyio.sleep(min(2.0**attempt, 8.0))
            return False
        finally:
            self._inflight.discard(item)

    async def _drain(self, item: int, channel: str, thread_ts: str, payload: dict[str, Any]) -> bool:
        try:
            while payload["messages"]:
                first = payload["messages"][0]
                message = SlackMessage(text=first["text"], blocks=first["blocks"])
                if payload.get("replace_ts"):
                    await self.update(channel, payload["replace_ts"], message)
                    payload["replace_ts"] = None
                else:
                    await self.post(channel, thread_ts, message)
                payload["messages"].pop(0)
                self._store.outbox_update(item, json.dumps(payload), None)
            if payload.get("attachment"):
                await self.client.files_upload_v2(
                    channel=channel,
                    thread_ts=thread_ts,
                    content=payload["attachment"],
                    filename="answer.md",
                    title="The whole answer",
                )
            self._store.outbox_update(item, None, None)
            return True
        except (SlackApiError, OSError, TimeoutError) as exc:
            error = exc.response.get("error") if isinstance(exc, SlackApiError) else type(exc).__name__
            log.warning("slack.deliver_failed", channel=channel, thread_ts=thread_ts, error=error)
            self._store.outbox_update(item, json.dumps(payload), str(error))
            return False

    async def run_outbox(self, interval: float = 15.0) -> None:
        """Background: deliver what earlier attempts (or an earlier process) could not."""
        while True:
            for item, channel, thread_ts, raw in self._store.outbox_pending():
                if item in self._inflight:
                    continue
                self._inflight.add(item)
                try:
                    if await self._drain(item, channel, thread_ts, json.loads(raw)):
                        log.info("slack.delivered_late", channel=channel, thread_ts=thread_ts)
                finally:
                    self._inflight.discard(item)
            await anyio.sleep(interval)

    async def update(self, channel: str, ts: str, message: SlackMessage) -> None:
        """Replace a message the bot posted (status → answer); the store follows."""
        await self.client.chat_update(channel=channel, ts=ts, text=message.text, blocks=message.blocks)
        existing = self._store.get_message(channel, ts)
        if existing is not None:
            from dataclasses import replace

            self._store.record_message(replace(existing, text=plain_text(message)))

    async def post_ephemeral(self, channel: str, user: str, text: str, thread_ts: str | None = None) -> None:
        kwargs: dict[str, Any] = {"channel": channel, "user": user, "text": text}
        if thread_ts:
            kwargs["thread_ts"] = thread_ts
        try:
            await self.client.chat_postEphemeral(**kwargs)
        except SlackApiError as exc:
            log.warning("slack.ephemeral_failed", channel=channel, error=exc.response.get("error"))

    async def react(self, channel: str, ts: str, name: str) -> bool:
        try:
            await self.client.reactions_add(channel=channel, timestamp=ts, name=name)
        except SlackApiError as exc:
            if exc.response.get("error") != "already_reacted":
                log.warning("slack.react_failed", channel=channel, ts=ts, name=name, error=exc.response.get("error"))
                return False
        return True

    async def unreact(self, channel: str, ts: str, name: str) -> None:
        try:
            await self.client.reactions_remove(channel=channel, timestamp=ts, name=name)
        except SlackApiError as exc:
            if exc.response.get("error") != "no_reaction":
                log.warning("slack.unreact_failed", channel=channel, ts=ts, name=name, error=exc.response.get("error"))
