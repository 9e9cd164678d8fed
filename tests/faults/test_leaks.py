"""The leak matrix (issue 13): for every way text leaves the bot or the bus, a token of each shape goes in, and
no Slack call, socket answer, webhook post, local channel record, terminal line or log line carries it out.

Paths: the live status step (chat.postMessage / chat.update), `/claude status` (the slash command's ack), the
answer, the uploaded answer file, hook events (Stop, PostToolUse, UserPromptSubmit), `slackbus post` through
the bot's socket, the Web API and an Incoming Webhook, a hand-off note, a local channel and the console.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pexpect
import pytest

from tests.conftest import REPO
from tests.e2e.test_reactive import answer_in
from tests.fakes.fake_model import FakeModel
from tests.fakes.fake_slack import FakeSlack

pytestmark = pytest.mark.e2e

# one of each shape the redactor knows, and a plain value that is secret only because of its variable's name
DEPLOY_SECRET = "opensesame-plain-9876"
LEAKS = {
    "bot token": "xoxb-1111-2222-leakedbottoken",
    "user token": "xoxp-3333-4444-leakedusertoken",
    "app token": "xapp-1-A111-leakedapptoken",
    "anthropic key": "sk-ant-api03-leakedanthropickey0000",
    "webhook": "https://hooks.slack.com/services/T000/B000/leakedwebhooksecret",
    "secret setting": DEPLOY_SECRET,
}
ALL = " ".join(LEAKS.values())
SLOW = "#!/bin/sh\nwhile [ ! -e go ]; do sleep 0.05; done\necho done\n"


def leaked(blob: str) -> list[str]:
    return [name for name, value in LEAKS.items() if value in blob]


def slack_out(fake_slack: FakeSlack) -> str:
    """Everything the fake Slack received from the bot and the bus: Web API calls (uploads' bytes included),
    ephemerals, slash-command acks, response_url posts and webhook posts."""
    parts = [json.dumps(c.params, default=str) for c in fake_slack.calls]
    parts += [json.dumps(e, default=str) for e in fake_slack.ephemerals]
    parts += [json.dumps(r, default=str) for r in fake_slack.responses]
    parts += [json.dumps(a, default=str) for a in fake_slack.acks.values()]
    parts += [json.dumps(w, default=str) for w in fake_slack.webhook_posts]
    parts += [(f.get("content") or b"").decode(errors="replace") for f in fake_slack.files]
    return "\n".join(parts)


def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_no_token_leaves_through_status_slash_status_answers_or_uploads(start_bot, fake_slack, fake_model, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "slow.sh").write_text(SLOW)
    (work / "slow.sh").chmod(0o755)
    bot = start_bot(SLACKBUS_ALLOWED_TOOLS="Bash(./slow.sh:*)", DEPLOY_TOKEN=DEPLOY_SECRET)

    # 1. a tool whose command line carries every token: the status message shows the step, /claude status too
    fake_model.enqueue_tool_use("Bash", {"command": f"./slow.sh --token {ALL}", "description": "deploy"})
    fake_model.enqueue_text(f"deployed with {ALL}")
    ts = fake_slack.user_says("C1", "U1", "deploy it", mention=True)
    wait_for(lambda: "slow.sh" in slack_out(fake_slack), what="the status step naming the command")
    fake_slack.slash_command(text="status", user="U1", channel="C1")
    wait_for(lambda: "Running" in json.dumps(list(fake_slack.acks.values()), default=str) and
             "slow.sh" in json.dumps(list(fake_slack.acks.values()), default=str), what="/claude status's answer")
    (work / "go").touch()
    answer = answer_in(fake_slack, "C1", ts, "deployed with")
    assert "[redacted]" in answer["text"]

    # 2. an answer long enough to go out as a file
    paragraph = f"Here is the key again: {ALL}.\n\n" + "x" * 3000
    fake_model.enqueue_text("\n\n".join([paragraph] * 30))  # past four messages of ~12k: a file
    ts2 = fake_slack.user_says("C1", "U1", "write a long report", mention=True)
    wait_for(lambda: fake_slack.files, what="the answer uploaded as a file")
    answer_in(fake_slack, "C1", ts2, "Here is the key again")

    out = slack_out(fake_slack)
    assert "[redacted]" in out
    assert leaked(out) == []
    assert leaked(bot.log_path.read_text(errors="replace")) == []


def _terminal(tmp_path: Path, fake_slack: FakeSlack, fake_model: FakeModel, **extra: str) -> dict[str, str]:
    home = tmp_path / "term-home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(REPO),
        "SLACK_API_URL": fake_slack.api_url,
        "SLACKBUS_CHANNEL": "C1",
        "SLACKBUS_ENV_FILE": str(tmp_path / "no.env"),
        "DEPLOY_TOKEN": DEPLOY_SECRET,
        **fake_model.cli_env(home),
    }
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}


def _slackbus(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "bot", *args], env=env, cwd=str(REPO), input=stdin,
                         capture_output=True, text=True, timeout=60, check=False)
    assert leaked(out.stdout + out.stderr) == [], out.stderr
    return out


def _hooks(env: dict[str, str], session: str) -> None:
    base = {"session_id": session, "cwd": str(REPO), "transcript_path": "/nonexistent"}
    events = {
        "UserPromptSubmit": {**base, "hook_event_name": "UserPromptSubmit", "prompt": f"use {ALL}"},
        "PostToolUse": {**base, "hook_event_name": "PostToolUse", "tool_name": "Bash",
                        "tool_input": {"command": f"curl -H 'Authorization: Bearer {LEAKS['bot token']}' {ALL}"},
                        "tool_response": {"stdout": "ok"}},
        "Stop": {**base, "hook_event_name": "Stop", "stop_hook_active": False,
                 "last_assistant_message": f"Done; the token was {ALL}"},
    }
    for event, payload in events.items():
        out = _slackbus("hook", event, env=env, stdin=json.dumps(payload))
        assert out.returncode == 0 and not out.stderr.strip(), f"{event}: {out.stderr}"


def test_no_token_leaves_through_hooks_posts_or_a_handoff_note(start_bot, fake_slack, fake_model, tmp_path, bot_env):
    bot = start_bot()
    via_bot = _terminal(tmp_path, fake_slack, fake_model, SLACKBUS_HOME=bot_env["SLACKBUS_HOME"],
                        SLACKBUS_HOOK_TOOLS="Bash", SLACKBUS_HOOK_THROTTLE="0.001")
    via_api = _terminal(tmp_path, fake_slack, fake_model, SLACKBUS_HOME=str(tmp_path / "api-state"),
                        SLACK_BOT_TOKEN="xoxb-test-bot-token-123", SLACKBUS_HOOK_TOOLS="Bash",
                        SLACKBUS_HOOK_THROTTLE="0.001")
    via_webhook = _terminal(tmp_path, fake_slack, fake_model, SLACKBUS_HOME=str(tmp_path / "hook-state"),
                            SLACK_WEBHOOK_URL=fake_slack.webhook_url("C1"), SLACKBUS_HOOK_TOOLS="Bash",
                            SLACKBUS_HOOK_THROTTLE="0.001")
    for n, env in enumerate((via_bot, via_api, via_webhook)):
        before = len(slack_out(fake_slack))
        assert "via " in _slackbus("post", f"found it: {ALL}", env=env).stderr
        _hooks(env, f"1a2b3c4d-0000-4000-8000-00000000000{n}")
        assert len(slack_out(fake_slack)) > before  # every path really posted
    assert len(fake_slack.webhook_posts) == 4  # post, UserPromptSubmit, PostToolUse, Stop

    # a hand-off note (and the last answer it quotes): the bot's socket, then its poster
    project = tmp_path / "work"
    project.mkdir(exist_ok=True)
    done = subprocess.run([os.environ.get("CLAUDE_CLI_PATH") or _cli(), "-p", "hello [[id:ho]]",
                           "--output-format", "json"], cwd=str(project), env=via_bot, capture_output=True,
                          text=True, timeout=90, stdin=subprocess.DEVNULL, check=False)
    session = json.loads(done.stdout)["session_id"]
    out = _slackbus("handoff", "--session", session, "--cwd", str(project), "--channel", "C1",
                    "--note", f"over to you, the key is {ALL}", env=via_bot)
    assert out.returncode == 0, out.stderr
    wait_for(lambda: any("over to you" in m["text"] for m in fake_slack.messages("C1")), what="the hand-off post")

    out_text = slack_out(fake_slack)
    assert out_text.count("[redacted]") >= 12
    assert leaked(out_text) == []
    assert leaked(bot.log_path.read_text(errors="replace")) == []
    # nor do the bus's own caches keep a copy
    for state in (tmp_path / "api-state", tmp_path / "hook-state"):
        for path in state.rglob("*"):
            if path.is_file():
                assert leaked(path.read_text(errors="replace")) == [], path


def _cli() -> str:
    from tests.conftest import claude_cli

    return claude_cli()


def test_no_token_reaches_a_local_channel_or_the_console(tmp_path, bot_env, fake_model):
    env = {k: v for k, v in bot_env.items() if not k.startswith("SLACK_") and k != "SLACKBUS_ALLOWED_USERS"}
    env["DEPLOY_TOKEN"] = DEPLOY_SECRET
    channels = Path(env["SLACKBUS_HOME"]) / "channels"
    # `slackbus post` on a local channel
    out = _slackbus("post", f"local finding: {ALL}", env={**env, "SLACKBUS_TRANSPORT": "local",
                                                           "SLACKBUS_CHANNEL": "dev"})
    assert out.returncode == 0, out.stderr

    # the console: the bot in-process answers with every token; neither the terminal nor the files show them
    fake_model.enqueue_text(f"the answer holds {ALL}")
    child = pexpect.spawn(sys.executable, ["-m", "bot", "console", "dev"], env={**env, "TERM": "xterm"},
                          cwd=str(REPO), encoding="utf-8", timeout=60, dimensions=(50, 300))
    try:
        child.expect("Ctrl-D quits")
        child.sendline("@claude show me the keys")
        child.expect("the answer holds")
        child.expect(r"\[redacted\]")
        seen = child.before + child.after
        child.sendeof()
        child.expect(pexpect.EOF)
        seen += child.before or ""
    finally:
        child.close(force=True)
    assert leaked(seen) == []
    files = [p for p in channels.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert leaked(path.read_text(errors="replace")) == [], path
    log = Path(env["SLACKBUS_HOME"]) / "console.log"
    assert leaked(log.read_text(errors="replace")) == []
