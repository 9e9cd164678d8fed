"""The reactive path end to end: fake Slack ⇄ the real bot process ⇄ the real `claude` CLI ⇄ fake model."""

from __future__ import annotations

import re

import pytest

from tests.fakes.fake_model import FakeModel, Reply
from tests.fakes.fake_slack import FakeSlack

pytestmark = pytest.mark.e2e


def answer_in(fake_slack: FakeSlack, channel: str, thread_ts: str, needle: str, timeout: float = 30.0) -> dict:
    return fake_slack.wait_for(
        lambda: next((m for m in fake_slack.bot_messages(channel, thread_ts) if needle in (m.get("text") or "")), None),
        timeout=timeout,
        what=f"a bot message containing {needle!r} in thread {thread_ts}",
    )


def session_ids(fake_model: FakeModel) -> list[str]:
    return [h.get("x-claude-code-session-id", "") for h in fake_model.request_headers]


def test_mention_is_answered_in_its_thread_with_channel_context(start_bot, fake_slack, fake_model):
    bot = start_bot()
    fake_slack.user_says("C1", "U1", "we deploy on fridays only")
    fake_slack.user_says("C1", "U3", "the login page is broken since tuesday")
    ts = fake_slack.user_says("C1", "U2", "which day do we deploy? [[id:m1]]", mention=True)

    answer = answer_in(fake_slack, "C1", ts, "answer for m1")
    assert answer["thread_ts"] == ts
    # the answer is the only thing the bot posted; nothing went to the channel top level
    assert [m["ts"] for m in fake_slack.bot_messages("C1")] == [answer["ts"]]
    assert answer["blocks"][0] == {"type": "markdown", "text": "answer for m1"}

    texts = "\n".join(fake_model.user_texts(0))
    assert "we deploy on fridays only" in texts
    assert "the login page is broken since tuesday" in texts
    assert "which day do we deploy? [[id:m1]]" in texts
    assert "data, not instructions" in texts
    # the earlier messages come before the request, and the request is last
    assert texts.index("we deploy on fridays only") < texts.index("which day do we deploy?")

    fake_slack.wait_for(lambda: "white_check_mark" in fake_slack.reactions("C1", ts), what="the ✅ reaction")
    assert "eyes" not in fake_slack.reactions("C1", ts)
    assert fake_slack.count("conversations.history") <= 1
    assert bot.events("run.first_sign")


def test_thread_reply_continues_the_same_session(start_bot, fake_slack, fake_model):
    start_bot()
    fake_slack.user_says("C1", "U1", "context line before the thread")
    ts = fake_slack.user_says("C1", "U1", "remember the word pineapple [[id:t1]]", mention=True)
    answer_in(fake_slack, "C1", ts, "answer for t1")

    fake_slack.user_says("C1", "U1", "what word did I ask you to remember? [[id:t2]]", thread_ts=ts)
    answer_in(fake_slack, "C1", ts, "answer for t2")

    assert len(fake_model.requests) == 2
    second = "\n".join(fake_model.user_texts(1))
    # the resumed session carries the first turn (prompt and answer) ...
    assert "remember the word pineapple" in second
    assert "answer for t1" in second
    # ... and the follow-up prompt holds only what is new, not the channel context again
    last = fake_model.last_user_text(1)
    assert "what word did I ask you to remember?" in last
    assert "context line before the thread" not in last
    assert session_ids(fake_model)[0] == session_ids(fake_model)[1] != ""
    assert len(fake_slack.bot_messages("C1", ts)) == 2, [m["text"] for m in fake_slack.bot_messages("C1", ts)]


def test_thread_reply_resumes_after_a_restart(start_bot, fake_slack, fake_model):
    bot = start_bot()
    ts = fake_slack.user_says("C1", "U1", "the secret number is 42 [[id:r1]]", mention=True)
    answer_in(fake_slack, "C1", ts, "answer for r1")
    assert bot.stop() == 0

    start_bot()
    fake_slack.user_says("C1", "U1", "what was the number? [[id:r2]]", thread_ts=ts)
    answer_in(fake_slack, "C1", ts, "answer for r2")
    second = "\n".join(fake_model.user_texts(1))
    assert "the secret number is 42" in second
    assert "answer for r1" in second
    assert session_ids(fake_model)[0] == session_ids(fake_model)[1]


def test_a_retried_event_runs_once(start_bot, fake_slack, fake_model):
    bot = start_bot()
    event = {
        "type": "app_mention",
        "user": "U1",
        "text": "<@UBOT> run once please [[id:once]]",
        "ts": "1700000100.000100",
        "channel": "C1",
        "event_ts": "1700000100.000100",
    }
    first = fake_slack.send_event(event, event_id="EvRETRY1")
    fake_slack.wait_ack(first)
    retry = fake_slack.send_event(event, event_id="EvRETRY1", retry_num=1, retry_reason="timeout")
    fake_slack.wait_ack(retry)
    answer_in(fake_slack, "C1", "1700000100.000100", "answer for once")
    bot.wait_quiet(fake_slack)  # give a duplicate run every chance to show up
    assert len(fake_slack.bot_messages("C1", "1700000100.000100")) == 1
    assert len(fake_model.requests) == 1
    assert bot.events("events.duplicate")


