"""Turns a run's outcome into Slack messages: the answer as Markdown blocks, errors as sentences.

Long answers are split at paragraph boundaries, never inside a code block without closing and reopening it,
and nothing is truncated. Secrets are redacted from everything that leaves here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from bot.core.events import ATTACH_ACTION, DIFF_ACTION, PR_ACTION, PUSH_ACTION
from bot.core.stream_parser import Finished
from bot.errors import (
    CLINotFoundError,
    CLIOutputError,
    CLIProcessError,
    RunCancelledError,
    RunError,
    RunStalledError,
    RunTimeoutError,
    SessionNotFoundError,
)
from bot.redact import redact

# Slack renders a `markdown` block of up to 12,000 characters; stay clear of it.
CHUNK_CHARS = 11_000
FALLBACK_TEXT_CHARS = 2_900
_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")
_OPENS_FENCE = re.compile(r"\s*(?:`{3}|~{3})")  # _FENCE at a position inside a line (match(line, pos))


STATUS_BLOCK_ID = "slackbus_run"  # the block holding a running task's Stop button


@dataclass(frozen=True)
class SlackMessage:
    text: str  # notification / fallback text
    blocks: list[dict[str, Any]] = field(default_factory=list, hash=False)


def split_markdown(text: str, limit: int = CHUNK_CHARS) -> list[str]:
    """Split at blank lines (then lines) so each part is at most `limit` characters.

    A code block cut in two is closed at the end of one part and reopened, with its language, at the
    start of the next, so each part renders on its own.
    """
    if len(text) <= limit:
        return [text]
    limit = max(limit, 200)  # room for fences; smaller limits would not make progress
    fences = [m for m in map(_FENCE.match, text.split("\n")) if m]
    reserve = max([16, *(len(m.group(2)) + 1 for m in fences)])  # room for a closing fence
    reopen = max([16, *(len(_reopening(m.group(0))) + 1 for m in fences)])  # and for a reopening one
    parts: list[str] = []
    current: list[str] = []
    size = 0
    fence: str | None = None  # the opening fence line while inside a code block

    def flush() -> None:
        nonlocal current, size
        if not current:
            return
        body = "\n".join(current)
        if fence is not None:
            body += "\n" + _closing(fence)
        parts.append(body)
        current = [_reopening(fence)] if fence is not None else []
        size = len(current[0]) + 1 if current else 0

    for line in _lines_within(text, max(limit - reserve - reopen, limit // 4)):
        boundary = not line.strip() and fence is None
        if size + len(line) + 1 > limit - reserve:
            flush()
        elif boundary and size > limit * 0.8:
            # a paragraph break near the end of a part is a better cut than a mid-paragraph one
            flush()
            continue
        current.append(line)
        size += len(line) + 1
        match = _FENCE.match(line)
        if match:
            if fence is None:
                fence = line.strip()
            elif _closes(match, fence):
                fence = None
    if current and any(x.strip() for x in current):
        body = "\n".join(current)
        parts.append(body)
    return [p.strip("\n") for p in parts if p.strip()]


def _closes(match: re.Match[str], opening: str) -> bool:
    """CommonMark: a closing fence uses the same character, at least as many, and no info string."""
    marker = _closing(opening)
    return match.group(2)[0] == marker[0] and len(match.group(2)) >= len(marker) and not match.group(3).strip()


def _closing(fence_line: str) -> str:
    match = _FENCE.match(fence_line)
    return match.group(2) if match else "```"


def _reopening(opening: str) -> str:
    """The line that reopens a code block in the next part: its fence and language (not a long info string)."""
    match = _FENCE.match(opening)
    if not match:
        return "```"
    words = match.group(3).split()
    return match.group(2) + (words[0] if words and len(words[0]) <= 32 else "")


def _lines_within(text: str, limit: int) -> list[str]:
    """Lines, with any single line longer than `limit` cut into pieces; a piece never starts like a code fence."""
    out: list[str] = []
    for line in text.split("\n"):
        while len(line) > limit:
            cut = limit
            if _OPENS_FENCE.match(line, cut):  # cut before the nearest character that cannot start a fence
                cut = next((i for i in range(cut - 1, cut // 2, -1) if not (line[i].isspace() or line[i] in "`~")),
                           cut)
            out.append(line[:cut])
            line = line[cut:]
        out.append(line)
    return out


def duration(seconds: float, *, whole: bool = False) -> str:
    """`12.3 s` (`12 s` when `whole`), `2 min 05 s`: how long something took or has been running."""
    if seconds < 60:
        return f"{int(seconds)} s" if whole else f"{seconds:.1f} s"
    return f"{int(seconds) // 60} min {int(seconds) % 60:02d} s"


def utc_time(when: float | str) -> str:
    """Epoch seconds or a Slack ts as `2026-01-02 14:05 UTC`; what it was given when that is no time."""
    from datetime import UTC, datetime

    try:
        return datetime.fromtimestamp(float(when), tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (ValueError, OverflowError, OSError):  # not a time ("", "inf", "1e20")
        return str(when)


def footer(finished: Finished, *, where: str = "", changes: str = "") -> str:
    """Duration, turns, cost and session; the repository, branch and model (`where`) and what the run changed
    in its worktree (`changes`, e.g. "3 files changed, +40 −12 on branch `slackbus/…`") when there are any."""
    bits = [duration(finished.duration_ms / 1000), f"{finished.num_turns} turn{'s' if finished.num_turns != 1 else ''}"]
    if finished.cost_usd is not None:
        bits.append(f"${finished.cost_usd:.4f}")
    bits.append(f"session `{finished.session_id[:8]}`")
    if where:
        bits.append(where)
    text = " · ".join(bits)
    if changes:
        text += f"\n{changes}"
    if finished.permission_denials:
        denied = ", ".join(sorted(set(finished.permission_denials)))
        text += (f"\n:warning: Claude was not allowed to use {denied}; an operator can allow it with "
                 "SLACKBUS_ALLOWED_TOOLS.")
    return text


def mention(message: SlackMessage, user: str) -> SlackMessage:
    """The same message, starting with a mention of `user` (so Slack notifies them)."""
    return SlackMessage(text=f"<@{user}> {message.text}",
                        blocks=[_context(f"<@{user}>, here is the answer:"), *message.blocks])


def render_answer_or_file(
    text: str, foot: str | None, *, max_parts: int = 4
) -> tuple[list[SlackMessage], str | None]:
    """Up to `max_parts` messages; past that, the beginning of the answer and the whole of it as a file."""
    messages = render_answer(text, foot)
    if len(messages) <= max_parts:
        return messages, None
    full = redact(text.strip())
    head = split_markdown(full, 2500)[0]
    summary = (
        f"{head}\n\n_… the answer is {len(full):,} characters long: the whole of it is in the attached "
        "file `answer.md`._"
    )
    return render_answer(summary, foot), full


def render_answer(text: str, foot: str | None = None) -> list[SlackMessage]:
    text = redact(text.strip()) or "_(Claude finished without a text answer.)_"
    chunks = split_markdown(text)
    messages: list[SlackMessage] = []
    for i, chunk in enumerate(chunks, start=1):
        blocks: list[dict[str, Any]] = [{"type": "markdown", "text": chunk}]
        if len(chunks) > 1:
            blocks.append(_context(f"part {i} of {len(chunks)}"))
        if foot and i == len(chunks):
            blocks.append(_context(foot))
        fallback = chunk if len(chunk) <= FALLBACK_TEXT_CHARS else chunk[:FALLBACK_TEXT_CHARS] + " …"
        messages.append(SlackMessage(text=fallback, blocks=blocks))
    return messages


def render_notice(text: str) -> SlackMessage:
    """A short message from the bot itself (errors, refusals)."""
    text = redact(text)
    return SlackMessage(text=text, blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}])


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def describe_result_error(f: Finished) -> str:
    """One sentence for a result line with is_error set."""
    status = f.api_error_status
    detail = redact((f.text or " ".join(f.errors)).strip())[:500]
    if status in (401, 403):
        return (
            f":x: Claude could not authenticate with the Anthropic API (HTTP {status}): check ANTHROPIC_API_KEY "
            "(or the login) on the bot's host, then reply here to retry."
        )
    if status == 429:
        return ":x: The Anthropic API is rate-limiting this bot (HTTP 429): wait a minute, then reply here to retry."
    if status == 529:
        return ":x: The Anthropic API is overloaded (HTTP 529): reply here in a little while to retry."
    if status is not None and status >= 500:
        return f":x: The Anthropic API failed (HTTP {status}): reply here to retry; if it persists, check its status."
    if status is not None:
        return f":x: The Anthropic API refused the request (HTTP {status}): {detail}"
    if f.subtype == "error_max_turns":
        return f":x: Claude stopped after {f.num_turns} turns, the maximum allowed: reply here to let it continue."
    if "budget" in f.subtype:
        return ":x: Claude stopped because the run reached its budget: reply here to let it continue."
    if f.subtype == "error_during_execution":
        return f":x: Claude stopped with an error while working: {detail or 'no detail given'}. Reply here to retry."
    return f":x: Claude finished with an error: {detail or f.subtype}."


def describe_run_error(err: RunError) -> str:
    if isinstance(err, RunTimeoutError | RunStalledError):
        return f":hourglass: {err} Reply here to continue from where it stopped."
    if isinstance(err, CLIOutputError):
        if err.too_large:
            return (f":x: {err} Reply here to retry, asking for less at a time (a part of a large file or output "
                    "rather than all of it).")
        return (f":x: {err} Reply here to retry; if it happens again, run `slackbus doctor` on the bot's host to "
                "check the CLI.")
    if isinstance(err, RunCancelledError):
        who = f" by <@{err.by}>" if err.by else ""
        return f":octagonal_sign: The run was cancelled{who}. Reply here to continue."
    if isinstance(err, CLINotFoundError):
        return f":x: {err}"
    if isinstance(err, SessionNotFoundError):
        return f":x: {err} Start a new thread to begin again."
    if isinstance(err, CLIProcessError):
        tail = "\n".join(redact(err.stderr_tail).splitlines()[-8:]).strip()
        text = f":x: {err} Reply here to retry."
        if tail:
            text += f"\n```\n{tail[-1500:]}\n```"
        return text
    return f":x: {redact(str(err))}"


def plain_text(message: SlackMessage) -> str:
    """The Markdown an answer carries (its markdown block), else its fallback text."""
    for block in message.blocks:
        if block.get("type") == "markdown":
            return str(block.get("text", ""))
    return message.text


def with_attach_button(message: SlackMessage, channel: str, thread_ts: str, *, worktree: bool = False) -> SlackMessage:
    """The answer's last message, with "Continue in a terminal" (the command comes privately to whoever clicks)
    and, for a thread with its own worktree, "Show diff", "Push" and "Pull request"."""
    value = f"{channel}|{thread_ts}"

    def button(action_id: str, text: str) -> dict[str, Any]:
        return {"type": "button", "action_id": action_id, "value": value,
                "text": {"type": "plain_text", "text": text}}

    buttons = [button(ATTACH_ACTION, "Continue in a terminal")]
    if worktree:
        buttons = [button(DIFF_ACTION, "Show diff"), button(PUSH_ACTION, "Push"), button(PR_ACTION, "Pull request"),
                   *buttons]
    if not message.blocks or len(message.blocks) >= 50:
        return message
    return SlackMessage(text=message.text, blocks=[*message.blocks, {"type": "actions", "elements": buttons}])
