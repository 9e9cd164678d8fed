"""The bus client: how a hook, `slackbus post` or `slackbus read` reaches the shared channel.

Posting, first that works:
  1. the bot's local socket (SLACKBUS_HOME/bot.sock) when the bot runs on this host: no token needed, the
     bot records the post at once, and sessions it spawned are resolved to their thread;
  2. the Web API with SLACK_BOT_TOKEN (chat.postMessage);
  3. an Incoming Webhook (SLACK_WEBHOOK_URL): push-only, the channel is fixed by the webhook.
Reading, first that works:
  1. the bot's own record (SQLite, opened read-only) when it knows the channel: no Slack call at all;
  2. the Web API with SLACK_BOT_TOKEN, paced: at most one conversations.history call per channel per
     SLACKBUS_HISTORY_INTERVAL seconds (Slack allows self-hosted apps about one a minute); in between, a cache
     file plus what this host posted since.

Stdlib only (and bot.config / bot.core.identity, themselves light): a hook runs as a fresh process per event,
so start-up time is latency every Claude Code session pays. Nothing here opens a Socket Mode connection.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from bot.core import identity as ident
from bot.envfile import DEFAULT_SLACK_API_URL, read_environment

if TYPE_CHECKING:
    import sqlite3

MAX_POST_CHARS = 3900  # one readable Slack message; hooks trim before this
SOCKET_NAME = "bot.sock"
DB_NAME = "slackbus.db"


class BusError(Exception):
    """A post or read that cannot be done; the message says what to set."""


class BusSettings(NamedTuple):
    home: str
    channel: str | None
    thread_ts: str | None
    session_id: str | None
    bot_token: str | None
    webhook_url: str | None
    api_url: str
    timeout: float  # per network call
    history_interval: float
    spawned: bool  # a session the bot started (it gives context and posts answers itself)
    local_dir: str | None = None  # SLACKBUS_TRANSPORT=local: the channel files' folder (no Slack at all)
    secrets: tuple[str, ...] = ()  # values of this process's secret settings: masked in what it posts

    @property
    def socket_path(self) -> str:
        return os.path.join(self.home, SOCKET_NAME)

    @property
    def db_path(self) -> str:
        return os.path.join(self.home, DB_NAME)


def positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        value = float(env.get(name, "") or default)
    except ValueError:
        return default
    return value if value > 0 else default


def load(env: Mapping[str, str] | None = None, *, env_file: str | None = None) -> BusSettings:
    merged = read_environment(env, env_file)
    api_url = merged.get("SLACK_API_URL", "").strip() or DEFAULT_SLACK_API_URL
    if not api_url.endswith("/"):
        api_url += "/"
    home = os.path.expanduser(merged.get("SLACKBUS_HOME", "").strip() or os.path.join("~", ".slackbus"))
    token = merged.get("SLACK_BOT_TOKEN", "").strip()
    webhook = merged.get("SLACK_WEBHOOK_URL", "").strip()
    return BusSettings(
        home=home,
        channel=merged.get("SLACKBUS_CHANNEL", "").strip() or None,
        thread_ts=merged.get("SLACKBUS_THREAD_TS", "").strip() or None,
        session_id=merged.get("SLACKBUS_SESSION_ID", "").strip() or None,
        bot_token=token if token.startswith("xoxb-") else None,
        webhook_url=webhook if webhook.startswith(("http://", "https://")) else None,
        api_url=api_url,
        timeout=positive_float(merged, "SLACKBUS_HOOK_TIMEOUT", 3.0),
        history_interval=positive_float(merged, "SLACKBUS_HISTORY_INTERVAL", 60.0),
        spawned=merged.get("SLACKBUS_SPAWNED", "") == "1",
        local_dir=_local_dir(merged, home) if merged.get("SLACKBUS_TRANSPORT", "").strip().lower() == "local" else None,
        secrets=tuple(v for k, v in merged.items() if _secret_name(k) and len(v) >= 8),
    )


def _secret_name(name: str) -> bool:
    """Named like a secret (bot.redact.SECRET_NAME, without importing `re` into every hook)."""
    upper = name.upper()
    return any(word in upper for word in ("TOKEN", "SECRET", "KEY", "PASSWORD", "WEBHOOK"))


def _local_dir(env: Mapping[str, str], home: str) -> str:
    from bot.local.channel import channel_dir

    return channel_dir(home, dict(env))


class BusMessage(NamedTuple):
    channel: str
    ts: str
    thread_ts: str | None
    author: str  # "alice", "session 1a2b3c4d (api-server)", "slackbus"
    text: str  # without the identity tag

    def line(self, limit: int = 2000) -> str:
        text = self.text.strip()
        if len(text) > limit:
            text = text[:limit].rstrip() + f" … [{len(text) - limit} more characters]"
        return f"[{clock(self.ts)}] {self.author}: {text}"

    def data_line(self, limit: int = 2000) -> str:
        """The line as it goes into a prompt, as data: `&`, `<` and `>` as entities (so no message can close or
        imitate the framing around it), the author on one line, the message's further lines indented."""
        text = entities(self.text.strip())
        if len(text) > limit:
            text = text[:limit].rstrip() + f" … [{len(text) - limit} more characters]"
        first, *rest = text.splitlines() or [""]
        author = " ".join(entities(self.author).split())
        return "\n".join([f"[{clock(self.ts)}] {author}: {first}", *("    " + r for r in rest)])


