"""The local channel file: whole lines under many concurrent writers, increasing ts, followers see growth."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from bot.local_channel import LocalChannel, channels_in, valid_name


def _writer(directory: str, w: int, n: int) -> None:
    ch = LocalChannel(directory, "busy")
    for i in range(n):
        ch.append({"kind": "message", "user": f"w{w}", "seq": i, "text": f"writer {w} message {i} " + "x" * (i % 300)})


def test_eight_writers_appending_a_thousand_each_leave_8000_whole_lines_in_order(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    writers = [ctx.Process(target=_writer, args=(str(tmp_path), w, 1000)) for w in range(8)]
    started = time.perf_counter()
    for p in writers:
        p.start()
    for p in writers:
        p.join(120)
        assert p.exitcode == 0
    took = time.perf_counter() - started
    raw = (tmp_path / "busy.jsonl").read_bytes()
    lines = raw.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 8001  # every line whole, none torn or glued
    records = [json.loads(line) for line in lines[:-1]]
    for w in range(8):
        assert [r["seq"] for r in records if r["user"] == f"w{w}"] == list(range(1000))  # each writer's order
    ts = [r["ts"] for r in records]
    assert ts == sorted(ts) and len(set(ts)) == 8000  # chronological, unique, like Slack's ts
    print(f"\n8 writers x 1000 appends: {8000 / took:.0f} appends/s")


def test_a_follower_reads_only_whole_new_records(tmp_path: Path) -> None:
    ch = LocalChannel(str(tmp_path), "general")
    ch.append({"kind": "message", "user": "a", "text": "one"})
    first, offset = ch.read(0)
    assert [r["text"] for r in first] == ["one"]
    with open(ch.path, "ab") as f:
        f.write(b'{"ts": "9999999999.000001", "text": "half')  # a writer mid-line (not through append)
    assert ch.read(offset) == ([], offset)
    with open(ch.path, "ab") as f:
        f.write(b'"}\n')
    again, _ = ch.read(offset)
    assert [r["text"] for r in again] == ["half"]


def test_ts_increases_even_when_the_clock_does_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)
    ch = LocalChannel(str(tmp_path), "general")
    stamps = [ch.append({"text": str(i)})["ts"] for i in range(3)]
    assert stamps == ["1700000000.000000", "1700000000.000001", "1700000000.000002"]


@pytest.mark.parametrize("name", ["", "../etc", ".hidden", "a/b", "x" * 81, "sp ace"])
def test_channel_names_cannot_escape_the_folder(tmp_path: Path, name: str) -> None:
    assert not valid_name(name)
    with pytest.raises(ValueError, match="not a channel name"):
        LocalChannel(str(tmp_path), name)


def test_channels_are_listed_from_the_folder(tmp_path: Path) -> None:
    for name in ("dev", "general"):
        LocalChannel(str(tmp_path), name).append({"text": "hi"})
    (tmp_path / "notes.txt").write_text("not a channel")
    assert list(channels_in(str(tmp_path))) == ["dev", "general"]
