"""Bolt listeners: Slack's payloads become the core's typed events (bot.core.events), here and nowhere else:
messages (and the request "Ask Claude" on a message makes) for the dispatcher; `/claude`, reactions and button
clicks for the commands.

Every subscribed event has a listener (an unmatched event is never acked and Slack retries it), and a
middleware drops events already seen (Slack retries; the ack is still sent).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_bolt.response import BoltResponse

from bot.core import identity
from bot.core.dispatcher import Dispatcher
from bot.core.events import (
    APPROVAL_ACTIONS,
    ATTACH_ACTION,
    CHANGE_ACTIONS,
    STOP_ACTION,
    ButtonClick,
    IncomingMessage,
    Reaction,
    Reply,
    SlashCommand,
)
from bot.core.store import Store
from bot.errors import StoreError
from bot.log import get_logger
from bot.redact import redact_data
from bot.slack.files import ref_from_slack

log = get_logger("slackbus.events")

SlashHandler = Callable[[SlashCommand, Reply], Awaitable[None]]
ReactionHandler = Callable[[Reaction], Awaitable[None]]
ClickHandler = Callable[[ButtonClick], Awaitable[None]]


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def reaction(event: Any, *, added: bool = True) -> Reaction:
    """A reaction_added (or reaction_removed) event, typed: "" for whatever was missing or not a string."""
    event = _dict(event)
    item = _dict(event.get("item"))
    return Reaction(user=_str(event.get("user")), channel=_str(item.get("channel")), ts=_str(item.get("ts")),
                    name=_str(event.get("reaction")), added=added)


def click(body: Any) -> ButtonClick:
    """A button click (block_actions), typed: "" (None for the message's ts and thread) for whatever was missing
    or not a string."""
    body = _dict(body)
    actions = body.get("actions")
    action = _dict(actions[0]) if isinstance(actions, list) and actions else {}
    container = _dict(body.get("container"))
    message = _dict(body.get("message"))
    channel = _str(_dict(body.get("channel")).get("id")) or _str(container.get("channel_id"))
    return ButtonClick(
        action_id=_str(action.get("action_id")),
        value=_str(action.get("value")),
        user=_str(_dict(body.get("user")).get("id")),
        channel=channel,
        message_ts=_str(message.get("ts")) or _str(container.get("message_ts")) or None,
        thread_ts=_str(message.get("thread_ts")) or None,
    )


def slash_command(command: Any) -> SlashCommand:
    """A `/claude` payload, typed: "" for whatever was missing."""
    command = _dict(command)
    thread_ts = command.get("thread_ts")
    return SlashCommand(
        user=str(command.get("user_id") or ""),
        channel=str(command.get("channel_id") or ""),
        text=str(command.get("text") or ""),
        thread_ts=str(thread_ts) if thread_ts else None,
    )


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
    files = tuple(ref_from_slack(f) for f in event.get("files") or [] if isinstance(f, dict))
    if files:
        text = f"{text}\n[attached: {', '.join(f.name for f in files)}]".strip()
    return IncomingMessage(
        channel=str(event.get("channel")),
        ts=str(event.get("ts")),
        text=text,
        user=event.get("user"),
        thread_ts=event.get("thread_ts"),
        channel_type=event.get("channel_type"),
        bot_id=event.get("bot_id"),
        app_id=event.get("app_id"),
        subtype=event.get("subtype"),
        mentions_bot=mention_event or f"<@{bot_user_id}" in text,
        event_id=body.get("event_id"),
        received=received,
        files=files,
    )


MESSAGE_SHORTCUT = "claude_message"  # manifest.yaml: the message shortcut "Ask Claude"


def permalink(domain: str, channel: str, ts: str, thread_ts: str | None) -> str:
    """A message's link as Slack's "Copy link" makes it (the context builder brings a linked message in as data)."""
    link = f"https://{domain or 'app'}.slack.com/archives/{channel}/p{ts.replace('.', '')}"
    return f"{link}?thread_ts={thread_ts}" if thread_ts and thread_ts != ts else link


def message_shortcut(body: Any, *, bot_user_id: str, received: float) -> tuple[IncomingMessage, IncomingMessage] | None:
    """"Ask Claude" on a message (a message_action payload), typed: the message it was used on (recorded as
    context, like any message) and the request it makes: from the person who used it, at the shortcut's own ts
    (one shortcut is one request), in the message's thread, carrying the message's files and a link to it, so
    its text comes into the prompt as data. None for a payload without a person, a channel or a message."""
    body = _dict(body)
    user = _str(_dict(body.get("user")).get("id"))
    channel = _str(_dict(body.get("channel")).get("id"))
    message = _dict(body.get("message"))
    ts = _str(message.get("ts")) or _str(body.get("message_ts"))
    action_ts = _str(body.get("action_ts")) or f"{time.time():.6f}"
    if not user or not channel or not ts:
        return None
    target = incoming(message | {"channel": channel, "ts": ts}, {}, bot_user_id=bot_user_id, received=received)
    author = f" by <@{target.user}>" if target.user else ""
    link = permalink(_str(_dict(body.get("team")).get("domain")), channel, ts, target.thread_ts)
    request = IncomingMessage(
        channel=channel,
        ts=action_ts,
        text=f"Look at this message{author} and help with what it asks or shows (Ask Claude, on the message): "
             f"<{link}>",
        user=user,
        thread_ts=target.reply_target,
        mentions_bot=True,  # asked of the bot as explicitly as a mention
        event_id=_str(body.get("trigger_id")) or None,
        received=received,
        files=target.files,
        about_ts=ts,
    )
    return target, request


def register(
    app: AsyncApp,
    *,
    dispatcher: Dispatcher,
    store: Store,
    bot_user_id: str,
    bot_id: str | None = None,
    on_slash: SlashHandler,
    on_reaction: ReactionHandler,
    on_stop: ClickHandler,
    on_approval: ClickHandler,
    on_attach: ClickHandler | None = None,
    on_change: ClickHandler | None = None,
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
            if apply_change(store, event):
                return
        except StoreError as exc:
            log.error("store.write_failed", what=subtype, channel=event.get("channel"), error=str(exc))
            return
        dispatcher.on_message(incoming(event, body, bot_user_id=bot_user_id, received=context["received"]))

    @app.event("reaction_added")
    async def reaction_added(event: dict[str, Any]) -> None:
        await on_reaction(reaction(event))

    @app.command("/claude")
    async def on_claude(ack: AsyncAck, command: dict[str, Any]) -> None:
        await on_slash(slash_command(command), reply_in_ack(ack))

    @app.shortcut(MESSAGE_SHORTCUT)
    async def on_message_shortcut(ack: AsyncAck, body: dict[str, Any], context: dict[str, Any]) -> None:
        await ack()
        made = message_shortcut(body, bot_user_id=bot_user_id, received=context["received"])
        if made is None:
            log.info("events.shortcut_malformed", callback_id=body.get("callback_id"))
            return
        target, request = made
        dispatcher.record(target)
        dispatcher.on_message(request)

    @app.action(STOP_ACTION)
    async def stop_clicked(ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()
        await on_stop(click(body))

    @app.action(ATTACH_ACTION)
    async def attach_clicked(ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()
        if on_attach is not None:
            await on_attach(click(body))

    @app.action(_one_of(CHANGE_ACTIONS))
    async def change_clicked(ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()
        if on_change is not None:
            await on_change(click(body))

    @app.action(_one_of(APPROVAL_ACTIONS))
    async def approval_clicked(ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()
        await on_approval(click(body))

    @app.action(re.compile(".*"))
    async def other_action(ack: AsyncAck) -> None:
        await ack()


def apply_change(store: Store, event: dict[str, Any]) -> bool:
    """A message_changed or message_deleted event into the store; False for any other message event."""
    subtype = event.get("subtype")
    if subtype == "message_changed":
        changed = edit(event)
        if changed is not None:
            store_edit(store, *changed)
        return True
    if subtype == "message_deleted":
        channel, deleted = _str(event.get("channel")), _str(event.get("deleted_ts"))
        if channel and deleted:
            store.delete_message(channel, deleted)
        return True
    return False


def store_edit(store: Store, channel: str, ts: str, text: str) -> None:
    existing = store.get_message(channel, ts)
    if existing is None:
        return
    store.record_message(replace(existing, text=text))


def _one_of(action_ids: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("^(" + "|".join(re.escape(a) for a in action_ids) + ")$")


def masked_ack(ack: AsyncAck) -> AsyncAck:
    """A slash command's answer goes back over the socket, not the Web API: the same mask on its way out."""

    async def ack_masked(text: Any = None, blocks: Any = None, **kwargs: Any) -> Any:
        return await ack(text=redact_data(text), blocks=redact_data(blocks), **redact_data(kwargs))

    return ack_masked  # type: ignore[return-value]


def reply_in_ack(ack: AsyncAck) -> Reply:
    """The command's Reply: its answer is the ack's text (ephemeral, within Slack's 3 s), masked."""
    masked = masked_ack(ack)

    async def reply(text: str) -> None:
        await masked(text=text)

    return reply