def entities(text: str) -> str:
    """Slack's own escaping undone, then `&`, `<`, `>` (and `"`) escaped once: data that frames cannot break."""
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def clock(ts: str) -> str:
    from datetime import datetime

    try:
        return datetime.fromtimestamp(float(ts)).strftime("%H:%M")
    except (ValueError, OverflowError, OSError):
        return "--:--"


def parse_since(raw: str | None, now: float | None = None) -> str | None:
    """`10m`, `2h`, `1d`, `90s`, a Slack ts or epoch seconds, or an ISO time → a Slack ts to read after."""
    if not raw:
        return None
    from datetime import datetime

    now = time.time() if now is None else now
    value = raw.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1:] in units and _number(value[:-1].strip()):
        return f"{now - float(value[:-1]) * units[value[-1]]:.6f}"
    if _number(value):
        return f"{float(value):.6f}"
    try:
        return f"{datetime.fromisoformat(raw.strip()).timestamp():.6f}"
    except ValueError:
        raise BusError(f"--since {raw!r} is not a time: use 10m, 2h, 1d, a Slack ts or an ISO time.") from None


def _number(text: str) -> bool:
    whole, _, frac = text.partition(".")
    return whole.isdigit() and (not frac or frac.isdigit()) and whole.isascii() and frac.isascii()