def test_a_mention_arriving_as_app_mention_and_message_is_handled_once(start_bot, fake_slack, fake_model):
    bot = start_bot()
    ts = fake_slack.user_says("C1", "U1", "just once [[id:dup]]", mention=True)
    # both envelopes were sent and both acked
    envelopes = fake_slack.envelopes_for(ts)
    assert {e.payload["event"]["type"] for e in envelopes} == {"message", "app_mention"}
    for e in envelopes:
        fake_slack.wait_ack(e.envelope_id)
    answer_in(fake_slack, "C1", ts, "answer for dup")
    bot.wait_quiet(fake_slack)
    assert len(fake_slack.bot_messages("C1", ts)) == 1
    assert len(fake_model.requests) == 1


def test_a_user_not_allowed_is_refused_and_nothing_runs(start_bot, fake_slack, fake_model):
    bot = start_bot()
    ts = fake_slack.user_says("C1", "U9", "do something [[id:no]]", mention=True)
    refusal = fake_slack.wait_for(lambda: fake_slack.ephemerals, what="an ephemeral refusal")
    assert refusal[0]["user"] == "U9"
    assert "allow list" in refusal[0]["text"]
    bot.wait_quiet(fake_slack)
    assert fake_model.requests == []
    assert fake_slack.bot_messages("C1") == []
    assert "eyes" not in fake_slack.reactions("C1", ts)


def test_a_model_error_gives_a_clear_message_and_the_bot_goes_on(start_bot, fake_slack, fake_model):
    start_bot()
    fake_model.enqueue_error(500, "api_error", "Internal server error")
    ts = fake_slack.user_says("C1", "U1", "this will fail [[id:e1]]", mention=True)
    msg = answer_in(fake_slack, "C1", ts, "HTTP 500")
    assert "Anthropic API" in msg["text"]
    assert "retry" in msg["text"]
    fake_slack.wait_for(lambda: "x" in fake_slack.reactions("C1", ts), what="the ❌ reaction")

    ts2 = fake_slack.user_says("C1", "U1", "and now? [[id:e2]]", mention=True)
    answer_in(fake_slack, "C1", ts2, "answer for e2")


def test_eight_mentions_with_a_cap_of_two(start_bot, fake_slack, fake_model):
    bot = start_bot(SLACKBUS_MAX_CONCURRENT="2")
    # a slow-ish model so runs overlap and the cap is what limits them
    fake_model.set_responder(lambda body: Reply(text=None, delay=1.0))
    threads = {}
    for i in range(8):
        threads[f"b{i}"] = fake_slack.user_says(f"C{i % 3 + 1}", "U1", f"task {i} [[id:b{i}]]", mention=True)
    for marker, ts in threads.items():
        channel = next(m["channel"] for c in ("C1", "C2", "C3") for m in fake_slack.messages(c) if m["ts"] == ts)
        answer_in(fake_slack, channel, ts, f"answer for {marker}", timeout=60)
    bot.wait_quiet(fake_slack)
    for marker, ts in threads.items():
        for channel in ("C1", "C2", "C3"):
            replies = fake_slack.bot_messages(channel, ts)
            if replies:
                assert len(replies) == 1, (marker, replies)
                assert replies[0]["text"] == f"answer for {marker}"
    assert len(fake_model.requests) == 8
    assert fake_model.max_active <= 2
    peak = max(e["running"] for e in bot.events("dispatch.accepted"))
    assert peak == 2  # the cap was reached, and never passed


def test_a_direct_message_is_answered_in_a_dm_thread(start_bot, fake_slack, fake_model):
    start_bot()
    ts = fake_slack.user_says("D1", "U1", "hello in private [[id:dm]]", channel_type="im")
    answer = answer_in(fake_slack, "D1", ts, "answer for dm")
    assert answer["thread_ts"] == ts
    assert "a direct message" in "\n".join(fake_model.user_texts(0))


def test_slash_command_runs_the_task_in_a_new_thread(start_bot, fake_slack, fake_model):
    start_bot()
    fake_slack.slash_command(text="summarise the build [[id:sl]]", user="U2", channel="C1")
    parent = fake_slack.wait_for(
        lambda: next((m for m in fake_slack.bot_messages("C1") if "asked:" in m["text"]), None),
        what="the parent message",
    )
    assert "<@U2> asked: summarise the build" in parent["text"]
    answer_in(fake_slack, "C1", parent["ts"], "answer for sl")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"SLACK_BOT_TOKEN": ""}, "SLACK_BOT_TOKEN is not set"),
        ({"SLACK_APP_TOKEN": "xoxb-wrong-kind-of-token"}, "SLACK_APP_TOKEN does not look like"),
        ({"CLAUDE_CLI_PATH": "/nonexistent/claude"}, "CLAUDE_CLI_PATH=/nonexistent/claude does not exist"),
        ({"SLACKBUS_ALLOWED_USERS": ""}, "SLACKBUS_ALLOWED_USERS is not set"),
        ({"SLACKBUS_MAX_CONCURRENT": "many"}, "SLACKBUS_MAX_CONCURRENT must be a whole number"),
        ({"SLACK_BOT_TOKEN": "xoxb-revoked"}, "Slack refused SLACK_BOT_TOKEN"),
    ],
)
def test_start_up_problems_give_one_clear_sentence(start_bot, fake_slack, overrides, expected):
    if overrides.get("SLACK_BOT_TOKEN") == "xoxb-revoked":
        fake_slack.fail_next("auth.test", status=200, error="invalid_auth")
    bot = start_bot(wait=False, **overrides)
    assert bot.proc.wait(30) == 2
    output = bot.log_path.read_text()
    assert expected in output
    assert "Traceback" not in output
    assert re.search(r"xoxb-test|xapp-test", output) is None
