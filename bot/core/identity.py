"""Who wrote a message on the bus: a session's short id and a name, carried in the message text itself.

The tag travels with the text, so it survives every path (the bot's socket, the Web API, an Incoming
Webhook) and every reader (Slack's UI, the bot's record, conversations.history) without metadata scopes:

    `[session 1a2b3c4d · api-server]` Tests pass on main; the flaky one was a timing bug.

Stdlib only: imported by hooks, which must start fast.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

SHORT = 8
_OPEN = "`[session "
_ID_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-")
_NAME_BAD = frozenset("`]\n\r\t")


class Identity(NamedTuple):
    session_id: str
    name: str

    @property
    def short(self) -> str:
        return short_id(self.session_id)

    @property
    def label(self) -> str:
        """How a reader sees the author: `session 1a2b3c4d (api-server)`."""
        return f"session {self.short} ({self.name})"

    def tag(self, text: str) -> str:
        """The text with this identity in front, as posted."""
        return f"`[session {self.short} · {self.name}]` {text}"


def short_id(session_id: str) -> str:
    cleaned = "".join(c for c in session_id if c in _ID_CHARS)
    return (cleaned or "unknown")[:SHORT]


def clean_name(name: str) -> str:
    return " ".join("".join(" " if c in _NAME_BAD else c for c in name).split())[:80] or "session"


def parse(text: str) -> tuple[Identity | None, str]:
    """(the identity a tagged message carries, the text without the tag); (None, text) when untagged.

    Plain string work, no regular expressions: `re` alone costs a hook process ~15 ms to import."""
    if not text.startswith(_OPEN):
        return None, text
    end = text.find("]`", len(_OPEN), len(_OPEN) + 100)
    if end < 0:
        return None, text
    short, sep, name = text[len(_OPEN):end].partition(" · ")
    if (not sep or not 1 <= len(short) <= 16 or not set(short) <= _ID_CHARS or not 1 <= len(name) <= 80
            or any(c in _NAME_BAD for c in name)):
        return None, text
    rest = text[end + 2:]
    rest = rest.lstrip(" \t")
    if rest.startswith("\n"):
        rest = rest[1:]
    return Identity(short, name), rest


def resolve(env: Mapping[str, str] | None = None, *, session_id: str | None = None, cwd: str | None = None) -> Identity:
    """This session's identity: SLACKBUS_SESSION_ID / the hook's session_id, and SLACKBUS_AGENT_NAME or the
    working directory's name."""
    env = os.environ if env is None else env
    sid = session_id or env.get("SLACKBUS_SESSION_ID") or env.get("CLAUDE_SESSION_ID") or f"pid{os.getppid()}"
    name = env.get("SLACKBUS_AGENT_NAME", "").strip()
    if not name:
        where = cwd or env.get("CLAUDE_PROJECT_DIR") or os.getcwd()
        name = os.path.basename(os.path.normpath(where)) or where
    return Identity(sid, clean_name(name))
