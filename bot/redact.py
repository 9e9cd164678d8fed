"""Remove secrets from text before it leaves the bot: one redactor, applied at each transport's single exit.

Where text leaves, and where it is masked (a new feature that posts through these cannot forget it):
- Slack: `slack_poster.MaskingWebClient` — every Web API call's arguments (posts, edits, ephemerals,
  reactions, uploads' text and file content) — and the `ack(text=…)` of a slash command (slack_events).
- Local channels: `LocalChannel.append`, for every record any process writes.
- The bus (`slackbus post`, hooks, hand-off notes): `bus.post` before the socket, the Web API or a webhook;
  the bot's side of the socket posts through the transport, masked again there.
- Logs: the structlog processor and the logging formatter (bot.log). The console: bot.console.

Stdlib only: hooks import it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

# Token shapes: Slack bot/app/user/config tokens, Anthropic keys, generic sk- keys, bearer headers.
# A token starts at a word boundary (so "task-scheduler-..." is not an "sk-" key), and a bearer value must
# look like a credential (a digit in it), not a word of prose.
_TOKEN_PATTERNS = re.compile(
    r"(?<![A-Za-z0-9_-])(?:xox[abposr]-[A-Za-z0-9-]{6,}|xapp-[A-Za-z0-9-]{6,}|sk-ant-[A-Za-z0-9_-]{6,}"
    r"|sk-[A-Za-z0-9_-]{20,})"
    r"|(?i:bearer)\s+(?=[A-Za-z._~+/-]*[0-9])[A-Za-z0-9._~+/-]{12,}=*"
    r"|https://hooks\.slack\.com/services/[A-Za-z0-9/]+"
)

REDACTED = "[redacted]"


class Redactor:
    """Masks known token shapes and the exact values of configured secrets."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._values: re.Pattern[str] | None = None
        self.add(*values)

    def add(self, *values: str) -> None:
        """Mask these exact values too (short values are ignored: they would mask ordinary words)."""
        self._secrets.update(v for v in values if v and len(v) >= 8)
        ordered = sorted(self._secrets, key=len, reverse=True)
        self._values = re.compile("|".join(re.escape(v) for v in ordered)) if ordered else None

    def __call__(self, text: str) -> str:
        if not text:
            return text
        if self._values is not None:
            text = self._values.sub(REDACTED, text)
        return _TOKEN_PATTERNS.sub(REDACTED, text)


SECRET_NAME = re.compile(r"TOKEN|SECRET|KEY|PASSWORD|WEBHOOK", re.IGNORECASE)


def secret_values(env: Mapping[str, str]) -> list[str]:
    """Values of variables named like a secret (*TOKEN*, *SECRET*, *KEY*, *PASSWORD*, *WEBHOOK*)."""
    return [v for k, v in env.items() if SECRET_NAME.search(k) and isinstance(v, str) and len(v) >= 8]


# The process-wide redactor: config adds the values of secret settings at start-up.
redactor = Redactor()


def redact(text: str) -> str:
    return redactor(text)


def redact_data(value: Any, *, keep: frozenset[str] = frozenset()) -> Any:
    """A copy of a JSON-like value with every string masked (dict keys in `keep` are left as they are)."""
    if isinstance(value, str):
        return redactor(value)
    if isinstance(value, dict):
        return {k: (v if k in keep else redact_data(v, keep=keep)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v, keep=keep) for v in value]
    return value
