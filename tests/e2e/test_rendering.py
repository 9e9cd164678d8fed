"""What a user sees while a run goes and when it ends: progress, long answers, Slack errors, denials."""

from __future__ import annotations

import re

import pytest

from tests.e2e.test_reactive import answer_in
from tests.e2e.test_safety import ALLOWED_TOOLS, show_env_script  # noqa: F401 - fixture
from tests.fakes.fake_model import Reply

pytestmark = pytest.mark.e2e


def texts_of(calls) -> list[str]:
    return [str(c.params.get("text", "")) for c in calls]


def balanced(markdown: str) -> bool:
    return len(re.findall(r"^\s*```", markdown, flags=re.M)) % 2 == 0


def test_the_status_message_follows_a_tool_run_and_becomes_the_answer(start_bot, fake_slack, fake_model):
    bot = start_bot(**ALLOWED_TOOLS)
    fake_model.enqueue_tool_use("Bash", {"command": "./show_env.sh", "description": "look around"})
    fake_model.enqueue(Reply(text="all done [[id:st]]", delay=3.0))
    ts = fake_slack.user_says("C1", "U1", "look around", mention=True)
    # the status message names the command: posted so, or (when the CLI starts slowly and the status went up
    # first as "Working on it…") edited to say so
    status = fake_slack.wait_for(
        lambda: next((c for c in fake_slack.calls if c.method in {"chat.postMessage", "chat.update"}
                      and "Running `./show_env.sh`" in str(c.params.get("text"))), None),
        timeout=20, what="a status message naming the command",
    )
    answer = answer_in(fake_slack, "C1", ts, "all done")
    status_ts = status.response["ts"] if status.method == "chat.postMessage" else status.params["ts"]
    assert answer["ts"] == status_ts  # the status message became the answer
    assert len(fake_slack.bot_messages("C1", ts)) == 1
    assert "Stop" not in str(answer["blocks"])
    end = bot.wait_event("run.end")[0]
    assert end["tool_calls"] == 1 and end["first_event_to_progress_ms"] is not None


def test_a_500_event_run_stays_within_slacks_pace(start_bot, fake_slack, fake_model, tmp_path):
    (tmp_path / "work").mkdir(exist_ok=True)
    (tmp_path / "work" / "notes.txt").write_text("a note\n")
    bot = start_bot()
    calls = 250  # each tool call is two events (tool_use, tool_result): 500 events
    for _ in range(calls):
        fake_model.enqueue_tool_use("Read", {"file_path": str(tmp_path / "work" / "notes.txt")})
    fake_model.enqueue_text("read it 250 times [[id:many]]")
    ts = fake_slack.user_says("C1", "U1", "read the notes, many times", mention=True)
    answer_in(fake_slack, "C1", ts, "read it 250 times", timeout=110)
    end = bot.wait_event("run.end")[0]
    assert end["tool_calls"] == calls
    writes = [c for c in fake_slack.calls if c.method in {"chat.update", "chat.postMessage"}]
    # never more than one edit or post per second for this run, and few of them in all
    times = sorted(c.t for c in writes)
    per_second = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    # the last status edit and the answer may land in the same second; after a run of 30 s or more (a slow
    # machine) the answer is a new message that notifies, and the status becomes "Done …": one write more
    notified = any("Done after" in str(c.params.get("text")) for c in writes)
    assert per_second <= (3 if notified else 2)
    assert len(writes) <= 3 + (times[-1] - times[0]) / 2.0
    assert "Reading notes.txt" in " ".join(texts_of(writes)) or "Reading" in " ".join(texts_of(writes))


def test_a_60000_character_answer_arrives_whole_as_a_file(start_bot, fake_slack, fake_model):
    start_bot()
    code = "```python\n" + "\n".join(f"print({i})  # line {i}" for i in range(1500)) + "\n```"
    prose = "\n\n".join(f"Paragraph {i}: " + "words " * 40 for i in range(120))
    long_answer = f"Start of the answer.\n\n{prose}\n\n{code}\n\nEnd of the answer."
    assert len(long_answer) > 60_000
    fake_model.enqueue_text(long_answer)
    ts = fake_slack.user_says("C1", "U1", "write a lot", mention=True)
    summary = answer_in(fake_slack, "C1", ts, "the whole of it is in the attached file", timeout=60)
    assert summary["text"].startswith("Start of the answer.")
    # the file record appears at getUploadURLExternal; its bytes when the upload POST lands
    upload = fake_slack.wait_for(lambda: [f for f in fake_slack.files if fake_slack.file_content(f["id"])],
                                 what="the uploaded file's content")[0]
    content = fake_slack.file_content(upload["id"]).decode()
    assert content == long_answer.strip()
    assert balanced(content)


