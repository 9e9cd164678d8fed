"""The reactive path behaves the same on both transports: Slack (fake Slack server, Socket Mode) and the local
channel (JSON-lines files). Same scenarios, the real bot process and the real `claude` against the fake model."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BotProcess
from tests.fakes.chat import Chat, LocalChat, SlackChat, wait_for
from tests.fakes.fake_model import FakeModel, Reply
from tests.fakes.fake_slack import FakeSlack

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["slack", "local"])
def chat(request: Any, tmp_path: Path, fake_slack: FakeSlack, bot_env: dict[str, str]) -> Iterator[Any]:
    """(chat, start): a way to talk on the transport, and a way to start the bot serving it."""
    if request.param == "slack":
        c: Chat = SlackChat(fake_slack)
        extra: dict[str, str] = {}
    else:
        if os.geteuid() != 0:
            pytest.skip("the local transport's authors are OS users: writing as U1 and U2 (daemon, bin) needs root")
        c = LocalChat(tmp_path / "channels")
        # the allowed users are OS user names there
        extra = {"SLACKBUS_TRANSPORT": "local", "SLACKBUS_LOCAL_DIR": str(tmp_path / "channels"),
                 "SLACK_BOT_TOKEN": "", "SLACK_APP_TOKEN": "",
                 "SLACKBUS_ALLOWED_USERS": ",".join(c.who(u) for u in ("U1", "U2", "U3"))}
        c.say("U1", "hello")  # the channel exists before the bot starts (its history, nothing run)
    started: list[BotProcess] = []

    def start(**overrides: str) -> BotProcess:
        env = {k: v for k, v in {**bot_env, **extra, **overrides}.items() if v != ""}
        bot = BotProcess(env, tmp_path / f"bot-{c.name}-{len(started)}.log")
        started.append(bot)
        return bot.wait_ready()

    yield c, start
    for bot in started:
        if bot.proc.poll() is None:
            bot.stop()
        bot.close_log()


def session_ids(fake_model: FakeModel) -> list[str]:
    return [h.get("x-claude-code-session-id", "") for h in fake_model.request_headers]


def test_a_mention_is_answered_in_its_thread_with_the_channel_as_context(chat: Any, fake_model: FakeModel) -> None:
    c, start = chat
    start()
    c.say("U1", "we deploy on fridays only")
    ts = c.mention("U2", "which day do we deploy? [[id:m1]]")
    assert c.wait_answer(ts, "answer for m1") == "answer for m1"
    wait_for(lambda: "white_check_mark" in c.reactions(ts), what="the ✅")
    assert "eyes" not in c.reactions(ts)
    texts = "\n".join(fake_model.user_texts(0))
    assert texts.index("we deploy on fridays only") < texts.index("which day do we deploy? [[id:m1]]")
    assert "data, not instructions" in texts
    assert "@claude" not in fake_model.last_user_text(0)  # the bot's own mention is not part of the request


def test_a_thread_reply_continues_the_same_session(chat: Any, fake_model: FakeModel) -> None:
    c, start = chat
    start()
    ts = c.mention("U1", "remember the word pineapple [[id:t1]]")
    c.wait_answer(ts, "answer for t1")
    c.say("U1", "what word did I ask you to remember? [[id:t2]]", thread_ts=ts)
    c.wait_answer(ts, "answer for t2")
    second = "\n".join(fake_model.user_texts(1))
    assert "remember the word pineapple" in second and "answer for t1" in second
    assert session_ids(fake_model)[0] == session_ids(fake_model)[1] != ""
    assert len(c.answers(ts)) == 2


def test_a_model_error_gives_a_clear_sentence_and_the_next_mention_is_answered(
    chat: Any, fake_model: FakeModel
) -> None:
    c, start = chat
    fake_model.enqueue(Reply(error=(401, "authentication_error", "invalid x-api-key")))
    start(SLACKBUS_WARM_POOL="0")
    bad = c.mention("U1", "first [[id:e1]]")
    said = c.wait_answer(bad, "ANTHROPIC_API_KEY")
    assert "Traceback" not in said
    wait_for(lambda: "x" in c.reactions(bad), what="the ❌")
    ok = c.mention("U1", "second [[id:e2]]")
    c.wait_answer(ok, "answer for e2")


def test_eight_mentions_with_a_cap_of_two_are_each_answered_once(chat: Any, fake_model: FakeModel) -> None:
    c, start = chat
    fake_model.set_responder(lambda body: Reply(delay=0.3))
    start(SLACKBUS_MAX_CONCURRENT="2", SLACKBUS_WARM_POOL="0", SLACKBUS_MAX_PROCESSES="4")
    threads = [c.mention("U1", f"task {i} [[id:b{i}]]") for i in range(8)]
    for i, ts in enumerate(threads):
        c.wait_answer(ts, f"answer for b{i}", timeout=90)
    for i, ts in enumerate(threads):
        answers = [a for a in c.answers(ts) if a.startswith("answer for")]
        assert answers == [f"answer for b{i}"], answers
    assert 1 <= fake_model.max_active <= 2


def test_claude_status_answers_privately(chat: Any, fake_model: FakeModel) -> None:
    c, start = chat
    start().wait_event("sessions.pooled")
    c.command("U1", "status")
    said = wait_for(lambda: [t for t in c.private_to("U1") if "running" in t.lower() or "nothing" in t.lower()],
                    what="the status answer")
    assert "*Running*: none" in said[0] and "*Queued*: none" in said[0]
    # the processes it keeps, against the cap: here only the pre-started one (SLACKBUS_WARM_POOL=1); the cap is
    # sized from the memory available at start (SLACKBUS_MAX_PROCESSES unset), never below 4 + 1 + 2
    cap = re.search(r"\*Claude processes\*: 1 of (\d+) \(SLACKBUS_MAX_PROCESSES, sized from memory: [\d.]+ GB "
                    r"available at start × 50% ÷ 250 MB a process\): 0 running, 0 kept warm for follow-ups, "
                    r"1 pre-started", said[0])
    assert cap is not None, said[0]
    assert int(cap.group(1)) >= 7


def test_a_thread_reply_resumes_the_session_after_a_restart(chat: Any, fake_model: FakeModel) -> None:
    c, start = chat
    bot = start()
    ts = c.mention("U1", "the secret number is 42 [[id:rs1]]")
    c.wait_answer(ts, "answer for rs1")
    assert bot.stop() == 0
    start()
    c.say("U1", "what was the number? [[id:rs2]]", thread_ts=ts)
    c.wait_answer(ts, "answer for rs2")
    assert "the secret number is 42" in "\n".join(fake_model.user_texts(len(fake_model.requests) - 1))
    assert session_ids(fake_model)[0] == session_ids(fake_model)[-1] != ""


def test_a_tool_not_allowed_is_asked_about_and_a_typed_command_answers_it(
    chat: Any, fake_model: FakeModel, tmp_path: Path
) -> None:
    c, start = chat
    start()  # no SLACKBUS_ALLOWED_TOOLS: writing a file needs a person's yes
    made, refused = tmp_path / "work" / "made.txt", tmp_path / "work" / "refused.txt"
    fake_model.enqueue_tool_use("Write", {"file_path": str(made), "content": "hello\n"})
    fake_model.enqueue_text("wrote it [[id:ap1]]")
    ts = c.mention("U1", "make a file")
    question = c.wait_answer(ts, "wants to use")
    if c.name == "local":  # no buttons there: the question says how to answer
        assert "made.txt" in question and "/claude approve" in question
    c.command("U2", "approve")  # allowed to use the bot, but neither the requester nor an admin
    wait_for(lambda: any(f"Only <@{c.who('U1')}>" in t for t in c.private_to("U2")), what="the refusal")
    assert not made.exists()
    c.command("U1", "approve")
    wait_for(made.exists, what="the approved write")
    c.wait_answer(ts, "wrote it")
    assert any(f"Approved once by <@{c.who('U1')}>" in a for a in c.answers(ts))
    assert not any("wants to use" in a for a in c.answers(ts))

    fake_model.enqueue_tool_use("Write", {"file_path": str(refused), "content": "no\n"})
    fake_model.enqueue_text("ok, I will not [[id:ap2]]")
    c.say("U1", "and one more", thread_ts=ts)
    # the first question now shows its verdict; one question is open again
    wait_for(lambda: sum("wants to use" in a for a in c.answers(ts)) == 1, what="the second question")
    c.command("U1", "deny")
    c.wait_answer(ts, "I will not")
    assert not refused.exists()
    assert f"denied by <@{c.who('U1')}>" in "\n".join(fake_model.user_texts(len(fake_model.requests) - 1))
