"""Nothing accepted is lost when the bot dies: the next start runs it again and says so in the thread."""

from __future__ import annotations

import pytest

from tests.conftest import processes_in
from tests.e2e.test_reactive import answer_in
from tests.e2e.test_safety import ALLOWED_TOOLS, show_env_script  # noqa: F401 - fixture

pytestmark = pytest.mark.e2e


def test_a_run_killed_with_the_bot_is_run_again_after_restart(start_bot, fake_slack, fake_model, tmp_path):
    bot = start_bot(**ALLOWED_TOOLS)
    fake_model.enqueue_tool_use("Bash", {"command": "./slow.sh", "description": "wait a long time"})
    ts = fake_slack.user_says("C1", "U1", "a long job [[id:k1]]", mention=True)
    fake_slack.wait_for(lambda: any("sleep 47" in cmd for _pid, cmd in processes_in(tmp_path / "work")),
                        timeout=20, what="the tool's sleep to start")
    bot.kill()  # SIGKILL: no chance to say anything

    start_bot(**ALLOWED_TOOLS)
    notice = answer_in(fake_slack, "C1", ts, "restarted while working on this")
    answer = answer_in(fake_slack, "C1", ts, "answer for k1")
    assert float(notice["ts"]) < float(answer["ts"])
    assert len([m for m in fake_slack.bot_messages("C1", ts) if "answer for k1" in m["text"]]) == 1


def test_a_request_queued_at_shutdown_runs_after_restart(start_bot, fake_slack, fake_model, tmp_path):
    bot = start_bot(SLACKBUS_MAX_CONCURRENT="1", **ALLOWED_TOOLS)
    fake_model.enqueue_tool_use("Bash", {"command": "./slow.sh", "description": "wait a long time"})
    busy = fake_slack.user_says("C1", "U1", "occupy the only slot [[id:q0]]", mention=True)
    fake_slack.wait_for(lambda: any("sleep 47" in cmd for _pid, cmd in processes_in(tmp_path / "work")),
                        timeout=20, what="the tool's sleep to start")
    waiting = fake_slack.user_says("C2", "U2", "queued behind it [[id:q1]]", mention=True)
    fake_slack.wait_for(lambda: "hourglass_flowing_sand" in fake_slack.reactions("C2", waiting),
                        what="the queued reaction")
    assert bot.stop() == 0

    start_bot(**ALLOWED_TOOLS)
    answer_in(fake_slack, "C2", waiting, "answer for q1")
    answer_in(fake_slack, "C1", busy, "answer for q0")
