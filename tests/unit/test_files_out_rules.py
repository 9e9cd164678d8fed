"""bot.core.files_out: which paths a session may hand back, and the outbox emptied into the thread once."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import load_settings
from bot.core.files_out import FilesOut, UploadRefused, outbox_dir, prepare_outbox
from bot.core.store import Store, ThreadSession
from tests.fakes.poster import FakePoster

ENV = {"SLACK_BOT_TOKEN": "xoxb-test-bot-token-123", "SLACK_APP_TOKEN": "xapp-test-app-token-123",
       "SLACKBUS_ALLOWED_USERS": "U1",
       "CLAUDE_CLI_PATH": "/bin/true"}


@pytest.fixture
def setup(tmp_path: Path) -> tuple[FilesOut, FakePoster, Path, Path]:
    work = tmp_path / "work"
    work.mkdir()
    settings = load_settings({**ENV, "SLACKBUS_HOME": str(tmp_path / "state"), "SLACKBUS_WORKDIR": str(work),
                              "SLACKBUS_MAX_ATTACHMENT_MB": "1"})
    store = Store.open(settings.db_path)
    store.save_thread(ThreadSession("C1", "1.000001", "s1", str(work), True, "1.000001", "U1"))
    poster = FakePoster()
    return FilesOut(settings, store, poster), poster, work, settings.home


def test_a_file_in_the_threads_folder_or_outbox_may_go_anything_else_not(setup, tmp_path: Path) -> None:
    files, _poster, work, home = setup
    (work / "report.txt").write_text("r")
    assert files.allowed("C1", "1.000001", "s1", "report.txt") == (work / "report.txt").resolve()
    box = prepare_outbox(home, "s1")
    (box / "out.csv").write_text("a")
    assert files.allowed("C1", "1.000001", "s1", str(box / "out.csv")) == (box / "out.csv").resolve()
    (tmp_path / "elsewhere.txt").write_text("x")
    (work / "escape").symlink_to(tmp_path / "elsewhere.txt")
    for path in (str(home / "slackbus.db"), str(tmp_path / "elsewhere.txt"), "escape", "../elsewhere.txt",
                 str(outbox_dir(home, "other-session") / "x")):
        with pytest.raises(UploadRefused):
            files.allowed("C1", "1.000001", "s1", path)
    with pytest.raises(UploadRefused, match="there is no such file"):
        files.allowed("C1", "1.000001", "s1", "missing.txt")


@pytest.mark.anyio
async def test_the_outbox_goes_to_the_thread_once_and_a_big_file_gets_a_sentence(setup) -> None:
    files, poster, _work, home = setup
    box = prepare_outbox(home, "s1")
    (box / "a.csv").write_bytes(b"1,2\n")
    (box / "big.bin").write_bytes(b"\0" * (1024 * 1024 + 1))
    problems = await files.send_outbox("C1", "1.000001", "s1")
    assert [p for p in problems if "big.bin was not uploaded" in p and "over the limit of 1 MB" in p] == problems
    assert len(problems) == 1
    assert [(u[2], u[3]) for u in poster.uploads] == [("a.csv", b"1,2\n")]
    assert await files.send_outbox("C1", "1.000001", "s1") == []  # sent files are not sent again
    assert len(poster.uploads) == 1 and sorted(p.name for p in (box / ".sent").iterdir()) == ["a.csv", "big.bin"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