# --- posting -------------------------------------------------------------------------------------------
class Posted(NamedTuple):
    via: str  # "bot", "api", "webhook"
    channel: str | None
    ts: str | None


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
        return _post_local(s, channel, thread_ts, body)
    if os.path.exists(s.socket_path):
        answer = _ask_bot(
            s,
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
        data = _api(s, "chat.postMessage", params, deadline)
        ts = str(data.get("ts") or "")
        _remember_post(s, channel, BusMessage(channel, ts, thread_ts, who.label, mask(s, text.strip())))
        return Posted("api", channel, ts)
    if s.webhook_url:
        payload: dict[str, Any] = {"text": body}
        if thread_ts:
            payload["thread_ts"] = thread_ts
        _http(s.webhook_url, json.dumps(payload).encode(), {"Content-Type": "application/json"}, deadline)
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


def _post_local(s: BusSettings, channel: str | None, thread_ts: str | None, body: str) -> Posted:
    """A session's post, appended to the file of the OS user running it (its author is that file's owner)."""
    from bot.local.channel import LocalChannel

    assert s.local_dir is not None
    if not channel:
        raise BusError("No channel to post to: set SLACKBUS_CHANNEL or pass --channel (a local channel's name).")
    try:
        rec = LocalChannel(s.local_dir, channel.lstrip("#")).append(
            {"kind": "message", "thread_ts": thread_ts, "session": True, "text": body}
        )
    except (OSError, ValueError) as exc:
        raise BusError(f"The local channel {channel} cannot be written ({exc}).") from None
    return Posted("local", channel, rec.ts)


def _read_local(
    s: BusSettings, channel: str, *, thread_ts: str | None, since: str | None, limit: int
) -> list[BusMessage]:
    """The channel's messages, authors from the files' owners; a malformed line is skipped with a note on stderr."""
    from bot.local.channel import LocalChannel, ts_key

    assert s.local_dir is not None
    try:
        records = LocalChannel(s.local_dir, channel).records(on_skip=_local_skipped)
    except (OSError, ValueError) as exc:
        raise BusError(str(exc)) from None
    texts: dict[str, tuple[Any, str]] = {}  # ts → (its record, its text after the bot's edits)
    for r in records:
        if r.kind == "message":
            texts[r.ts] = (r, r.text)
        elif r.kind == "edit" and r.target in texts and texts[r.target][0].bot:
            texts[r.target] = (texts[r.target][0], r.text)
    out = []
    for r, text in texts.values():
        t_ts = r.thread_ts
        if thread_ts and not (t_ts == thread_ts or r.ts == thread_ts):
            continue
        if not thread_ts and t_ts and t_ts != r.ts:
            continue
        if since and ts_key(r.ts) <= _ts_key_or_zero(since):
            continue
        author, body = author_of(text, None if r.session else r.user, "session" if r.session else None, r.bot, {})
        out.append(BusMessage(channel, r.ts, t_ts, author, body))
    return out[-limit:]


def _ts_key_or_zero(ts: str) -> int:
    from bot.local.channel import ts_key

    try:
        return ts_key(ts)
    except ValueError:
        return 0


def _local_skipped(file: str, line: int | None, why: str) -> None:
    import sys

    print(f"slackbus: skipped {file}{f':{line}' if line else ''}: {why}", file=sys.stderr)


def _ask_bot(s: BusSettings, request: dict[str, Any], deadline: float) -> dict[str, Any] | None:
    """One request to the bot's socket; None when no bot listens there (a stale socket file)."""
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(max(deadline - time.monotonic(), 0.05))
            sock.connect(s.socket_path)
            sock.sendall(json.dumps(request).encode() + b"\n")
            chunks: list[bytes] = []
            while True:
                sock.settimeout(max(deadline - time.monotonic(), 0.05))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if chunk.endswith(b"\n"):
                    break
    except (ConnectionRefusedError, FileNotFoundError):
        return None
    except TimeoutError:
        raise BusError("The slackbus bot did not answer in time.") from None
    except OSError as exc:
        raise BusError(f"The slackbus bot's socket failed ({exc.strerror or exc}).") from None
    try:
        answer = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        raise BusError("The slackbus bot sent an unreadable answer.") from None
    return answer if isinstance(answer, dict) else None


def ask_bot(s: BusSettings, request: dict[str, Any], timeout: float | None = None) -> dict[str, Any] | None:
    if not os.path.exists(s.socket_path):
        return None
    return _ask_bot(s, request, time.monotonic() + (timeout or s.timeout))


def _http(url: str, data: bytes, headers: dict[str, str], deadline: float) -> tuple[int, bytes, Mapping[str, str]]:
    """One POST. Plain sockets (plus ssl for https): http.client and urllib pull in the email package, which
    costs a hook process ~60 ms to import. Behind a proxy (HTTPS_PROXY …) urllib does the work instead."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return _http_urllib(url, data, headers, deadline)
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close", "User-Agent: slackbus-hook",
            f"Content-Length: {len(data)}"] + [f"{k}: {v}" for k, v in headers.items()]
    raw = b""
    try:
        sock = socket.create_connection((host, port), timeout=max(deadline - time.monotonic(), 0.05))
        if secure:
            import ssl

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        with sock:
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data)
            while len(raw) < 8 * 1024 * 1024:
                sock.settimeout(max(deadline - time.monotonic(), 0.05))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                raw += chunk
    except OSError as exc:
        raise BusError(f"Slack cannot be reached ({type(exc).__name__}: {exc}).") from None
    status, answer_headers, body = _parse_response(raw)
    if status == 429:
        raise RateLimited(float(answer_headers.get("retry-after") or 60))
    if status >= 400 or status == 0:
        detail = body.decode("utf-8", "replace").strip()[:100]
        raise BusError(f"Slack answered HTTP {status}{f' ({detail})' if detail else ''}.")
    return status, body, answer_headers


def _parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("iso-8859-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        return 0, {}, b"unreadable answer"
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = b""
        while body:
            size_line, _, rest = body.partition(b"\r\n")
            try:
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
            except ValueError:
                break
            if size == 0:
                break
            out += rest[:size]
            body = rest[size + 2:]
        body = out
    elif "content-length" in headers and headers["content-length"].isdigit():
        body = body[: int(headers["content-length"])]
    return status, headers, body


def _http_urllib(
    url: str, data: bytes, headers: dict[str, str], deadline: float
) -> tuple[int, bytes, Mapping[str, str]]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=max(deadline - time.monotonic(), 0.05)) as resp:
            return int(resp.status), resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        if exc.code == 429:
            raise RateLimited(float(exc.headers.get("Retry-After") or 60)) from None
        raise BusError(f"Slack answered HTTP {exc.code}.") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise BusError(f"Slack cannot be reached ({getattr(exc, 'reason', exc)}).") from None


class RateLimited(BusError):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"Slack is rate-limiting this call; try again in {retry_after:g} s.")
        self.retry_after = retry_after


def _api(s: BusSettings, method: str, params: dict[str, Any], deadline: float) -> dict[str, Any]:
    assert s.bot_token
    _, raw, _ = _http(
        s.api_url + method,
        json.dumps(params).encode(),
        {"Content-Type": "application/json; charset=utf-8", "Authorization": f"Bearer {s.bot_token}"},
        deadline,
    )
    try:
        data = json.loads(raw)
    except ValueError:
        raise BusError(f"Slack's {method} sent an unreadable answer.") from None
    if not data.get("ok"):
        error = data.get("error", "unknown_error")
        hint = {
            "not_in_channel": " (invite the bot to the channel)",
            "channel_not_found": " (check SLACKBUS_CHANNEL: a channel id like C0123ABCD)",
            "invalid_auth": " (check SLACK_BOT_TOKEN)",
            "missing_scope": " (the app needs the scope Slack names; see manifest.yaml)",
        }.get(str(error), "")
        raise BusError(f"Slack's {method} failed: {error}{hint}.")
    return dict(data)


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
    where they came from ("record" or "api")."""
    channel = channel or s.channel
    if not channel:
        raise BusError("No channel to read: set SLACKBUS_CHANNEL or pass --channel.")
    deadline = deadline or time.monotonic() + s.timeout
    if s.local_dir is not None:
        return _read_local(s, channel.lstrip("#"), thread_ts=thread_ts, since=since, limit=limit), "local"
    channel = resolve_channel(s, channel)
    found = read_record(s, channel, thread_ts=thread_ts, since=since, limit=limit)
    if found is not None:
        return found, "record"
    if s.bot_token:
        return _read_api(s, channel, thread_ts=thread_ts, since=since, limit=limit, deadline=deadline), "api"
    raise BusError(
        "Reading the channel needs the slackbus bot's record on this host (run `slackbus run` here) or "
        "SLACK_BOT_TOKEN; an Incoming Webhook can only post."
    )


@contextlib.contextmanager
def _record(s: BusSettings) -> Iterator[sqlite3.Connection | None]:
    import sqlite3

    if not os.path.isfile(s.db_path):
        yield None
        return
    try:
        db = sqlite3.connect(f"file:{s.db_path}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        yield None
        return
    try:
        yield db
    finally:
        db.close()


def resolve_channel(s: BusSettings, channel: str) -> str:
    """`#name` → its id, from the bot's record."""
    import sqlite3

    if not channel.startswith("#"):
        return channel
    with _record(s) as db:
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                row = db.execute("SELECT channel FROM channels WHERE name=?", (channel[1:],)).fetchone()
                if row:
                    return str(row[0])
    raise BusError(f"Channel {channel} is unknown here: use its id (like C0123ABCD).")


def read_record(
    s: BusSettings, channel: str, *, thread_ts: str | None = None, since: str | None = None, limit: int = 50
) -> list[BusMessage] | None:
    """From the bot's SQLite record; None when there is no record or it does not know the channel."""
    import sqlite3

    with _record(s) as db:
        if db is None:
            return None
        try:
            known = db.execute(
                "SELECT 1 FROM channels WHERE channel=? UNION ALL SELECT 1 FROM messages WHERE channel=? LIMIT 1",
                (channel, channel),
            ).fetchone()
            if not known:
                return None
            if thread_ts:
                rows = db.execute(
                    "SELECT ts, thread_ts, user, bot_id, text, from_self FROM messages WHERE channel=?"
                    " AND (thread_ts=? OR ts=?) AND ts > ? ORDER BY ts DESC LIMIT ?",
                    (channel, thread_ts, thread_ts, since or "", limit),
                ).fetchall()
            else:
                rows = db.execute(
                    "SELECT ts, thread_ts, user, bot_id, text, from_self FROM messages WHERE channel=?"
                    " AND (thread_ts IS NULL OR thread_ts=ts) AND ts > ? ORDER BY ts DESC LIMIT ?",
                    (channel, since or "", limit),
                ).fetchall()
            names = dict(db.execute("SELECT user_id, name FROM users").fetchall())
        except sqlite3.Error:
            return None
    out: list[BusMessage] = []
    for ts, t_ts, user, bot_id, text, from_self in reversed(rows):
        author, body = author_of(str(text or ""), user, bot_id, bool(from_self), names)
        out.append(BusMessage(channel, str(ts), t_ts, author, body))
    return out


def author_of(
    text: str, user: str | None, bot_id: str | None, from_self: bool, names: Mapping[str, str]
) -> tuple[str, str]:
    """(who wrote it, the text without an identity tag)."""
    who, body = ident.parse(text)
    if who is not None:
        return who.label, body
    if from_self:
        return "slackbus", text
    if user:
        return names.get(user, user), text
    return f"bot {bot_id}" if bot_id else "unknown", text


def _cache_path(s: BusSettings, channel: str, thread_ts: str | None) -> str:
    raw = f"{channel}-{thread_ts or 'channel'}"
    name = "".join(c if c.isascii() and (c.isalnum() or c in "_.-") else "_" for c in raw)
    return os.path.join(s.home, "cache", f"history-{name}.json")


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _load_cache(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_cache(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _remember_post(s: BusSettings, channel: str, m: BusMessage) -> None:
    """What this host posted goes into the history cache, so the next session sees it before the next fetch."""
    with contextlib.suppress(OSError):
        path = _cache_path(s, channel, None if m.thread_ts is None else m.thread_ts)
        with _locked(path):
            data = _load_cache(path)
            if data:
                data.setdefault("messages", []).append(m._asdict())
                _save_cache(path, data)


def _read_api(
    s: BusSettings, channel: str, *, thread_ts: str | None, since: str | None, limit: int, deadline: float
) -> list[BusMessage]:
    path = _cache_path(s, channel, thread_ts)
    with _locked(path):
        data = _load_cache(path)
        fresh = time.time() - float(data.get("fetched_at") or 0) < s.history_interval
        if not fresh and time.time() >= float(data.get("retry_after") or 0):
            try:
                data = {"fetched_at": time.time(), "messages": _fetch(s, channel, thread_ts, deadline)}
                _save_cache(path, data)
            except RateLimited as exc:
                data["retry_after"] = time.time() + exc.retry_after
                with contextlib.suppress(OSError):
                    _save_cache(path, data)
                if "messages" not in data:
                    raise
    messages = [BusMessage(**m) for m in data.get("messages", []) if isinstance(m, dict)]
    messages = sorted({m.ts: m for m in messages}.values(), key=lambda m: m.ts)
    if since:
        messages = [m for m in messages if m.ts > since]
    return messages[-limit:]


def _fetch(s: BusSettings, channel: str, thread_ts: str | None, deadline: float) -> list[dict[str, Any]]:
    if thread_ts:
        data = _api(s, "conversations.replies", {"channel": channel, "ts": thread_ts, "limit": 100}, deadline)
    else:
        data = _api(s, "conversations.history", {"channel": channel, "limit": 100}, deadline)
    out: list[dict[str, Any]] = []
    for raw in data.get("messages") or []:
        if not isinstance(raw, dict) or raw.get("subtype") in ("channel_join", "channel_leave"):
            continue
        author, body = author_of(
            str(raw.get("text") or ""), raw.get("user"), raw.get("bot_id"), False, {}
        )
        if author.startswith("bot ") and raw.get("username"):
            author = str(raw["username"])
        out.append(BusMessage(channel, str(raw.get("ts")), raw.get("thread_ts"), author, body)._asdict())
    return sorted(out, key=lambda m: m["ts"])
