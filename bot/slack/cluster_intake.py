"""Slack's side of the cluster (SLACKBUS_NATS_URL): what a node does with a Socket Mode envelope before its ack.

- An event is stored in the shared record (bot.cluster.record) with its event_id as the message id, then acked:
  a Slack retry that lands on another node is a duplicate JetStream drops, and that node only acks it.
- A click, a 🛑 or a `/claude` command about a thread another living node holds is handed to that node (NATS
  request/reply) and answered with its reply, so it reaches the run it is about.
- Anything else is handled here as on one host; the tasks it placed are stored before the ack.
`apply` is the record's other end: one stored event into this node's store (messages, edits, deletions, files).
"""

from __future__ import annotations

import contextvars
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse

from bot.cluster.jetstream import CONTROL, Link, dumps
from bot.cluster.nodes import Nodes
from bot.cluster.record import Record
from bot.cluster.threads import Threads
from bot.cluster.work import Work
from bot.core.dispatcher import IGNORED_SUBTYPES
from bot.core.events import IncomingMessage
from bot.core.handoff import parse_thread_ref
from bot.core.store import Store, StoredMessage
from bot.log import get_logger
from bot.slack.events_in import apply_change, click, incoming, message_shortcut

log = get_logger("slackbus.cluster")

FORWARDED: contextvars.ContextVar[bool] = contextvars.ContextVar("slackbus_forwarded", default=False)
FORWARD_TIMEOUT_S = 2.5  # within Slack's 3 s for an ack
PUBLISH_TRIES_S = 10.0  # an event is acked only once stored: through a NATS restart, then Slack retries it
THREAD_COMMANDS = frozenset({"cancel", "stop", "approve", "deny", "attach", "diff", "push", "pr"})
NOTHING = "Nothing of yours is running or queued."


def _record(store: Store, msg: IncomingMessage, *, from_self: bool = False) -> None:
    store.record_message(StoredMessage(channel=msg.channel, ts=msg.ts, thread_ts=msg.thread_ts, user=msg.user,
                                       bot_id=msg.bot_id, text=msg.text, from_self=from_self, subtype=msg.subtype))
    if msg.files:
        store.record_files(msg.channel, msg.ts, [f.data() for f in msg.files])


def apply(store: Store, body: dict[str, Any], *, bot_user_id: str, bot_id: str | None) -> None:
    """One recorded payload into this node's store: a message event (new, edited, deleted), or "Ask Claude" on a
    message (the message and the request it makes); anything else is left to the listeners."""
    if body.get("type") == "message_action":
        made = message_shortcut(body, bot_user_id=bot_user_id, received=time.monotonic())
        if made is not None:
            for msg in made:
                _record(store, msg)
        return
    event = body.get("event")
    if not isinstance(event, dict) or event.get("type") not in ("message", "app_mention"):
        return
    if apply_change(store, event):  # an edit or a deletion
        return
    subtype = event.get("subtype")
    if subtype in IGNORED_SUBTYPES or not isinstance(event.get("ts"), str):
        return
    msg = incoming(event, body, bot_user_id=bot_user_id, received=time.monotonic())
    from_self = msg.user == bot_user_id or (bot_id is not None and msg.bot_id == bot_id)
    if from_self and store.get_message(msg.channel, msg.ts) is not None:
        return  # the answer's own record (with its full text) is kept
    _record(store, msg, from_self=from_self)


def _retried(req: AsyncBoltRequest) -> bool:
    """Slack's retry of an event (x-slack-retry-num above 0)."""
    values = req.headers.get("x-slack-retry-num") or ["0"]
    try:
        return int(values[0]) > 0
    except (ValueError, TypeError, IndexError):
        return False


def _channel_of(body: dict[str, Any]) -> str:
    event = body.get("event") if isinstance(body.get("event"), dict) else {}
    assert isinstance(event, dict)
    item = event.get("item") if isinstance(event.get("item"), dict) else {}
    assert isinstance(item, dict)
    channel = body.get("channel") if isinstance(body.get("channel"), dict) else {}
    assert isinstance(channel, dict)
    for value in (event.get("channel"), item.get("channel"), body.get("channel_id"), channel.get("id")):
        if isinstance(value, str) and value:
            return value
    return "_"


