"""Attachments on the local transport: the console turns paths into a message's files, a record carries them
(checked like every field), and the files are refs only their writer can read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.console import attach_path, attached_paths
from bot.local.channel import parse_line
from bot.local.files import refs_of


def test_paths_in_a_typed_message_become_its_files(tmp_path: Path) -> None:
    (tmp_path / "crash.log").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes(b"x")
    (tmp_path / "abs.txt").write_text("x")
    text = (f"look at ./crash.log, `./sub/a.png` and ./missing.txt or ../{tmp_path.name} (a folder), "
            f"{tmp_path / 'abs.txt'} (absolute: only text) and ./crash.log again")
    assert attached_paths(text, str(tmp_path)) == (str(tmp_path / "crash.log"), str(tmp_path / "sub" / "a.png"))
    assert attach_path(str(tmp_path / "crash.log")) == str(tmp_path / "crash.log")
    assert attach_path(str(tmp_path / "nope")) is None


def test_a_record_carries_absolute_paths_only() -> None:
    ok = parse_line(b'{"ts": "1764150000.000100", "text": "hi", "files": ["/tmp/a.log"]}', author="u", bot=False)
    assert not isinstance(ok, str) and ok.files == ("/tmp/a.log",)
    for bad in (b'"files": "/tmp/a.log"', b'"files": ["relative.log"]', b'"files": [1]'):
        line = b'{"ts": "1764150000.000100", "text": "hi", ' + bad + b"}"
        assert parse_line(line, author="u", bot=False) == "files that are not a list of absolute paths"


@pytest.mark.skipif(os.geteuid() != 0, reason="judging another user's access needs that user to exist apart")
def test_a_file_its_writer_cannot_read_is_marked_so(tmp_path: Path) -> None:
    shared = tmp_path / "f.log"
    shared.write_text("x")
    shared.chmod(0o644)
    (a,) = refs_of((str(shared),), author="root", ts="1.000001")
    assert (a.name, a.mode, a.size, a.mimetype) == ("f.log", "hosted", 1, "text/plain")
    # pytest's tmp_path is root's alone (0700): another user cannot even reach the file
    (b,) = refs_of((str(shared),), author="daemon", ts="1.000001")
    assert b.mode == "unreadable"
    (c,) = refs_of((str(tmp_path / "gone.log"),), author="root", ts="1.000001")
    assert c.mode == "unreadable"
