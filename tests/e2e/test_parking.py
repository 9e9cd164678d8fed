"""Parked processes (issue 15): an idle warm `claude` is stopped with SIGSTOP, so it uses no CPU; it still
answers a follow-up, can be cancelled mid-run, and the bot still shuts down cleanly with it parked."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import processes_in, wait_no_processes
from tests.e2e.test_reactive import answer_in

pytestmark = pytest.mark.e2e


def state_of(pid: int) -> str:
    """The process's state letter in /proc (T: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_parked_process_answers_is_cancelled_and_shut_down_cleanly(start_bot, fake_slack, fake_model, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "slow.sh").write_text("#!/bin/sh\nsleep 47\n")
    (work / "slow.sh").chmod(0o755)
    bot = start_bot(SLACKBUS_PARK_SECONDS="0.5", SLACKBUS_WARM_POOL="0", SLACKBUS_ALLOWED_TOOLS="Bash(./slow.sh)")
    ts = fake_slack.user_says("C1", "U1", "first [[id:p1]]", mention=True)
    answer_in(fake_slack, "C1", ts, "answer for p1")
    [parked] = bot.wait_event("sessions.parked", timeout=20)
    pid = int(parked["pid"])
    assert state_of(pid) == "T"  # stopped: no CPU at all

    # a follow-up wakes it: the same process answers
    fake_slack.user_says("C1", "U1", "second [[id:p2]]", thread_ts=ts)
    answer_in(fake_slack, "C1", ts, "answer for p2")
    reused = bot.events("run.reusing")
    assert reused and reused[-1]["origin"] == "warm"
    bot.wait_event("sessions.parked", count=2, timeout=20)
    assert state_of(pid) == "T"

    # parked again, then a run on it is cancelled mid-tool: nothing is left running
    fake_model.enqueue_tool_use("Bash", {"command": "./slow.sh", "description": "wait"})
    fake_slack.user_says("C1", "U1", "take your time [[id:p3]]", thread_ts=ts)
    fake_slack.wait_for(lambda: any("sleep 47" in cmd for _pid, cmd in processes_in(work)), timeout=30,
                        what="the tool to run on the woken process")
    fake_slack.reaction_added("U1", "C1", ts, "octagonal_sign")
    answer_in(fake_slack, "C1", ts, "cancelled")
    fake_slack.wait_for(lambda: not any("sleep 47" in cmd for _pid, cmd in processes_in(work)), timeout=15,
                        what="the tool to stop")

    # a new thread's process is parked, and the bot still stops at once with every process reaped
    ts2 = fake_slack.user_says("C1", "U2", "another [[id:p4]]", mention=True)
    answer_in(fake_slack, "C1", ts2, "answer for p4")
    last = bot.wait_event("sessions.parked", count=3, timeout=20)[-1]
    assert state_of(int(last["pid"])) == "T"
    assert bot.stop() == 0
    wait_no_processes(work, timeout=10)
