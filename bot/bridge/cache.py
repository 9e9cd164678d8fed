"""The channel's history from the Web API, paced: at most one conversations.history (or .replies) call per channel
(or thread) per SLACKBUS_HISTORY_INTERVAL seconds, since Slack allows self-hosted apps about one a minute. In
between, a cache file (SLACKBUS_HOME/cache/history-<channel>-<thread>.json, under a lock) plus what this host
posted since (`remember_post`).

Stdlib only: a hook reads through it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from bot.bridge import web
from bot.bridge.protocol import BusMessage, BusSettings, author_of


def read(
    s: BusSettings, channel: str, *, thread_ts: str | None, since: str | None, limit: int, deadline: float
) -> list[BusMessage]:
    """The newest `limit` messages after `since` (the channel's, or that thread's), oldest first."""
    path = _cache_path(s, channel, thread_ts)
    with _locked(path):
        data = _load(path)
        fresh = time.time() - float(data.get("fetched_at") or 0) < s.history_interval
        if not fresh and time.time() >= float(data.get("retry_after") or 0):
            try:
                data = {"fetched_at": time.time(), "messages": _fetch(s, channel, thread_ts, deadline)}
                _save(path, data)
            except web.RateLimited as exc:
                data["retry_after"] = time.time() + exc.retry_after
                with contextlib.suppress(OSError):
                    _save(path, data)
                if "messages" not in data:
                    raise
    messages = [BusMessage(**m) for m in data.get("messages", []) if isinstance(m, dict)]
    messages = sorted({m.ts: m for m in messages}.values(), key=lambda m: m.ts)
    if since:
        messages = [m for m in messages if m.ts > since]
    return messages[-limit:]


def remember_post(s: BusSettings, channel: str, m: BusMessage) -> None:
    """What this host posted goes into the history cache, so the next session sees it before the next fetch."""
    with contextlib.suppress(OSError):
        path = _cache_path(s, channel, None if m.thread_ts is None else m.thread_ts)
        with _locked(path):
            data = _load(path)
            if data:
                data.setdefault("messages", []).append(m._asdict())
                _save(path, data)


def _fetch(s: BusSettings, channel: str, thread_ts: str | None, deadline: float) -> list[dict[str, Any]]:
    if thread_ts:
        data = web.api(s, "conversations.replies", {"channel": channel, "ts": thread_ts, "limit": 100}, deadline)
    else:
        data = web.api(s, "conversations.history", {"channel": channel, "limit": 100}, deadline)
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


def _load(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)
