"""Secrets stay out of the child, runs are bounded, and nothing is left running."""

from __future__ import annotations

import pytest

from tests.conftest import processes_in, wait_no_processes
from tests.e2e.test_reactive import answer_in

pytestmark = pytest.mark.e2e


ALLOWED_TOOLS = {"SLACKBUS_ALLOWED_TOOLS": "Bash(./show_env.sh),Bash(./slow.sh)"}


@pytest.fixture(autouse=True)
def show_env_script(tmp_path):
    (tmp_path / "work").mkdir()
    for name, body in (("show_env.sh", "env"), ("slow.sh", "sleep 47")):
        script = tmp_path / "work" / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)


def test_the_claude_child_never_sees_the_slack_tokens(start_bot, fake_slack, fake_model, tmp_path):
    bot = start_bot(SLACK_SIGNING_SECRET="signing-secret-value-1234", **ALLOWED_TOOLS)
    # (`env` always needs approval in Claude Code, so a pre-allowed script prints the environment)
    fake_model.enqueue_tool_use("Bash", {"command": "./show_env.sh", "description": "print the environment"})
    fake_model.enqueue_text("looked at the environment")
    ts = fake_slack.user_says("C1", "U1", "what is in your environment?", mention=True)
    answer_in(fake_slack, "C1", ts, "looked at the environment")

    tool_output = "\n".join(fake_model.user_texts(1))
    assert f"ANTHROPIC_BASE_URL={fake_model.url}" in tool_output  # the command really ran in the child
    for secret in ("xoxb-test-bot-token-123", "xapp-test-app-token-456", "signing-secret-value-1234",
                   "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET"):
        assert secret not in tool_output
    # and the tokens are not in the bot's log either
    log = bot.log_path.read_text()
    assert "xoxb-test-bot-token-123" not in log
    assert "xapp-test-app-token-456" not in log


def test_a_hung_run_times_out_with_a_clear_message_and_leaves_no_process(start_bot, fake_slack, fake_model,
                                                                         tmp_path):
    start_bot(SLACKBUS_RUN_TIMEOUT="4", **ALLOWED_TOOLS)
    # the model asks for a long command: the timeout must stop it too, not orphan it
    fake_model.enqueue_tool_use("Bash", {"command": "./slow.sh", "description": "wait a long time"})
    ts = fake_slack.user_says("C1", "U1", "take forever", mention=True)
    fake_slack.wait_for(lambda: any("sleep 47" in cmd for _pid, cmd in processes_in(tmp_path / "work")),
                        timeout=20, what="the tool's sleep to start")
    msg = answer_in(fake_slack, "C1", ts, "SLACKBUS_RUN_TIMEOUT", timeout=30)
    assert "4 s" in msg["text"]
    # the tool and the run's claude are gone; only the pre-started pool session (SLACKBUS_WARM_POOL=1) may live
    wait_no_processes(tmp_path / "work", timeout=15, allow=lambda cmd: "claude" in cmd and "--session-id=" in cmd,
                      at_most=1)
    assert not [p for p in processes_in(tmp_path / "work") if "sleep 47" in p[1] or "claude" not in p[1]]

    # and the bot answers the next request
    ts2 = fake_slack.user_says("C1", "U1", "quick one [[id:after]]", mention=True)
    answer_in(fake_slack, "C1", ts2, "answer for after")


def test_stopping_the_bot_mid_run_reaps_claude_and_tells_the_thread(start_bot, fake_slack, fake_model, tmp_path):
    bot = start_bot(**ALLOWED_TOOLS)
    fake_model.enqueue_tool_use("Bash", {"command": "./slow.sh", "description": "wait a long time"})
    ts = fake_slack.user_says("C1", "U1", "long job", mention=True)
    fake_slack.wait_for(lambda: any("sleep 47" in cmd for _pid, cmd in processes_in(tmp_path / "work")),
                        timeout=20, what="the tool's sleep to start")
    assert bot.stop() == 0
    wait_no_processes(tmp_path / "work", timeout=5)
    notice = answer_in(fake_slack, "C1", ts, "shutting down", timeout=5)
    assert "Reply here to continue" in notice["text"]

    # back up: a reply in the thread resumes the session, which holds the interrupted request
    start_bot(**ALLOWED_TOOLS)
    fake_slack.user_says("C1", "U1", "carry on [[id:resumed]]", thread_ts=ts)
    answer_in(fake_slack, "C1", ts, "answer for resumed")
    assert "long job" in "\n".join(fake_model.user_texts(len(fake_model.requests) - 1))
