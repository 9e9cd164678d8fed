"""bot.core.attachments: which files are fetched, where they go, and how the prompt names them."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from bot.core.attachments import (
    DEFAULT_TYPES,
    AttachmentRefused,
    Fetched,
    Limits,
    check,
    prompt_section,
    target_path,
    thread_dir,
)
from bot.core.events import FileRef

LIMITS = Limits(max_bytes=20 * 1024 * 1024, types=DEFAULT_TYPES, inline_chars=8000)


@pytest.mark.parametrize(("ref", "says"), [
    (FileRef("F1", "big.log", "text/plain", 21 * 1024 * 1024), "over the limit of 20.0 MB"),
    (FileRef("F2", "tool.exe", "application/x-msdownload", 10), "of type application/x-msdownload are not accepted"),
    (FileRef("F3", "gone.png", "image/png", 10, mode="tombstone"), "deleted in Slack"),
    (FileRef("F4", "doc", "application/pdf", 10, mode="external"), "link to another service"),
])
def test_a_file_that_must_not_be_fetched_says_which_and_why(ref: FileRef, says: str) -> None:
    with pytest.raises(AttachmentRefused) as refused:
        check(ref, LIMITS)
    assert ref.name in str(refused.value) and says in str(refused.value)


@pytest.mark.parametrize("mimetype", ["image/png", "image/webp", "text/plain", "text/x-python", "application/json"])
def test_ordinary_files_pass(mimetype: str) -> None:
    check(FileRef("F1", "x", mimetype, 1000), LIMITS)


def test_files_go_to_a_folder_per_thread_under_home_with_safe_names(tmp_path: Path) -> None:
    folder = thread_dir(tmp_path, "C1", "1700000000.000100")
    assert folder == tmp_path / "attachments" / "C1" / "1700000000.000100"
    path = target_path(folder, FileRef("F9", "../../etc/passwd"))
    assert path.parent == folder and "/" not in path.name and not path.name.startswith(".")
    assert target_path(folder, FileRef("F1", "a.log")) != target_path(folder, FileRef("F2", "a.log"))


def test_the_prompt_names_each_file_inlines_small_text_and_sends_images(tmp_path: Path) -> None:
    log = tmp_path / "crash.log"
    log.write_text("Traceback: boom\n```\nnot a fence breaker\n")
    png = tmp_path / "shot.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    big = tmp_path / "big.log"
    big.write_text("x" * 9000)
    text, images, by_path = prompt_section([
        Fetched(FileRef("F1", "crash.log", "text/plain"), log),
        Fetched(FileRef("F2", "shot.png", "image/png"), png),
        Fetched(FileRef("F3", "big.log", "text/plain"), big),
        Fetched(FileRef("F4", "tool.exe", "application/x-msdownload"), left_out="tool.exe was left out: no."),
    ], LIMITS)
    assert f"crash.log (text/plain, {log.stat().st_size} bytes): {log}" in text
    assert "~~~\nTraceback: boom\n```\nnot a fence breaker\n\n~~~" in text  # inlined, in a fence it cannot close
    assert f"shot.png (image/png, 108 bytes): {png}" in text
    assert f"big.log (text/plain, 9 KB): {big}" in text and "x" * 100 not in text  # over 8,000 chars: path only
    assert "tool.exe: not available. tool.exe was left out: no." in text
    assert images == [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                   "data": base64.b64encode(png.read_bytes()).decode()}}]
    assert by_path  # big.log reaches Claude only by its path
    assert prompt_section([], LIMITS) == ("", [], False)
    small = prompt_section([Fetched(FileRef("F1", "crash.log", "text/plain"), log),
                            Fetched(FileRef("F2", "shot.png", "image/png"), png)], LIMITS)
    assert small[2] is False  # inlined and shown: any process will do
