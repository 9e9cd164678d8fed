"""Shared fixtures: the fakes at the network edge and the real bot as a subprocess (`python -m bot run`).

The helpers they build on (BotProcess, fake_environment, processes_in...) live in tests/support.py, which bench/
imports too; they are re-exported here for the tests that import them from this module."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fakes.fake_model import FakeModel
from tests.fakes.fake_slack import FakeSlack
from tests.support import (
    ALLOWED,
    REPO,
    BotProcess,
    claude_cli,
    fake_environment,
    processes_in,
    wait_no_processes,
)

__all__ = ["ALLOWED", "REPO", "BotProcess", "claude_cli", "fake_environment", "processes_in", "wait_no_processes"]


@pytest.fixture
def fake_model() -> Iterator[FakeModel]:
    with FakeModel() as fm:
        yield fm


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fs:
        yield fs


@pytest.fixture
def bot_env(tmp_path: Path, fake_slack: FakeSlack, fake_model: FakeModel) -> dict[str, str]:
    return {
        **fake_environment(tmp_path, fake_slack, fake_model),
        "SLACKBUS_MAX_CONCURRENT": "4",
        "SLACKBUS_RUN_TIMEOUT": "60",
        "SLACKBUS_IDLE_SECONDS": "30",
    }


@pytest.fixture
def start_bot(tmp_path: Path, bot_env: dict[str, str]) -> Iterator[Callable[..., BotProcess]]:
    started: list[BotProcess] = []

    def start(wait: bool = True, **overrides: str) -> BotProcess:
        env = {**bot_env, **overrides}
        bot = BotProcess(env, tmp_path / f"bot-{len(started)}.log")
        started.append(bot)
        return bot.wait_ready() if wait else bot

    yield start
    for bot in started:
        if bot.proc.poll() is None:
            bot.stop()
        bot.close_log()


