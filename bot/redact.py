"""Remove secrets from text before it reaches a log line or a Slack message."""

from __future__ import annotations

import re
from collections.abc import Iterable

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

    def __init__(self, secret_values: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._values: re.Pattern[str] | None = None
        self.add(*secret_values)

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


# The process-wide redactor: config adds the values of secret settings at start-up.
redactor = Redactor()


def redact(text: str) -> str:
    return redactor(text)
