"""Tool approvals in the thread: approve once, approve for the session, deny, time out, wrong clicker."""

from __future__ import annotations

import time

import pytest

from tests.e2e.test_reactive import answer_in

pytestmark = pytest.mark.e2e


def question(fake_slack, channel: str, ts: str, n: int = 1) -> dict:
    found = fake_slack.wait_for(
        lambda: [m for m in fake_slack.bot_messages(channel, ts) if "wants to use" in (m.get("text") or "")][n - 1:],
        timeout=30, what=f"approval question {n}",
    )
    return found[0]


def click(fake_slack, msg: dict, action: str, user: str = "U1") -> None:
    request_id = msg["blocks"][1]["elements"][0]["value"]
    fake_slack.block_action(user, "C1", msg["ts"], action, value=request_id)


def ask_to_write(fake_model, path) -> None:
    fake_model.enqueue_tool_use("Write", {"file_path": str(path), "content": "hello\n"})


def test_approve_once_lets_the_tool_run(start_bot, fake_slack, fake_model, tmp_path):
    start_bot(SLACKBUS_ADMIN_USERS="U3")
    target = tmp_path / "work" / "made.txt"
    ask_to_write(fake_model, target)
    fake_model.enqueue_text("wrote it [[id:ok]]")
    ts = fake_slack.user_says("C1", "U1", "make a file", mention=True)
    msg = question(fake_slack, "C1", ts)
    assert "made.txt" in str(msg["blocks"]) and "hello" in str(msg["blocks"])
    click(fake_slack, msg, "slackbus_approve_once", user="U2")  # not the requester, not an admin
    fake_slack.wait_for(lambda: any("Only <@U1>" in e["text"] for e in fake_slack.ephemerals), what="refusal")
    assert not target.exists()
    clicked = time.monotonic()
    click(fake_slack, msg, "slackbus_approve_once")
    fake_slack.wait_for(lambda: target.exists(), timeout=20, what="the file")
    print(f"approval round trip (click → file written): {(time.monotonic() - clicked) * 1000:.0f} ms")
    answer_in(fake_slack, "C1", ts, "wrote it")
    assert "Approved once by <@U1>" in str(fake_slack.bot_messages("C1", ts))


def test_deny_keeps_the_file_away_and_claude_is_told(start_bot, fake_slack, fake_model, tmp_path):
    start_bot()
    target = tmp_path / "work" / "nope.txt"
    ask_to_write(fake_model, target)
    fake_model.enqueue_text("ok, I will not [[id:no]]")
    ts = fake_slack.user_says("C1", "U1", "make a file", mention=True)
    click(fake_slack, question(fake_slack, "C1", ts), "slackbus_deny")
    answer_in(fake_slack, "C1", ts, "I will not")
    assert not target.exists()
    assert "denied by <@U1> in Slack" in "\n".join(fake_model.user_texts(1))


def test_no_answer_in_time_means_denied(start_bot, fake_slack, fake_model, tmp_path):
    start_bot(SLACKBUS_APPROVAL_SECONDS="2")
    target = tmp_path / "work" / "late.txt"
    ask_to_write(fake_model, target)
    fake_model.enqueue_text("nobody answered [[id:late]]")
    ts = fake_slack.user_says("C1", "U1", "make a file", mention=True)
    answer_in(fake_slack, "C1", ts, "nobody answered", timeout=30)
    assert not target.exists()
    assert "No answer within 2 s" in str(fake_slack.bot_messages("C1", ts))


def test_approve_for_the_session_is_not_asked_again(start_bot, fake_slack, fake_model, tmp_path):
    bot = start_bot()
    target = tmp_path / "work" / "twice.txt"
    ask_to_write(fake_model, target)
    fake_model.enqueue_text("first [[id:s1]]")
    ts = fake_slack.user_says("C1", "U1", "make a file", mention=True)
    click(fake_slack, question(fake_slack, "C1", ts), "slackbus_approve_session")
    answer_in(fake_slack, "C1", ts, "first")
    target.unlink()
    ask_to_write(fake_model, target)  # the same request again, in the same (warm) session
    fake_model.enqueue_text("second [[id:s2]]")
    fake_slack.user_says("C1", "U1", "again please", thread_ts=ts)
    answer_in(fake_slack, "C1", ts, "second")
    assert target.exists()
    # asked once, in the first turn (the second answer came after any question would have been posted): one
    # question posted, now showing its verdict, and none still waiting
    assert len(bot.events("approval.asked")) == 1, bot.events("approval.asked")
    questions = [c for c in fake_slack.calls_of("chat.postMessage") if "wants to use" in str(c.params.get("text"))]
    assert len(questions) == 1, questions
    in_thread = fake_slack.bot_messages("C1", ts)
    assert not [m for m in in_thread if "wants to use" in (m.get("text") or "")], in_thread
    verdicts = [m for m in in_thread if "Approved for this session by <@U1>" in (m.get("text") or "")]
    assert len(verdicts) == 1, in_thread
