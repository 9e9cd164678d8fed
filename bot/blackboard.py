"""The shared channel as the bot serves it to Claude Code sessions: a local socket and MCP tools.

- The socket (SLACKBUS_HOME/bot.sock, mode 0600) lets hooks and `slackbus post` on this host post through
  the bot: they need no Slack token (a session the bot spawned never sees one), the post lands in the bot's
  record at once, and a session the bot spawned is resolved to its thread by its session id.
  Protocol: one JSON line in, one JSON line out; bounded in size and time.
- The MCP tools (claude-agent-sdk's in-process server "slackbus") give a session the bot spawned the
  blackboard live, mid-run: `post` to the channel, `read` it since a time, `sessions` active in it.

Every post is tagged with the writing session (bot.identity), so a channel with several sessions reads clearly.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import anyio
from anyio.abc import SocketAttribute, SocketStream
from claude_agent_sdk import create_sdk_mcp_server, tool
from claude_agent_sdk.types import McpSdkServerConfig

from bot import bus, handoff
from bot import identity as ident
from bot.config import Settings
from bot.log import get_logger
from bot.poster import Poster
from bot.renderer import SlackMessage
from bot.store import Store, ThreadSession

log = get_logger("slackbus.blackboard")

MAX_REQUEST = 256 * 1024
REQUEST_TIMEOUT_S = 5.0
ACTIVE_WINDOW_S = 3600.0
MCP_SERVER = "slackbus"
MCP_TOOLS = f"mcp__{MCP_SERVER}"  # allow rule for every tool of the server


class Blackboard:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        poster: Poster,
        *,
        name_of: Callable[[str], str],
        cwd_of: Callable[[str], Path | None],
    ) -> None:
        self._settings = settings
        self._store = store
        self._poster = poster
        self._name_of = name_of
        self._cwd_of = cwd_of  # session id → its working directory, for sessions the bot runs
        self.socket_path = settings.home / bus.SOCKET_NAME
        self.forget_warm: Callable[[tuple[str, str]], None] = lambda key: None  # set by the app (SessionManager)

    # --- operations ----------------------------------------------------------------------------------
    def identity(self, session_id: str) -> ident.Identity:
        cwd = self._cwd_of(session_id)
        return ident.resolve(self._settings.child_env, session_id=session_id, cwd=str(cwd) if cwd else None)

    def where(self, session_id: str | None) -> tuple[str, str] | None:
        return self._store.thread_of_session(session_id) if session_id else None

    async def post(
        self, text: str, *, channel: str | None, thread_ts: str | None, session_id: str | None
    ) -> tuple[str, str]:
        """Post already-tagged text; returns (channel, ts). Raises bus.BusError with a sentence for the caller.

        With no channel, a session the bot runs posts in its own thread."""
        if not channel:
            where = self.where(session_id)
            if where is None:
                raise bus.BusError("No channel to post to: set SLACKBUS_CHANNEL or pass --channel.")
            channel, thread_ts = where
        if not self._settings.is_channel_allowed(channel):
            raise bus.BusError(f"slackbus is not enabled in {channel} (SLACKBUS_ALLOWED_CHANNELS).")
        text = text.strip()[: bus.MAX_POST_CHARS]
        if not text:
            raise bus.BusError("Nothing to post: the text is empty.")
        ts = await self._poster.post(channel, thread_ts or None, SlackMessage(text=text))
        log.info("blackboard.posted", channel=channel, thread_ts=thread_ts, ts=ts, session_id=session_id)
        return channel, ts

    def read(
        self, channel: str, *, since: str | None, limit: int, thread_ts: str | None = None
    ) -> list[bus.BusMessage]:
        rows = self._store.messages_after(channel, since or "", limit, thread_ts=thread_ts)
        names = {m.user: self._name_of(m.user) for m in rows if m.user}
        out = []
        for m in rows:
            author, body = bus.author_of(m.text, m.user, m.bot_id, m.from_self, names)
            out.append(bus.BusMessage(channel, m.ts, m.thread_ts, author, body))
        return out

    def sessions(self, channel: str) -> list[str]:
        """Sessions active in the channel in the last hour: the bot's own runs, and every tagged writer."""
        since = time.time() - ACTIVE_WINDOW_S
        lines: list[str] = []
        seen: set[str] = set()
        for session_id, thread_ts, status, started in self._store.recent_runs(channel, since):
            short = ident.short_id(session_id)
            if short in seen:
                continue
            seen.add(short)
            who = self.identity(session_id)
            state = "working now" if status == "running" else f"last ran {bus.clock(f'{started:.6f}')}"
            lines.append(f"{who.label}: run by the bot in thread {thread_ts}, {state}")
        for m in reversed(self._store.messages_after(channel, f"{since:.6f}", 500)):
            writer, _ = ident.parse(m.text)
            if writer is not None and writer.short not in seen:
                seen.add(writer.short)
                lines.append(f"{writer.label}: last posted {bus.clock(m.ts)}")
        return lines

    # --- the socket ------------------------------------------------------------------------------------
    async def serve_socket(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        path = self.socket_path
        if _someone_listens(path):
            log.warning("blackboard.socket_taken", path=str(path))
            task_status.started()
            return
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        old_umask = os.umask(0o177)
        try:
            listener = await anyio.create_unix_listener(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        log.info("blackboard.listening", path=str(path))
        task_status.started()
        try:
            async with listener:
                await listener.serve(self._handle)
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

    async def _handle(self, stream: SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(REQUEST_TIMEOUT_S):
                    raw = b""
                    while not raw.endswith(b"\n") and len(raw) < MAX_REQUEST:
                        raw += await stream.receive(65536)
                answer = await self._answer(json.loads(raw), _peer(stream))
            except TimeoutError:
                answer = {"ok": False, "error": "request timed out"}
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            except ValueError:
                answer = {"ok": False, "error": "the request is not JSON"}
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError), anyio.move_on_after(1):
                await stream.send(json.dumps(answer).encode() + b"\n")

    async def _answer(self, request: Any, peer: Peer | None = None) -> dict[str, Any]:
        if not isinstance(request, dict):
            return {"ok": False, "error": "the request is not a JSON object"}
        op = request.get("op")
        try:
            if op == "post":
                text = str(request.get("text") or "")
                if ident.parse(text)[0] is None:  # untagged: say who really wrote it, as the OS tells it
                    text = _peer_identity(peer).tag(text)
                channel, ts = await self.post(
                    text,
                    channel=_opt(request.get("channel")),
                    thread_ts=_opt(request.get("thread_ts")),
                    session_id=_opt(request.get("session_id")),
                )
                return {"ok": True, "channel": channel, "ts": ts}
            if op == "handoff":
                return await self.handoff(request, peer)
            if op == "attach":
                return self.attach(str(request.get("channel") or ""), str(request.get("thread_ts") or ""),
                                   _opt(request.get("by")))
            if op == "sessions":
                return {"ok": True, "sessions": self.sessions(str(request.get("channel") or ""))}
            if op == "where":
                where = self.where(_opt(request.get("session_id")))
                return {"ok": True, "channel": where[0] if where else None, "thread_ts": where[1] if where else None}
            if op == "ping":
                return {"ok": True, "transport": self._settings.transport, "local_dir": str(self._settings.local_dir)}
        except bus.BusError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.warning("blackboard.request_failed", op=op, error=str(exc))
            return {"ok": False, "error": f"the post failed: {exc}"}
        return {"ok": False, "error": f"unknown op {op!r}"}

    async def handoff(self, request: dict[str, Any], peer: Peer | None = None) -> dict[str, Any]:
        """A terminal hands a session to a thread: post the hand-off, map the thread to the session, record it.

        The HOME the session lives under must be the caller's own (as the OS tells the socket's peer): a caller
        cannot make the bot resume, as itself, a session from someone else's HOME."""
        session_id = _opt(request.get("session_id"))
        cwd = _opt(request.get("cwd"))
        home = _opt(request.get("home")) or handoff.HOME
        if not _owns(peer, home):
            raise bus.BusError(f"A hand-off's HOME must be your own: {home} does not belong to the user asking.")
        channel = _opt(request.get("channel"))
        if not session_id or not cwd:
            raise bus.BusError("Which session? Run `slackbus handoff` inside Claude Code, or give --session and --cwd.")
        if not channel:
            raise bus.BusError("No channel to hand off to: pass --channel or set SLACKBUS_CHANNEL.")
        real = self._settings.within_roots(Path(cwd))
        if real is None:
            roots = ", ".join(str(r) for r in self._settings.roots)
            raise bus.BusError(f"{cwd} is outside the folders this bot may work in (SLACKBUS_ROOTS: {roots}), so it "
                               "cannot continue that session.")
        if not self._settings.is_channel_allowed(channel):
            raise bus.BusError(f"slackbus is not enabled in {channel} (SLACKBUS_ALLOWED_CHANNELS).")
        if not handoff.session_exists(home, str(real), session_id):
            raise bus.BusError(f"No Claude Code session {session_id} in {real} under HOME {home}: check --session, "
                               "--cwd and that the bot runs as the same user.")
        who = _opt(request.get("by")) or "someone"
        last = (_opt(request.get("last")) or "").strip()
        note = (_opt(request.get("note")) or "").strip()
        lines = [f":handshake: *{who}* handed over a Claude Code session from a terminal: `{session_id[:8]}` in "
                 f"`{real}`."]
        if note:
            lines.append(f"*Note:* {note}")
        if last:
            quoted = "\n".join("> " + x for x in last[:1500].splitlines())
            lines.append(f"*Last answer there:*\n{quoted}")
        lines.append("Reply in this thread to continue that session here.")
        ts = await self._poster.post(channel, None, SlackMessage(text="\n".join(lines)))
        self._store.save_thread(ThreadSession(channel, ts, session_id, str(real), True, ts, None))
        self._store.record_handoff(channel, ts, session_id, str(real), home, by=who, direction="to_slack")
        log.info("blackboard.handoff", channel=channel, thread_ts=ts, session_id=session_id, workdir=str(real))
        return {"ok": True, "channel": channel, "ts": ts}

    def attach(self, channel: str, thread_ts: str, by: str | None) -> dict[str, Any]:
        """A terminal takes a thread's session: the command to run, recorded; the warm process here is closed."""
        thread = self._store.get_thread(channel, thread_ts)
        if thread is None or not thread.started or not thread.session_id:
            raise bus.BusError("That thread has no Claude session (yet): check the link.")
        home = self._store.handoff_home(channel, thread_ts) or handoff.HOME
        self._store.record_handoff(channel, thread_ts, thread.session_id, thread.workdir, home, by=by,
                                   direction="to_terminal")
        self.forget_warm((channel, thread_ts))
        return {"ok": True, "session_id": thread.session_id, "workdir": thread.workdir, "home": home,
                "command": handoff.resume_command(thread.workdir, thread.session_id, home)}

    # --- MCP tools for sessions the bot spawns ---------------------------------------------------------
    def mcp_server(self, session_id: str) -> McpSdkServerConfig:
        board = self

        def result(text: str, error: bool = False) -> dict[str, Any]:
            return {"content": [{"type": "text", "text": text}], "is_error": error}

        def here() -> tuple[str, str] | None:
            return board.where(session_id)

        @tool(
            "post",
            "Post a message to this session's shared Slack channel (the blackboard other sessions and people "
            "read). Use it for findings others should know now. in_thread=true posts in your own thread instead.",
            {
                "type": "object",
                "properties": {"text": {"type": "string"}, "in_thread": {"type": "boolean"}},
                "required": ["text"],
            },
        )
        async def post(args: dict[str, Any]) -> dict[str, Any]:
            where = here()
            if where is None:
                return result("This session has no channel yet.", True)
            try:
                _, ts = await board.post(
                    board.identity(session_id).tag(str(args.get("text") or "")),
                    channel=where[0],
                    thread_ts=where[1] if args.get("in_thread") else None,
                    session_id=session_id,
                )
            except bus.BusError as exc:
                return result(str(exc), True)
            except Exception as exc:
                return result(f"The post failed: {exc}", True)
            return result(f"Posted to the channel (ts {ts}).")

        @tool(
            "read",
            "Read the shared Slack channel's messages, oldest first: what people and other sessions posted. "
            "since: 10m, 2h, 1d or a Slack ts (default: the last 30 messages).",
            {
                "type": "object",
                "properties": {"since": {"type": "string"}, "limit": {"type": "integer"}},
            },
        )
        async def read(args: dict[str, Any]) -> dict[str, Any]:
            where = here()
            if where is None:
                return result("This session has no channel yet.", True)
            try:
                since = bus.parse_since(str(args.get("since") or "") or None)
            except bus.BusError as exc:
                return result(str(exc), True)
            limit = max(1, min(int(args.get("limit") or 30), 200))
            lines = [m.data_line() for m in board.read(where[0], since=since, limit=limit)]  # data, escaped
            return result("\n".join(lines) if lines else "No messages in that range.")

        @tool("sessions", "List the Claude Code sessions active in the shared channel in the last hour.",
              {"type": "object", "properties": {}})
        async def sessions(args: dict[str, Any]) -> dict[str, Any]:
            where = here()
            if where is None:
                return result("This session has no channel yet.", True)
            lines = board.sessions(where[0])
            return result("\n".join(lines) if lines else "No other sessions seen in the last hour.")

        return create_sdk_mcp_server(MCP_SERVER, tools=[post, read, sessions])


def _opt(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _someone_listens(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


class Peer(NamedTuple):
    """Who is at the other end of the socket, as the kernel tells it (SO_PEERCRED), not as the request says."""

    pid: int
    uid: int


def _peer(stream: SocketStream) -> Peer | None:
    try:
        raw = stream.extra(SocketAttribute.raw_socket)
        data = raw.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", data)
    except (OSError, AttributeError, anyio.TypedAttributeLookupError, struct.error):
        return None
    return Peer(pid, uid)


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _owns(peer: Peer | None, home: str) -> bool:
    """The folder belongs to the socket's peer (the kernel's word for who asks, not the request's)."""
    if peer is None:
        return False
    try:
        return os.stat(home).st_uid == peer.uid
    except OSError:
        return False


def _peer_identity(peer: Peer | None) -> ident.Identity:
    if peer is None:
        return ident.Identity("socket", "unknown writer via the socket")
    return ident.Identity(f"pid{peer.pid}", ident.clean_name(f"{_user_name(peer.uid)} pid {peer.pid} via the socket"))
