"""Helpers shared by the benchmarks: statistics, a bot process against the fakes, result files."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.fakes.fake_model import FakeModel
from tests.fakes.fake_slack import FakeSlack
from tests.support import BotProcess, fake_environment

RESULTS = Path(__file__).resolve().parent / "results.json"


def summary(values: Sequence[float]) -> dict[str, float]:
    data = sorted(values)
    if not data:
        return {"n": 0}
    p95 = data[min(len(data) - 1, max(0, round(0.95 * len(data)) - 1))]
    return {
        "n": len(data),
        "p50": round(statistics.median(data), 2),
        "p95": round(p95, 2),
        "max": round(data[-1], 2),
        "min": round(data[0], 2),
    }


@contextmanager
def rig(**overrides: str) -> Iterator[tuple[FakeSlack, FakeModel, BotProcess, Path]]:
    """A bot process wired to a fresh fake Slack and fake model, in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="slackbus-bench-") as tmp, FakeSlack() as slack, FakeModel() as model:
        root = Path(tmp)
        env = {**fake_environment(root, slack, model), **overrides}
        bot = BotProcess(env, root / "bot.log")
        try:
            bot.wait_ready(60)
            yield slack, model, bot, root
        finally:
            if bot.proc.poll() is None:
                bot.stop()
            bot.close_log()


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}


def write_results(name: str, figures: dict[str, Any], measured: list[str] | None = None) -> None:
    """Keep `figures` as bench/results.json's `name`, with the time each part was measured: `measured` names the
    parts this run measured (default: all of them); a part kept from an earlier run keeps its earlier time."""
    existing: dict[str, Any] = {}
    if RESULTS.exists():
        try:
            existing = json.loads(RESULTS.read_text())
        except ValueError:
            existing = {}
    now = datetime.now(UTC).isoformat(timespec="minutes")
    parts = [k for k in figures if k != "measured_at"]
    earlier = (existing.get(name) or {}).get("measured_at") or {}
    stamps = {k: earlier[k] for k in parts if isinstance(earlier, dict) and k in earlier}
    stamps |= {k: now for k in (parts if measured is None else measured)}
    existing[name] = {**{k: figures[k] for k in parts}, "measured_at": stamps}
    existing["machine"] = machine()
    RESULTS.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")


def bot_share_ms(bot: BotProcess, trigger_ts: str, total_ms: float) -> float:
    """The bot's own share of one answer: `total_ms` (the event leaving the fake Slack → the Slack call that carried
    the answer) less the time that run waited for the `claude` CLI (its start, if the run waited for it, and its
    turn), which the bot logs as `cli_ms`. The run is found by the message that triggered it, never by position."""
    runs = [e["run_id"] for e in bot.events("run.start") if e.get("trigger_ts") == trigger_ts]
    if len(runs) != 1:
        raise AssertionError(f"{len(runs)} runs for the message {trigger_ts}")
    deadline = time.monotonic() + 10  # the bot logs the answer just after Slack has it
    while True:
        answered = [e for e in bot.events("run.answered") if str(e.get("run_id", "")).split("-")[0] == runs[0]]
        if answered or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if len(answered) != 1:
        raise AssertionError(f"run {runs[0]} answered {len(answered)} times")
    return total_ms - float(answered[0]["cli_ms"])


def answered_at(slack: Any, channel: str, thread_ts: str, needle: str, timeout: float = 60) -> float:
    """When the fake Slack received the call that first carried `needle` (a post, or the update of a status
    message into the answer) in that channel: an answer's time, never that of a placeholder it replaced."""
    whole = re.compile(re.escape(needle) + r"(?!\w)")  # "answer for f1" is not "answer for f10"
    slack.wait_for(lambda: [m for m in slack.bot_messages(channel, thread_ts) if whole.search(m.get("text") or "")],
                   timeout=timeout)
    for call in slack.calls:
        if (call.method in {"chat.postMessage", "chat.update"} and call.params.get("channel") == channel
                and whole.search(str(call.params.get("text", "")))):
            return float(call.t)
    raise AssertionError(f"no call carried {needle!r}")


def wait_done(slack: FakeSlack, channel: str, ts: str, timeout: float = 10.0) -> None:
    """Wait for ✅ on message `ts`: the run that answered it is over, its reactions and edits are in."""
    slack.wait_for(lambda: "white_check_mark" in slack.reactions(channel, ts), timeout=timeout)


def sent_at(slack: Any, ts: str) -> float:
    """When the fake Slack sent the event of message `ts` over Socket Mode (its first delivery)."""
    return min(e.t for e in slack.envelopes_for(ts))
