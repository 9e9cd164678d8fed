"""Everything the bot sends to Slack's Web API, and the record of what it posted.

The client retries 429 (honouring Retry-After) and 5xx; a failed reaction never fails a run. What the bot
posts is written to the store at once, so the next context includes it without a history call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
from typing import Any, Protocol

import anyio
from aiohttp import ClientError, ClientOSError, ServerConnectionError, ServerDisconnectedError
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient

from bot.core.renderer import SlackMessage, plain_text
from bot.core.store import Store, StoredMessage
from bot.errors import PostRefusedError, StoreError
from bot.log import get_logger
from bot.redact import redact, redact_data

log = get_logger("slackbus.slack")

INLINE_ATTEMPTS = 3  # beyond the client's own retries (see TransientErrorRetryHandler)
RETRY_BUDGET = {"ratelimited": 5, "server_error": 4, "connection": 2}  # retries per call, each kind its own
RETRY_AFTER_CAP_S = 30.0
# what a Web API call raises once its retries are spent: Slack's error (PostRefusedError from `post`), or the
# network's
SLACK_FAILURES = (SlackApiError, PostRefusedError, ClientError, OSError, TimeoutError)


class TransientErrorRetryHandler(AsyncRetryHandler):
    """Retries one Web API call through 429 (after Retry-After), any 5xx and a dropped connection.

    slack_sdk's built-in handlers share one attempt counter that only 429s advance, so a burst of 429s used
    up the 5xx budget (the next 503 was fatal); and they retry only 500 and 503, not 502 or 504. Here every
    kind has its own budget (RETRY_BUDGET) and 5xx/connection retries back off 0.5, 1, 2, 4 s.
    """

    def __init__(self) -> None:
        super().__init__(max_retry_count=sum(RETRY_BUDGET.values()))

    @staticmethod
    def _kind(response: HttpResponse | None, error: Exception | None) -> str | None:
        if response is not None:
            if response.status_code == 429:
                return "ratelimited"
            if 500 <= response.status_code <= 599:
                return "server_error"
            return None
        if isinstance(error, ServerConnectionError | ServerDisconnectedError | ClientOSError):
            return "connection"
        return None

    async def can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        kind = self._kind(response, error)
        if kind is None:
            return False
        used = (state.custom_values or {}).get(kind, 0)
        return bool(used < RETRY_BUDGET[kind])

    async def prepare_for_next_attempt_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        kind = self._kind(response, error) or "connection"
        counts = state.custom_values = state.custom_values or {}
        used = int(counts.get(kind, 0))
        counts[kind] = used + 1
        if kind == "ratelimited" and response is not None:
            delay = _retry_after(response) + random.random()
        else:
            delay = min(0.5 * 2**used, 4.0)
        state.next_attempt_requested = True
        state.increment_current_attempt()
        await asyncio.sleep(delay)


def _retry_after(response: HttpResponse) -> float:
    for name, values in response.headers.items():
        if name.lower() == "retry-after":
            try:
                return min(max(float(values[0]), 0.0), RETRY_AFTER_CAP_S)
            except (ValueError, IndexError):
                break
    return 1.0


# Arguments that carry no text a person wrote, and that a mask must not touch (a token is sent in a header,
# but some calls accept it as an argument).
_UNMASKED = frozenset({"token", "app_token", "client_secret", "upload_url"})


class MaskingWebClient(AsyncWebClient):
    """The Slack transport's one exit: every Web API call (posts, edits, ephemerals, reactions, uploads, and any
    call a later feature adds) has the secrets masked out of its arguments here, whoever made it."""

    async def api_call(
        self,
        api_method: str,
        *,
        http_verb: str = "POST",
        files: dict[str, Any] | None = None,
        data: Any = None,
        params: dict[str, Any] | None = None,
        json: dict[str, Any] | None = None,
        headers: dict[str, Any] | None = None,
        auth: dict[str, Any] | None = None,
    ) -> Any:
        return await super().api_call(
            api_method,
            http_verb=http_verb,
            files=files,
            data=redact_data(data, keep=_UNMASKED) if isinstance(data, dict) else data,
            params=redact_data(params, keep=_UNMASKED) if params else params,
            json=redact_data(json, keep=_UNMASKED) if json else json,
            headers=headers,
            auth=auth,
        )

    async def files_upload_v2(self, **kwargs: Any) -> Any:
        """A file's own bytes bypass api_call (they go to the upload URL): a text file is masked here."""
        content = kwargs.get("content")
        if isinstance(content, bytes):
            with contextlib.suppress(UnicodeDecodeError):  # binary (an image): nothing a redactor could read
                kwargs["content"] = redact(content.decode("utf-8")).encode("utf-8")
        elif isinstance(content, str):
            kwargs["content"] = redact(content)
        return await super().files_upload_v2(**kwargs)


