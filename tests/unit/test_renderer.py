"""renderer: long answers split without losing text or breaking code blocks; errors as sentences."""

from __future__ import annotations

import re

import pytest

from bot.core.renderer import (
    CHUNK_CHARS,
    FALLBACK_TEXT_CHARS,
    describe_result_error,
    describe_run_error,
    footer,
    render_answer,
    render_notice,
    split_markdown,
)
from bot.core.stream_parser import Finished
from bot.errors import (
    CLINotFoundError,
    CLIProcessError,
    RunCancelledError,
    RunError,
    RunTimeoutError,
    SessionNotFoundError,
)

FENCE = re.compile(r"^\s*(`{3,}|~{3,})(.*)$")
BOT_TOKEN = "xoxb-1234567890-abcdefghijkl"
ANTHROPIC_KEY = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz"


def fence_lines(part: str) -> list[str]:
    return [line.strip() for line in part.split("\n") if FENCE.match(line)]


def assert_balanced(part: str) -> None:
    """Every opening fence in the part has its closing fence (CommonMark: same char, at least as long)."""
    open_fence: str | None = None
    for line in part.split("\n"):
        match = FENCE.match(line)
        if not match:
            continue
        marker, info = match.group(1), match.group(2).strip()
        if open_fence is None:
            open_fence = marker
        elif marker[0] == open_fence[0] and len(marker) >= len(open_fence) and not info:
            open_fence = None
    assert open_fence is None, f"unclosed {open_fence} in part:\n{part}"


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def without_fences(text: str) -> str:
    return "\n".join(line for line in text.split("\n") if not FENCE.match(line))


def paragraphs(n: int, width: int = 70) -> str:
    return "\n\n".join(f"Paragraph {i:03d} " + "w" * width + f" end-{i:03d}." for i in range(n))


def code_block(lang: str, n: int) -> str:
    return f"```{lang}\n" + "\n".join(f"value_{i:03d} = compute({i})  # step {i}" for i in range(n)) + "\n```"


# --- split_markdown ---------------------------------------------------------------------------------------


def test_short_text_is_one_part_unchanged():
    text = "Short answer.\n\n```python\nprint(1)\n```\n"
    assert split_markdown(text, limit=500) == [text]
    assert split_markdown("x" * 500, limit=500) == ["x" * 500]


def test_paragraphs_are_split_within_the_limit_keeping_every_character():
    text = paragraphs(40)
    parts = split_markdown(text, limit=600)
    assert len(parts) > 1
    assert all(len(p) <= 600 for p in parts)
    assert "".join(parts).replace("\n", "") == text.replace("\n", "")
    # cut at paragraph boundaries: every part starts a paragraph and ends one
    for p in parts:
        assert p.startswith("Paragraph ")
        assert re.search(r"end-\d{3}\.$", p)


def test_a_code_block_split_across_parts_is_closed_and_reopened_with_its_language():
    text = "Here is the fix:\n\n" + code_block("python", 60) + "\n\nThat is all, " + "e" * 40
    limit = 400
    parts = split_markdown(text, limit=limit)
    assert len(parts) >= 4
    for p in parts:
        assert len(p) <= limit
        assert_balanced(p)
    inside = [p for p in parts if "value_" in p]
    assert len(inside) >= 3
    for p in inside:
        assert p.split("\n", 1)[0] == "```python" or p.startswith("Here is the fix:")
        assert p.rstrip().endswith("```")
    # only fence lines were added; every other character is kept, in order
    assert squash(without_fences("\n".join(parts))) == squash(without_fences(text))
    opened = sum(1 for p in parts for f in fence_lines(p) if f == "```python")
    closed = sum(1 for p in parts for f in fence_lines(p) if f == "```")
    assert opened == closed == len(inside)
    assert parts[-1].endswith("That is all, " + "e" * 40)


def test_a_tilde_fence_is_reopened_as_a_tilde_fence():
    text = "~~~sh\n" + "\n".join(f"echo line {i:03d} " + "." * 30 for i in range(40)) + "\n~~~\nafter"
    parts = split_markdown(text, limit=300)
    assert len(parts) > 2
    for p in parts:
        assert len(p) <= 300
        assert_balanced(p)
    for p in parts[1:]:
        if "echo line" in p:
            assert p.startswith("~~~sh\n")
    assert squash(without_fences("\n".join(parts))) == squash(without_fences(text))


def test_a_longer_outer_fence_is_not_closed_by_an_inner_one():
    inner = "```python\n" + "\n".join(f"x_{i:03d} = {i}" for i in range(5)) + "\n```"
    text = "An example README:\n\n````markdown\n" + "\n\n".join([inner] * 12) + "\n````\n\nDone."
    parts = split_markdown(text, limit=300)
    assert len(parts) > 1
    for p in parts:
        assert_balanced(p)


