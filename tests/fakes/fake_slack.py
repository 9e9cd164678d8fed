"""A fake Slack for tests: Web API over HTTP and Socket Mode over WebSocket, on 127.0.0.1.

The real ``slack_bolt`` / ``slack_sdk`` stack reaches it when given
``AsyncWebClient(token="xoxb-...", base_url=fake.api_url)``: the Socket Mode client calls
``apps.connections.open`` (xapp- token) on that base URL and connects to the ws:// URL it returns.
The bot under test usually runs in another process (``SLACK_API_URL=fake.api_url``), so everything
goes over the network; the test thread drives the fake through the methods below.

    with FakeSlack() as fake:
        ...start the bot with fake.env()...
        fake.wait_connected()
        ts = fake.user_says("C1", "U1", "hello", mention=True)
        reply = fake.wait_for(lambda: fake.bot_messages("C1", thread_ts=ts))

The server runs in a background thread with its own event loop. All state is guarded by one lock;
the query helpers return copies. ``wait_for`` / ``wait_ack`` / ``wait_connected`` block the calling
thread, so a test whose bot runs on the test's own event loop uses the ``async_wait_*`` variants;
the ``send_*`` / ``user_says`` helpers block only until the envelope is written (they never need the
bot's loop), so they are fine there too.

Behaviour copied from real Slack on purpose (a bot that works here should work there):
- an events_api envelope carries ``retry_attempt: 0`` and ``retry_reason: ""`` on its first delivery,
  so Bolt sets the header ``x-slack-retry-num: "0"`` on every event, not only on retries;
- a mention in a channel arrives twice, as ``message`` and as ``app_mention`` (distinct event_ids);
- a thread status set with assistant.threads.setStatus is cleared when the bot replies in the thread;
- chat.postMessage truncates text above 40,000 characters and refuses more than 50 blocks, a section
  text above 3,000 characters or more than 12,000 characters of ``markdown`` block text (invalid_blocks);
- events sent while no socket is connected are not buffered;
- an app may hold several Socket Mode connections (Slack allows 10): each envelope goes to ONE open
  connection chosen at random (``FakeSlack(seed=...)`` makes the choice repeatable), and a socket that was
  sent a ``disconnect`` message gets new envelopes only while no other socket is open. An ack that comes back
  on another socket than its envelope's is listed in ``misdirected_acks`` (and ignored with strict_acks).
  ``to="all"`` (send_envelope, send_event, user_says) or duplicate_to_all() hands the same event (same
  event_id) to every socket, as Slack does when it retries onto another connection;
  ``retry_unacked_after=seconds`` makes the fake retry, like Slack, an events_api envelope nobody acked in
  time (retry_attempt + 1, same event_id, another socket when there is one).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import copy
import itertools
import json
import random
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from aiohttp import WSCloseCode, WSMsgType, web

__all__ = ["Call", "Envelope", "FakeSlack", "NotConnectedError", "To"]

T = TypeVar("T")

To = int | Literal["all"] | None  # which socket gets an envelope: None = one at random, N = socket N, "all" = each

# Form fields that slack_sdk sends as JSON strings when it does not use a JSON body.
_JSON_FIELDS = ("blocks", "attachments", "files", "metadata", "chunks", "loading_messages", "unfurls")
_TEXT_LIMIT = 40_000
_MAX_BLOCKS = 50
_SECTION_TEXT_LIMIT = 3_000
_MARKDOWN_BLOCK_LIMIT = 12_000
_FIRST_TS_US = 1_700_000_000_000_100
_MAX_RETRIES = 3  # Slack retries an unacked event up to three times


@dataclass
class Call:
    """One Web API request as the fake received it."""

    method: str
    params: dict[str, Any]
    token_kind: str | None  # "bot" (xoxb-), "user" (xoxp-), "app" (xapp-), "other", or None
    t: float  # time.monotonic() when the request arrived
    status: int = 0  # HTTP status the fake answered with; 0 while the call is still in flight
    response: dict[str, Any] | None = None
    token: str | None = field(default=None, repr=False, compare=False)  # never printed

    @property
    def ok(self) -> bool:
        return bool(self.response and self.response.get("ok"))

    @property
    def error(self) -> str | None:
        return None if self.response is None else self.response.get("error")


@dataclass
class Envelope:
    """One Socket Mode envelope written to a socket."""

    envelope_id: str
    type: str
    payload: dict[str, Any]
    t: float  # time.monotonic() just before it was written
    retry_attempt: int | None
    retry_reason: str | None
    connection: int  # number of the socket it went out on (1 = first accepted)


MANIFEST_BOT_SCOPES = (
    "app_mentions:read", "channels:history", "groups:history", "im:history", "mpim:history", "channels:read",
    "groups:read", "chat:write", "commands", "reactions:read", "reactions:write", "users:read", "files:write",
    "files:read",
)


class NotConnectedError(RuntimeError):
    """No Socket Mode connection was open to deliver an envelope to."""


class _ApiError(Exception):
    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra


@dataclass
class _Failure:
    status: int
    error: str
    retry_after: float | None


@dataclass
class _Conn:
    number: int
    ws: web.WebSocketResponse
    transport: asyncio.BaseTransport | None
    t: float
    frozen: bool = False
    draining: bool = False  # was sent a disconnect message: gets envelopes only when no other socket is open

    @property
    def live(self) -> bool:
        return not self.ws.closed and not self.frozen


def _ts_key(ts: str | None) -> int:
    """Slack ts "1700000000.000100" as integer microseconds (for ordering and comparisons)."""
    if not ts:
        return 0
    sec, _, frac = str(ts).partition(".")
    try:
        return int(sec) * 1_000_000 + int((frac + "000000")[:6])
    except ValueError:
        return 0


def _fmt_ts(us: int) -> str:
    return f"{us // 1_000_000}.{us % 1_000_000:06d}"


def _token_kind(token: str | None) -> str | None:
    if not token:
        return None
    for prefix, kind in (("xoxb-", "bot"), ("xoxp-", "user"), ("xapp-", "app")):
        if token.startswith(prefix):
            return kind
    return "other"


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes")
    return bool(value)


def _required(params: dict[str, Any], name: str) -> Any:
    value = params.get(name)
    if value is None or value == "":
        raise _ApiError("invalid_arguments", detail=f"missing required argument {name}")
    return value


def _chunks_text(chunks: Any) -> str:
    if not isinstance(chunks, list):
        return ""
    return "".join(str(c.get("text", "")) for c in chunks if isinstance(c, dict) and c.get("type") == "markdown_text")


def _check_blocks(blocks: Any) -> None:
    if blocks is None:
        return
    if not isinstance(blocks, list):
        raise _ApiError("invalid_blocks_format")
    if len(blocks) > _MAX_BLOCKS:
        raise _ApiError("invalid_blocks", detail=f"{len(blocks)} blocks (max {_MAX_BLOCKS})")
    markdown_total = 0
    for block in blocks:
        if not isinstance(block, dict) or "type" not in block:
            raise _ApiError("invalid_blocks_format")
        if block["type"] == "section":
            text = block.get("text")
            if isinstance(text, dict) and len(str(text.get("text", ""))) > _SECTION_TEXT_LIMIT:
                raise _ApiError("invalid_blocks", detail=f"section text over {_SECTION_TEXT_LIMIT} characters")
        elif block["type"] == "markdown":
            markdown_total += len(str(block.get("text", "")))
    if markdown_total > _MARKDOWN_BLOCK_LIMIT:
        raise _ApiError("invalid_blocks", detail=f"markdown block text over {_MARKDOWN_BLOCK_LIMIT} characters")


class FakeSlack:
    """Fake Slack Web API + Socket Mode server on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        bot_user_id: str = "UBOT",
        bot_id: str = "BBOT",
        team_id: str = "T1",
        *,
        app_id: str = "A1",
        bot_name: str = "slackbus",
        bot_token: str | None = None,
        app_token: str | None = None,
        echo_bot_messages: bool = False,
        port: int = 0,
        seed: int | None = None,
        retry_unacked_after: float | None = None,
        strict_acks: bool = False,
    ) -> None:
        """bot_token / app_token: when given, only that exact token is accepted (else any xoxb- / xapp-).
        echo_bot_messages: also send the bot's own chat.postMessage / chat.update / chat.delete back as
        message events, as real Slack does when the app subscribes to message.* events.
        seed: seeds the choice of socket for each envelope (random.Random(seed)).
        retry_unacked_after: when set, an events_api envelope not acked within that many seconds is sent
        again (same payload and event_id, retry_attempt + 1, retry_reason "timeout", a new envelope id) to
        another open socket (the same one when it is the only one open), up to 3 retries, as Slack does.
        strict_acks: count an ack only when it comes back on the socket the envelope went out on. Off by
        default: slack_sdk acks on its current socket, so an envelope received just before a reconnect is
        acked on the new one. Acks on another socket are listed in misdirected_acks either way."""
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.team_id = team_id
        self.app_id = app_id
        self.bot_name = bot_name
        self.echo_bot_messages = echo_bot_messages
        self._bot_token = bot_token
        self._app_token = app_token
        self._requested_port = port
        self.port: int | None = None
        self.retry_unacked_after = retry_unacked_after
        self.strict_acks = strict_acks
        self._rng = random.Random(seed)

        self._cond = threading.Condition(threading.Lock())
        self._calls: list[Call] = []
        self._envelopes: list[Envelope] = []
        self._acks: dict[str, tuple[float, Any]] = {}
        self._sent_to: dict[str, int] = {}  # envelope_id → socket number, set before the envelope is written
        self.misdirected_acks: list[tuple[str, int]] = []  # (envelope_id, socket) acks on the wrong socket
        self._messages: dict[str, list[dict[str, Any]]] = {}
        self._reactions: dict[tuple[str, str], dict[str, list[str]]] = {}
        self._ephemerals: list[dict[str, Any]] = []
        self._users: dict[str, dict[str, Any]] = {}
        self._channels: dict[str, dict[str, Any]] = {}
        self._statuses: dict[tuple[str, str], str] = {}
        self._status_history: list[dict[str, Any]] = []
        self._files: dict[str, dict[str, Any]] = {}
        self._responses: list[dict[str, Any]] = []
        self._response_urls: dict[str, dict[str, Any]] = {}
        self._webhooks: dict[str, str] = {}  # "/services/T/B/secret" → channel
        self.webhook_posts: list[dict[str, Any]] = []
        self._failures: dict[str, collections.deque[_Failure]] = {}
        self._latency: dict[str, float] = {}
        self._tickets: set[str] = set()
        self._conns: dict[int, _Conn] = {}
        self._connection_count = 0
        self.internal_errors: list[str] = []
        # what the bot token was granted (sent as x-oauth-scopes, like Slack) and the channels the bot is in
        self.scopes: list[str] = list(MANIFEST_BOT_SCOPES)
        self._hosted: dict[str, tuple[bytes, str]] = {}  # files people attached: id → (bytes, mimetype)
        self.downloads: list[tuple[str, bool]] = []  # (file id, served) for every url_private_download request
        self.bot_channels: list[str] = ["C1"]
        self._ts_us = _FIRST_TS_US
        self._ids = itertools.count(1)

        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._startup_error: BaseException | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

        self._methods: dict[str, Callable[[dict[str, Any], Call], dict[str, Any]]] = {
            "auth.test": self._m_auth_test,
            "users.conversations": self._m_users_conversations,
            "apps.connections.open": self._m_apps_connections_open,
            "chat.postMessage": self._m_chat_post_message,
            "chat.update": self._m_chat_update,
            "chat.delete": self._m_chat_delete,
            "chat.postEphemeral": self._m_chat_post_ephemeral,
            "chat.getPermalink": self._m_chat_get_permalink,
            "chat.startStream": self._m_chat_start_stream,
            "chat.appendStream": self._m_chat_append_stream,
            "chat.stopStream": self._m_chat_stop_stream,
            "reactions.add": self._m_reactions_add,
            "reactions.remove": self._m_reactions_remove,
            "reactions.get": self._m_reactions_get,
            "conversations.history": self._m_conversations_history,
            "conversations.replies": self._m_conversations_replies,
            "conversations.info": self._m_conversations_info,
            "conversations.open": self._m_conversations_open,
            "users.info": self._m_users_info,
            "assistant.threads.setStatus": self._m_assistant_set_status,
            "files.getUploadURLExternal": self._m_files_get_upload_url,
            "files.completeUploadExternal": self._m_files_complete_upload,
        }

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.stop()
        if exc_type is None and self.internal_errors:
            raise AssertionError("fake Slack had internal errors:\n" + "\n".join(self.internal_errors))

    def start(self, timeout: float = 10.0) -> FakeSlack:
        if self._thread is not None:
            raise RuntimeError("FakeSlack already started")
        ready = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, args=(ready,), name="fake-slack", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("fake Slack did not start in time")
        if self._startup_error is not None:
            self._thread.join(timeout)
            raise RuntimeError("fake Slack failed to start") from self._startup_error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"fake Slack did not stop within {timeout} s")
        self._thread = None

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/"

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("FakeSlack is not started")
        return f"http://127.0.0.1:{self.port}"

    def env(self, bot_token: str | None = None, app_token: str | None = None) -> dict[str, str]:
        """Environment for a bot process: SLACK_API_URL, SLACK_BOT_TOKEN, SLACK_APP_TOKEN."""
        return {
            "SLACK_API_URL": self.api_url,
            "SLACK_BOT_TOKEN": bot_token or self._bot_token or "xoxb-fake-bot-token",
            "SLACK_APP_TOKEN": app_token or self._app_token or "xapp-fake-app-token",
        }

    def _thread_main(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._serve(ready))
        except BaseException as e:
            if not ready.is_set():
                self._startup_error = e
                ready.set()
            else:
                self.internal_errors.append("server loop: " + "".join(traceback.format_exception(e)))

    async def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/api/{method}", self._handle_api)
        app.router.add_get("/socket", self._handle_socket)
        app.router.add_post("/upload/{file_id}", self._handle_upload)
        app.router.add_get("/files-pri/{key}/download/{name}", self._handle_download)
        app.router.add_post("/response/{rid}", self._handle_response_url)
        app.router.add_post("/services/{team}/{hook}/{secret}", self._handle_webhook)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", self._requested_port)
            await site.start()
            self.port = int(runner.addresses[0][1])
            ready.set()
            await self._stop_event.wait()
            self._closing = True  # refuse new sockets, so a reconnecting client cannot delay the shutdown
            await self._close_sockets(close_frame=True, code=WSCloseCode.GOING_AWAY)
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await runner.cleanup()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Start a background task on the server loop (call from the server thread only)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run a coroutine on the server loop from another thread and wait for it."""
        if self._loop is None or self._thread is None:
            coro.close()
            raise RuntimeError("FakeSlack is not started")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("blocking FakeSlack helper called from the fake's own loop")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise

    # ------------------------------------------------------------------ configuration

    def add_user(
        self,
        user_id: str,
        name: str,
        real_name: str | None = None,
        display_name: str | None = None,
        *,
        is_bot: bool = False,
        tz: str = "UTC",
    ) -> None:
        with self._cond:
            self._users[user_id] = {
                "id": user_id,
                "team_id": self.team_id,
                "name": name,
                "real_name": real_name or name,
                "is_bot": is_bot,
                "deleted": False,
                "tz": tz,
                "profile": {
                    "real_name": real_name or name,
                    "display_name": display_name if display_name is not None else name,
                },
            }

    def add_channel(
        self, channel_id: str, name: str | None = None, *, is_private: bool = False, user: str | None = None
    ) -> None:
        """Register a channel for conversations.info (an id starting with D is a DM with `user`)."""
        with self._cond:
            self._channels[channel_id] = self._channel_info(channel_id, name, is_private, user)

    def seed_message(
        self,
        channel: str,
        text: str,
        user: str = "U1",
        *,
        ts: str | None = None,
        thread_ts: str | None = None,
        **extra: Any,
    ) -> str:
        """Put a message into a channel's history without sending any event. Returns its ts."""
        with self._cond:
            if ts is None:
                ts = self._next_ts()
            else:
                self._ts_us = max(self._ts_us, _ts_key(ts))
            msg: dict[str, Any] = {"type": "message", "ts": ts, "channel": channel, "user": user, "text": text}
            if thread_ts:
                msg["thread_ts"] = thread_ts
            msg.update(extra)
            self._store(channel, msg)
        return ts

    def fail_next(
        self,
        method: str,
        status: int | None = None,
        retry_after: float | None = 1,
        count: int = 1,
        error: str | None = None,
    ) -> None:
        """Make the next `count` calls of `method` fail, before any auth check or state change.

        status 429 (the default without `error`): HTTP 429, Retry-After header, error "ratelimited".
        status 5xx: that status with {"ok": false, "error": error or "internal_error"}.
        error="x" without status: HTTP 200 {"ok": false, "error": "x"}."""
        if status is None:
            status = 200 if error is not None else 429
        if error is None:
            error = "ratelimited" if status == 429 else "internal_error" if status >= 500 else "fake_error"
        with self._cond:
            queue = self._failures.setdefault(method, collections.deque())
            for _ in range(count):
                queue.append(_Failure(status, error, retry_after if status == 429 else None))

    def set_latency(self, method: str, seconds: float) -> None:
        """Delay answers to `method` ("*" = every method without its own setting); 0 removes it."""
        with self._cond:
            if seconds > 0:
                self._latency[method] = seconds
            else:
                self._latency.pop(method, None)

    def clear_failures(self, method: str | None = None) -> None:
        """Drop the failures still queued by fail_next (for one method, or all)."""
        with self._cond:
            if method is None:
                self._failures.clear()
            else:
                self._failures.pop(method, None)

    # ------------------------------------------------------------------ Web API server

    async def _read_params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST" and request.body_exists:
            ctype = request.content_type
            if ctype == "application/json":
                body = await request.json()
                if isinstance(body, dict):
                    params.update(body)
            elif ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
                form = await request.post()
                for key, value in form.items():
                    if isinstance(value, web.FileField):
                        params[key] = {"filename": value.filename, "content": value.file.read()}
                    else:
                        params[key] = value
            else:
                await request.read()
        for key in _JSON_FIELDS:
            raw = params.get(key)
            if isinstance(raw, str) and raw[:1] in ("[", "{"):
                with contextlib.suppress(ValueError):
                    params[key] = json.loads(raw)
        return params

    async def _handle_api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        t = time.monotonic()
        try:
            params = await self._read_params(request)
            bad_body = False
        except ValueError:
            params, bad_body = {}, True
        token: str | None = None
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip() or None
        form_token = params.pop("token", None)
        if token is None and isinstance(form_token, str):
            token = form_token
        call = Call(method, params, _token_kind(token), t, token=token)
        with self._cond:
            self._calls.append(call)
            delay = self._latency.get(method, self._latency.get("*", 0.0))
            self._cond.notify_all()
        if delay:
            await asyncio.sleep(delay)
        headers: dict[str, str]
        if bad_body:
            status, body, headers = 200, {"ok": False, "error": "invalid_json"}, {}
        else:
            status, body, headers = self._api_result(method, params, call)
        with self._cond:
            call.status = status
            call.response = body
            self._cond.notify_all()
        return web.json_response(body, status=status, headers=headers)

    def _api_result(
        self, method: str, params: dict[str, Any], call: Call
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._cond:
            queue = self._failures.get(method)
            failure = queue.popleft() if queue else None
        if failure is not None:
            headers = {} if failure.retry_after is None else {"Retry-After": str(int(failure.retry_after))}
            return failure.status, {"ok": False, "error": failure.error}, headers
        handler = self._methods.get(method)
        if handler is None:
            return 200, {"ok": False, "error": "unknown_method"}, {}
        auth_error = self._auth_error(method, call.token, call.token_kind)
        if auth_error is not None:
            return 200, {"ok": False, "error": auth_error}, {}
        try:
            with self._cond:
                result = handler(params, call)
        except _ApiError as e:
            return 200, {"ok": False, "error": e.error, **e.extra}, {}
        except Exception:
            self.internal_errors.append(f"{method}: {traceback.format_exc()}")
            return 500, {"ok": False, "error": "fake_internal_error"}, {}
        headers = {"x-oauth-scopes": ",".join(self.scopes)} if call.token_kind == "bot" else {}
        return 200, {"ok": True, **result}, headers

    def _auth_error(self, method: str, token: str | None, kind: str | None) -> str | None:
        if token is None:
            return "not_authed"
        if method == "apps.connections.open":
            if kind != "app":
                return "not_allowed_token_type"
            return "invalid_auth" if self._app_token is not None and token != self._app_token else None
        if kind == "app":
            return "not_allowed_token_type"
        if kind not in ("bot", "user"):
            return "invalid_auth"
        if kind == "bot" and self._bot_token is not None and token != self._bot_token:
            return "invalid_auth"
        return None

    # -- state helpers (called with the lock held)

    def _next_ts(self) -> str:
        self._ts_us += 100
        return _fmt_ts(self._ts_us)

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):08d}"

    def _store(self, channel: str, msg: dict[str, Any]) -> None:
        self._ts_us = max(self._ts_us, _ts_key(msg["ts"]))
        msgs = self._messages.setdefault(channel, [])
        msgs.append(msg)
        msgs.sort(key=lambda m: _ts_key(m["ts"]))

    def _find(self, channel: str, ts: str) -> dict[str, Any] | None:
        for msg in self._messages.get(channel, ()):
            if msg["ts"] == ts:
                return msg
        return None

    def _find_or_fail(self, channel: str, ts: str) -> dict[str, Any]:
        msg = self._find(channel, ts)
        if msg is None:
            raise _ApiError("message_not_found")
        return msg

    @staticmethod
    def _is_top_level(msg: dict[str, Any]) -> bool:
        thread_ts = msg.get("thread_ts")
        return not thread_ts or thread_ts == msg["ts"] or msg.get("subtype") == "thread_broadcast"

    def _decorated(self, channel: str, msg: dict[str, Any]) -> dict[str, Any]:
        """Copy of a stored message as the API shows it: reply counts on parents, reactions."""
        out = copy.deepcopy(msg)
        out.pop("channel", None)
        replies = [
            m for m in self._messages.get(channel, ()) if m.get("thread_ts") == msg["ts"] and m["ts"] != msg["ts"]
        ]
        if replies:
            out["thread_ts"] = msg["ts"]
            out["reply_count"] = len(replies)
            out["reply_users"] = sorted({m.get("user", "") for m in replies})
            out["latest_reply"] = replies[-1]["ts"]
        reactions = self._reactions.get((channel, msg["ts"]))
        if reactions:
            out["reactions"] = [{"name": n, "users": list(u), "count": len(u)} for n, u in reactions.items()]
        return out

    def _bot_message(self, channel: str, params: dict[str, Any], ts: str) -> dict[str, Any]:
        text = params.get("text")
        blocks = params.get("blocks")
        _check_blocks(blocks)
        msg: dict[str, Any] = {
            "type": "message",
            "ts": ts,
            "channel": channel,
            "text": str(text or "")[:_TEXT_LIMIT],
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "team": self.team_id,
        }
        for key in ("blocks", "attachments", "metadata"):
            if params.get(key) is not None:
                msg[key] = params[key]
        thread_ts = params.get("thread_ts")
        if thread_ts:
            msg["thread_ts"] = str(thread_ts)
            if _truthy(params.get("reply_broadcast")):
                msg["subtype"] = "thread_broadcast"
        return msg

    def _clear_status(self, channel: str, thread_ts: str | None) -> None:
        if thread_ts and self._statuses.pop((channel, thread_ts), ""):
            self._status_history.append(
                {"channel": channel, "thread_ts": thread_ts, "status": "", "t": time.monotonic(), "auto": True}
            )

    def _echo(self, event: dict[str, Any]) -> None:
        if self.echo_bot_messages:
            self._spawn(self._echo_event(event))

    async def _echo_event(self, event: dict[str, Any]) -> None:
        event_id = self._next_id("Ev")
        with contextlib.suppress(NotConnectedError):
            await self._deliver(self._events_envelope(self._event_callback(event, event_id), None, None), 0)

    def _channel_info(self, channel_id: str, name: str | None, is_private: bool, user: str | None) -> dict[str, Any]:
        if channel_id.startswith("D"):
            return {"id": channel_id, "is_im": True, "user": user or "U1", "is_open": True, "created": 1700000000}
        return {
            "id": channel_id,
            "name": name or channel_id.lower(),
            "is_channel": not is_private,
            "is_group": is_private,
            "is_im": False,
            "is_mpim": False,
            "is_private": is_private,
            "is_archived": False,
            "is_member": True,
            "created": 1700000000,
        }

    # -- methods (called with the lock held; return the response minus "ok": true)

    def _m_auth_test(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        return {
            "url": "https://fake-team.slack.com/",
            "team": "Fake Team",
            "user": self.bot_name,
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _m_users_conversations(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        return {
            "channels": [{"id": c, "name": f"chan-{c.lower()}", "is_member": True} for c in self.bot_channels],
            "response_metadata": {"next_cursor": ""},
        }

    def _m_apps_connections_open(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        ticket = uuid.uuid4().hex
        self._tickets.add(ticket)
        return {"url": f"ws://127.0.0.1:{self.port}/socket?ticket={ticket}&app_id={self.app_id}"}

    def _m_chat_post_message(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        channel = str(_required(params, "channel"))
        if not (params.get("text") or params.get("blocks") or params.get("attachments")):
            raise _ApiError("no_text")
        msg = self._bot_message(channel, params, self._next_ts())
        self._store(channel, msg)
        self._clear_status(channel, msg.get("thread_ts"))
        self._echo(self._decorated(channel, msg) | {"channel": channel, "event_ts": msg["ts"]})
        return {"channel": channel, "ts": msg["ts"], "message": self._decorated(channel, msg)}

    def _m_chat_update(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        channel = str(_required(params, "channel"))
        msg = self._find_or_fail(channel, str(_required(params, "ts")))
        if msg.get("user") != self.bot_user_id:
            raise _ApiError("cant_update_message")
        if "text" in params and params["text"] is not None:
            msg["text"] = str(params["text"])[:_TEXT_LIMIT]
        if params.get("blocks") is not None:
            _check_blocks(params["blocks"])
            msg["blocks"] = params["blocks"]
        if params.get("attachments") is not None:
            msg["attachments"] = params["attachments"]
        msg["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}
        if self.echo_bot_messages:
            self._echo(
                {
                    "type": "message",
                    "subtype": "message_changed",
                    "channel": channel,
                    "hidden": True,
                    "ts": msg["edited"]["ts"],
                    "event_ts": msg["edited"]["ts"],
                    "message": self._decorated(channel, msg),
                }
            )
        return {"channel": channel, "ts": msg["ts"], "text": msg["text"], "message": self._decorated(channel, msg)}

    def _m_chat_delete(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        channel = str(_required(params, "channel"))
        ts = str(_required(params, "ts"))
        msg = self._find_or_fail(channel, ts)
        if msg.get("user") != self.bot_user_id:
            raise _ApiError("cant_delete_message")
        self._messages[channel].remove(msg)
        self._reactions.pop((channel, ts), None)
        if self.echo_bot_messages:
            event_ts = self._next_ts()
            self._echo(
                {
                    "type": "message",
                    "subtype": "message_deleted",
                    "channel": channel,
                    "hidden": True,
                    "deleted_ts": ts,
                    "ts": event_ts,
                    "event_ts": event_ts,
                    "previous_message": copy.deepcopy(msg),
                }
            )
        return {"channel": channel, "ts": ts}

    def _m_chat_post_ephemeral(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        channel = str(_required(params, "channel"))
        user = str(_required(params, "user"))
        if not (params.get("text") or params.get("blocks") or params.get("attachments")):
            raise _ApiError("no_text")
        _check_blocks(params.get("blocks"))
        ts = self._next_ts()
        self._ephemerals.append(
            {
                "channel": channel,
                "user": user,
                "text": params.get("text") or "",
                "blocks": params.get("blocks"),
                "thread_ts": params.get("thread_ts"),
                "ts": ts,
                "t": time.monotonic(),
            }
        )
        return {"message_ts": ts}

    def _m_chat_get_permalink(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        channel = str(_required(params, "channel"))
        ts = str(_required(params, "message_ts"))
        self._find_or_fail(channel, ts)
        return {
            "channel": channel,
            "permalink": f"https://fake-team.slack.com/archives/{channel}/p{ts.replace('.', '')}",
        }

    def _m_chat_start_stream(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        channel = str(_required(params, "channel"))
        thread_ts = str(_required(params, "thread_ts"))
        if not channel.startswith("D") and not (params.get("recipient_user_id") and params.get("recipient_team_id")):
            # Real Slack needs both outside DMs; the exact error name here is the fake's own.
            raise _ApiError("invalid_arguments", detail="recipient_user_id and recipient_team_id are required")
        text = str(params.get("markdown_text") or "") + _chunks_text(params.get("chunks"))
        msg = self._bot_message(channel, {"text": text, "thread_ts": thread_ts}, self._next_ts())
        msg["streaming"] = True
        self._store(channel, msg)
        self._clear_status(channel, thread_ts)
        return {"channel": channel, "ts": msg["ts"]}

    def _streaming_message(self, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        channel = str(_required(params, "channel"))
        msg = self._find_or_fail(channel, str(_required(params, "ts")))
        if not msg.get("streaming"):
            raise _ApiError("message_not_in_streaming_state")
        return channel, msg

    def _m_chat_append_stream(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        channel, msg = self._streaming_message(params)
        text = str(params.get("markdown_text") or "") + _chunks_text(params.get("chunks"))
        if not text:
            raise _ApiError("invalid_arguments", detail="markdown_text or chunks required")
        msg["text"] += text
        return {"channel": channel, "ts": msg["ts"]}

    def _m_chat_stop_stream(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        channel, msg = self._streaming_message(params)
        msg["text"] += str(params.get("markdown_text") or "") + _chunks_text(params.get("chunks"))
        if params.get("blocks") is not None:
            _check_blocks(params["blocks"])
            msg["blocks"] = params["blocks"]
        msg["streaming"] = False
        return {"channel": channel, "ts": msg["ts"], "message": self._decorated(channel, msg)}

    def _reaction_target(self, params: dict[str, Any]) -> tuple[str, str, str]:
        channel = str(_required(params, "channel"))
        ts = str(_required(params, "timestamp"))
        name = str(_required(params, "name"))
        self._find_or_fail(channel, ts)
        return channel, ts, name

    def _m_reactions_add(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        channel, ts, name = self._reaction_target(params)
        users = self._reactions.setdefault((channel, ts), {}).setdefault(name, [])
        if self.bot_user_id in users:
            raise _ApiError("already_reacted")
        users.append(self.bot_user_id)
        return {}

    def _m_reactions_remove(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        channel, ts, name = self._reaction_target(params)
        by_name = self._reactions.get((channel, ts), {})
        users = by_name.get(name, [])
        if self.bot_user_id not in users:
            raise _ApiError("no_reaction")
        users.remove(self.bot_user_id)
        if not users:
            del by_name[name]
        return {}

    def _m_reactions_get(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        channel = str(_required(params, "channel"))
        msg = self._find_or_fail(channel, str(_required(params, "timestamp")))
        return {"type": "message", "channel": channel, "message": self._decorated(channel, msg)}

    @staticmethod
    def _page(
        msgs: list[dict[str, Any]], params: dict[str, Any], default_limit: int
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        try:
            limit = max(1, min(int(params.get("limit") or default_limit), 1000))
            offset = int(params.get("cursor") or 0)
        except ValueError as e:
            raise _ApiError("invalid_cursor") from e
        page = msgs[offset : offset + limit]
        has_more = offset + limit < len(msgs)
        meta = {"has_more": has_more, "response_metadata": {"next_cursor": str(offset + limit) if has_more else ""}}
        return page, meta

    @staticmethod
    def _in_range(msg: dict[str, Any], params: dict[str, Any]) -> bool:
        key = _ts_key(msg["ts"])
        inclusive = _truthy(params.get("inclusive"))
        oldest, latest = params.get("oldest"), params.get("latest")
        if oldest and (key < _ts_key(oldest) or (key == _ts_key(oldest) and not inclusive)):
            return False
        return not (latest and (key > _ts_key(latest) or (key == _ts_key(latest) and not inclusive)))

    def _m_conversations_history(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        channel = str(_required(params, "channel"))
        msgs = [m for m in self._messages.get(channel, ()) if self._is_top_level(m) and self._in_range(m, params)]
        msgs.reverse()  # newest first
        page, meta = self._page(msgs, params, 100)
        return {"messages": [self._decorated(channel, m) for m in page], "pin_count": 0, **meta}

    def _m_conversations_replies(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        channel = str(_required(params, "channel"))
        msg = self._find(channel, str(_required(params, "ts")))
        if msg is None:
            raise _ApiError("thread_not_found")
        parent_ts = msg.get("thread_ts") or msg["ts"]
        parent = self._find(channel, parent_ts)
        thread = [m for m in self._messages.get(channel, ()) if m.get("thread_ts") == parent_ts and m is not parent]
        thread = [m for m in thread if self._in_range(m, params)]
        if parent is not None:
            thread.insert(0, parent)  # Slack always returns the parent first
        page, meta = self._page(thread, params, 1000)
        return {"messages": [self._decorated(channel, m) for m in page], **meta}

    def _m_conversations_info(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        channel = str(_required(params, "channel"))
        info = self._channels.get(channel) or self._channel_info(channel, None, False, None)
        return {"channel": copy.deepcopy(info)}

    def _m_conversations_open(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        users = [u for u in str(params.get("users") or "").split(",") if u]
        if params.get("channel"):
            return {"channel": {"id": str(params["channel"])}}
        if len(users) != 1:
            raise _ApiError("users_list_not_supplied" if not users else "not_enough_users")
        channel_id = "D" + users[0].lstrip("U")
        self._channels.setdefault(channel_id, self._channel_info(channel_id, None, False, users[0]))
        return {"channel": {"id": channel_id}, "already_open": False, "no_op": False}

    def _m_users_info(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        user_id = str(_required(params, "user"))
        user = self._users.get(user_id)
        if user is None:
            is_bot = user_id == self.bot_user_id
            name = self.bot_name if is_bot else f"user-{user_id.lower()}"
            user = {
                "id": user_id,
                "team_id": self.team_id,
                "name": name,
                "real_name": name,
                "is_bot": is_bot,
                "deleted": False,
                "tz": "UTC",
                "profile": {"real_name": name, "display_name": name},
            }
        return {"user": copy.deepcopy(user)}

    def _m_assistant_set_status(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        channel = str(_required(params, "channel_id"))
        thread_ts = str(_required(params, "thread_ts"))
        if "status" not in params:
            raise _ApiError("invalid_arguments", detail="missing required argument status")
        status = str(params["status"] or "")
        if status:
            self._statuses[(channel, thread_ts)] = status
        else:
            self._statuses.pop((channel, thread_ts), None)
        self._status_history.append(
            {"channel": channel, "thread_ts": thread_ts, "status": status, "t": time.monotonic(), "auto": False}
        )
        return {}

    def _m_files_get_upload_url(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        filename = str(_required(params, "filename"))
        try:
            length = int(_required(params, "length"))
        except ValueError as e:
            raise _ApiError("invalid_arguments", detail="length must be an integer") from e
        file_id = self._next_id("F")
        self._files[file_id] = {
            "id": file_id,
            "name": filename,
            "title": filename,
            "length": length,
            "content": None,
            "alt_txt": params.get("alt_txt"),
            "snippet_type": params.get("snippet_type"),
            "completed": False,
        }
        return {"upload_url": f"{self.base_url}/upload/{file_id}", "file_id": file_id}

    def _m_files_complete_upload(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        files = params.get("files")
        if not isinstance(files, list) or not files:
            raise _ApiError("invalid_arguments", detail="files must be a non-empty JSON list")
        channel = params.get("channel_id") or (str(params.get("channels") or "").split(",")[0] or None)
        thread_ts = params.get("thread_ts") or None
        records = []
        for item in files:
            record = self._files.get(str(item.get("id"))) if isinstance(item, dict) else None
            if record is None:
                raise _ApiError("file_not_found")
            if record["content"] is None:
                raise _ApiError("file_not_uploaded")  # the fake's own name for "nothing was POSTed"
            records.append((record, item))
        out = []
        for record, item in records:
            record.update(
                title=item.get("title") or record["name"],
                completed=True,
                channel=channel,
                thread_ts=thread_ts,
                initial_comment=params.get("initial_comment"),
            )
            out.append(
                {
                    "id": record["id"],
                    "name": record["name"],
                    "title": record["title"],
                    "size": len(record["content"]),
                    "permalink": f"https://fake-team.slack.com/files/{self.bot_user_id}/{record['id']}",
                }
            )
        if channel:
            msg = self._bot_message(
                str(channel), {"text": params.get("initial_comment") or "", "thread_ts": thread_ts}, self._next_ts()
            )
            msg["files"] = copy.deepcopy(out)
            msg["upload"] = True
            self._store(str(channel), msg)
            for record, _ in records:
                record["ts"] = msg["ts"]
            self._clear_status(str(channel), thread_ts)
        return {"files": out}

    async def _handle_upload(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        if request.content_type == "multipart/form-data":
            form = await request.post()
            content = b""
            for value in form.values():
                if isinstance(value, web.FileField):
                    content = value.file.read()
                    break
        else:
            content = await request.read()
        with self._cond:
            record = self._files.get(file_id)
            if record is not None:
                record["content"] = content
        if record is None:
            return web.Response(status=404, text="file not found", content_type="text/plain")
        return web.Response(text=f"OK - {len(content)}", content_type="text/plain")

    async def _handle_download(self, request: web.Request) -> web.Response:
        """url_private_download, as Slack serves it: the bytes only to a bot token with files:read (the exact one
        when the fake was given one); anyone else gets the sign-in page, as HTML with status 200."""
        file_id = request.match_info["key"].rsplit("-", 1)[-1]
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.startswith("Bearer ") else None
        allowed = (_token_kind(token) == "bot" and (self._bot_token is None or token == self._bot_token)
                   and "files:read" in self.scopes)
        with self._cond:
            hosted = self._hosted.get(file_id)
            self.downloads.append((file_id, bool(allowed)))
        if hosted is None:
            return web.Response(status=404, text="file not found", content_type="text/plain")
        if not allowed:
            return web.Response(text="<!DOCTYPE html><html><body>Sign in to Slack</body></html>",
                                content_type="text/html")
        content, mimetype = hosted
        return web.Response(body=content, content_type=mimetype)

    def add_file(self, name: str, content: bytes, mimetype: str = "text/plain", *, mode: str = "hosted",
                 size: int | None = None) -> dict[str, Any]:
        """A file a person uploads, as a message event's `files` item shows it (url_private_download on this fake);
        pass it to user_says(files=[...]). `mode`: hosted, snippet, external, tombstone; `size` may lie."""
        with self._cond:
            file_id = f"F{next(self._ids):08d}"
            self._hosted[file_id] = (content, mimetype)
        base = f"{self.base_url}/files-pri/{self.team_id}-{file_id}"
        item: dict[str, Any] = {"id": file_id, "name": name, "title": name, "mimetype": mimetype, "mode": mode,
                                "size": len(content) if size is None else size, "url_private": f"{base}/{name}",
                                "url_private_download": f"{base}/download/{name}"}
        if mode == "external":
            item["is_external"] = True
        return item

    async def _handle_response_url(self, request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        try:
            body = await request.json()
        except ValueError:
            body = None
        with self._cond:
            origin = self._response_urls.get(rid)
            if origin is None or not isinstance(body, dict):
                return web.json_response({"ok": False, "error": "invalid_response_url"}, status=404)
            self._responses.append({"response_url": rid, "body": body, "t": time.monotonic(), **origin})
            channel = origin["channel"]
            message_ts = origin.get("message_ts")
            target = self._find(channel, message_ts) if message_ts else None
            if _truthy(body.get("delete_original")) and target is not None:
                self._messages[channel].remove(target)
            elif _truthy(body.get("replace_original")) and target is not None:
                for key in ("text", "blocks", "attachments"):
                    if key in body:
                        target[key] = body[key]
            elif body.get("response_type") == "in_channel":
                msg = self._bot_message(channel, body, self._next_ts())
                self._store(channel, msg)
            else:
                self._ephemerals.append(
                    {
                        "channel": channel,
                        "user": origin["user"],
                        "text": body.get("text") or "",
                        "blocks": body.get("blocks"),
                        "thread_ts": body.get("thread_ts"),
                        "ts": self._next_ts(),
                        "t": time.monotonic(),
                        "via_response_url": True,
                    }
                )
        return web.json_response({"ok": True})

    # ------------------------------------------------------------------ Socket Mode server

    async def _handle_socket(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if self._closing:
            return web.json_response({"ok": False, "error": "shutting_down"}, status=503)
        with self._cond:
            known = ticket in self._tickets
        if not known:
            return web.json_response({"ok": False, "error": "invalid_ticket"}, status=401)
        ws = web.WebSocketResponse(timeout=2.0, autoping=True, max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        with self._cond:
            self._connection_count += 1
            conn = _Conn(self._connection_count, ws, request.transport, time.monotonic())
            hello = {
                "type": "hello",
                "num_connections": len(self._conns) + 1,
                "debug_info": {
                    "host": "fake-slack",
                    "build_number": 1,
                    "approximate_connection_time": 18060,
                },
                "connection_info": {"app_id": self.app_id},
            }
        try:
            await ws.send_str(json.dumps(hello))
            with self._cond:
                self._conns[conn.number] = conn
                self._cond.notify_all()
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._on_ws_text(msg.data, conn.number)
        except ConnectionError:
            pass
        finally:
            with self._cond:
                self._conns.pop(conn.number, None)
                self._cond.notify_all()
        return ws

    def _on_ws_text(self, data: str, connection: int) -> None:
        t = time.monotonic()
        try:
            msg = json.loads(data)
        except ValueError:
            msg = None
        with self._cond:
            if isinstance(msg, dict) and "envelope_id" in msg:
                envelope_id = str(msg["envelope_id"])
                sent_to = self._sent_to.get(envelope_id)
                misdirected = sent_to is not None and sent_to != connection
                if misdirected:
                    self.misdirected_acks.append((envelope_id, connection))
                if not (misdirected and self.strict_acks) and envelope_id not in self._acks:
                    self._acks[envelope_id] = (t, msg.get("payload"))
            self._cond.notify_all()

    def _live_unlocked(self) -> list[_Conn]:
        return sorted((c for c in self._conns.values() if c.live), key=lambda c: c.number)

    def _choose_unlocked(self, to: int | None, avoid: int | None) -> _Conn | None:
        """The socket for one envelope: socket `to`, else one at random, preferring sockets that were not
        sent a disconnect message and (when there is another) not socket `avoid`."""
        live = self._live_unlocked()
        if to is not None:
            return next((c for c in live if c.number == to), None)
        for pool in (
            [c for c in live if not c.draining and c.number != avoid],
            [c for c in live if c.number != avoid],
            live,
        ):
            if pool:
                return pool[0] if len(pool) == 1 else self._rng.choice(pool)
        return None

    async def _write(self, conn: _Conn, message: dict[str, Any]) -> bool:
        """Write one envelope to one socket and record it; False when the socket turned out to be gone."""
        envelope_id = str(message["envelope_id"])
        data = json.dumps(message)
        with self._cond:
            self._sent_to[envelope_id] = conn.number
        t = time.monotonic()
        try:
            await conn.ws.send_str(data)
        except ConnectionError:
            with self._cond:
                self._sent_to.pop(envelope_id, None)
                self._conns.pop(conn.number, None)
                self._cond.notify_all()
            return False
        env = Envelope(
            envelope_id,
            message["type"],
            message.get("payload", {}),
            t,
            message.get("retry_attempt"),
            message.get("retry_reason"),
            conn.number,
        )
        with self._cond:
            self._envelopes.append(env)
            self._cond.notify_all()
        if self.retry_unacked_after is not None and env.type == "events_api":
            asyncio.get_running_loop().call_later(self.retry_unacked_after, self._retry_if_unacked, env)
        return True

    async def _deliver(
        self, message: dict[str, Any], wait: float, to: int | None = None, avoid: int | None = None
    ) -> str:
        """Write one envelope to one open socket (socket `to`, else one at random, see _choose_unlocked),
        waiting up to `wait` s for one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            with self._cond:
                conn = self._choose_unlocked(to, avoid)
            if conn is not None and await self._write(conn, message):
                return str(message["envelope_id"])
            if conn is None:
                if loop.time() >= deadline:
                    where = "no Socket Mode connection is open" if to is None else f"socket {to} is not open"
                    raise NotConnectedError(where)
                await asyncio.sleep(0.005)

    async def _deliver_all(self, message: dict[str, Any], wait: float) -> list[str]:
        """Write the same envelope to every open socket (the first keeps the message's envelope id, the others
        get new ones), waiting up to `wait` s for one to be open. Returns the envelope ids, by socket number."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            with self._cond:
                conns = self._live_unlocked()
            ids: list[str] = []
            for conn in conns:
                copy_ = dict(message, envelope_id=str(message["envelope_id"]) if not ids else str(uuid.uuid4()))
                if await self._write(conn, copy_):
                    ids.append(str(copy_["envelope_id"]))
            if ids:
                return ids
            if loop.time() >= deadline:
                raise NotConnectedError("no Socket Mode connection is open")
            await asyncio.sleep(0.005)

    async def _send(self, message: dict[str, Any], wait: float, to: To) -> str:
        if to == "all":
            return (await self._deliver_all(message, wait))[0]
        return await self._deliver(message, wait, to=to)

    def _retry_if_unacked(self, env: Envelope) -> None:
        """Slack's retry of an event nobody acked in time (runs on the server loop, from call_later)."""
        with self._cond:
            if self._closing or env.envelope_id in self._acks or (env.retry_attempt or 0) >= _MAX_RETRIES:
                return
        message = {
            "envelope_id": str(uuid.uuid4()),
            "payload": copy.deepcopy(env.payload),
            "type": env.type,
            "accepts_response_payload": False,
            "retry_attempt": (env.retry_attempt or 0) + 1,
            "retry_reason": "timeout",
        }

        async def retry() -> None:
            with contextlib.suppress(NotConnectedError):
                await self._deliver(message, self.retry_unacked_after or 0.0, avoid=env.connection)

        self._spawn(retry())

    async def _close_sockets(self, close_frame: bool, code: int, message: bytes = b"") -> int:
        with self._cond:
            conns = list(self._conns.values())
        await self._close_conns(conns, close_frame, code, message)
        return len(conns)

    async def _close_conns(self, conns: list[_Conn], close_frame: bool, code: int, message: bytes = b"") -> None:
        for conn in conns:
            if close_frame and not conn.frozen:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.ws.close(code=code, message=message), 3.0)
            elif isinstance(conn.transport, asyncio.Transport):  # what aiohttp gives: a TCP transport
                conn.transport.abort()

    async def _send_to_all(self, message: dict[str, Any]) -> int:
        with self._cond:
            conns = self._live_unlocked()
            if message.get("type") == "disconnect":
                for conn in conns:
                    conn.draining = True
        sent = 0
        for conn in conns:
            with contextlib.suppress(ConnectionError):
                await conn.ws.send_str(json.dumps(message))
                sent += 1
        return sent

    # ------------------------------------------------------------------ driving the bot

    def send_envelope(
        self,
        type: str,
        payload: dict[str, Any],
        retry_num: int | None = None,
        retry_reason: str | None = None,
        accepts_response_payload: bool = False,
        *,
        envelope_id: str | None = None,
        wait: float = 5.0,
        to: To = None,
    ) -> str:
        """Send one envelope to an open socket (waiting up to `wait` s for one). Returns its id.

        to: None = one open socket at random; N = socket N (NotConnectedError when it is not open within
        `wait`); "all" = a copy to every open socket, each with its own envelope id (returns the first; see
        envelopes_for_event).
        events_api envelopes always carry retry_attempt/retry_reason (0 and "" on a first delivery, as
        Slack does); other types carry them only when retry_num is given."""
        msg: dict[str, Any] = {
            "envelope_id": envelope_id or str(uuid.uuid4()),
            "payload": payload,
            "type": type,
            "accepts_response_payload": accepts_response_payload,
        }
        if type == "events_api" or retry_num is not None:
            msg["retry_attempt"] = retry_num or 0
            msg["retry_reason"] = retry_reason if retry_reason is not None else ("timeout" if retry_num else "")
        return self._run(self._send(msg, wait, to), wait + 10.0)

    def _events_envelope(
        self, payload: dict[str, Any], retry_num: int | None, retry_reason: str | None
    ) -> dict[str, Any]:
        return {
            "envelope_id": str(uuid.uuid4()),
            "payload": payload,
            "type": "events_api",
            "accepts_response_payload": False,
            "retry_attempt": retry_num or 0,
            "retry_reason": retry_reason if retry_reason is not None else ("timeout" if retry_num else ""),
        }

    def _event_callback(self, event: dict[str, Any], event_id: str) -> dict[str, Any]:
        return {
            "token": "fake-verification-token",
            "team_id": self.team_id,
            "context_team_id": self.team_id,
            "context_enterprise_id": None,
            "api_app_id": self.app_id,
            "event": event,
            "type": "event_callback",
            "event_id": event_id,
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": self.team_id,
                    "user_id": self.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": f"4-{event.get('type', 'event')}-{self.team_id}-{event.get('channel', '')}",
        }

    def send_event(
        self,
        event: dict[str, Any],
        event_id: str | None = None,
        retry_num: int | None = None,
        retry_reason: str | None = None,
        *,
        store: bool = True,
        wait: float = 5.0,
        to: To = None,
    ) -> str:
        """Send a raw Events API event. Returns the envelope id (the first one with to="all").

        to: which socket gets it (see send_envelope).

        A retry is the same event_id with retry_num >= 1 (retry_reason defaults to "timeout").
        With store=True a plain message event (no subtype) is also put into the channel history."""
        if event_id is None:
            with self._cond:
                event_id = self._next_id("Ev")
        if store and event.get("type") == "message" and not event.get("subtype") and event.get("ts"):
            channel = str(event.get("channel", ""))
            with self._cond:
                if channel and self._find(channel, str(event["ts"])) is None:
                    stored = {k: v for k, v in event.items() if k not in ("event_ts", "channel_type")}
                    self._store(channel, copy.deepcopy(stored))
        payload = self._event_callback(copy.deepcopy(event), event_id)
        return self.send_envelope(
            "events_api", payload, retry_num=retry_num, retry_reason=retry_reason, wait=wait, to=to
        )

    def _sent_envelope(self, envelope_id: str) -> tuple[Envelope, int]:
        """An envelope sent earlier and the highest retry_attempt sent so far for its event."""
        with self._cond:
            prev = next((e for e in reversed(self._envelopes) if e.envelope_id == envelope_id), None)
            if prev is None:
                raise KeyError(envelope_id)
            event_id = prev.payload.get("event_id")
            attempts = [
                e.retry_attempt or 0
                for e in self._envelopes
                if e.envelope_id == envelope_id or (event_id is not None and e.payload.get("event_id") == event_id)
            ]
        return prev, max(attempts)

    def redeliver(
        self, envelope_id: str, reason: str = "timeout", *, wait: float = 5.0, to: To | Literal["other"] = None
    ) -> str:
        """Send an events_api envelope again as Slack's retry: same payload (and event_id), new envelope id,
        retry_attempt one higher. Returns the new envelope id (the first one with to="all").

        to: None = an open socket at random; "other" = a socket other than the one the envelope went to
        (waiting up to `wait` s for one); N = socket N; "all" = every open socket."""
        prev, attempt = self._sent_envelope(envelope_id)
        msg: dict[str, Any] = {
            "envelope_id": str(uuid.uuid4()),
            "payload": copy.deepcopy(prev.payload),
            "type": prev.type,
            "accepts_response_payload": False,
            "retry_attempt": attempt + 1,
            "retry_reason": reason,
        }
        if to == "other":

            async def go() -> str:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + wait
                while True:
                    with self._cond:
                        others = [c.number for c in self._live_unlocked() if c.number != prev.connection]
                    if others:
                        with contextlib.suppress(NotConnectedError):
                            return await self._deliver(msg, 0.0, avoid=prev.connection)
                    if loop.time() >= deadline:
                        raise NotConnectedError(f"no open socket other than socket {prev.connection}")
                    await asyncio.sleep(0.005)

            return self._run(go(), wait + 10.0)
        return self._run(self._send(msg, wait, to), wait + 10.0)

    def duplicate_to_all(
        self, envelope_id: str, *, as_retry: bool = False, reason: str = "timeout", wait: float = 5.0
    ) -> list[str]:
        """Send an envelope sent earlier again to every open socket (the one it went to included): same
        payload and event_id, a new envelope id each, as when Slack hands one event to several connections.
        With as_retry, retry_attempt is one higher than any sent so far for the event (retry_reason `reason`);
        else the original's retry fields are kept. Returns the new envelope ids, by socket number."""
        prev, attempt = self._sent_envelope(envelope_id)
        msg: dict[str, Any] = {
            "envelope_id": str(uuid.uuid4()),
            "payload": copy.deepcopy(prev.payload),
            "type": prev.type,
            "accepts_response_payload": prev.type == "slash_commands",
        }
        if as_retry:
            msg["retry_attempt"], msg["retry_reason"] = attempt + 1, reason
        elif prev.retry_attempt is not None:
            msg["retry_attempt"], msg["retry_reason"] = prev.retry_attempt, prev.retry_reason
        return self._run(self._deliver_all(msg, wait), wait + 10.0)

    def user_says(
        self,
        channel: str,
        user: str,
        text: str,
        thread_ts: str | None = None,
        mention: bool = False,
        channel_type: str = "channel",
        event_id: str | None = None,
        *,
        wait: float = 5.0,
        files: list[dict[str, Any]] | None = None,
        to: To = None,
    ) -> str:
        """A user posts a message: store it, send the `message` event and, with mention=True, also an
        `app_mention` event for the same ts (text gets a "<@BOT> " prefix unless it mentions the bot).
        Returns the message ts. event_id, when given, is used for the message event.
        to: which socket gets each event (see send_envelope); with None the two events of a mention may go
        to different sockets, as on Slack."""
        tag = f"<@{self.bot_user_id}>"
        if mention and tag not in text:
            text = f"{tag} {text}"
        with self._cond:
            ts = self._next_ts()
            msg: dict[str, Any] = {
                "type": "message",
                "ts": ts,
                "channel": channel,
                "user": user,
                "text": text,
                "team": self.team_id,
                "client_msg_id": str(uuid.uuid4()),
            }
            if files:  # a message with files, as Slack sends it (add_file makes the items)
                msg["files"] = files
                msg["subtype"] = "file_share"
            parent = None
            if thread_ts:
                msg["thread_ts"] = thread_ts
                parent = self._find(channel, thread_ts)
            self._store(channel, msg)
        base = {k: v for k, v in msg.items() if k != "channel"} | {"channel": channel, "event_ts": ts}
        if parent is not None:
            base["parent_user_id"] = parent.get("user")
        self.send_event(base | {"channel_type": channel_type}, event_id=event_id, store=False, wait=wait, to=to)
        if mention:
            self.send_event(base | {"type": "app_mention"}, store=False, wait=wait, to=to)
        return ts

    def _response_url(self, channel: str, user: str, message_ts: str | None = None) -> str:
        with self._cond:
            rid = self._next_id("R")
            self._response_urls[rid] = {"channel": channel, "user": user, "message_ts": message_ts}
        return f"{self.base_url}/response/{rid}"

    def slash_command(
        self,
        command: str = "/claude",
        text: str = "",
        user: str = "U1",
        channel: str = "C1",
        *,
        user_name: str | None = None,
        channel_name: str | None = None,
        wait: float = 5.0,
        to: To = None,
    ) -> str:
        """Send a slash command (type slash_commands, accepts_response_payload true). Returns the envelope id.
        POSTs to its response_url are recorded in fake.responses. to: which socket gets it (see send_envelope)."""
        payload = {
            "token": "fake-verification-token",
            "team_id": self.team_id,
            "team_domain": "fake-team",
            "channel_id": channel,
            "channel_name": channel_name or channel.lower(),
            "user_id": user,
            "user_name": user_name or self._user_name(user),
            "command": command,
            "text": text,
            "api_app_id": self.app_id,
            "is_enterprise_install": "false",
            "response_url": self._response_url(channel, user),
            "trigger_id": f"{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:16]}",
        }
        return self.send_envelope("slash_commands", payload, accepts_response_payload=True, wait=wait, to=to)

    def reaction_added(self, user: str, channel: str, ts: str, name: str, *, wait: float = 5.0, to: To = None) -> str:
        """A user adds a reaction to a message (recorded in the store). Returns the envelope id. to: which socket
        gets it (see send_envelope)."""
        with self._cond:
            users = self._reactions.setdefault((channel, ts), {}).setdefault(name, [])
            if user not in users:
                users.append(user)
            target = self._find(channel, ts)
            event_ts = self._next_ts()
        event = {
            "type": "reaction_added",
            "user": user,
            "reaction": name,
            "item": {"type": "message", "channel": channel, "ts": ts},
            "item_user": target.get("user") if target else None,
            "event_ts": event_ts,
        }
        return self.send_event(event, store=False, wait=wait, to=to)

    def block_action(
        self,
        user: str,
        channel: str,
        message_ts: str,
        action_id: str,
        value: str | None = None,
        *,
        block_id: str = "b1",
        action_type: str = "button",
        wait: float = 5.0,
        to: To = None,
    ) -> str:
        """A user clicks an interactive element in a message (type interactive, block_actions). to: which socket
        gets it (see send_envelope)."""
        with self._cond:
            target = self._find(channel, message_ts)
            message = self._decorated(channel, target) if target else {"ts": message_ts, "type": "message"}
            action_ts = self._next_ts()
        action: dict[str, Any] = {
            "type": action_type,
            "action_id": action_id,
            "block_id": block_id,
            "action_ts": action_ts,
        }
        if value is not None:
            action["value"] = value
        payload = {
            "type": "block_actions",
            "user": {
                "id": user,
                "username": self._user_name(user),
                "name": self._user_name(user),
                "team_id": self.team_id,
            },
            "api_app_id": self.app_id,
            "token": "fake-verification-token",
            "container": {"type": "message", "message_ts": message_ts, "channel_id": channel, "is_ephemeral": False},
            "trigger_id": f"{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:16]}",
            "team": {"id": self.team_id, "domain": "fake-team"},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": channel, "name": channel.lower()},
            "message": message,
            "response_url": self._response_url(channel, user, message_ts),
            "actions": [action],
        }
        return self.send_envelope("interactive", payload, wait=wait, to=to)

    def webhook_url(self, channel: str = "C1") -> str:
        """An Incoming Webhook URL that posts into `channel` (as the app, subtype bot_message)."""
        path = f"/services/{self.team_id}/B{next(self._ids):06d}/{uuid.uuid4().hex[:24]}"
        with self._cond:
            self._webhooks[path] = channel
        return f"{self.base_url}{path}"

    async def _handle_webhook(self, request: web.Request) -> web.Response:
        """Slack's Incoming Webhook: JSON {"text", "blocks"?, "thread_ts"?} → 200 "ok", or a plain-text error."""
        raw = await request.read()
        with self._cond:
            channel = self._webhooks.get(request.path)
            queue = self._failures.get("webhook")
            failure = queue.popleft() if queue else None
        if failure is not None:  # fail_next("webhook", status=...)
            return web.Response(status=failure.status, text=failure.error)
        if channel is None:
            return web.Response(status=404, text="no_service")
        try:
            payload = json.loads(raw)
        except ValueError:
            return web.Response(status=400, text="invalid_payload")
        if not isinstance(payload, dict) or not (payload.get("text") or payload.get("blocks")):
            return web.Response(status=400, text="no_text")
        with self._cond:
            ts = self._next_ts()
            msg: dict[str, Any] = {
                "type": "message", "subtype": "bot_message", "ts": ts, "channel": channel,
                "text": str(payload.get("text") or "")[:_TEXT_LIMIT], "bot_id": self.bot_id, "app_id": self.app_id,
            }
            if payload.get("thread_ts"):
                msg["thread_ts"] = str(payload["thread_ts"])
            self._store(channel, msg)
            self.webhook_posts.append(dict(msg))
            self._cond.notify_all()
        self._echo(self._decorated(channel, msg) | {"channel": channel, "event_ts": ts})
        return web.Response(status=200, text="ok")

    def _user_name(self, user: str) -> str:
        with self._cond:
            record = self._users.get(user)
        return record["name"] if record else f"user-{user.lower()}"

    def drop_connection(
        self, connection: int, close_frame: bool = True, *, code: int = WSCloseCode.GOING_AWAY
    ) -> bool:
        """Close one socket (see drop_connections). Returns whether it was open."""

        async def go() -> bool:
            with self._cond:
                conn = self._conns.get(connection)
            if conn is None or conn.ws.closed:
                return False
            await self._close_conns([conn], close_frame, code)
            return True

        return self._run(go(), 10.0)

    def drop_connections(self, close_frame: bool = True, *, code: int = WSCloseCode.GOING_AWAY) -> int:
        """Close every open socket: with a close frame, or (close_frame=False) by aborting the TCP
        connection. Returns how many were open."""
        return self._run(self._close_sockets(close_frame, code), 10.0)

    def freeze_connections(self) -> int:
        """Make every open socket a dead link: keep the TCP connection but stop reading from it (no pong,
        no acks read) and send nothing more on it. Only the client's ping/heartbeat can notice.
        Returns how many were frozen."""

        async def go() -> int:
            with self._cond:
                conns = self._live_unlocked()
                for conn in conns:
                    conn.frozen = True
                    if isinstance(conn.transport, asyncio.ReadTransport):
                        conn.transport.pause_reading()
                self._cond.notify_all()
            return len(conns)

        return self._run(go(), 10.0)

    def send_disconnect(self, reason: str = "refresh_requested", *, close_after: float | None = None) -> int:
        """Send Slack's {"type": "disconnect"} message to every open socket; with close_after, also close
        those sockets that many seconds later (Slack does so about 10 s after refresh_requested)."""

        async def go() -> int:
            sent = await self._send_to_all(
                {"type": "disconnect", "reason": reason, "debug_info": {"host": "fake-slack"}}
            )
            if close_after is not None:
                with self._cond:
                    conns = list(self._conns.values())

                async def close_later() -> None:
                    await asyncio.sleep(close_after)
                    for conn in conns:
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(conn.ws.close(code=WSCloseCode.GOING_AWAY), 3.0)

                self._spawn(close_later())
            return sent

        return self._run(go(), 10.0)

    # ------------------------------------------------------------------ queries for tests

    @property
    def calls(self) -> list[Call]:
        with self._cond:
            return list(self._calls)

    def count(self, method: str) -> int:
        with self._cond:
            return sum(1 for c in self._calls if c.method == method)

    def calls_of(self, method: str) -> list[Call]:
        with self._cond:
            return [c for c in self._calls if c.method == method]

    @property
    def envelopes(self) -> list[Envelope]:
        with self._cond:
            return list(self._envelopes)

    def envelopes_for(self, ts: str) -> list[Envelope]:
        """Envelopes whose event is about message `ts` (message, app_mention, reaction_added...)."""
        with self._cond:
            out = []
            for env in self._envelopes:
                event = env.payload.get("event") or {}
                if ts in (event.get("ts"), (event.get("item") or {}).get("ts")):
                    out.append(env)
            return out

    @property
    def acks(self) -> dict[str, tuple[float, Any]]:
        """envelope_id -> (time.monotonic() of the first ack, its payload or None)."""
        with self._cond:
            return dict(self._acks)

    @property
    def ephemerals(self) -> list[dict[str, Any]]:
        with self._cond:
            return copy.deepcopy(self._ephemerals)

    @property
    def responses(self) -> list[dict[str, Any]]:
        """Bodies POSTed to response_urls (slash commands, block actions)."""
        with self._cond:
            return copy.deepcopy(self._responses)

    @property
    def files(self) -> list[dict[str, Any]]:
        """Uploaded files: id, name, title, content (bytes), channel, thread_ts, initial_comment..."""
        with self._cond:
            return copy.deepcopy(list(self._files.values()))

    def file_content(self, file_id: str) -> bytes | None:
        with self._cond:
            record = self._files.get(file_id)
            return None if record is None else record["content"]

    @property
    def connections(self) -> int:
        """Sockets open now."""
        with self._cond:
            return len(self._live_unlocked())

    def connections_open(self) -> list[int]:
        """Numbers of the sockets open now (1 = the first accepted since start), ascending."""
        with self._cond:
            return [c.number for c in self._live_unlocked()]

    def envelopes_on(self, connection: int) -> list[Envelope]:
        """Envelopes written to socket `connection`, oldest first."""
        with self._cond:
            return [e for e in self._envelopes if e.connection == connection]

    def envelopes_for_event(self, event_id: str) -> list[Envelope]:
        """Every envelope that carried Events API event `event_id` (first deliveries, copies, retries)."""
        with self._cond:
            return [e for e in self._envelopes if e.payload.get("event_id") == event_id]

    def acked_envelopes(self) -> list[Envelope]:
        """Envelopes acked on the socket they went out on, in the order they were sent."""
        with self._cond:
            return [e for e in self._envelopes if e.envelope_id in self._acks]

    @property
    def connection_count(self) -> int:
        """Sockets accepted since start."""
        with self._cond:
            return self._connection_count

    def messages(self, channel: str) -> list[dict[str, Any]]:
        """Every stored message of a channel (thread replies included), oldest first. Unlike the API's
        view, every message here has "channel", "thread_ts" and "blocks" keys (None when unset)."""
        with self._cond:
            out = [self._decorated(channel, m) | {"channel": channel} for m in self._messages.get(channel, ())]
        for m in out:
            m.setdefault("thread_ts", None)
            m.setdefault("blocks", None)
        return out

    def thread(self, channel: str, ts: str) -> list[dict[str, Any]]:
        """Parent and replies of the thread `ts`, oldest first."""
        return [m for m in self.messages(channel) if m["ts"] == ts or m.get("thread_ts") == ts]

    def bot_messages(self, channel: str, thread_ts: str | None = None) -> list[dict[str, Any]]:
        """The bot's messages in a channel (all of them, or only those in thread `thread_ts`), oldest first."""
        msgs = self.thread(channel, thread_ts) if thread_ts else self.messages(channel)
        return [m for m in msgs if m.get("bot_id") == self.bot_id or m.get("user") == self.bot_user_id]

    def reactions(self, channel: str, ts: str) -> set[str]:
        """Names of the reactions on a message, whoever added them."""
        with self._cond:
            return {n for n, users in self._reactions.get((channel, ts), {}).items() if users}

    def status(self, channel: str, thread_ts: str) -> str:
        """Current assistant thread status ("" when none)."""
        with self._cond:
            return self._statuses.get((channel, thread_ts), "")

    @property
    def status_history(self) -> list[dict[str, Any]]:
        with self._cond:
            return copy.deepcopy(self._status_history)

    def describe(self, last: int = 20) -> str:
        """Summary of recent activity, for assertion messages."""
        with self._cond:
            calls = self._calls[-last:]
            lines = [
                f"fake Slack: {len(self._calls)} calls, {len(self._envelopes)} envelopes sent, "
                f"{len(self._acks)} acked, {len(self._conns)} sockets open ({self._connection_count} accepted)"
            ]
            if self._connection_count > 1:
                per = collections.Counter(e.connection for e in self._envelopes)
                live = {c.number for c in self._live_unlocked()}
                lines.append(
                    "  envelopes per socket: "
                    + ", ".join(f"{n}{'' if n in live else ' (closed)'}: {k}" for n, k in sorted(per.items()))
                )
            t0 = self._calls[0].t if self._calls else 0.0
            for c in calls:
                brief = {
                    k: (v[:60] + "..." if isinstance(v, str) and len(v) > 60 else v)
                    for k, v in c.params.items()
                    if k in ("channel", "channel_id", "ts", "thread_ts", "text", "name", "timestamp", "status", "user")
                }
                outcome = "in flight" if c.response is None else ("ok" if c.ok else f"error={c.error}")
                lines.append(f"  +{c.t - t0:8.3f}s {c.method} {brief} -> {c.status or ''} {outcome}")
            unacked = [e.envelope_id for e in self._envelopes if e.envelope_id not in self._acks]
            if unacked:
                lines.append(f"  unacked envelopes: {unacked[-10:]}")
            if self.internal_errors:
                lines.append(f"  INTERNAL ERRORS: {len(self.internal_errors)} (see fake.internal_errors)")
        return "\n".join(lines)

    # ------------------------------------------------------------------ waiting

    def wait_for(
        self, predicate: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.01, what: str | None = None
    ) -> T:
        """Poll `predicate` until it returns something truthy and return that; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what or predicate!r}\n{self.describe()}"
                )
            time.sleep(interval)

    async def async_wait_for(
        self, predicate: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.01, what: str | None = None
    ) -> T:
        """wait_for for code running on an asyncio loop (yields to the loop between polls)."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what or predicate!r}\n{self.describe()}"
                )
            await asyncio.sleep(interval)

    def _ack_of(self, envelope_id: str) -> tuple[float, Any] | None:
        with self._cond:
            return self._acks.get(envelope_id)

    def wait_ack(self, envelope_id: str, timeout: float = 5.0) -> tuple[float, Any]:
        """Wait for the bot to ack an envelope; returns (time.monotonic() of the ack, payload or None)."""
        with self._cond:
            acked = self._cond.wait_for(lambda: envelope_id in self._acks, timeout)
            result = self._acks.get(envelope_id)
        if not acked or result is None:
            raise AssertionError(f"envelope {envelope_id} not acked within {timeout} s\n{self.describe()}")
        return result

    async def async_wait_ack(self, envelope_id: str, timeout: float = 5.0) -> tuple[float, Any]:
        return await self.async_wait_for(lambda: self._ack_of(envelope_id), timeout, what=f"ack of {envelope_id}")

    def _connected(self, total: int | None, n: int = 1) -> int:
        with self._cond:
            return self._connected_unlocked(total, n)

    def _connected_unlocked(self, total: int | None, n: int = 1) -> int:
        live = len(self._live_unlocked())
        if live >= max(n, 1) and (total is None or self._connection_count >= total):
            return live
        return 0

    def wait_connected(self, timeout: float = 10.0, total: int | None = None, *, n: int = 1) -> int:
        """Wait until at least `n` sockets are open (and, with `total`, at least that many were accepted
        since start, e.g. total=2 after a drop). Returns the number of open sockets."""
        with self._cond:
            live = self._cond.wait_for(lambda: self._connected_unlocked(total, n), timeout)
        if not live:
            raise AssertionError(
                f"not {n} Socket Mode connection(s) open (total={total}) within {timeout} s\n{self.describe()}"
            )
        return live

    async def async_wait_connected(self, timeout: float = 10.0, total: int | None = None, *, n: int = 1) -> int:
        return await self.async_wait_for(
            lambda: self._connected(total, n), timeout, what=f"{n} Socket Mode connection(s)"
        )
