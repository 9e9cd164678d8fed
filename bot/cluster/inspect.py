"""What `slackbus doctor` sees of the cluster, read-only: which server answered, JetStream's account, each stream
and bucket with its counts, and the nodes' heartbeats. It creates nothing (the first node to start does) and
never joins the work: one short connection, every request bounded.

    look(url) → View      raises Unusable (a ConfigError: what is wrong, and what to do) when no server answers,
                          the user and password are refused, or JetStream is off
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import Any

import anyio
import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.js.errors import KeyNotFoundError, NoKeysError

from bot.cluster.jetstream import EVENTS, NODES, SESSIONS, THREADS, WORK
from bot.cluster.nodes import DEAD_AFTER_S
from bot.cluster.outbox import OUTBOX
from bot.config import redact_url
from bot.errors import ConfigError

CONNECT_S = 3.0  # the whole connection attempt, every server of the list
REQUEST_S = 2.0  # each JetStream API request
LOOK_S = 10.0  # everything after the connection
MAX_NODES = 64  # heartbeats read; more is not a cluster this was built for


class Unusable(ConfigError):
    """The cluster cannot be used from here: `what` is wrong, `fix` says what to do."""

    def __init__(self, what: str, fix: str) -> None:
        super().__init__(f"{what}: {fix}")
        self.what = what
        self.fix = fix


@dataclass(frozen=True)
class Resource:
    """A stream, a KV bucket or an object store, as JetStream reports it (exists False: not created yet)."""

    kind: str  # "stream", "bucket", "object store"
    name: str
    stream: str  # the stream behind it (KV_<bucket>, OBJ_<bucket>)
    exists: bool
    messages: int = 0
    bytes: int = 0
    subjects: int = 0
    replicas: int = 1
    leader: str = ""
    lagging: tuple[str, ...] = ()  # replicas that are not current or offline
    keys: int | None = None  # live keys of a bucket, where counted (the outbox: answers not yet posted)


@dataclass(frozen=True)
class Beat:
    """One node's last heartbeat in the nodes bucket."""

    node: str
    host: str
    pid: int | None
    age_s: float  # by this host's clock against the node's (hosts' clocks roughly agree)
    running: int
    queued: int
    max_concurrent: int | None
    processes: int | None  # its `claude` processes alive (running a turn, warm, pre-started)

    @property
    def alive(self) -> bool:
        return self.age_s < DEAD_AFTER_S


@dataclass(frozen=True)
class View:
    server: str  # the address that answered, its password masked
    version: str
    streams: int  # the account's, all of them
    storage: int  # bytes on disk (file storage)
    memory: int
    max_storage: int  # -1: no limit
    resources: tuple[Resource, ...]
    nodes: tuple[Beat, ...]


async def look(url: str) -> View:
    errors: list[str] = []

    async def note(exc: Exception) -> None:  # nats-py reports each failed try here, then raises NoServersError
        errors.append(str(exc))

    servers = [u.strip() for u in url.split(",") if u.strip()]
    nc: Client | None = None
    with anyio.move_on_after(CONNECT_S + 1.0):
        try:
            nc = await nats.connect(servers=servers, name="slackbus-doctor", connect_timeout=CONNECT_S,
                                    allow_reconnect=True, max_reconnect_attempts=1, reconnect_time_wait=0.2,
                                    error_cb=note)
        except Exception as exc:  # NoServersError, OSError, a timeout
            errors.append(f"{type(exc).__name__}: {exc}")
    if nc is None:
        if any("authorization violation" in e.lower() or "authentication" in e.lower() for e in errors):
            raise Unusable(f"NATS: the server at {redact_url(url)} refused the user and password",
                           "put the right ones in SLACKBUS_NATS_URL (nats://USER:PASSWORD@HOST:4222)")
        raise Unusable(f"NATS: no server answered at {redact_url(url)}",
                       "start nats-server with JetStream (nats-server -js, or the cluster's configuration), and "
                       "check the addresses and ports in SLACKBUS_NATS_URL and the firewall between the hosts")
    try:
        with anyio.fail_after(LOOK_S):
            return await _look(nc)
    except TimeoutError:
        raise Unusable(f"JetStream: no full answer from {redact_url(url)} within {LOOK_S:g} s",
                       "check the servers' logs: a cluster needs a majority of its servers up") from None
    except (NatsError, OSError) as exc:  # the connection dropped meanwhile
        raise Unusable(f"NATS: the connection to {redact_url(url)} failed ({type(exc).__name__})",
                       "check that the servers stay up (their logs) and run doctor again") from None
    finally:
        with anyio.move_on_after(1.0, shield=True):
            await nc.close()


