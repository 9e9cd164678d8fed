"""Nothing accepted is lost when the bot dies: interrupted runs are reported, queued tasks run after it."""

from __future__ import annotations

import time

import pytest

from tests.conftest import processes_in, wait_no_processes
from tests.e2e.test_reactive import answer_in
from tests.e2e.test_safety import ALLOWED_TOOLS, show_env_script  # noqa: F401 - fixture

pytestmark = pytest.mark.e2e


def test_a_run_killed_with_the_bot_is_reported_after_restart_and_a_reply_resumes(
    start_bot, fake_slack, fake_model, tmp_path
):
    bot = start_bot(**ALLOWED_TOOLS)
    fake_model.enqueue_tool_use("Bash", {"command": "./slow.sh", "description": "wait a long time"})
    ts = fake_slack.user_says("C1", "U1", "a long job [[id:k1]]", mention=True)
    fake_slack.wait_for(lambda: any("sleep 47" in cmd for _pid, cmd in processes_in(tmp_path / "work")),
                        timeout=20, what="the tool's sleep to start")
    bot.kill()  # SIGKILL: no chance to say anything

    bot = start_bot(**ALLOWED_TOOLS)
    notice = answer_in(fake_slack, "C1", ts, "restarted while working on this")
    assert "Reply here to continue" in notice["text"]
    bot.wait_quiet(fake_slack)
    assert len(fake_model.requests) == 1  # nothing re-ran on its own

    fake_slack.user_says("C1", "U1", "please go on [[id:k2]]", thread_ts=ts)
    answer_in(fake_slack, "C1", ts, "answer for k2")
    assert "a long job [[id:k1]]" in "\n".join(fake_model.user_texts(1))


def test_a_request_queued_at_shutdown_runs_after_restart(start_bot, fake_slack, fake_model, tmp_path):
    bot = start_bot(SLACKBUS_MAX_CONCURRENT="1", **ALLOWED_TOOLS)
    fake_model.enqueue_tool_use("Bash", {"command": "./slow.sh", "description": "wait a long time"})
    busy = fake_slack.user_says("C1", "U1", "occupy the only slot [[id:q0]]", mention=True)
    fake_slack.wait_for(lambda: any("sleep 47" in cmd for _pid, cmd in processes_in(tmp_path / "work")),
                        timeout=20, what="the tool's sleep to start")
    waiting = fake_slack.user_says("C2", "U2", "queued behind it [[id:q1]]", mention=True)
    answer_in(fake_slack, "C2", waiting, "Queued, position 1")
    assert bot.stop() == 0

    # the running task was told it stopped; the queued one was not started during shutdown
    answer_in(fake_slack, "C1", busy, "shutting down")
    assert len(fake_model.requests) == 1
    wait_no_processes(tmp_path / "work", timeout=5)

    bot = start_bot(**ALLOWED_TOOLS)
    answer_in(fake_slack, "C2", waiting, "answer for q1")
    bot.wait_quiet(fake_slack)
    assert not [m for m in fake_slack.bot_messages("C1", busy) if "answer for q0" in m["text"]]


def test_sigterm_with_four_runs_in_flight_tells_every_thread_and_exits_quickly(
    start_bot, fake_slack, fake_model, tmp_path
):
    bot = start_bot(**ALLOWED_TOOLS)
    threads = []
    for i in range(4):
        fake_model.enqueue_tool_use("Bash", {"command": "./slow.sh", "description": "wait a long time"})
        threads.append((f"C{i}", fake_slack.user_says(f"C{i}", "U1", f"long job {i}", mention=True)))
    fake_slack.wait_for(lambda: sum("sleep 47" in cmd for _p, cmd in processes_in(tmp_path / "work")) == 4,
                        timeout=30, what="four tools running")
    started = time.monotonic()
    assert bot.stop() == 0
    assert time.monotonic() - started < 15
    wait_no_processes(tmp_path / "work", timeout=2)
    for channel, ts in threads:
        answer_in(fake_slack, channel, ts, "shutting down", timeout=1)
