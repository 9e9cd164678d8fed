"""A fake Anthropic Messages API for tests that run the REAL `claude` CLI.

Point the CLI at it with ``ANTHROPIC_BASE_URL=fm.url`` (see ``FakeModel.cli_env``)::

    with FakeModel() as fm:
        fm.enqueue_tool_use("Bash", {"command": "echo hi", "description": "say hi"})
        fm.enqueue_text("done")
        run_claude(env=fm.cli_env(home))
        assert "hi" in " ".join(fm.user_texts(1))

The server is aiohttp on 127.0.0.1 (ephemeral port) in a background thread with its own event loop, so
synchronous pytest code can use it.  Replies come, in this order, from the FIFO queue filled by the
``enqueue_*`` methods, from the responder set with ``set_responder`` (if it returns a ``Reply``), and
finally from the default responder: ``"answer for XYZ"`` when the last user text holds ``[[id:XYZ]]``,
else ``"echo: <last user text>"``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = ["FakeModel", "Reply", "all_texts", "default_reply_text", "last_user_text"]

MARKER_RE = re.compile(r"\[\[id:([^\]\s]+)\]\]")
ECHO_LIMIT = 200
_IMAGE_NOTE = "[Image: source:"
_SYSTEM_REMINDER = "<system-reminder>"


@dataclass(frozen=True)
class Reply:
    """What the fake model answers to one request.

    ``text`` and ``tool_use`` may both be set (a text block then a tool_use block, like the real model).
    Neither set (and no ``error``) means "the default text for this request".
    ``delay`` waits before the response starts; ``hang`` stalls after ``message_start``.
    """

    text: str | None = None
    tool_use: tuple[str, dict[str, Any]] | None = None
    error: tuple[int, str, str] | None = None
    delay: float = 0.0
    hang: float = 0.0


Responder = Callable[[dict[str, Any]], "Reply | None"]


# ----------------------------------------------------------------------------------------------
# Request inspection helpers (pure functions, usable by tests too)
# ----------------------------------------------------------------------------------------------


def _block_texts(content: Any) -> list[str]:
    """Every text string in a message ``content`` (string, or list of blocks, tool_result included)."""
    out: list[str] = []
    if isinstance(content, str):
        out.append(content)
    elif isinstance(content, list):
        for block in content:
            if isinstance(block, str):
                out.append(block)
            elif isinstance(block, dict):
                if isinstance(block.get("text"), str):
                    out.append(block["text"])
                if "content" in block:  # tool_result (string or list of blocks)
                    out.extend(_block_texts(block["content"]))
    return out


def all_texts(body: dict[str, Any]) -> list[str]:
    """All text in a request body: system prompt, then every message of every role."""
    out = _block_texts(body.get("system"))
    for msg in body.get("messages") or []:
        if isinstance(msg, dict):
            out.extend(_block_texts(msg.get("content")))
    return out


def _user_text_candidates(content: Any) -> list[str]:
    """Text (not tool_result) blocks of one user message, in order."""
    if isinstance(content, str):
        return [content]
    out: list[str] = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, str):
                out.append(block)
            elif (
                isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
            ):
                out.append(block["text"])
    return out


def last_user_text(body: dict[str, Any]) -> str:
    """Text of the last user message's last text block (tool_result blocks skipped).

    ``<system-reminder>`` blocks the CLI adds are skipped unless nothing else is there; a user message
    holding only tool results falls back to the previous user message with text.
    """
    for msg in reversed(body.get("messages") or []):
        if not isinstance(msg, dict) or msg.get("role") != "user":
            continue
        texts = [t for t in _user_text_candidates(msg.get("content")) if t.strip()]
        if not texts:
            continue
        plain = [t for t in texts if not t.lstrip().startswith(_SYSTEM_REMINDER)]
        # the CLI follows an image block with a "[Image: source: …]" note of its own: the person's text is before it
        said = [t for t in plain if not t.lstrip().startswith(_IMAGE_NOTE)]
        return (said or plain or texts)[-1]
    return ""


def default_reply_text(body: dict[str, Any]) -> str:
    text = last_user_text(body)
    markers = MARKER_RE.findall(text)
    if markers:
        return f"answer for {markers[-1]}"
    text = " ".join(text.split())
    if len(text) > ECHO_LIMIT:
        text = text[: ECHO_LIMIT - 1].rstrip() + "…"
    return f"echo: {text}"


def _chunks(text: str, parts: int = 3) -> list[str]:
    """Split text into 2-3 non-empty pieces (one piece if it is very short)."""
    if len(text) < 2:
        return [text]
    parts = min(parts, len(text))
    size = -(-len(text) // parts)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _estimate_tokens(obj: Any) -> int:
    return max(1, len(json.dumps(obj, ensure_ascii=False)) // 4)


# ----------------------------------------------------------------------------------------------
# The fake server
# ----------------------------------------------------------------------------------------------


class FakeModel:
    """Fake Anthropic API on ``127.0.0.1``; use as ``with FakeModel() as fm:``.

    Public attributes (read them from any thread):
      url             "http://127.0.0.1:PORT"
      requests        parsed JSON bodies of POST /v1/messages, in arrival order
      request_times   time.monotonic() of each of those
      request_headers headers (lower-cased names) of each of those
      log             (method, path_qs) of every HTTP request the server saw, any route
      active          POST /v1/messages requests in flight now (arrived, response not finished,
                      scripted delays included); max_active is the peak
      cache_tokens    (cache reads, cache writes) every response reports in its usage, beside the input and output
                      tokens estimated from the request and the reply (default (0, 0)); the CLI prices them all
    """

    def __init__(self, host: str = "127.0.0.1", startup_timeout: float = 10.0) -> None:
        self.host = host
        self.port = 0
        self.url = ""
        self.requests: list[dict[str, Any]] = []
        self.request_times: list[float] = []
        self.request_headers: list[dict[str, str]] = []
        self.log: list[tuple[str, str]] = []
        self.active = 0
        self.max_active = 0
        self.cache_tokens: tuple[int, int] = (0, 0)
        self._startup_timeout = startup_timeout
        self._cond = threading.Condition()
        self._queue: collections.deque[Reply] = collections.deque()
        self._responder: Responder | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self.errors: list[BaseException] = []  # exceptions raised by a responder

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeModel:
        if self._thread is not None:
            raise RuntimeError("FakeModel already started")
        self._thread = threading.Thread(target=self._thread_main, name="fake-model", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._startup_timeout):
            self.stop()
            raise RuntimeError("fake model server did not start in time")
        if self._startup_error is not None:
            self.stop()
            raise RuntimeError("fake model server failed to start") from self._startup_error
        return self

    def stop(self, timeout: float = 5.0) -> None:
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop.set)
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise RuntimeError("fake model server thread did not stop in time")
        self._thread = None

    def __enter__(self) -> FakeModel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # pragma: no cover - surfaced through start()
            self._startup_error = e
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("HEAD", "/", self._root)
        app.router.add_route("GET", "/", self._root)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, 0)
            await site.start()
            self.port = runner.addresses[0][1]
            self.url = f"http://{self.host}:{self.port}"
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()

    # ---- scripting API (thread-safe) ---------------------------------------------------------

    def enqueue(self, reply: Reply) -> None:
        with self._cond:
            self._queue.append(reply)

    def enqueue_text(self, text: str, delay: float = 0.0) -> None:
        self.enqueue(Reply(text=text, delay=delay))

    def enqueue_tool_use(self, name: str, input: dict[str, Any], delay: float = 0.0) -> None:
        self.enqueue(Reply(tool_use=(name, dict(input)), delay=delay))

    def enqueue_error(self, status: int, error_type: str, message: str) -> None:
        self.enqueue(Reply(error=(status, error_type, message)))

    def enqueue_hang(self, seconds: float, text: str | None = None) -> None:
        self.enqueue(Reply(text=text, hang=seconds))

    def set_responder(self, fn: Responder | None) -> None:
        with self._cond:
            self._responder = fn

    def pending(self) -> int:
        """Scripted replies not consumed yet."""
        with self._cond:
            return len(self._queue)

    # ---- inspection helpers ------------------------------------------------------------------

    def user_texts(self, i: int) -> list[str]:
        """Every text string in request ``i`` (system prompt, all messages, tool results)."""
        with self._cond:
            body = self.requests[i]
        return all_texts(body)

    def last_user_text(self, i: int) -> str:
        with self._cond:
            body = self.requests[i]
        return last_user_text(body)

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Block until at least ``n`` message requests arrived; return a copy of them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"expected {n} requests to the fake model, got {len(self.requests)}")
                self._cond.wait(left)
            return list(self.requests)

    # ---- request handling --------------------------------------------------------------------

    def _record_hit(self, request: web.Request) -> None:
        with self._cond:
            self.log.append((request.method, request.path_qs))

    async def _root(self, request: web.Request) -> web.Response:
        self._record_hit(request)
        return web.Response(status=200, text="ok")

    async def _not_found(self, request: web.Request) -> web.Response:
        self._record_hit(request)
        return _error_response(404, "not_found_error", f"Not found: {request.method} {request.path}")

    async def _count_tokens(self, request: web.Request) -> web.Response:
        self._record_hit(request)
        return web.json_response({"input_tokens": 10})

    def _choose(self, body: dict[str, Any]) -> Reply:
        with self._cond:
            if self._queue:
                return self._queue.popleft()
            responder = self._responder
        if responder is not None:
            try:
                reply = responder(body)
            except Exception as e:
                self.errors.append(e)
                return Reply(error=(500, "api_error", f"fake responder raised {e!r}"))
            if reply is not None:
                return reply
        return Reply()

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        self._record_hit(request)
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _error_response(400, "invalid_request_error", "body is not JSON")
        if not isinstance(body, dict):
            return _error_response(400, "invalid_request_error", "body is not a JSON object")
        with self._cond:
            self.requests.append(body)
            self.request_times.append(time.monotonic())
            self.request_headers.append({k.lower(): v for k, v in request.headers.items()})
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self._cond.notify_all()
        try:
            return await self._answer(request, body)
        finally:
            with self._cond:
                self.active -= 1

    async def _answer(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        reply = self._choose(body)
        if reply.delay > 0:
            await self._sleep(reply.delay)
        if reply.error is not None:
            status, etype, message = reply.error
            return _error_response(status, etype, message)

        blocks = self._content_blocks(reply, body)
        stop_reason = "tool_use" if reply.tool_use is not None else "end_turn"
        model = str(body.get("model") or "claude-fake")
        msg_id = "msg_fake_" + uuid.uuid4().hex[:20]
        usage = {
            "input_tokens": _estimate_tokens(body.get("messages")),
            "cache_creation_input_tokens": self.cache_tokens[1],
            "cache_read_input_tokens": self.cache_tokens[0],
            "output_tokens": _estimate_tokens(blocks),
            "service_tier": "standard",
        }
        headers = {"request-id": "req_fake_" + uuid.uuid4().hex[:20]}
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": blocks,
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": usage,
                },
                headers=headers,
            )
        return await self._stream(request, reply, blocks, stop_reason, model, msg_id, usage, headers)

    def _content_blocks(self, reply: Reply, body: dict[str, Any]) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if reply.text is not None or reply.tool_use is None:
            text = reply.text if reply.text is not None else default_reply_text(body)
            blocks.append({"type": "text", "text": text})
        if reply.tool_use is not None:
            name, tool_input = reply.tool_use
            blocks.append(
                {
                    "type": "tool_use",
                    "id": "toolu_fake_" + uuid.uuid4().hex[:20],
                    "name": name,
                    "input": tool_input,
                }
            )
        return blocks

    async def _stream(
        self,
        request: web.Request,
        reply: Reply,
        blocks: list[dict[str, Any]],
        stop_reason: str,
        model: str,
        msg_id: str,
        usage: dict[str, Any],
        headers: dict[str, str],
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                **headers,
            },
        )
        try:
            await resp.prepare(request)

            async def send(event: str, data: dict[str, Any]) -> None:
                await resp.write(f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode())

            start_usage = dict(usage, output_tokens=1)
            await send(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": msg_id,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": start_usage,
                    },
                },
            )
            if reply.hang > 0:
                await self._sleep(reply.hang)
            await send("ping", {"type": "ping"})
            for index, block in enumerate(blocks):
                if block["type"] == "text":
                    await send(
                        "content_block_start",
                        {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": {"type": "text", "text": ""},
                        },
                    )
                    for piece in _chunks(block["text"]):
                        await send(
                            "content_block_delta",
                            {
                                "type": "content_block_delta",
                                "index": index,
                                "delta": {"type": "text_delta", "text": piece},
                            },
                        )
                else:
                    start_block = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
                    await send(
                        "content_block_start",
                        {"type": "content_block_start", "index": index, "content_block": start_block},
                    )
                    for piece in ["", *_chunks(json.dumps(block["input"], ensure_ascii=False))]:
                        await send(
                            "content_block_delta",
                            {
                                "type": "content_block_delta",
                                "index": index,
                                "delta": {"type": "input_json_delta", "partial_json": piece},
                            },
                        )
                await send("content_block_stop", {"type": "content_block_stop", "index": index})
            await send(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": usage["output_tokens"]},
                },
            )
            await send("message_stop", {"type": "message_stop"})
            await resp.write_eof()
        except ConnectionError:
            pass  # the client went away (CLI killed or interrupted): nothing to do
        return resp

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once when the server is stopping."""
        assert self._stop is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    # ---- convenience -------------------------------------------------------------------------

    def cli_env(self, home: str | Any, max_retries: int = 1) -> dict[str, str]:
        """Environment variables that make the claude CLI talk only to this fake."""
        return {
            "HOME": str(home),
            "ANTHROPIC_BASE_URL": self.url,
            "ANTHROPIC_API_KEY": "sk-test",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "CLAUDE_CODE_MAX_RETRIES": str(max_retries),
        }


def _error_response(status: int, error_type: str, message: str) -> web.Response:
    return web.json_response(
        {"type": "error", "error": {"type": error_type, "message": message}},
        status=status,
        headers={"x-should-retry": "false", "request-id": "req_fake_" + uuid.uuid4().hex[:20]},
    )
