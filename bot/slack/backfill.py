"""The only reads from Slack: one history backfill per channel on first contact, and people's names.

Slack rate-limits conversations.history hard for self-hosted apps, so it is called once per channel ever
(recorded in the store), never per request; a refusal or rate limit is logged and the bot goes on with
what its own record holds. Names are cached in the store.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import anyio
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.core.store import Store, StoredMessage
from bot.log import get_logger

log = get_logger("slackbus.backfill")

RETRY_AFTER_FAILURE_S = 600.0
LINK_READ_INTERVAL_S = 60.0


class Backfill:
    def __init__(self, client: AsyncWebClient, store: Store, *, bot_user_id: str, limit: int) -> None:
        self._client = client
        self._store = store
        self._bot = bot_user_id
        self._limit = max(1, min(limit, 200))
        self._inflight: dict[str, anyio.Event] = {}
        self._failed_at: dict[str, float] = {}
        self._names = store.user_names()
        self._name_inflight: dict[str, anyio.Event] = {}
        self.history_calls = 0
        self._link_reads: dict[str, float] = {}  # channel → when its last linked thread was read

    # --- a linked message ---------------------------------------------------------------------------
    async def fetch_thread(self, channel: str, thread_ts: str) -> None:
        """One conversations.replies read for a thread the record lacks (a message linked in a request), at most
        one per channel per LINK_READ_INTERVAL_S: Slack paces these reads hard for self-hosted apps."""
        now = time.monotonic()
        if now - self._link_reads.get(channel, -1e9) < LINK_READ_INTERVAL_S:
            log.info("backfill.link_read_paced", channel=channel, thread_ts=thread_ts)
            return
        self._link_reads[channel] = now
        try:
            res = await self._client.conversations_replies(channel=channel, ts=thread_ts, limit=50)
        except SlackApiError as exc:
            log.warning("backfill.link_read_failed", channel=channel, error=exc.response.get("error"))
            return
        messages = [m for m in res.get("messages") or [] if isinstance(m, dict) and isinstance(m.get("ts"), str)]
        self._store.record_messages([
            StoredMessage(channel=channel, ts=m["ts"], thread_ts=m.get("thread_ts"), user=m.get("user"),
                          bot_id=m.get("bot_id"), text=str(m.get("text") or ""), subtype=m.get("subtype"),
                          from_self=m.get("user") == self._bot)
            for m in messages])

    # --- channel history ----------------------------------------------------------------------------
    async def ensure(self, channel: str) -> None:
        """Backfill `channel` once; concurrent callers wait for the same call."""
        if self._store.is_backfilled(channel):
            return
        if time.monotonic() - self._failed_at.get(channel, -1e9) < RETRY_AFTER_FAILURE_S:
            return
        event = self._inflight.get(channel)
        if event is not None:
            await event.wait()
            return
        event = self._inflight[channel] = anyio.Event()
        try:
            await self._backfill(channel)
        finally:
            event.set()
            del self._inflight[channel]

    async def _backfill(self, channel: str) -> None:
        name: str | None = None
        try:
            if not channel.startswith("D"):
                info = await self._client.conversations_info(channel=channel)
                name = (info.get("channel") or {}).get("name")
            self.history_calls += 1
            resp = await self._client.conversations_history(channel=channel, limit=self._limit)
        except SlackApiError as exc:
            self._failed_at[channel] = time.monotonic()
            log.warning("backfill.failed", channel=channel, error=exc.response.get("error"))
            return
        messages = []
        for m in resp.get("messages") or []:
            if not isinstance(m, dict) or "ts" not in m:
                continue
            if m.get("subtype") in {"channel_join", "channel_leave"}:
                continue
            messages.append(
                StoredMessage(
                    channel=channel,
                    ts=str(m["ts"]),
                    thread_ts=m.get("thread_ts"),
                    user=m.get("user"),
                    bot_id=m.get("bot_id"),
                    text=str(m.get("text") or ""),
                    from_self=m.get("user") == self._bot,
                    subtype=m.get("subtype"),
                )
            )
        self._store.record_messages(messages)
        self._store.mark_backfilled(channel, name)
        log.info("backfill.done", channel=channel, messages=len(messages))

    def label(self, channel: str, is_dm: bool) -> str:
        if is_dm:
            return "a direct message"
        name = self._store.channel_name(channel)
        return f"#{name}" if name else f"channel {channel}"

    # --- names ----------------------------------------------------------------------------------------
    def name_of(self, user_id: str) -> str:
        return self._names.get(user_id, user_id)

    async def resolve(self, user_ids: Iterable[str], within: float = 2.0) -> None:
        """Fetch the names not cached yet, in parallel, bounded in time; unknowns stay as ids."""
        missing = {u for u in user_ids if u and u not in self._names and u != self._bot}
        if not missing:
            return
        with anyio.move_on_after(within):
            async with anyio.create_task_group() as tg:
                for user_id in missing:
                    tg.start_soon(self._fetch_name, user_id)

    async def _fetch_name(self, user_id: str) -> None:
        event = self._name_inflight.get(user_id)
        if event is not None:
            await event.wait()
            return
        event = self._name_inflight[user_id] = anyio.Event()
        try:
            resp = await self._client.users_info(user=user_id)
            user = resp.get("user") or {}
            profile = user.get("profile") or {}
            name = profile.get("display_name") or user.get("real_name") or user.get("name") or user_id
            self._names[user_id] = str(name)
            self._store.save_user(user_id, str(name))
        except SlackApiError as exc:
            log.info("names.lookup_failed", user=user_id, error=exc.response.get("error"))
        finally:
            event.set()
            del self._name_inflight[user_id]
