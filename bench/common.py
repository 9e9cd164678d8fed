"""Helpers shared by the benchmarks: statistics, a bot process against the fakes, result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import BotProcess, fake_environment
from tests.fakes.fake_model import FakeModel
from tests.fakes.fake_slack import FakeSlack

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


def write_results(name: str, figures: dict[str, Any]) -> None:
    existing: dict[str, Any] = {}
    if RESULTS.exists():
        try:
            existing = json.loads(RESULTS.read_text())
        except ValueError:
            existing = {}
    existing[name] = figures
    existing["machine"] = machine()
    RESULTS.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")