def _error_of(exc: Exception) -> str | None:
    """Slack's error code for a refused call (e.g. not_in_channel), else the failure's type."""
    if isinstance(exc, SlackApiError):
        error = exc.response.get("error")
        return None if error is None else str(error)
    if isinstance(exc, PostRefusedError):
        return exc.reason
    return type(exc).__name__


def make_client(token: str, base_url: str) -> AsyncWebClient:
    client = MaskingWebClient(token=token, base_url=base_url, timeout=30)
    client.retry_handlers = [TransientErrorRetryHandler()]
    return client


class Outbox(Protocol):
    def outbox_add(self, channel: str, thread_ts: str, payload: str) -> int: ...

    def outbox_update(self, item_id: int, payload: str | None, error: str | None) -> None: ...

    def outbox_pending(self) -> list[tuple[int, str, str, str]]: ...


class SlackPoster:
    def __init__(self, client: AsyncWebClient, store: Store, *, bot_user_id: str, bot_id: str | None) -> None:
        self.client = client
        self._store = store
        self._bot_user_id = bot_user_id
        self._bot_id = bot_id
        self._inflight: set[int] = set()
        self._outbox: Outbox = store  # answers kept until Slack has them (the cluster shares them: use_outbox)

    def use_outbox(self, outbox: Outbox) -> None:
        """Keep answers in another outbox (bot.cluster.outbox: this node's store, mirrored in JetStream)."""
        self._outbox = outbox

    async def post(self, channel: str, thread_ts: str | None, message: SlackMessage) -> str:
        """Post in a thread (or the channel when thread_ts is None); returns the new message's ts.

        What Slack refuses (after the client's retries) is raised as the core's PostRefusedError, with Slack's
        error code as its reason; a network failure as what the network raised."""
        kwargs: dict[str, Any] = {"channel": channel, "text": message.text, "unfurl_links": False}
        if message.blocks:
            kwargs["blocks"] = message.blocks
        if thread_ts:
            kwargs["thread_ts"] = thread_ts
        try:
            resp = await self.client.chat_postMessage(**kwargs)
        except SlackApiError as exc:
            raise PostRefusedError(str(exc), reason=_error_of(exc)) from exc
        ts = str(resp["ts"])
        self._record(
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

    def _record(self, message: StoredMessage) -> None:
        """What the bot posted goes into its record; a store that cannot take it costs context, not the post."""
        try:
            self._store.record_message(message)
        except StoreError as exc:
            log.error("store.write_failed", what="own_message", channel=message.channel, ts=message.ts,
                      error=str(exc))

    # --- answers: kept in the outbox until Slack has them ------------------------------------------------
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
        """Post an answer (the first message may replace `replace_ts`), then the file, if any.

        It is written to the outbox first; each step that succeeds is struck off, so a retry never repeats
        it. After INLINE_ATTEMPTS failures the rest is left to the background retrier (`run_outbox`), which
        keeps trying, across restarts too. Returns whether everything went out now. When the store cannot
        take it (disk full), it is posted all the same, only without that guarantee.
        """
        payload: dict[str, Any] = {
            "messages": [{"text": m.text, "blocks": m.blocks} for m in messages],
            "replace_ts": replace_ts,
            "attachment": attachment,
            "filename": filename,
            "title": title,
        }
        item: int | None
        try:
            item = self._outbox.outbox_add(channel, thread_ts, json.dumps(payload))
        except StoreError as exc:
            log.error("store.write_failed", what="outbox", channel=channel, thread_ts=thread_ts, error=str(exc))
            item = None
        if item is not None:
            self._inflight.add(item)
        try:
            for attempt in range(INLINE_ATTEMPTS):
                if await self._drain(item, channel, thread_ts, payload):
                    return True
                await anyio.sleep(min(2.0**attempt, 8.0))
            if item is None:
                log.error("slack.answer_lost", channel=channel, thread_ts=thread_ts)
            return False
        finally:
            if item is not None:
                self._inflight.discard(item)

    def _outbox_update(self, item: int | None, payload: str | None, error: str | None) -> None:
        if item is None:
            return
        try:
            self._outbox.outbox_update(item, payload, error)
        except StoreError as exc:  # this process goes on from what it holds in memory
            log.error("store.write_failed", what="outbox", item=item, error=str(exc))

    async def _drain(self, item: int | None, channel: str, thread_ts: str, payload: dict[str, Any]) -> bool:
        try:
            while payload["messages"]:
                first = payload["messages"][0]
                message = SlackMessage(text=first["text"], blocks=first["blocks"])
                if payload.get("replace_ts"):
                    await self._update(channel, payload["replace_ts"], message)
                    payload["replace_ts"] = None
                else:
                    await self.post(channel, thread_ts, message)
                payload["messages"].pop(0)
                self._outbox_update(item, json.dumps(payload), None)
            if payload.get("attachment"):
                await self.client.files_upload_v2(
                    channel=channel,
                    thread_ts=thread_ts,
                    content=payload["attachment"],
                    filename=str(payload.get("filename") or "answer.md"),
                    title=str(payload.get("title") or "The whole answer"),
                )
            self._outbox_update(item, None, None)
            return True
        except SLACK_FAILURES as exc:
            error = _error_of(exc)
            log.warning("slack.deliver_failed", channel=channel, thread_ts=thread_ts, error=error)
            self._outbox_update(item, json.dumps(payload), str(error))
            return False

    async def run_outbox(self, interval: float = 15.0) -> None:
        """Background: deliver what earlier attempts (or an earlier process) could not."""
        while True:
            try:
                pending = self._outbox.outbox_pending()
            except sqlite3.Error as exc:
                log.error("store.read_failed", what="outbox", error=str(exc))
                pending = []
            for item, channel, thread_ts, raw in pending:
                if item in self._inflight:
                    continue
                self._inflight.add(item)
                try:
                    if await self._drain(item, channel, thread_ts, json.loads(raw)):
                        log.info("slack.delivered_late", channel=channel, thread_ts=thread_ts)
                except Exception as exc:  # one bad item must not stop the retrier (nor, in the root group, the bot)
                    log.error("slack.outbox_failed", item=item, error=f"{type(exc).__name__}: {exc}")
                finally:
                    self._inflight.discard(item)
            await anyio.sleep(interval)

    async def update(self, channel: str, ts: str, message: SlackMessage) -> None:
        """Edit a message the bot posted (a status line, a notice): best effort, as a failed edit must not
        fail the run it reports on. Slack's transient errors were already retried; what is left is logged.
        An answer that replaces a status message goes through `deliver`, which keeps it until Slack has it."""
        try:
            await self._update(channel, ts, message)
        except SLACK_FAILURES as exc:
            error = _error_of(exc)
            log.warning("slack.update_failed", channel=channel, ts=ts, error=error)

    async def _update(self, channel: str, ts: str, message: SlackMessage) -> None:
        """Replace a message the bot posted (status → answer); the store follows. Raises what Slack said."""
        await self.client.chat_update(channel=channel, ts=ts, text=message.text, blocks=message.blocks)
        existing = self._store.get_message(channel, ts)
        if existing is not None:
            from dataclasses import replace

            self._record(replace(existing, text=plain_text(message)))

    async def upload(self, channel: str, thread_ts: str, filename: str, content: bytes, *, title: str,
                     comment: str | None = None) -> None:
        """files.getUploadURLExternal + files.completeUploadExternal (files_upload_v2), through the masking client."""
        try:
            await self.client.files_upload_v2(channel=channel, thread_ts=thread_ts, filename=filename,
                                              content=content, title=title, initial_comment=comment)
        except SLACK_FAILURES as exc:
            log.warning("slack.upload_failed", channel=channel, thread_ts=thread_ts, error=_error_of(exc))
            raise PostRefusedError(f"Slack did not take {filename} ({_error_of(exc)}).",
                                   reason=_error_of(exc)) from exc

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
