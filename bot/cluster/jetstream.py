"""The cluster's link to NATS JetStream: one connection per node, and the streams, buckets and object store every
node shares (created if missing, so the first node to start makes them).

    SLACKBUS_EVENTS   stream, slackbus.events.<channel>: every Slack event a node took in (the shared record);
                      bounded per channel; its 2-minute duplicate window drops a retry that landed on another node
    SLACKBUS_WORK     stream, work-queue retention: slackbus.work.any (a new task, for whichever node has room)
                      and slackbus.work.node.<node> (a task of a thread that node holds)
    slackbus_threads  KV: channel.thread_ts → the thread's owner node and Claude session
    slackbus_nodes    KV: node → its heartbeat (what it runs), renewed every second while it lives
    slackbus_sessions object store: session id → the session's transcript, saved after every turn
    slackbus.ctl.<node>  plain NATS request/reply: a click, a reaction or a command for a thread that node holds
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import nats
from nats.aio.client import Client
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from bot.errors import ConfigError
from bot.log import get_logger

log = get_logger("slackbus.cluster")

EVENTS = "SLACKBUS_EVENTS"
EVENTS_SUBJECT = "slackbus.events"
WORK = "SLACKBUS_WORK"
WORK_ANY = "slackbus.work.any"
WORK_NODE = "slackbus.work.node"
THREADS = "slackbus_threads"
NODES = "slackbus_nodes"
SESSIONS = "slackbus_sessions"
CONTROL = "slackbus.ctl"

EVENTS_PER_CHANNEL = 20_000  # the record keeps this many events per channel (context needs the recent ones)
DUPLICATE_WINDOW_S = 120.0  # Slack retries within a minute or so
ACK_WAIT_S = 10.0  # a task a node took but stopped reporting on goes to another node after this long
CONNECT_TIMEOUT_S = 5.0
SESSION_TTL_S = 30 * 86400.0  # a transcript is kept this long after its last turn (the CLI keeps its own 30 days)


def subject_part(text: str) -> str:
    """A channel id or ts as one subject token (letters, digits, - and _ only)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text) or "_"


def work_subject(node: str | None) -> str:
    return WORK_ANY if node is None else f"{WORK_NODE}.{node}"


def node_durable(node: str) -> str:
    return f"node-{node}"


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class Reconnects:
    """Each reconnection to the server, for the watchers that must start again after one (a KV watch does not
    survive a server restart)."""

    def __init__(self) -> None:
        self.count = 0
        self.at = float("-inf")  # time.monotonic() of the last one
        self._event = anyio.Event()

    def happened(self) -> None:
        self.count += 1
        self.at = time.monotonic()
        self._event.set()
        self._event = anyio.Event()

    async def next(self) -> None:
        await self._event.wait()


@dataclass
class Link:
    """An open connection and the shared resources on it."""

    nc: Client
    js: JetStreamContext
    threads: KeyValue
    nodes: KeyValue
    sessions: ObjectStore
    replicas: int = 1
    reconnects: Reconnects = field(default_factory=Reconnects)

    async def close(self) -> None:
        """At shutdown, once this node's consumers have stopped (a drain would wait for them): close."""
        with anyio.move_on_after(2.0, shield=True), contextlib.suppress(Exception):
            await self.nc.close()


async def connect(url: str, node: str, *, replicas: int = 1) -> Link:
    """Connect (reconnecting forever after the first success) and make sure the streams and buckets exist.
    A ConfigError with a sentence when no server answers or JetStream is off."""
    servers = [u.strip() for u in url.split(",") if u.strip()]

    connected = False
    last_error: list[str] = []
    reconnects = Reconnects()

    async def quiet(exc: Exception) -> None:  # nats-py prints tracebacks unless told where errors go
        if connected:
            log.warning("cluster.nats_error", error=f"{type(exc).__name__}: {exc}")
        else:
            last_error[:] = [type(exc).__name__]

    async def disconnected() -> None:
        log.warning("cluster.disconnected", node=node)

    async def reconnected() -> None:
        log.info("cluster.reconnected", node=node)
        reconnects.happened()

    try:
        with anyio.fail_after(CONNECT_TIMEOUT_S):  # the client retries (reconnects forever once connected)
            nc = await nats.connect(
                servers=servers, name=f"slackbus-{node}", connect_timeout=2, max_reconnect_attempts=-1,
                reconnect_time_wait=0.25, allow_reconnect=True, error_cb=quiet, disconnected_cb=disconnected,
                reconnected_cb=reconnected,
            )
    except Exception as exc:  # nats-py raises several kinds (NoServersError, OSError, TimeoutError)
        from bot.config import redact_url

        why = last_error[0] if last_error else type(exc).__name__
        raise ConfigError(
            f"No NATS server answered at SLACKBUS_NATS_URL={redact_url(url)} within {CONNECT_TIMEOUT_S:g} s "
            f"({why}): start nats-server with JetStream (-js), check the address, or unset SLACKBUS_NATS_URL to "
            "run on one host."
        ) from None
    connected = True
    js = nc.jetstream(timeout=5.0)
    try:
        await ensure(js, replicas)
        threads = await _kv(js, THREADS, replicas, ttl=None)
        nodes = await _kv(js, NODES, replicas, ttl=24 * 3600.0)
        try:
            sessions = await js.object_store(SESSIONS)
        except (NotFoundError, BadRequestError):  # a transcript not touched for SESSION_TTL_S goes
            sessions = await js.create_object_store(SESSIONS, config=ObjectStoreConfig(
                bucket=SESSIONS, replicas=replicas, storage=StorageType.FILE, ttl=SESSION_TTL_S))
    except Exception as exc:
        await nc.close()
        raise ConfigError(
            f"The NATS server at SLACKBUS_NATS_URL has no usable JetStream ({type(exc).__name__}: {exc}): start it "
            "with -js (and a store folder, -sd), or give an account with JetStream enabled."
        ) from None
    where = nc.connected_url
    log.info("cluster.connected", node=node, server=f"{where.hostname}:{where.port}" if where else None)
    return Link(nc, js, threads, nodes, sessions, replicas, reconnects)


async def ensure(js: JetStreamContext, replicas: int) -> None:
    """The two streams and the shared work consumer, created or brought to this version's settings."""
    events = StreamConfig(
        name=EVENTS, subjects=[f"{EVENTS_SUBJECT}.>"], retention=RetentionPolicy.LIMITS,
        max_msgs_per_subject=EVENTS_PER_CHANNEL, discard=DiscardPolicy.OLD, storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S, num_replicas=replicas,
    )
    work = StreamConfig(
        name=WORK, subjects=["slackbus.work.>"], retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S, num_replicas=replicas,
    )
    for config in (events, work):
        try:
            await js.add_stream(config)
        except BadRequestError:  # exists with other settings (an older version): bring it up to date
            await js.update_stream(config)
    await ensure_consumer(js, "any", WORK_ANY)


async def ensure_consumer(js: JetStreamContext, durable: str, subject: str) -> None:
    config = ConsumerConfig(
        durable_name=durable, filter_subject=subject, ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S,
        max_deliver=-1, max_ack_pending=10_000,
    )
    with contextlib.suppress(BadRequestError):  # made by another node a moment ago, same settings
        await js.add_consumer(WORK, config)


async def _kv(js: JetStreamContext, bucket: str, replicas: int, ttl: float | None) -> KeyValue:
    try:
        return await js.key_value(bucket)
    except (NotFoundError, BadRequestError):
        return await js.create_key_value(config=KeyValueConfig(
            bucket=bucket, history=1, replicas=replicas, ttl=ttl, storage=StorageType.FILE))
