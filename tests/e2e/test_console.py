"""`slackbus console` in a real pseudo-terminal: the local bot starts in-process, a mention is answered in the
terminal, Ctrl-C cancels the running task and leaves no process behind, Ctrl-D quits."""

from __future__ import annotations

import sys
from pathlib import Path

import pexpect
import pytest

from bot.local.channel import me
from tests.conftest import REPO, processes_in, wait_no_processes
from tests.fakes.chat import LocalChat
from tests.fakes.fake_model import FakeModel, Reply

pytestmark = pytest.mark.e2e


def spawn_console(env: dict[str, str], *args: str) -> pexpect.spawn:
    child = pexpect.spawn(sys.executable, ["-m", "bot", "console", *args], env={**env, "TERM": "xterm"},
                          cwd=str(REPO), encoding="utf-8", timeout=60, dimensions=(50, 140))
    child.expect("Ctrl-D quits")
    return child


def test_the_console_answers_a_mention_and_ctrl_c_cancels_the_running_task(
    tmp_path: Path, bot_env: dict[str, str], fake_model: FakeModel
) -> None:
    env = {k: v for k, v in bot_env.items() if not k.startswith("SLACK_") and k != "SLACKBUS_ALLOWED_USERS"}
    LocalChat(Path(env["SLACKBUS_HOME"]) / "channels", "dev").say(me(), "we ship on thursdays")
    child = spawn_console(env, "dev")  # you are your OS user
    try:
        child.expect("we ship on thursdays")  # the channel's history scrolls back
        child.sendline("@claude when do we ship? [[id:con1]]")
        child.expect(r"\[2\] .*you: .*when do we ship")
        child.expect("answer for con1")
        assert "we ship on thursdays" in "\n".join(fake_model.user_texts(0))  # the channel was the context

        child.sendline(">2 and on fridays? [[id:con2]]")  # a reply in thread 2, no mention needed
        child.expect("answer for con2")

        fake_model.enqueue(Reply(text="too late", hang=60))
        child.sendline("@claude a long job [[id:con3]]")
        child.expect("Working on it")
        child.sendintr()
        child.expect("cancelling thread")
        child.expect(f"cancelled by @{me()}")
        wait_no_processes(Path(env["SLACKBUS_WORKDIR"]), timeout=20,
                          allow=lambda cmd: "claude" in cmd and "--input-format" in cmd, at_most=8)
        child.sendeof()
        child.expect("bye")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    wait_no_processes(Path(env["SLACKBUS_WORKDIR"]), timeout=20)  # the in-process bot reaped every claude
    assert not processes_in(Path(env["SLACKBUS_WORKDIR"]))


def test_the_console_refuses_a_bad_channel_name_in_one_sentence(bot_env: dict[str, str]) -> None:
    child = pexpect.spawn(sys.executable, ["-m", "bot", "console", "../etc"], env=bot_env, cwd=str(REPO),
                          encoding="utf-8", timeout=30)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2
    assert "is not a channel name" in (child.before or "") and "Traceback" not in (child.before or "")
