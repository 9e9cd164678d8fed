"""Who wrote a message on the bus: a session's short id and a name, carried in the message text itself.

The tag travels with the text, so it survives every path (the bot's socket, the Web API, an Incoming
Webhook) and every reader (Slack's UI, the bot's record, conversations.history) without metadata scopes:

    `[session 1a2b3c4d · api-server]` Tests pass on main; the flaky one was a timing bug.

Stdlib only: imported by hooks, which must start fast.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SHORT = 8
_TAG = re.compile(r"^`\[session (?P<short>[0-9A-Za-z_-]{1,16}) · (?P<name>[^`\]\n]{1,80})\]`[ \t]*\n?")
_NAME_BAD = re.compile(r"[`\]\n\r\t]+")


@dataclass(frozen=True)
class Identity:
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
    cleaned = re.sub(r"[^0-9A-Za-z_-]", "", session_id)
    return (cleaned or "unknown")[:SHORT]


def clean_name(name: str) -> str:
    return _NAME_BAD.sub(" ", name).strip()[:80] or "session"


def parse(text: str) -> tuple[Identity | None, str]:
    """(the identity a tagged message carries, the text without the tag); (None, text) when untagged."""
    m = _TAG.match(text)
    if not m:
        return None, text
    return Identity(m.group("short"), m.group("name")), text[m.end():]


def resolve(env: Mapping[str, str] | None = None, *, session_id: str | None = None, cwd: str | None = None) -> Identity:
    """This session's identity: SLACKBUS_SESSION_ID / the hook's session_id, and SLACKBUS_AGENT_NAME or the
    working directory's name."""
    env = os.environ if env is None else env
    sid = session_id or env.get("SLACKBUS_SESSION_ID") or env.get("CLAUDE_SESSION_ID") or f"pid{os.getppid()}"
    name = env.get("SLACKBUS_AGENT_NAME", "").strip()
    if not name:
        where = cwd or env.get("CLAUDE_PROJECT_DIR") or os.getcwd()
        name = Path(where).name or where
    return Identity(sid, clean_name(name))
