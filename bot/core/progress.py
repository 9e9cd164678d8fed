"""Live progress of a run: one status message per run, edited in place, paced to Slack's limits.

The status message appears at the first tool call (there is something to show) or after STATUS_DELAY_S,
whichever comes first; a quick answer with no tools never shows one. Updates are coalesced: whatever
happened since the last edit is shown in the next one, at most one edit per MIN_EDIT_INTERVAL_S per run and
within a bot-wide budget for chat.update (Slack's Tier 3, about 50 a minute).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio

from bot.core.events import STOP_ACTION
from bot.core.poster import Poster
from bot.core.renderer import STATUS_BLOCK_ID, SlackMessage, duration
from bot.core.stream_parser import RunEvent, ToolCall
from bot.log import get_logger

if TYPE_CHECKING:
    from bot.core.pipeline import RunHandle  # the run whose progress this shows (pipeline imports this module)

STATUS_DELAY_S = 1.5
MIN_EDIT_INTERVAL_S = 2.0

log = get_logger("slackbus.progress")


class RateBudget:
    """A token bucket shared by every run: `rate` calls a second on average, bursts up to `burst`."""

    def __init__(self, rate: float = 0.8, burst: int = 8) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = time.monotonic()

    def try_take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


def _short(text: str, limit: int = 70) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _tail_path(path: str) -> str:
    parts = str(path).rstrip("/").split("/")
    return "/".join(parts[-3:]) if len(parts) > 3 else str(path)


def describe_step(call: ToolCall, same_kind_in_a_row: int = 1) -> str:
    """What a tool call is doing, in a few words ("Running `pytest -q`", "Reading 3 files")."""
    name, args = call.name, call.input
    if name == "Bash":
        return f"Running `{_short(args.get('command', ''), 60)}`"
    if name in {"Edit", "MultiEdit", "Write", "NotebookEdit"}:
        target = args.get("file_path") or args.get("notebook_path") or "a file"
        verb = "Writing" if name == "Write" else "Editing"
        return f"{verb} {_tail_path(target)}" if same_kind_in_a_row == 1 else f"{verb} {same_kind_in_a_row} files"
    if name == "Read":
        if same_kind_in_a_row > 1:
            return f"Reading {same_kind_in_a_row} files"
        return f"Reading {_tail_path(args.get('file_path', 'a file'))}"
    if name in {"Grep", "Glob"}:
        return f"Searching for `{_short(args.get('pattern', ''), 40)}`"
    if name in {"WebFetch", "WebSearch"}:
        return f"Looking up {_short(args.get('url') or args.get('query') or 'the web', 50)}"
    if name in {"Task", "Agent"}:
        return f"Running a subagent: {_short(args.get('description', ''), 50)}"
    if name == "TodoWrite":
        return "Updating its plan"
    return f"Using {name}"


def render_status(channel: str, thread_ts: str, step: str, elapsed: float, tool_calls: int,
                  where: str = "") -> SlackMessage:
    line = f":hourglass_flowing_sand: {step or 'Working on it'}…"
    facts = f"{duration(elapsed, whole=True)} · {tool_calls} tool call{'s' if tool_calls != 1 else ''}"
    if where:  # the repository, branch and model this thread works with
        facts = f"{where} · {facts}"
    return SlackMessage(
        text=f"{step or 'Working on it'}…",
        blocks=[
            {"type": "section", "text": {"type": "mrkdwn", "text": line}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": facts}]},
            {
                "type": "actions",
                "block_id": STATUS_BLOCK_ID,
                "elements": [
                    {
                        "type": "button",
                        "action_id": STOP_ACTION,
                        "text": {"type": "plain_text", "text": "Stop"},
                        "style": "danger",
                        "value": f"{channel}|{thread_ts}",
                    }
                ],
            },
        ],
    )


class Progress:
    """Follows a run's events; `run` keeps the status message up to date until cancelled."""

    def __init__(self, handle: RunHandle, poster: Poster, budget: RateBudget) -> None:
        self._handle = handle
        self._poster = poster
        self._budget = budget
        self._changed = anyio.Event()
        self.tool_calls = 0
        self.step = ""
        self._last_kind = ""
        self._kind_run = 0
        self.first_step_at: float | None = None
        self.first_shown_at: float | None = None
        self.edits = 0

    def on_event(self, event: RunEvent) -> None:
        if isinstance(event, ToolCall):
            self.tool_calls += 1
            kind = event.name
            self._kind_run = self._kind_run + 1 if kind == self._last_kind else 1
            self._last_kind = kind
            self.step = describe_step(event, self._kind_run)
            if self.first_step_at is None:
                self.first_step_at = time.monotonic()
            self._changed.set()

    async def run(self) -> None:
        h = self._handle
        if h.status_ts is None:
            with anyio.move_on_after(STATUS_DELAY_S):
                await self._changed.wait()
        last_edit = 0.0
        while True:
            self._changed = anyio.Event()
            async with h.lock:
                if h.answered:
                    return
                message = render_status(h.channel, h.thread_ts, self.step, time.monotonic() - h.started,
                                        self.tool_calls, getattr(h, "where", ""))
                try:
                    if h.status_ts is None:
                        h.status_ts = await self._poster.post(h.channel, h.thread_ts, message)
                        self.first_shown_at = time.monotonic()
                    elif self._budget.try_take():
                        await self._poster.update(h.channel, h.status_ts, message)
                        self.edits += 1
                        if self.first_shown_at is None:
                            self.first_shown_at = time.monotonic()
                except Exception as exc:  # progress is a courtesy: Slack refusing it must not cost the run
                    log.warning("progress.failed", channel=h.channel, thread_ts=h.thread_ts,
                                error=f"{type(exc).__name__}: {exc}")
                last_edit = time.monotonic()
            # the next edit: when something changed, or every 10 s to move the clock; never sooner than the pace
            with anyio.move_on_after(10.0):
                await self._changed.wait()
            await anyio.sleep(max(0.0, MIN_EDIT_INTERVAL_S - (time.monotonic() - last_edit)))
