"""Hand a session over between a terminal and Slack, both ways, as a user does it: the real `claude` CLI in a
project folder on the bot's host (same user, same HOME), the real bot, the fake Slack and the fake model."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_bridge import install_hooks, request_with, run_claude, slackbus, top_level, wait_for
from tests.fakes.fake_model import FakeModel, Reply, all_texts, last_user_text
from tests.fakes.fake_slack import FakeSlack

pytestmark = pytest.mark.e2e


@pytest.fixture
def terminal(bot_env: dict[str, str]) -> dict[str, str]:
    """A shell on the bot's host: the same user and HOME, the bot's SLACKBUS_HOME (its socket), no Slack token."""
    import os
    import sys

    env = {k: v for k, v in bot_env.items() if k not in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN")}
    cli_dir = Path(env["CLAUDE_CLI_PATH"]).parent  # `claude` itself, as on a developer's PATH
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{cli_dir}{os.pathsep}{env['PATH']}"
    env["SLACKBUS_CHANNEL"] = "C1"
    env["SLACKBUS_USER"] = "dana"
    return env


@pytest.fixture
def project(bot_env: dict[str, str]) -> Path:
    d = Path(bot_env["SLACKBUS_WORKDIR"]) / "api-server"  # under the bot's roots
    d.mkdir(parents=True)
    return d


def answers(fake_slack: FakeSlack, thread_ts: str) -> list[str]:
    return [str(m.get("text") or "") for m in fake_slack.bot_messages("C1", thread_ts)]


def test_a_terminal_session_handed_off_is_continued_by_a_reply_in_slack(
    fake_slack: FakeSlack, fake_model: FakeModel, start_bot: Any, terminal: dict[str, str], project: Path
) -> None:
    start_bot(SLACKBUS_WARM_POOL="0")
    first = run_claude(project, terminal, "remember the word banana [[id:h1]]")
    out = slackbus("handoff", "--session", first["session_id"], "--cwd", str(project), "--note", "over to you",
                   env=terminal)
    assert out.returncode == 0, out.stderr
    [posted] = [m for m in top_level(fake_slack) if "handed over" in m["text"]]
    assert first["session_id"][:8] in posted["text"] and "dana" in posted["text"] and "over to you" in posted["text"]
    assert "answer for h1" in posted["text"]  # the last answer in the terminal, quoted

    fake_slack.user_says("C1", "U1", "which word was it? [[id:h2]]", thread_ts=posted["ts"])
    wait_for(lambda: any("answer for h2" in a for a in answers(fake_slack, posted["ts"])), what="the answer")
    [request] = request_with(fake_model, "[[id:h2]]")
    texts = "\n".join(all_texts(request))
    assert "remember the word banana" in texts and "answer for h1" in texts  # the terminal turn, resumed
    assert fake_model.request_headers[fake_model.requests.index(request)]["x-claude-code-session-id"] == \
        first["session_id"]


def test_a_slack_session_is_picked_up_in_a_terminal_with_the_command_attach_prints(
    fake_slack: FakeSlack, fake_model: FakeModel, start_bot: Any, terminal: dict[str, str]
) -> None:
    start_bot(SLACKBUS_WARM_POOL="0")
    ts = fake_slack.user_says("C1", "U1", "remember the fruit kiwi [[id:a1]]", mention=True)
    wait_for(lambda: any("answer for a1" in a for a in answers(fake_slack, ts)), what="the answer")

    envelope = fake_slack.slash_command(text="attach", user="U1", channel="C1")  # in Slack: the same command
    said = str((fake_slack.wait_ack(envelope)[1] or {}).get("text") or "")
    assert "claude --resume=" in said

    link = f"https://fake-team.slack.com/archives/C1/p{ts.replace('.', '')}"
    out = slackbus("attach", link, env=terminal)
    assert out.returncode == 0, out.stderr
    command = out.stdout.strip().splitlines()[0]
    assert command.startswith("cd ") and "&& claude --resume=" in command
    resumed = subprocess.run(
        ["bash", "-c", command + " -p 'which fruit? [[id:a2]]' --output-format json"], env=terminal,
        capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL, check=False,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    texts = "\n".join(all_texts(request_with(fake_model, "[[id:a2]]")[0]))
    assert "remember the fruit kiwi" in texts and "answer for a1" in texts  # the Slack turn, in the terminal
    assert json.loads(resumed.stdout)["result"] == "answer for a2"


def test_a_reply_while_a_terminal_holds_the_session_waits_and_runs_after_it_closes(
    fake_slack: FakeSlack, fake_model: FakeModel, start_bot: Any, terminal: dict[str, str], project: Path
) -> None:
    start_bot(SLACKBUS_WARM_POOL="0")
    install_hooks(project, terminal)
    first = run_claude(project, terminal, "step one [[id:q1]]")
    out = slackbus("handoff", "--session", first["session_id"], "--cwd", str(project), env=terminal)
    assert out.returncode == 0, out.stderr
    [posted] = [m for m in top_level(fake_slack) if "handed over" in m["text"]]

    # the person opens the session in the terminal again (slow to answer), and someone replies in Slack meanwhile
    fake_model.set_responder(lambda body: Reply(text="terminal turn done", delay=5.0)
                             if "[[id:q2]]" in last_user_text(body) else None)
    held = subprocess.Popen(
        ["bash", "-c", f"claude --resume={first['session_id']} -p 'step two [[id:q2]]'"], cwd=project,
        env=terminal,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )
    try:
        hold = Path(terminal["SLACKBUS_HOME"]) / "holds" / f"{first['session_id']}.json"
        wait_for(hold.exists, what="the terminal's hold")
        fake_slack.user_says("C1", "U1", "and step three? [[id:q3]]", thread_ts=posted["ts"])
        wait_for(lambda: any("open in a terminal" in a for a in answers(fake_slack, posted["ts"])),
                 what="the notice that the session is held")
        assert not request_with(fake_model, "[[id:q3]]")  # not run while the terminal has it
        assert held.wait(60) == 0
    finally:
        if held.poll() is None:
            held.kill()
    started = time.monotonic()
    wait_for(lambda: any("answer for q3" in a for a in answers(fake_slack, posted["ts"])), what="the answer")
    assert time.monotonic() - started < 10
    texts = "\n".join(all_texts(request_with(fake_model, "[[id:q3]]")[0]))
    assert "step two [[id:q2]]" in texts and "terminal turn done" in texts  # it continued after the terminal
    assert not hold.exists()


def test_a_handoff_from_outside_the_roots_is_refused(
    tmp_path: Path, fake_slack: FakeSlack, fake_model: FakeModel, start_bot: Any, terminal: dict[str, str]
) -> None:
    start_bot(SLACKBUS_WARM_POOL="0")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    first = run_claude(outside, terminal, "hello [[id:o1]]")
    out = slackbus("handoff", "--session", first["session_id"], "--cwd", str(outside), env=terminal)
    assert out.returncode == 1
    assert "outside the folders this bot may work in" in out.stderr and "Traceback" not in out.stderr
    assert not [m for m in top_level(fake_slack) if "handed over" in m["text"]]


def test_continue_in_a_terminal_on_an_answer_gives_the_command_privately(
    fake_slack: FakeSlack, fake_model: FakeModel, start_bot: Any
) -> None:
    start_bot(SLACKBUS_WARM_POOL="0")
    ts = fake_slack.user_says("C1", "U1", "remember the fruit plum [[id:b1]]", mention=True)
    wait_for(lambda: any("answer for b1" in a for a in answers(fake_slack, ts)), what="the answer")
    [answer] = [m for m in fake_slack.bot_messages("C1", ts) if "answer for b1" in m["text"]]
    button = answer["blocks"][-1]["elements"][0]
    assert button["action_id"] == "slackbus_attach" and button["text"]["text"] == "Continue in a terminal"
    fake_slack.block_action("U1", "C1", answer["ts"], "slackbus_attach", value=button["value"])
    said = wait_for(lambda: [e for e in fake_slack.ephemerals if e.get("user") == "U1"], what="the private answer")
    assert "claude --resume=" in said[0]["text"] and "cd " in said[0]["text"]
    fake_slack.block_action("U2", "C1", answer["ts"], "slackbus_attach", value=button["value"])  # not the requester
    other = wait_for(lambda: [e for e in fake_slack.ephemerals if e.get("user") == "U2"], what="the refusal")
    assert "Only <@U1>" in other[0]["text"] and "resume" not in other[0]["text"]
    fake_slack.block_action("U9", "C1", answer["ts"], "slackbus_attach", value=button["value"])  # not allowed
    refused = wait_for(lambda: [e for e in fake_slack.ephemerals if e.get("user") == "U9"], what="the refusal")
    assert "allow list" in refused[0]["text"] and "resume" not in refused[0]["text"]


def test_the_handoff_slash_command_inside_claude_code_hands_over_the_live_session(
    fake_slack: FakeSlack, fake_model: FakeModel, start_bot: Any, terminal: dict[str, str], project: Path
) -> None:
    start_bot(SLACKBUS_WARM_POOL="0")
    install_hooks(project, terminal)  # also adds Claude Code's /handoff command
    first = run_claude(project, terminal, "remember the colour teal [[id:s1]]")
    resumed = subprocess.run(
        ["claude", "--resume", first["session_id"], "-p", "/handoff the tests are green", "--output-format", "json"],
        cwd=project, env=terminal, capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL, check=False,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    [posted] = [m for m in top_level(fake_slack) if "handed over" in m["text"]]
    assert first["session_id"][:8] in posted["text"] and "the tests are green" in posted["text"]
    fake_slack.user_says("C1", "U1", "which colour? [[id:s2]]", thread_ts=posted["ts"])
    wait_for(lambda: any("answer for s2" in a for a in answers(fake_slack, posted["ts"])), what="the answer")
    assert "remember the colour teal" in "\n".join(all_texts(request_with(fake_model, "[[id:s2]]")[0]))
