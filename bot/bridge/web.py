"""The bus's HTTP client: Slack's Web API with SLACK_BOT_TOKEN (`api`), or an Incoming Webhook (`webhook`).

Plain sockets (plus ssl for https): http.client and urllib pull in the email package, which costs a hook process
~60 ms to import. Behind a proxy (HTTPS_PROXY …) urllib does the work instead. Every call is bounded by the
caller's deadline; a 429 is RateLimited (with Slack's Retry-After), any other failure a BusError sentence.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

from bot.bridge.protocol import BusError, BusSettings


class RateLimited(BusError):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"Slack is rate-limiting this call; try again in {retry_after:g} s.")
        self.retry_after = retry_after


def api(s: BusSettings, method: str, params: dict[str, Any], deadline: float) -> dict[str, Any]:
    """One Web API call (JSON body, the bot token); its answer when `ok`, else a BusError naming what to fix."""
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


def webhook(url: str, payload: dict[str, Any], deadline: float) -> None:
    """One post to an Incoming Webhook (its channel is the webhook's)."""
    _http(url, json.dumps(payload).encode(), {"Content-Type": "application/json"}, deadline)


def _http(url: str, data: bytes, headers: dict[str, str], deadline: float) -> tuple[int, bytes, Mapping[str, str]]:
    """One POST: (status, body, headers)."""
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
