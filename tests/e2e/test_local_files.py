"""Attachments and files out on the local transport (issue 17): a message names files by path; the bot copies
those its writer can read and tells the thread about the others; files Claude hands back land in the channel
folder's files/ and are shown as paths."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BotProcess
from tests.fakes.chat import LocalChat, wait_for
from tests.fakes.fake_model import FakeModel

pytestmark = pytest.mark.e2e


@pytest.fixture
def local(tmp_path: Path, bot_env: dict[str, str]) -> Iterator[tuple[LocalChat, BotProcess]]:
    if os.geteuid() != 0:
        pytest.skip("the local transport's authors are OS users: writing as another user needs root")
    c = LocalChat(tmp_path / "channels")
    c.say("U1", "hello")
    env = {k: v for k, v in {**bot_env, "SLACKBUS_TRANSPORT": "local", "SLACKBUS_LOCAL_DIR": str(tmp_path / "channels"),
                             "SLACK_BOT_TOKEN": "", "SLACK_APP_TOKEN": "", "SLACKBUS_ALLOWED_TOOLS": "Bash",
                             "SLACKBUS_ALLOWED_USERS": ",".join(c.who(u) for u in ("U1", "U2"))}.items() if v}
    bot = BotProcess(env, tmp_path / "bot.log").wait_ready()
    yield c, bot
    if bot.proc.poll() is None:
        bot.stop()
    bot.close_log()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder every user can reach (pytest's tmp_path is root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="slackbus-attach-"))
    folder.chmod(0o755)
    yield folder
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()


def prompt_of(fake_model: FakeModel, marker: str) -> str:
    for i in range(len(fake_model.requests)):
        text = "\n".join(fake_model.user_texts(i))
        if marker in text:
            return text
    raise AssertionError(f"no request carried {marker}")


def test_a_file_its_writer_can_read_reaches_claude_and_one_it_cannot_is_named(local, shared_dir, fake_model):
    c, _bot = local
    log = shared_dir / "crash.log"
    log.write_text("disk full at 03:00\n")
    log.chmod(0o644)
    hidden = shared_dir / "root-only.log"
    hidden.write_text("root's secret\n")
    hidden.chmod(0o600)
    ts = c.writer("U1").append({"kind": "message", "text": "@claude look at ./crash.log and ./root-only.log [[id:lf1]]",
                                "files": [str(log), str(hidden)]}).ts
    wait_for(lambda: [a for a in c.answers(ts) if "answer for lf1" in a], what="the answer")
    prompt = prompt_of(fake_model, "[[id:lf1]]")
    assert "disk full at 03:00" in prompt and "root's secret" not in prompt
    notes = [a for a in c.answers(ts) if "root-only.log was left out" in a]
    assert len(notes) == 1 and "its writer cannot read it" in notes[0]


def test_a_file_claude_hands_back_is_copied_into_the_channel_folder(local, fake_model, tmp_path):
    c, _bot = local
    fake_model.enqueue_tool_use("Bash", {"command": "printf 'col\\n1\\n' > \"$SLACKBUS_OUTBOX/out.csv\"",
                                         "description": "write a csv"})
    ts = c.mention("U1", "make a csv [[id:lf2]]")
    wait_for(lambda: [a for a in c.answers(ts) if ":paperclip: out.csv" in a], what="the file's message")
    saved = tmp_path / "channels" / "general" / "files" / "out.csv"
    assert saved.read_bytes() == b"col\n1\n"
    assert any(str(saved) in a for a in c.answers(ts))