def test_a_30000_character_answer_is_split_without_breaking_its_code_block(start_bot, fake_slack, fake_model):
    start_bot()
    code = "```js\n" + "\n".join(f"console.log({i});" for i in range(1300)) + "\n```"
    long_answer = "Intro.\n\n" + code + "\n\nOutro [[id:split]]"
    assert 20_000 < len(long_answer) < 40_000
    fake_model.enqueue_text(long_answer)
    ts = fake_slack.user_says("C1", "U1", "write code", mention=True)
    answer_in(fake_slack, "C1", ts, "Outro")
    parts = [m["blocks"][0]["text"] for m in fake_slack.bot_messages("C1", ts)]
    assert len(parts) >= 2
    for part in parts:
        assert balanced(part), part[:200]
        assert len(part) <= 12_000
    joined = "\n".join(parts)
    for i in (0, 650, 1299):
        assert f"console.log({i});" in joined
    assert parts[1].startswith("```js")  # reopened with its language


def test_the_answer_survives_429_and_503_from_slack(start_bot, fake_slack, fake_model):
    bot = start_bot()
    fake_slack.fail_next("chat.postMessage", status=429, retry_after=1, count=2)
    fake_slack.fail_next("chat.postMessage", status=503, count=2)
    ts = fake_slack.user_says("C1", "U1", "answer anyway [[id:rl]]", mention=True)
    answer_in(fake_slack, "C1", ts, "answer for rl", timeout=40)
    bot.wait_quiet(fake_slack)
    assert len([m for m in fake_slack.bot_messages("C1", ts) if "answer for rl" in m["text"]]) == 1
    assert [c.status for c in fake_slack.calls_of("chat.postMessage")][:4] == [429, 429, 503, 503]


def test_a_denied_tool_is_named_in_the_answer(start_bot, fake_slack, fake_model, tmp_path):
    start_bot(SLACKBUS_APPROVAL_SECONDS="1")  # nobody answers the approval question: denied
    fake_model.enqueue_tool_use("Write", {"file_path": str(tmp_path / "work" / "x.txt"), "content": "x"})
    fake_model.enqueue_text("could not write [[id:deny]]")
    ts = fake_slack.user_says("C1", "U1", "write a file", mention=True)
    answer = answer_in(fake_slack, "C1", ts, "could not write")
    assert "not allowed to use Write" in str(answer["blocks"])
    assert "SLACKBUS_ALLOWED_TOOLS" in str(answer["blocks"])


def test_an_answer_slack_keeps_refusing_is_kept_and_posted_after_a_restart(start_bot, fake_slack, fake_model):
    bot = start_bot()
    fake_slack.fail_next("chat.postMessage", status=503, count=1000)
    ts = fake_slack.user_says("C1", "U1", "an answer to keep [[id:kept]]", mention=True)
    bot.wait_event("slack.deliver_failed", count=3, timeout=60)
    assert bot.stop() == 0
    fake_slack.clear_failures()

    bot = start_bot()
    answer_in(fake_slack, "C1", ts, "answer for kept", timeout=30)
    bot.wait_quiet(fake_slack)
    assert len([m for m in fake_slack.bot_messages("C1", ts) if "answer for kept" in m["text"]]) == 1
    assert len(fake_model.requests) == 1  # delivered from the outbox, not run again


@pytest.mark.parametrize(
    ("status", "kind", "expected"),
    [
        (401, "authentication_error", "could not authenticate"),
        (429, "rate_limit_error", "rate-limiting"),
        (529, "overloaded_error", "overloaded"),
    ],
)
def test_each_api_failure_has_its_sentence(start_bot, fake_slack, fake_model, status, kind, expected):
    start_bot(SLACKBUS_WARM_POOL="0")
    fake_model.set_responder(lambda body: Reply(error=(status, kind, "nope")))
    ts = fake_slack.user_says("C1", "U1", "fail please", mention=True)
    msg = answer_in(fake_slack, "C1", ts, expected, timeout=60)
    assert f"HTTP {status}" in msg["text"]


def test_a_crashing_cli_is_reported_with_its_stderr_redacted(start_bot, fake_slack, fake_model, tmp_path):
    broken = tmp_path / "broken-claude"
    broken.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then echo "9.9.9 (Claude Code)"; exit 0; fi\n'
        'echo "boom: could not start, key sk-ant-api03-abcdefghijklmnop" >&2\n'
        "exit 3\n"
    )
    broken.chmod(0o755)
    start_bot(CLAUDE_CLI_PATH=str(broken), SLACKBUS_WARM_POOL="0")
    ts = fake_slack.user_says("C1", "U1", "crash please", mention=True)
    msg = answer_in(fake_slack, "C1", ts, "Claude Code CLI")
    text = str(msg["blocks"])
    assert "exited with code 3" in text or "failed" in text
    assert "boom: could not start" in text
    assert "sk-ant-api03" not in text
