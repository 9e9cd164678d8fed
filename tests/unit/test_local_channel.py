"""A channel's files: whole lines under many concurrent writers (a file each), ts increasing across all of them."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from bot.local.channel import Follower, LocalChannel, channels_in, valid_name

WRITERS = ["root", "daemon", "bin", "sys", "sync", "games", "man", "lp"]  # OS accounts: a file each (as root)


def _writer(directory: str, w: int, n: int) -> None:
    ch = LocalChannel(directory, "busy", as_user=WRITERS[w] if os.geteuid() == 0 else None)
    for i in range(n):
        ch.append({"kind": "message", "seq": i, "text": f"writer {w} message {i} " + "x" * (i % 300)})


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
    records = []
    for path in sorted((tmp_path / "busy").glob("*.jsonl")):
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        assert lines[-1] == b""  # every line whole, none torn or glued
        records += [{**json.loads(line), "file": path.stem} for line in lines[:-1]]
    assert len(records) == 8000
    for w in range(8 if os.geteuid() == 0 else 1):
        mine = [r for r in records if r["file"] == WRITERS[w]]
        assert [r["seq"] for r in mine] == list(range(1000))  # each writer's order, in its own file
    ts = [r["ts"] for r in sorted(records, key=lambda r: r["ts"])]
    assert len(set(ts)) == 8000  # unique across the channel's files, like Slack's ts
    merged = LocalChannel(str(tmp_path), "busy").records()
    assert [r.ts for r in merged] == ts  # readers merge the files in ts order
    print(f"\n8 writers x 1000 appends: {8000 / took:.0f} appends/s")


def test_a_follower_reads_only_whole_new_records(tmp_path: Path) -> None:
    ch = LocalChannel(str(tmp_path), "general")
    ch.append({"kind": "message", "text": "one"})
    follower = Follower(ch)
    assert [r.text for r in follower.poll()] == ["one"]
    with open(ch.own_file, "ab") as f:
        f.write(b'{"ts": "9999999999.000001", "text": "half')  # a writer mid-line (not through append)
    assert follower.poll() == []
    with open(ch.own_file, "ab") as f:
        f.write(b'"}\n')
    assert [r.text for r in follower.poll()] == ["half"]


def test_ts_increases_even_when_the_clock_does_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)
    ch = LocalChannel(str(tmp_path), "general")
    stamps = [ch.append({"text": str(i)}).ts for i in range(3)]
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
    (tmp_path / "old.jsonl").write_text("")  # the old one-file layout: not a channel any more
    assert list(channels_in(str(tmp_path))) == ["dev", "general"]
