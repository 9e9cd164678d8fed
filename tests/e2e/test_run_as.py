"""SLACKBUS_RUN_AS: claude and its tools run as another OS user, who cannot read the bot's state or .env.

These need root (the bot switches to the other user for each claude process) and `useradd`: they create a
throwaway user for each test and delete it afterwards. Everything the user must reach (its home, the working
folder, the CLI) lies outside pytest's tmp_path, whose parent is private to root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import claude_cli, processes_in, wait_no_processes
from tests.e2e.test_reactive import answer_in

pytestmark = pytest.mark.e2e

DOTENV_SECRET = "signing-secret-from-the-dotenv-9876"


@dataclass(frozen=True)
class Agent:
    name: str
    uid: int
    gid: int
    home: Path
    base: Path  # world-traversable folder holding the bot's state, .env and the working folder

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def work(self) -> Path:
        return self.base / "work"

    @property
    def dotenv(self) -> Path:
        return self.base / "bot.env"

    def env(self, **more: str) -> dict[str, str]:
        return {"SLACKBUS_RUN_AS": self.name, "SLACKBUS_HOME": str(self.state), "SLACKBUS_WORKDIR": str(self.work),
                "SLACKBUS_ENV_FILE": str(self.dotenv), **more}


def _processes_of(uid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    found.append(int(entry.name))
    return found


def _described(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            out.append(f"{pid}: {command[:120]}")
    return out


@contextlib.contextmanager
def throwaway_user() -> Iterator[Agent]:
    """A new OS user (deleted afterwards) with the bot's state, a private .env and a working folder it owns
    laid out for SLACKBUS_RUN_AS; skips the test where that cannot be done."""
    if os.geteuid() != 0:
        pytest.skip(f"SLACKBUS_RUN_AS needs the bot to start as root; these tests run as uid {os.geteuid()}")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("useradd/userdel are not installed, so no throwaway user can be made for SLACKBUS_RUN_AS")
    cli = Path(claude_cli()).resolve()
    base = Path(tempfile.mkdtemp(prefix="slackbus-run-as-"))
    base.chmod(0o755)
    name = f"slackbus-test-{secrets.token_hex(4)}"
    home = base / "agent-home"
    subprocess.run(["useradd", "--system", "--create-home", "--home-dir", str(home), "--shell", "/bin/sh", name],
                   check=True, capture_output=True, timeout=30)
    uid = -1
    try:
        uid, gid = pwd.getpwnam(name).pw_uid, pwd.getpwnam(name).pw_gid
        probe = subprocess.run(["/bin/sh", "-c", 'test -x "$1"', "sh", str(cli)], user=name, timeout=10, check=False)
        assert probe.returncode == 0, (
            f"the claude CLI at {cli} cannot be run by another user (a folder above it is private?): SLACKBUS_RUN_AS "
            "needs a CLI that user can run, e.g. CLAUDE_CLI_PATH pointing to a copy outside private folders"
        )
        agent = Agent(name=name, uid=uid, gid=gid, home=home, base=base)  # the bot makes its state folder (0700)
        agent.work.mkdir()
        shutil.chown(agent.work, user=name)
        # the operator's .env, readable by the bot's user and group only (root:root 0640)
        agent.dotenv.write_text(f"SLACK_SIGNING_SECRET={DOTENV_SECRET}\n")
        agent.dotenv.chmod(0o640)
        for script, body in (
            ("probe.sh", "\n".join([
                "exec 2>&1", 'echo "user=$(id -un) groups=$(id -G)"', 'echo "HOME=$HOME"',
                f"cat {agent.state}/slackbus.db >/dev/null && echo 'read the database'",
                f"cat {agent.dotenv}", f"ls {agent.state}", "true",
            ])),
            ("slow.sh", "sleep 47"),
        ):
            path = agent.work / script
            path.write_text(f"#!/bin/sh\n{body}\n")
            path.chmod(0o755)
        yield agent
    finally:
        _remove_user(name, uid)
        shutil.rmtree(base, ignore_errors=True)


def _remove_user(name: str, uid: int) -> None:
    """userdel, once whatever a failed test left running as that user is gone (userdel refuses a user with
    processes). Tests take `agent` before `start_bot`, so the bot has stopped and reaped its children by now."""
    deadline = time.monotonic() + 10
    while uid >= 0 and (left := _processes_of(uid)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    out = subprocess.run(["userdel", name], check=False, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        warnings.warn(f"could not delete the test user {name}: {out.stderr.strip()}", stacklevel=1)


@pytest.fixture
def agent() -> Iterator[Agent]:
    with throwaway_user() as made:
        yield made


def test_claude_and_its_tools_run_as_the_other_user_and_cannot_read_the_bot_state(
    agent, start_bot, fake_slack, fake_model
):
    start_bot(**agent.env(SLACKBUS_ALLOWED_TOOLS="Bash(./probe.sh)"))
    assert agent.state.stat().st_mode & 0o077 == 0, "SLACKBUS_HOME must stay private to the bot's user"
    fake_model.enqueue_tool_use("Bash", {"command": "./probe.sh", "description": "who am I, what can I read"})
    fake_model.enqueue_tool_use("mcp__slackbus__post", {"text": "posted by the other user's claude"})
    fake_model.enqueue_text("probed the host")
    ts = fake_slack.user_says("C1", "U1", "who are you here?", mention=True)
    answer_in(fake_slack, "C1", ts, "probed the host", timeout=60)

    output = "\n".join(fake_model.user_texts(1))
    assert f"user={agent.name} groups={agent.gid}\n" in output  # the tool ran as the other user, with its group
    assert f"HOME={agent.home}" in output  # ...in its own HOME
    assert f"{agent.state}/slackbus.db: Permission denied" in output  # and could not read the bot's database,
    assert "read the database" not in output
    assert f"{agent.dotenv}: Permission denied" in output  # nor the bot's .env (not as group root either),
    assert DOTENV_SECRET not in output
    assert f"{agent.state}': Permission denied" in output  # nor list the state folder (bot.sock is in there)
    # the bot's MCP tools (served over claude's own pipes, not the socket) still reach the channel
    assert any("posted by the other user's claude" in (m.get("text") or "") for m in fake_slack.bot_messages("C1"))
    # the session is kept under the other user's HOME, owned by it
    transcripts = list((agent.home / ".claude" / "projects").rglob("*.jsonl"))
    assert transcripts and all(t.stat().st_uid == agent.uid for t in transcripts)


def test_the_other_users_claude_is_interrupted_and_reaped_when_the_bot_stops(
    agent, start_bot, fake_slack, fake_model
):
    bot = start_bot(**agent.env(SLACKBUS_ALLOWED_TOOLS="Bash(./slow.sh)"))
    fake_model.enqueue_tool_use("Bash", {"command": "./slow.sh", "description": "wait a long time"})
    ts = fake_slack.user_says("C1", "U1", "long job", mention=True)
    sleep = fake_slack.wait_for(
        lambda: next((pid for pid, cmd in processes_in(agent.work) if "sleep 47" in cmd), None),
        timeout=30, what="the tool's sleep to start")
    assert Path(f"/proc/{sleep}").stat().st_uid == agent.uid
    claude = [pid for pid, cmd in processes_in(agent.work) if "claude" in cmd]
    assert claude and all(Path(f"/proc/{pid}").stat().st_uid == agent.uid for pid in claude)
    assert bot.stop() == 0
    wait_no_processes(agent.work, timeout=5)  # the bot (root) signalled and reaped the other user's processes
    # and nothing of that user is left anywhere (a helper the CLI ran elsewhere goes with it: a bounded wait)
    fake_slack.wait_for(lambda: _processes_of(agent.uid) == [] or None, timeout=5,
                        what=f"no process of {agent.uid} left: {_described(_processes_of(agent.uid))}")
    notice = answer_in(fake_slack, "C1", ts, "shutting down", timeout=5)
    assert "Reply here to continue" in notice["text"]
