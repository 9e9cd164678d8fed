"""The bot's local socket (SLACKBUS_HOME/bot.sock, mode 0600): hooks and `slackbus post` on this host post through
the bot. They need no Slack token (a session the bot spawned never sees one), the post lands in the bot's record at
once, and a session the bot spawned is resolved to its thread by its session id. Hand-offs from a terminal and
`slackbus attach` come in here too.

Protocol: one JSON line in, one JSON line out; bounded in size and time. The peer's uid (SO_PEERCRED) says who
really asks: an untagged post is tagged with it, and a hand-off's HOME must be the peer's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import anyio
from anyio.abc import SocketAttribute, SocketStream

from bot.bridge import protocol
from bot.bridge.blackboard import Blackboard
from bot.bridge.protocol import BusError
from bot.config import Settings
from bot.core import handoff
from bot.core import identity as ident
from bot.core.poster import Poster
from bot.core.renderer import SlackMessage
from bot.core.store import Store, ThreadSession
from bot.log import get_logger

log = get_logger("slackbus.blackboard")

MAX_REQUEST = 256 * 1024
REQUEST_TIMEOUT_S = 5.0


class SocketServer:
    def __init__(
        self,
        blackboard: Blackboard,
        settings: Settings,
        store: Store,
        poster: Poster,
        *,
        forget_warm: Callable[[tuple[str, str]], None],
    ) -> None:
        """`forget_warm`: closes a thread's warm process when a terminal takes its session (SessionManager's)."""
        self._board = blackboard
        self._settings = settings
        self._store = store
        self._poster = poster
        self._forget_warm = forget_warm
        self.socket_path = settings.home / protocol.SOCKET_NAME

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
                channel, ts = await self._board.post(
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
                return {"ok": True, "sessions": self._board.sessions(str(request.get("channel") or ""))}
            if op == "where":
                where = self._board.where(_opt(request.get("session_id")))
                return {"ok": True, "channel": where[0] if where else None, "thread_ts": where[1] if where else None}
            if op == "ping":
                return {"ok": True, "transport": self._settings.transport, "local_dir": str(self._settings.local_dir)}
        except BusError as exc:
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
            raise BusError(f"A hand-off's HOME must be your own: {home} does not belong to the user asking.")
        channel = _opt(request.get("channel"))
        if not session_id or not cwd:
            raise BusError("Which session? Run `slackbus handoff` inside Claude Code, or give --session and --cwd.")
        if not channel:
            raise BusError("No channel to hand off to: pass --channel or set SLACKBUS_CHANNEL.")
        real = self._settings.within_roots(Path(cwd))
        if real is None:
            roots = ", ".join(str(r) for r in self._settings.roots)
            raise BusError(f"{cwd} is outside the folders this bot may work in (SLACKBUS_ROOTS: {roots}), so it "
                               "cannot continue that session.")
        if not self._settings.is_channel_allowed(channel):
            raise BusError(f"slackbus is not enabled in {channel} (SLACKBUS_ALLOWED_CHANNELS).")
        if not handoff.session_exists(home, str(real), session_id):
            raise BusError(f"No Claude Code session {session_id} in {real} under HOME {home}: check --session, "
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
            raise BusError("That thread has no Claude session (yet): check the link.")
        home = self._store.handoff_home(channel, thread_ts) or handoff.HOME
        self._store.record_handoff(channel, thread_ts, thread.session_id, thread.workdir, home, by=by,
                                   direction="to_terminal")
        self._forget_warm((channel, thread_ts))
        return {"ok": True, "session_id": thread.session_id, "workdir": thread.workdir, "home": home,
                "command": handoff.resume_command(thread.workdir, thread.session_id, home)}


def _opt(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _someone_listens(path: Path) -> bool:
    """Another bot (or anything) already serves this socket: it takes the connection."""
    return protocol.ping(str(path), timeout=0.5) is not None


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
