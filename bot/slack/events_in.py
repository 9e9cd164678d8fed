"""Bolt listeners: Slack's event dicts become typed messages for the dispatcher, here and nowhere else.

Every subscribed event has a listener (an unmatched event is never acked and Slack retries it), and a
middleware drops events already seen (Slack retries; the ack is still sent).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_bolt.response import BoltResponse

from bot.core import identity
from bot.core.dispatcher import Dispatcher, IncomingMessage
from bot.core.store import Store
from bot.errors import StoreError
from bot.log import get_logger
from bot.redact import redact_data

log = get_logger("slackbus.events")

SlashHandler = Callable[[dict[str, Any], AsyncAck], Awaitable[None]]
EventHandler = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Reaction:
    """A reaction_added event, typed: "" for whatever was missing or not a string."""

    user: str
    name: str
    channel: str
    ts: str


@dataclass(frozen=True)
class Click:
    """A button click (block_actions), typed: "" (None for thread_ts) for whatever was missing or not a string."""

    user: str
    channel: str
    action_id: str
    value: str
    thread_ts: str | None  # the thread of the message holding the button


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def reaction(event: Any) -> Reaction:
    event = _dict(event)
    item = _dict(event.get("item"))
    return Reaction(_str(event.get("user")), _str(event.get("reaction")), _str(item.get("channel")),
                    _str(item.get("ts")))


def click(body: Any) -> Click:
    body = _dict(body)
    actions = body.get("actions")
    action = _dict(actions[0]) if isinstance(actions, list) and actions else {}
    channel = _str(_dict(body.get("channel")).get("id")) or _str(_dict(body.get("container")).get("channel_id"))
    return Click(_str(_dict(body.get("user")).get("id")), channel, _str(action.get("action_id")),
                 _str(action.get("value")), _str(_dict(body.get("message")).get("thread_ts")) or None)


def edit(event: dict[str, Any]) -> tuple[str, str, str] | None:
    """(channel, ts, new text) of a person's message_changed event; None for a bot's or a malformed one."""
    changed = _dict(event.get("message"))
    channel, ts = _str(event.get("channel")), _str(changed.get("ts"))
    if not channel or not ts or changed.get("bot_id"):
        return None
    return channel, ts, _str(changed.get("text"))


def incoming(event: dict[str, Any], body: dict[str, Any], *, bot_user_id: str, received: float,
             mention_event: bool = False) -> IncomingMessage:
    event = {k: v for k, v in event.items() if isinstance(v, str) or (k == "files" and isinstance(v, list))}
    text = str(event.get("text") or "")
    files = event.get("files") or []
    if files:
        names = ", ".join(str(f.get("name") or f.get("title") or "file") for f in files if isinstance(f, dict))
        text = f"{text}\n[attached: {names}]".strip()
    return IncomingMessage(
        channel=str(event.get("channel")),
        ts=str(event.get("ts")),
        text=text,
        user=event.get("user"),
        thread_ts=event.get("thread_ts"),
        channel_type=event.get("channel_type"),
        bot_id=event.get("bot_id"),
        subtype=event.get("subtype"),
        mentions_bot=mention_event or f"<@{bot_user_id}" in text,
        event_id=body.get("event_id"),
        received=received,
    )


def register(
    app: AsyncApp,
    *,
    dispatcher: Dispatcher,
    store: Store,
    bot_user_id: str,
    bot_id: str | None = None,
    on_slash: SlashHandler,
    on_reaction: EventHandler,
    on_stop: EventHandler,
    on_approval: EventHandler,
    on_attach: EventHandler | None = None,
    on_change: EventHandler | None = None,
) -> None:
    @app.middleware
    async def stamp_and_dedupe(
        body: dict[str, Any], context: dict[str, Any], next: Callable[[], Awaitable[Any]]
    ) -> Any:
        context["received"] = time.monotonic()
        event_id = body.get("event_id")
        try:
            first = not isinstance(event_id, str) or store.first_sight(event_id)
        except StoreError as exc:  # cannot dedupe: handle it (the dispatcher's own checks still apply)
            log.error("store.write_failed", what="event_id", event_id=event_id, error=str(exc))
            first = True
        if not first:
            log.info("events.duplicate", event_id=event_id)
            return BoltResponse(status=200, body="")
        return await next()

    def from_self(event: dict[str, Any]) -> bool:
        return event.get("user") == bot_user_id or (bot_id is not None and event.get("bot_id") == bot_id)

    @app.event("app_mention")
    async def on_app_mention(event: dict[str, Any], body: dict[str, Any], context: dict[str, Any]) -> None:
        if from_self(event):
            return
        dispatcher.on_message(
            incoming(event, body, bot_user_id=bot_user_id, received=context["received"], mention_event=True)
        )

    @app.event("message")
    async def on_message(event: dict[str, Any], body: dict[str, Any], context: dict[str, Any]) -> None:
        subtype = event.get("subtype")
        if from_self(event):
            # Our own posts are recorded when we make them. A session's post made with our token elsewhere
            # (another host, an Incoming Webhook of this app) is new to the record: keep it for the blackboard.
            tagged = identity.parse(str(event.get("text") or ""))[0] is not None
            if tagged and event.get("ts") and store.get_message(str(event.get("channel")), str(event["ts"])) is None:
                dispatcher.on_message(incoming(event, body, bot_user_id=bot_user_id, received=context["received"]))
            return
        try:
            if subtype == "message_changed":
                changed = edit(event)
                if changed is not None:
                    store_edit(store, *changed)
                return
            if subtype == "message_deleted":
                channel, deleted = _str(event.get("channel")), _str(event.get("deleted_ts"))
                if channel and deleted:
                    store.delete_message(channel, deleted)
                return
        except StoreError as exc:
            log.error("store.write_failed", what=subtype, channel=event.get("channel"), error=str(exc))
            return
        dispatcher.on_message(incoming(event, body, bot_user_id=bot_user_id, received=context["received"]))

    @app.event("reaction_added")
    async def reaction_added(event: dict[str, Any]) -> None:
        await on_reaction(event)

    @app.command("/claude")
    async def on_claude(ack: AsyncAck, command: dict[str, Any]) -> None:
        await on_slash(command, masked_ack(ack))

    @app.action("slackbus_stop")
    async def stop_clicked(ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()
        await on_stop(body)

    @app.action("slackbus_attach")
    async def attach_clicked(ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()
        if on_attach is not None:
            await on_attach(body)

    @app.action(re.compile(r"^slackbus_(diff|push|pr)$"))
    async def change_clicked(ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()
        if on_change is not None:
            await on_change(body)

    @app.action(re.compile(r"^slackbus_(approve_once|approve_session|deny)$"))
    async def approval_clicked(ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()
        await on_approval(body)

    @app.action(re.compile(".*"))
    async def other_action(ack: AsyncAck) -> None:
        await ack()


def store_edit(store: Store, channel: str, ts: str, text: str) -> None:
    existing = store.get_message(channel, ts)
    if existing is None:
        return
    store.record_message(replace(existing, text=text))


def masked_ack(ack: AsyncAck) -> AsyncAck:
    """A slash command's answer goes back over the socket, not the Web API: the same mask on its way out."""

    async def ack_masked(text: Any = None, blocks: Any = None, **kwargs: Any) -> Any:
        return await ack(text=redact_data(text), blocks=redact_data(blocks), **redact_data(kwargs))

    return ack_masked  # type: ignore[return-value]