class SlackIntake:
    def __init__(self, link: Link, nodes: Nodes, threads: Threads, work: Work, record: Record, store: Store) -> None:
        self._link = link
        self._nodes = nodes
        self._threads = threads
        self._work = work
        self._record = record
        self._store = store
        self._app: AsyncApp | None = None

    def register(self, app: AsyncApp) -> None:
        """Before every other middleware and listener."""
        self._app = app
        app.middleware(self._middleware)

    async def serve_control(self) -> None:
        """Answer what other nodes hand over: the Bolt app handles it as if it came over this node's socket."""
        await self._link.nc.subscribe(f"{CONTROL}.{self._nodes.me}", cb=self._on_control)

    async def _on_control(self, msg: Any) -> None:
        try:
            body = json.loads(msg.data)
            assert self._app is not None
            token = FORWARDED.set(True)
            try:
                resp = await self._app.async_dispatch(AsyncBoltRequest(body=body, mode="socket_mode"))
            finally:
                FORWARDED.reset(token)
            await msg.respond(dumps({"status": resp.status, "body": resp.body}))
        except Exception as exc:
            log.error("cluster.control_failed", error=f"{type(exc).__name__}: {exc}")
            await msg.respond(dumps({"status": 500, "body": ""}))

    async def _middleware(self, req: AsyncBoltRequest, body: dict[str, Any],
                          next: Callable[[], Awaitable[Any]]) -> Any:
        if FORWARDED.get():
            return await next()
        if body.get("type") in ("event_callback", "message_action"):  # what becomes part of the record
            stored = await self._store_event(body)
            if stored is None:
                return BoltResponse(status=503, body="")  # not acked: Slack sends it again
            if stored.duplicate:
                log.info("cluster.duplicate_event", event_id=body.get("event_id"), retried=_retried(req))
            if stored.duplicate and not _retried(req):
                return BoltResponse(status=200, body="")
            # Slack's retry of an event already stored: the node that stored it may have stopped before placing
            # its task, so it is handled again here (its task, if placed, is the same message id: stored once)
            await self._learn_thread(body)
        owner = await self._owner_of(body)
        if owner is not None:
            forwarded = await self._forward(owner, body)
            if forwarded is not None:
                return forwarded
        elif self._is_cancel_mine(body):
            answered = await self._ask_everyone(body)
            if answered is not None:
                return answered
        response = await next()
        if not await self._work.flush():  # the tasks this event placed are stored before it is acked
            return BoltResponse(status=503, body="")  # not acked: Slack sends it again
        return response

    async def _learn_thread(self, body: dict[str, Any]) -> None:
        """A reply in a thread this node has not heard of yet may be in one another node just started: the map
        is asked before the dispatcher decides it is only channel talk."""
        event = body.get("event")
        if not isinstance(event, dict) or event.get("type") != "message":
            return
        channel, thread_ts, ts = event.get("channel"), event.get("thread_ts"), event.get("ts")
        if not (isinstance(channel, str) and isinstance(thread_ts, str)) or thread_ts == ts:
            return
        if self._store.get_thread(channel, thread_ts) is not None:
            return
        entry, _ = await self._threads.get(channel, thread_ts)
        if entry is not None:
            self._threads.to_store(channel, thread_ts, entry)

    async def _store_event(self, body: dict[str, Any]) -> Any:
        event_id = body.get("event_id") or body.get("trigger_id")  # one id per event, one per shortcut use
        deadline = time.monotonic() + PUBLISH_TRIES_S
        while True:
            try:
                return await self._record.publish(_channel_of(body), body,
                                                  event_id if isinstance(event_id, str) else None)
            except Exception as exc:
                if time.monotonic() > deadline:
                    log.error("cluster.event_not_stored", event_id=event_id, error=type(exc).__name__)
                    return None
                await anyio.sleep(0.2)

    # --- who holds what a control payload is about ------------------------------------------------------------
    def _thread_of(self, body: dict[str, Any]) -> tuple[str, str] | None:
        event = body.get("event")
        if isinstance(event, dict) and event.get("type") == "reaction_added":
            item = event.get("item") if isinstance(event.get("item"), dict) else {}
            assert isinstance(item, dict)
            channel, ts = item.get("channel"), item.get("ts")
            if isinstance(channel, str) and isinstance(ts, str):
                msg = self._store.get_message(channel, ts)
                return channel, (msg.thread_ts or ts) if msg is not None else ts
            return None
        if body.get("type") == "block_actions":
            clicked = click(body)
            ts = clicked.thread_ts or clicked.message_ts
            return (clicked.channel, ts) if clicked.channel and ts else None
        if body.get("command"):
            channel = body.get("channel_id")
            words = str(body.get("text") or "").split()
            if isinstance(body.get("thread_ts"), str) and isinstance(channel, str):
                return channel, str(body["thread_ts"])
            if len(words) >= 2 and words[0].lower() in THREAD_COMMANDS:
                ref = parse_thread_ref(words[1])
                if ref is not None and isinstance(channel, str):
                    return ref[0] or channel, ref[1]
        return None

    async def _owner_of(self, body: dict[str, Any]) -> str | None:
        key = self._thread_of(body)
        if key is None:
            return None
        entry, _ = await self._threads.get(*key)
        if entry is None or entry.owner in ("", self._nodes.me) or not self._nodes.alive(entry.owner):
            return None
        return entry.owner

    def _is_cancel_mine(self, body: dict[str, Any]) -> bool:
        words = str(body.get("text") or "").split() if body.get("command") else []
        return len(words) == 1 and words[0].lower() in ("cancel", "stop")

    async def _forward(self, node: str, body: dict[str, Any]) -> BoltResponse | None:
        try:
            reply = await self._link.nc.request(f"{CONTROL}.{node}", dumps(body), timeout=FORWARD_TIMEOUT_S)
            data = json.loads(reply.data)
        except Exception as exc:  # the owner just went: handled here
            log.warning("cluster.forward_failed", node=node, error=type(exc).__name__)
            return None
        log.info("cluster.forwarded", to=node, kind=body.get("type") or "command")
        return BoltResponse(status=int(data.get("status") or 200), body=str(data.get("body") or ""))

    async def _ask_everyone(self, body: dict[str, Any]) -> BoltResponse | None:
        """`/claude cancel` with nothing after it: the requester's run may be on any node; the first node that
        has one answers."""
        others = [n for n in self._nodes.living() if n != self._nodes.me]
        answers: list[BoltResponse] = []

        async def ask(node: str) -> None:
            resp = await self._forward(node, body)
            if resp is not None and NOTHING not in resp.body:
                answers.append(resp)

        async with anyio.create_task_group() as tg:
            for node in others:
                tg.start_soon(ask, node)
        return answers[0] if answers else None