def test_a_very_long_line_is_cut_and_nothing_is_lost():
    line = "".join(chr(ord("a") + i % 26) for i in range(2500))
    text = "intro\n" + line + "\noutro"
    parts = split_markdown(text, limit=400)
    assert all(len(p) <= 400 for p in parts)
    assert "".join(p.replace("\n", "") for p in parts) == text.replace("\n", "")


def test_a_long_line_inside_a_code_block():
    text = "```json\n" + '{"k": "' + "v" * 1500 + '"}\n```'
    parts = split_markdown(text, limit=500)
    assert len(parts) > 1
    for p in parts:
        assert len(p) <= 500
        assert_balanced(p)
        assert p.startswith("```json")
    assert squash(without_fences("\n".join(parts))) == squash(without_fences(text))


def test_default_limit_leaves_room_under_slacks_markdown_block_limit():
    assert CHUNK_CHARS <= 12_000
    text = paragraphs(400)
    assert len(text) > CHUNK_CHARS
    parts = split_markdown(text)
    assert len(parts) > 1
    assert all(len(p) <= CHUNK_CHARS for p in parts)


# --- render_answer -----------------------------------------------------------------------------------------


def test_a_short_answer_is_one_markdown_message_with_the_footer():
    [message] = render_answer("  **Done.** Tests pass.  \n", "1.2 s · 3 turns")
    assert message.text == "**Done.** Tests pass."
    assert message.blocks[0] == {"type": "markdown", "text": "**Done.** Tests pass."}
    assert message.blocks[1:] == [{"type": "context", "elements": [{"type": "mrkdwn", "text": "1.2 s · 3 turns"}]}]


def test_without_a_footer_there_is_only_the_markdown_block():
    [message] = render_answer("Answer")
    assert [b["type"] for b in message.blocks] == ["markdown"]


def test_an_empty_answer_says_so():
    [message] = render_answer("   \n ")
    assert "without a text answer" in message.blocks[0]["text"]


def test_a_long_answer_is_numbered_with_the_footer_on_the_last_part_only():
    text = paragraphs(400)
    messages = render_answer(text, "FOOTER")
    n = len(messages)
    assert n >= 2
    for i, m in enumerate(messages, start=1):
        assert m.blocks[0]["type"] == "markdown"
        assert len(m.blocks[0]["text"]) <= CHUNK_CHARS
        contexts = [e["text"] for b in m.blocks[1:] for e in b["elements"]]
        assert contexts[0] == f"part {i} of {n}"
        assert ("FOOTER" in contexts) == (i == n)
        assert len(m.text) <= FALLBACK_TEXT_CHARS + 2
        assert m.blocks[0]["text"].startswith(m.text.removesuffix(" …"))
    assert "".join(m.blocks[0]["text"] for m in messages).replace("\n", "") == text.replace("\n", "")


def test_answers_are_redacted():
    text = f"Use {BOT_TOKEN} and {ANTHROPIC_KEY} and Authorization: Bearer abcdefghijklmnop123456"
    [message] = render_answer(text)
    for secret in (BOT_TOKEN, ANTHROPIC_KEY, "abcdefghijklmnop123456"):
        assert secret not in message.text
        assert secret not in message.blocks[0]["text"]
    assert message.blocks[0]["text"].count("[redacted]") == 3


def test_notices_are_redacted_and_short():
    notice = render_notice(f"failed with {BOT_TOKEN} " + "n" * 5000)
    assert BOT_TOKEN not in notice.text
    assert len(notice.blocks[0]["text"]["text"]) <= 2900


# --- footer and result errors ----------------------------------------------------------------------------


def finished(**kw: object) -> Finished:
    base: dict[str, object] = {
        "is_error": False,
        "subtype": "success",
        "text": "",
        "session_id": "0123456789abcdef",
        "num_turns": 1,
        "duration_ms": 2500,
        "cost_usd": None,
        "api_error_status": None,
        "terminal_reason": None,
        "permission_denials": (),
        "errors": (),
    }
    base.update(kw)
    return Finished(**base)  # type: ignore[arg-type]


def test_footer():
    assert footer(finished(num_turns=1, duration_ms=2500)) == "2.5 s · 1 turn · session `01234567`"
    assert footer(finished(num_turns=4, duration_ms=61234, cost_usd=0.01234)) == (
        "1 min 01 s · 4 turns · $0.0123 · session `01234567`"
    )


@pytest.mark.parametrize(
    ("status", "must"),
    [
        (401, ["authenticate", "HTTP 401", "ANTHROPIC_API_KEY", "retry"]),
        (403, ["authenticate", "HTTP 403"]),
        (429, ["rate-limiting", "HTTP 429", "wait"]),
        (529, ["overloaded", "HTTP 529", "retry"]),
        (500, ["failed", "HTTP 500", "retry"]),
        (503, ["failed", "HTTP 503"]),
    ],
)
def test_api_errors_are_sentences(status, must):
    text = describe_result_error(finished(is_error=True, api_error_status=status, text="API Error"))
    assert text.startswith(":x: ")
    for word in must:
        assert word in text


