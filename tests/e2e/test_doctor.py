"""`slackbus doctor` against the fake Slack: one line per check, with the fix for what is wrong."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.e2e.test_run_as import throwaway_user

pytestmark = pytest.mark.e2e


def doctor(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot", "doctor"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_doctor_passes_on_a_good_set_up(bot_env, fake_slack):
    out = doctor(bot_env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok    SLACK_BOT_TOKEN: valid" in out.stdout
    assert "ok    SLACK_APP_TOKEN: Socket Mode reachable" in out.stdout
    assert "ok    bot scopes: all present" in out.stdout
    assert "#chan-c1" in out.stdout
    assert "ok    claude CLI:" in out.stdout and "Claude Code" in out.stdout
    assert "ok    Anthropic credential: ANTHROPIC_API_KEY set" in out.stdout
    assert "all good" in out.stdout
    assert fake_slack.connection_count == 0  # it never opened a Socket Mode connection
    assert "xoxb-test" not in out.stdout + out.stderr


def test_doctor_names_each_problem_and_its_fix(bot_env, fake_slack):
    fake_slack.scopes = [s for s in fake_slack.scopes if s not in {"reactions:write", "commands"}]
    fake_slack.bot_channels = []
    fake_slack.fail_next("apps.connections.open", error="invalid_auth")
    env = {k: v for k, v in bot_env.items() if k != "ANTHROPIC_API_KEY"}
    out = doctor(env)
    assert out.returncode == 1
    assert "FAIL  bot scopes: missing commands, reactions:write" in out.stdout
    assert "FAIL  SLACK_APP_TOKEN: Socket Mode refused (invalid_auth)" in out.stdout
    assert "FAIL  channels the bot is in: none" in out.stdout and "/invite @slackbus" in out.stdout
    assert "FAIL  Anthropic credential: none found" in out.stdout
    assert "4 to fix" in out.stdout


def test_doctor_reports_a_missing_token_without_a_traceback(bot_env):
    out = doctor({**bot_env, "SLACK_BOT_TOKEN": ""})
    assert out.returncode == 1
    assert "SLACK_BOT_TOKEN is not set" in out.stdout
    assert "Traceback" not in out.stderr


def test_doctor_says_claude_runs_as_the_bots_own_user_and_what_follows(bot_env, fake_slack):
    out = doctor(bot_env)
    assert ("note  claude runs as the bot's own user: the Slack tokens are kept out of its environment and /proc, "
            "but it can read files this user can read (SLACKBUS_HOME, .env)\n      → set SLACKBUS_RUN_AS") in out.stdout
    assert out.returncode == 0, out.stdout + out.stderr  # a note, not a failure


def test_doctor_says_claude_runs_as_another_user_unless_it_can_read_the_env_file(bot_env, fake_slack):
    with throwaway_user() as agent:
        env = {**bot_env, **agent.env()}
        out = doctor(env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert (f"ok    claude runs as user '{agent.name}' (uid {agent.uid}, HOME {agent.home}): it cannot read the "
                "bot's state, .env or socket") in out.stdout
        assert "claude runs as the bot's own user" not in out.stdout

        agent.dotenv.chmod(0o644)  # an operator's .env anybody may read
        out = doctor(env)
        assert out.returncode == 1
        assert (f"FAIL  claude runs as user '{agent.name}' (uid {agent.uid}, HOME {agent.home}), but it can read the "
                f"settings file {agent.dotenv}\n      → make it readable by the bot's user only: chmod 600 "
                f"{agent.dotenv}") in out.stdout
