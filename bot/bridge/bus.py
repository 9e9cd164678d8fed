"""The bus client: how a hook, `slackbus post` or `slackbus read` reaches the shared channel.

Posting, first that works:
  1. the bot's local socket (SLACKBUS_HOME/bot.sock) when the bot runs on this host: no token needed, the
     bot records the post at once, and sessions it spawned are resolved to their thread;
  2. the Web API with SLACK_BOT_TOKEN (chat.postMessage);
  3. an Incoming Webhook (SLACK_WEBHOOK_URL): push-only, the channel is fixed by the webhook.
Reading, first that works:
  1. the bot's own record (bot.core.store_readonly: SQLite, opened read-only) when it knows the channel: no Slack
     call at all;
  2. the Web API with SLACK_BOT_TOKEN, paced (bot.bridge.cache).
With SLACKBUS_TRANSPORT=local, both go to the local channel files instead (bot.bridge.local_channel).

The parts: bot.bridge.protocol (settings, types, the socket's wire), bot.bridge.web (the HTTP client),
bot.bridge.cache (the paced history), bot.bridge.local_channel. Stdlib only (and bot.config / bot.core, the
light parts): a hook runs as a fresh process per event, so start-up time is latency every Claude Code session
pays. Nothing here opens a Socket Mode connection.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from bot.bridge import cache, local_channel, protocol, web
from bot.bridge.protocol import MAX_POST_CHARS, BusError, BusMessage, BusSettings, Posted, author_of
from bot.core import identity as ident


# --- posting -------------------------------------------------------------------------------------------
def post(
    s: BusSettings,
    text: str,
    who: ident.Identity,
    *,
    channel: str | None = None,
    thread_ts: str | None = None,
    deadline: float | None = None,
) -> Posted:
    """Post `text`, tagged with `who`, to the channel (in thread_ts when given)."""
    channel = channel or s.channel
    thread_ts = thread_ts if thread_ts is not None else s.thread_ts
    body = mask(s, who.tag(text.strip()))  # the bus's one exit: socket, Web API, webhook and local channel alike
    if len(body) > MAX_POST_CHARS:
        body = body[: MAX_POST_CHARS - 20].rstrip() + " … [trimmed]"
    deadline = deadline or time.monotonic() + s.timeout
    if s.local_dir is not None:
        return local_channel.post(s, channel, thread_ts, body)
    if os.path.exists(s.socket_path):
        answer = protocol.ask(
            s.socket_path,
            {"op": "post", "channel": channel, "thread_ts": thread_ts, "session_id": who.session_id, "text": body},
            deadline,
        )
        if answer is not None:
            if not answer.get("ok"):
                raise BusError(str(answer.get("error") or "the bot refused the post"))
            return Posted("bot", answer.get("channel"), answer.get("ts"))
    if s.bot_token and channel:
        params: dict[str, Any] = {"channel": channel, "text": body, "unfurl_links": False}
        if thread_ts:
            params["thread_ts"] = thread_ts
        data = web.api(s, "chat.postMessage", params, deadline)
        ts = str(data.get("ts") or "")
        cache.remember_post(s, channel, BusMessage(channel, ts, thread_ts, who.label, mask(s, text.strip())))
        return Posted("api", channel, ts)
    if s.webhook_url:
        payload: dict[str, Any] = {"text": body}
        if thread_ts:
            payload["thread_ts"] = thread_ts
        web.webhook(s.webhook_url, payload, deadline)
        return Posted("webhook", channel, None)
    if not channel and (s.bot_token or os.path.exists(s.socket_path)):
        raise BusError("No channel to post to: set SLACKBUS_CHANNEL or pass --channel.")
    raise BusError(
        "Nothing to post with: run the slackbus bot on this host, or set SLACK_BOT_TOKEN (with SLACKBUS_CHANNEL) "
        "or SLACK_WEBHOOK_URL."
    )


def mask(s: BusSettings, text: str) -> str:
    """Text this process sends anywhere, with the known token shapes and its own secret values masked."""
    from bot.redact import redact, redactor  # here, not at the top: a hook that only reads need not load it

    redactor.add(*s.secrets)
    return redact(text)


def ask_bot(s: BusSettings, request: dict[str, Any], timeout: float | None = None) -> dict[str, Any] | None:
    """One request to the bot on this host (`slackbus handoff`, `attach`); None when no bot listens here."""
    if not os.path.exists(s.socket_path):
        return None
    return protocol.ask(s.socket_path, request, time.monotonic() + (timeout or s.timeout))


# --- reading -----------------------------------------------------------------------------------------------
def read(
    s: BusSettings,
    channel: str | None = None,
    *,
    thread_ts: str | None = None,
    since: str | None = None,
    limit: int = 50,
    deadline: float | None = None,
) -> tuple[list[BusMessage], str]:
    """The channel's newest `limit` top-level messages after `since` (or that thread's), oldest first, and
    where they came from ("record", "api" or "local")."""
    channel = channel or s.channel
    if not channel:
        raise BusError("No channel to read: set SLACKBUS_CHANNEL or pass --channel.")
    deadline = deadline or time.monotonic() + s.timeout
    if s.local_dir is not None:
        return local_channel.read(s, channel.lstrip("#"), thread_ts=thread_ts, since=since, limit=limit), "local"
    channel = resolve_channel(s, channel)
    unreadable = None  # why the bot's record here could not be read, when it is there but could not
    try:
        found = read_record(s, channel, thread_ts=thread_ts, since=since, limit=limit)
    except BusError as exc:
        found, unreadable = None, str(exc)
    if found is not None:
        return found, "record"
    if s.bot_token:
        if unreadable:
            print(f"slackbus: {unreadable} Reading from Slack instead.", file=sys.stderr)
        return cache.read(s, channel, thread_ts=thread_ts, since=since, limit=limit, deadline=deadline), "api"
    raise BusError(
        (f"{unreadable} " if unreadable else "")
        + "Reading the channel needs the slackbus bot's record on this host (run `slackbus run` here) or "
        "SLACK_BOT_TOKEN; an Incoming Webhook can only post."
    )


def resolve_channel(s: BusSettings, channel: str) -> str:
    """`#name` → its id, from the bot's record."""
    from bot.core.store_readonly import ReadOnlyStore, StoreMissingError
    from bot.errors import StoreError

    if not channel.startswith("#"):
        return channel
    unknown = f"Channel {channel} is unknown here: use its id (like C0123ABCD)."
    try:
        with ReadOnlyStore.open(s.db_path) as record:
            found = record.channel_id(channel[1:])
    except StoreMissingError:
        raise BusError(unknown) from None
    except StoreError as exc:
        raise BusError(f"{unknown} {exc}") from None
    if found is None:
        raise BusError(unknown)
    return found


def read_record(
    s: BusSettings, channel: str, *, thread_ts: str | None = None, since: str | None = None, limit: int = 50
) -> list[BusMessage] | None:
    """From the bot's record; None when there is no record here or it does not know the channel. BusError (saying
    why) when the record is there but cannot be read: locked, damaged, a schema too old."""
    from bot.core.store_readonly import ReadOnlyStore, StoreMissingError
    from bot.errors import StoreError

    try:
        with ReadOnlyStore.open(s.db_path) as record:
            if not record.knows_channel(channel):
                return None
            rows = record.messages_after(channel, since or "", limit, thread_ts=thread_ts)
            names = record.user_names()
    except StoreMissingError:
        return None
    except StoreError as exc:
        raise BusError(str(exc)) from None
    out: list[BusMessage] = []
    for m in rows:
        author, body = author_of(m.text, m.user, m.bot_id, m.from_self, names)
        out.append(BusMessage(channel, m.ts, m.thread_ts, author, body))
    return out
