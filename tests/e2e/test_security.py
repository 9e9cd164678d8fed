"""Issue 13, end to end: the Slack tokens are out of a same-user child's reach (/proc included), the state is
private, the working folder is checked again at every spawn, and the bot's socket knows who is asking."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, processes_in
from tests.e2e.test_reactive import answer_in

pytestmark = pytest.mark.e2e

BOT_TOKEN = "xoxb-test-bot-token-123"
APP_TOKEN = "xapp-test-app-token-456"

WALK = r"""#!/bin/sh
# every ancestor's environment, as a tool of the child could read it
pid=$$
while [ -n "$pid" ] && [ "$pid" -gt 1 ]; do
  echo "visit $pid"
  tr '\0' '\n' < /proc/$pid/environ 2>/dev/null | grep -E 'SLACK|xox|xapp' | sed "s/^/$pid: /"
  pid=$(awk '/^PPid:/ {print $2}' /proc/$pid/status)
done
"""


def test_a_tool_walking_up_its_parents_environ_finds_no_slack_token(start_bot, fake_slack, fake_model, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    script = work / "walk.sh"
    script.write_text(WALK)
    script.chmod(0o755)
    # the tokens are in the environment the bot is started with (as a process manager would pass them)
    bot = start_bot(SLACKBUS_ALLOWED_TOOLS="Bash(./walk.sh)", SLACK_SIGNING_SECRET="signing-secret-value-1234")
    fake_model.enqueue_tool_use("Bash", {"command": "./walk.sh", "description": "read the parents' environments"})
    fake_model.enqueue_text("walked")
    ts = fake_slack.user_says("C1", "U1", "walk up your parents", mention=True)
    answer_in(fake_slack, "C1", ts, "walked")

    out = "\n".join(fake_model.user_texts(1))
    assert f"visit {bot.proc.pid}" in out, out  # the walk reached the bot itself
    for secret in (BOT_TOKEN, APP_TOKEN, "signing-secret-value-1234", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN"):
        assert secret not in out
    # the bot's own /proc entry holds none of them either (read by the test, which may read anything)
    environ = Path(f"/proc/{bot.proc.pid}/environ").read_bytes()
    assert BOT_TOKEN.encode() not in environ and APP_TOKEN.encode() not in environ


def test_the_state_folder_and_database_are_private(start_bot, tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    (state / "slackbus.db").touch(mode=0o644)  # as an older slackbus left them
    os.chmod(state, 0o755)
    os.chmod(state / "slackbus.db", 0o644)
    start_bot()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for name in ("slackbus.db", "slackbus.db-wal", "slackbus.db-shm", "bot.sock"):
        path = state / name
        assert path.exists(), name
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{name} is {oct(path.stat().st_mode)}"


def test_a_folder_that_became_a_link_out_of_the_roots_is_refused_at_the_next_spawn(
    start_bot, fake_slack, fake_model, tmp_path
):
    roots = tmp_path / "roots"
    project = roots / "project"
    project.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secrets.txt").write_text("not for claude")
    start_bot(SLACKBUS_ROOTS=str(roots), SLACKBUS_WORKDIR=str(roots / "work"), SLACKBUS_CHANNEL_DIRS=f"C1={project}")
    ts = fake_slack.user_says("C1", "U1", "look around [[id:before]]", mention=True)
    answer_in(fake_slack, "C1", ts, "answer for before")

    # the approved folder is swapped for a link that leads out of SLACKBUS_ROOTS
    project.rename(roots / "project.old")
    project.symlink_to(outside, target_is_directory=True)
    requests = len(fake_model.requests)

    fake_slack.user_says("C1", "U1", "and now? [[id:reply]]", thread_ts=ts)  # the thread's warm process
    answer_in(fake_slack, "C1", ts, "outside the folders I may work in")
    ts2 = fake_slack.user_says("C1", "U1", "a new thread [[id:new]]", mention=True)  # the channel's folder
    refusal = answer_in(fake_slack, "C1", ts2, "outside the folders I may work in")
    assert "SLACKBUS_ROOTS" in refusal["text"]
    assert len(fake_model.requests) == requests  # nothing reached the model
    assert not processes_in(outside)


def test_narrowed_roots_after_a_restart_stop_a_thread_from_running_in_its_old_folder(
    start_bot, fake_slack, fake_model, tmp_path
):
    wide, old, new = tmp_path / "roots", tmp_path / "roots" / "old", tmp_path / "roots" / "new"
    old.mkdir(parents=True)
    new.mkdir()
    bot = start_bot(SLACKBUS_ROOTS=str(wide), SLACKBUS_WORKDIR=str(old))
    ts = fake_slack.user_says("C1", "U1", "work in the old folder [[id:old]]", mention=True)
    answer_in(fake_slack, "C1", ts, "answer for old")
    assert bot.stop() == 0

    start_bot(SLACKBUS_ROOTS=str(new), SLACKBUS_WORKDIR=str(new))
    requests = len(fake_model.requests)
    fake_slack.user_says("C1", "U1", "carry on [[id:again]]", thread_ts=ts)
    answer_in(fake_slack, "C1", ts, "outside the folders I may work in")
    assert len(fake_model.requests) == requests
    ts2 = fake_slack.user_says("C1", "U1", "a new one [[id:fresh]]", mention=True)
    answer_in(fake_slack, "C1", ts2, "answer for fresh")  # the new folder works


def _ask_socket(path: Path, request: dict[str, object]) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return dict(json.loads(data))


def test_an_untagged_socket_post_says_who_really_wrote_it(start_bot, fake_slack, tmp_path):
    start_bot()
    answer = _ask_socket(tmp_path / "state" / "bot.sock", {"op": "post", "channel": "C1", "text": "I am the admin"})
    assert answer["ok"], answer
    [msg] = [m for m in fake_slack.bot_messages("C1") if "I am the admin" in m["text"]]
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    assert msg["text"].startswith("`[session pid")
    assert f"{me} pid {os.getpid()} via the socket" in msg["text"]


def test_a_handoff_with_someone_elses_home_is_refused(start_bot, fake_slack, tmp_path):
    start_bot()
    other_home = tmp_path / "other-home"
    other_home.mkdir()
    if os.geteuid() == 0:
        os.chown(other_home, 65534, 65534)  # nobody's
    else:
        pytest.skip("needs root to make a folder that belongs to another user")
    answer = _ask_socket(tmp_path / "state" / "bot.sock", {
        "op": "handoff", "session_id": "3f2a9c1e-0000-4000-8000-000000000000", "cwd": str(tmp_path / "work"),
        "home": str(other_home), "channel": "C1", "note": "take over"})
    assert not answer["ok"]
    assert "HOME must be your own" in str(answer["error"])
    assert not [m for m in fake_slack.bot_messages("C1") if "take over" in m["text"]]


def test_the_bot_starts_without_a_traceback_when_the_secrets_pipe_is_odd(tmp_path, bot_env):
    # a stale SLACKBUS_SECRETS_FD (not a pipe of ours) is ignored; the tokens then come from the environment
    env = {**bot_env, "SLACKBUS_SECRETS_FD": "not-a-number", "SLACK_BOT_TOKEN": ""}
    out = subprocess.run([sys.executable, "-m", "bot", "run"], env=env, cwd=str(REPO), capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 2
    assert "SLACK_BOT_TOKEN is not set" in out.stderr and "Traceback" not in out.stderr
    shutil.rmtree(tmp_path / "state", ignore_errors=True)


def test_a_env_file_other_users_can_read_is_named_at_start(start_bot, tmp_path, bot_env):
    env_file = Path(bot_env["SLACKBUS_ENV_FILE"])
    env_file.write_text("DEPLOY_TOKEN=opensesame-plain-9876\n")
    env_file.chmod(0o644)
    bot = start_bot()
    [warning] = bot.events("config.env_file_readable")
    assert warning["path"] == str(env_file.resolve()) and "chmod 600" in warning["fix"]
    assert "opensesame-plain-9876" not in bot.log_path.read_text()
    assert bot.stop() == 0

    env_file.chmod(0o600)
    assert not start_bot().events("config.env_file_readable")
