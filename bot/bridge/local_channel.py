"""The bus on local channels (SLACKBUS_TRANSPORT=local): a session's post appended to its OS user's file, the
channel read from everyone's files (bot.local.channel), authors from the files' owners. No Slack, no bot needed.
"""

from __future__ import annotations

import sys
from typing import Any

from bot.bridge.protocol import BusError, BusMessage, BusSettings, Posted, author_of


def post(s: BusSettings, channel: str | None, thread_ts: str | None, body: str) -> Posted:
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


def read(s: BusSettings, channel: str, *, thread_ts: str | None, since: str | None, limit: int) -> list[BusMessage]:
    """The channel's messages, authors from the files' owners; a malformed line is skipped with a note on stderr."""
    from bot.local.channel import LocalChannel, ts_key

    assert s.local_dir is not None
    try:
        records = LocalChannel(s.local_dir, channel).records(on_skip=_skipped)
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


def _skipped(file: str, line: int | None, why: str) -> None:
    print(f"slackbus: skipped {file}{f':{line}' if line else ''}: {why}", file=sys.stderr)
