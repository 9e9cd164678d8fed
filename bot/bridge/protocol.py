"""What the bus speaks: its settings, its types, and the wire to the bot's socket.

- settings: BusSettings, read from the environment and the .env by `load` (a hook, `slackbus post/read`);
- types: BusMessage (one message as the bus reads it), Posted, BusError, and the small parsers (`parse_since`,
  `author_of`, `entities`, `clock`);
- the wire: one JSON line to the bot's socket (SLACKBUS_HOME/bot.sock), one JSON line back (`ask`, `ping`); the
  bot's side is bot.bridge.server.

Stdlib only (and bot.envfile, bot.core.identity, themselves light): every hook process loads this module.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

from bot.core import identity as ident
from bot.envfile import DEFAULT_SLACK_API_URL, read_environment

MAX_POST_CHARS = 3900  # one readable Slack message; hooks trim before this
SOCKET_NAME = "bot.sock"
DB_NAME = "slackbus.db"


class BusError(Exception):
    """A post or read that cannot be done; the message says what to set."""


class BotUnreachable(BusError):
    """The bot's socket is there but could not be connected to (not: nobody listens, which is no error)."""


# --- settings ------------------------------------------------------------------------------------------------
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


# --- types ---------------------------------------------------------------------------------------------------
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


class Posted(NamedTuple):
    via: str  # "bot", "api", "webhook", "local"
    channel: str | None
    ts: str | None


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


def entities(text: str) -> str:
    """Slack's own escaping undone, then `&`, `<`, `>` (and `"`) escaped once: data that frames cannot break."""
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def clock(ts: str) -> str:
    """A Slack ts as this host's wall clock, `14:05` (`--:--` when it is no time): the bus's one time format."""
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


# --- the wire to the bot's socket ----------------------------------------------------------------------------
def ask(path: str, request: dict[str, Any], deadline: float) -> dict[str, Any] | None:
    """One request to the bot's socket at `path`, its JSON answer; None when nobody listens there (no socket file,
    or a stale one) or the answer is no JSON object. BotUnreachable when the socket cannot be connected to;
    BusError when the bot does not answer in time, or not readably."""
    answer = _exchange(path, request, deadline)
    return answer if isinstance(answer, dict) else None


_NOBODY = object()  # nobody listens at the socket


def _exchange(path: str, request: dict[str, Any], deadline: float) -> Any:
    """One JSON line there, the JSON value that comes back; _NOBODY when nobody listens."""
    import socket

    connected = False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(max(deadline - time.monotonic(), 0.05))
            sock.connect(path)
            connected = True
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
        return _NOBODY
    except TimeoutError:
        raise (BusError if connected else BotUnreachable)("The slackbus bot did not answer in time.") from None
    except OSError as exc:
        why = f"The slackbus bot's socket failed ({exc.strerror or exc})."
        raise (BusError if connected else BotUnreachable)(why) from None
    try:
        return json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        raise BusError("The slackbus bot sent an unreadable answer.") from None


def ping(path: str, timeout: float = 1.0) -> dict[str, Any] | None:
    """Is a bot serving the socket at `path`? None when nobody could be connected to there; else the bot's answer
    ({"ok": True, "transport": …, "local_dir": …}), or {"ok": False, "error": …} when something listens but
    did not answer in time or readably."""
    if not os.path.exists(path):
        return None
    try:
        answer = _exchange(path, {"op": "ping"}, time.monotonic() + timeout)
    except BotUnreachable:
        return None
    except BusError as exc:
        return {"ok": False, "error": str(exc)}
    if answer is _NOBODY:
        return None
    return answer if isinstance(answer, dict) else {"ok": False, "error": "the answer is no JSON object"}