def test_a_400_quotes_the_detail_redacted():
    text = describe_result_error(
        finished(is_error=True, api_error_status=400, text=f"prompt is too long; key {ANTHROPIC_KEY}")
    )
    assert "refused the request (HTTP 400)" in text
    assert "prompt is too long" in text
    assert ANTHROPIC_KEY not in text


def test_max_turns():
    text = describe_result_error(finished(is_error=True, subtype="error_max_turns", num_turns=25))
    assert "after 25 turns" in text
    assert "continue" in text


def test_budget():
    text = describe_result_error(finished(is_error=True, subtype="error_max_budget_usd"))
    assert "budget" in text


def test_error_during_execution_uses_the_errors_when_there_is_no_text():
    text = describe_result_error(
        finished(is_error=True, subtype="error_during_execution", errors=("tool crashed", f"token {BOT_TOKEN}"))
    )
    assert "while working: tool crashed" in text
    assert BOT_TOKEN not in text
    assert "retry" in text
    bare = describe_result_error(finished(is_error=True, subtype="error_during_execution"))
    assert "no detail given" in bare


def test_an_unknown_error_names_its_subtype():
    assert "error_something_new" in describe_result_error(finished(is_error=True, subtype="error_something_new"))


# --- run errors -------------------------------------------------------------------------------------------


def test_timeout():
    text = describe_run_error(RunTimeoutError("The run took longer than SLACKBUS_RUN_TIMEOUT (60 s) and was stopped."))
    assert text.startswith(":hourglass: The run took longer than SLACKBUS_RUN_TIMEOUT (60 s)")
    assert "continue" in text


def test_cancelled_says_by_whom():
    assert "cancelled by <@U042ABC>" in describe_run_error(RunCancelledError("cancelled", by="U042ABC"))
    anonymous = describe_run_error(RunCancelledError("cancelled"))
    assert "cancelled." in anonymous
    assert "<@" not in anonymous


def test_cli_process_error_shows_the_redacted_stderr_tail():
    stderr = "\n".join(f"noise line {i}" for i in range(20)) + f"\nError: auth failed for {ANTHROPIC_KEY}"
    err = CLIProcessError("Claude Code exited with code 1 before answering.", exit_code=1, stderr_tail=stderr)
    text = describe_run_error(err)
    assert text.startswith(":x: Claude Code exited with code 1 before answering. Reply here to retry.")
    assert ANTHROPIC_KEY not in text
    assert "Error: auth failed for [redacted]" in text
    assert "noise line 19" in text
    assert "noise line 5\n" not in text  # only the last lines
    assert text.count("```") == 2


def test_cli_process_error_without_stderr_has_no_code_block():
    text = describe_run_error(CLIProcessError("Claude Code crashed.", exit_code=-9))
    assert "```" not in text


def test_other_run_errors():
    assert describe_run_error(CLINotFoundError("The CLI is gone.")) == ":x: The CLI is gone."
    assert "Start a new thread" in describe_run_error(SessionNotFoundError("No conversation found."))
    assert describe_run_error(RunError(f"odd {BOT_TOKEN}")) == ":x: odd [redacted]"


def test_a_long_runs_answer_mentions_the_requester_first():
    from bot.core.renderer import mention, render_answer

    first = render_answer("the answer", "1 min 05 s · 3 turns")[0]
    tagged = mention(first, "U42")
    assert tagged.text.startswith("<@U42> ")
    notice = {"type": "context", "elements": [{"type": "mrkdwn", "text": "<@U42>, here is the answer:"}]}
    assert tagged.blocks[0] == notice
    assert tagged.blocks[1:] == first.blocks


def test_status_message_names_the_step_and_offers_stop():
    from bot.core.progress import describe_step, render_status
    from bot.core.stream_parser import ToolCall

    assert describe_step(ToolCall("t1", "Bash", {"command": "pytest -q"})) == "Running `pytest -q`"
    assert describe_step(ToolCall("t2", "Edit", {"file_path": "/srv/repo/src/app.py"})) == "Editing repo/src/app.py"
    assert describe_step(ToolCall("t3", "Read", {"file_path": "/a/b"}), same_kind_in_a_row=3) == "Reading 3 files"
    status = render_status("C1", "1.2", "Running `make`", 75, 4)
    assert "Running `make`" in status.blocks[0]["text"]["text"]
    assert status.blocks[1]["elements"][0]["text"] == "1 min 15 s · 4 tool calls"
    assert status.blocks[2]["elements"][0]["value"] == "C1|1.2"