async def _api(nc: Client, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    msg = await nc.request(f"$JS.API.{subject}", json.dumps(body).encode() if body else b"", timeout=REQUEST_S)
    data = json.loads(msg.data)
    return data if isinstance(data, dict) else {}


async def _look(nc: Client) -> View:
    server = redact_url(nc.connected_url.geturl()) if nc.connected_url else "?"
    try:
        account = await _api(nc, "INFO")
    except NoRespondersError:
        account = {"error": {"code": 503}}
    except TimeoutError:  # nats-py's is one too
        raise Unusable(f"JetStream: the server at {server} did not answer within {REQUEST_S:g} s",
                       "JetStream may be off, or its cluster without a leader (a majority of the servers must be "
                       "up): check the servers' logs") from None
    error = account.get("error")
    if isinstance(error, dict):
        raise Unusable(f"JetStream: off at {server} ({error.get('description') or 'no JetStream'})",
                       "start nats-server with -js (and a store folder, -sd) or a `jetstream { store_dir: … }` block "
                       "in its configuration, or use an account with JetStream enabled")
    limits = account.get("limits") if isinstance(account.get("limits"), dict) else {}
    resources = [
        await _resource(nc, "stream", EVENTS, EVENTS),
        await _resource(nc, "stream", WORK, WORK),
        await _resource(nc, "bucket", THREADS, f"KV_{THREADS}"),
        await _resource(nc, "bucket", NODES, f"KV_{NODES}"),
        await _resource(nc, "object store", SESSIONS, f"OBJ_{SESSIONS}",
                        subjects_filter=f"$O.{SESSIONS}.M.>"),
        await _resource(nc, "bucket", OUTBOX, f"KV_{OUTBOX}"),
    ]
    if resources[5].exists:
        resources[5] = replace(resources[5], keys=len(await _keys(nc, OUTBOX)))
    nodes = await _beats(nc) if resources[3].exists else []
    return View(
        server=server, version=_version(nc), streams=int(account.get("streams") or 0),
        storage=int(account.get("storage") or 0), memory=int(account.get("memory") or 0),
        max_storage=int((limits or {}).get("max_storage", -1)), resources=tuple(resources), nodes=tuple(nodes),
    )


async def _resource(nc: Client, kind: str, name: str, stream: str, subjects_filter: str | None = None) -> Resource:
    info = await _api(nc, f"STREAM.INFO.{stream}", {"subjects_filter": subjects_filter} if subjects_filter else None)
    error = info.get("error")
    if isinstance(error, dict):
        if error.get("code") == 404:
            return Resource(kind, name, stream, exists=False)
        raise Unusable(f"{kind} {name}: JetStream could not describe it ({error.get('description')})",
                       "check the servers' logs; a stream needs a majority of its replicas' servers up")
    state = info.get("state") or {}
    config = info.get("config") or {}
    cluster = info.get("cluster") or {}
    lagging = tuple(str(r.get("name")) for r in cluster.get("replicas") or []
                    if isinstance(r, dict) and (r.get("offline") or not r.get("current")))
    subjects = len(state.get("subjects") or {}) if subjects_filter else int(state.get("num_subjects") or 0)
    return Resource(kind, name, stream, exists=True, messages=int(state.get("messages") or 0),
                    bytes=int(state.get("bytes") or 0), subjects=subjects,
                    replicas=int(config.get("num_replicas") or 1), leader=str(cluster.get("leader") or ""),
                    lagging=lagging)


async def _beats(nc: Client) -> list[Beat]:
    """The last heartbeat of every node in the nodes bucket (a deleted key is a node that left for good)."""
    kv = await nc.jetstream(timeout=REQUEST_S).key_value(NODES)
    beats = []
    now = time.time()
    for key in sorted(await _keys(nc, NODES))[:MAX_NODES]:
        try:
            entry = await kv.get(key)
            data = json.loads(entry.value or b"")
        except (KeyNotFoundError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        at = data.get("at")
        age = max(now - at, 0.0) if isinstance(at, (int, float)) else float("inf")
        beats.append(Beat(
            node=str(data.get("node") or key), host=str(data.get("host") or "?"),
            pid=data["pid"] if isinstance(data.get("pid"), int) else None, age_s=age,
            running=_count(data.get("running")), queued=_count(data.get("queued")),
            max_concurrent=data["max_concurrent"] if isinstance(data.get("max_concurrent"), int) else None,
            processes=_count(processes.get("live")) if isinstance(processes := data.get("processes"), dict) else None,
        ))
    return beats


def _version(nc: Client) -> str:
    try:
        v = nc.connected_server_version
        return f"{v.major}.{v.minor}.{v.patch}"
    except Exception:  # a server that sent no version
        return "?"


async def _keys(nc: Client, bucket: str) -> list[str]:
    """The bucket's live keys (deleted and purged ones left out)."""
    kv = await nc.jetstream(timeout=REQUEST_S).key_value(bucket)
    try:
        return list(await kv.keys())
    except NoKeysError:
        return []


def _count(value: object) -> int:
    """running/queued: a number, or a list of what runs (either shape counts)."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, (list, dict)):
        return len(value)
    return 0
