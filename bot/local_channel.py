"""The local channel: Slack's role played by an append-only JSON-lines file per channel on the local filesystem.

    SLACKBUS_LOCAL_DIR (default SLACKBUS_HOME/channels)/<channel>.jsonl

Each line is one record:
    {"kind": "message", "ts": "1764150000.000100", "thread_ts": null, "user": "alice", "text": "@claude …"}
    {"kind": "edit", "ts": …, "target": "<ts>", "text": "…"}                  (the bot's status → answer)
    {"kind": "reaction", "ts": …, "target": "<ts>", "name": "eyes", "op": "add" | "remove", "user": …}
    {"kind": "ephemeral", "ts": …, "to": "alice", "thread_ts": …, "text": "…"}

Many writers at once are safe: a record is written with one write() on an O_APPEND descriptor under an
exclusive flock, so lines never tear or interleave, and ts is given under that lock, strictly increasing
within a channel (so it orders like Slack's). Readers follow the file as it grows by polling its size
(stdlib only, works on shared filesystems where inotify does not).

Stdlib only: hooks and `slackbus post` use it too.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from typing import Any

TAIL_BYTES = 64 * 1024
MAX_LINE = 1024 * 1024


def channel_dir(home: str, env: dict[str, str] | None = None) -> str:
    env = dict(os.environ) if env is None else env
    return os.path.expanduser(env.get("SLACKBUS_LOCAL_DIR", "").strip() or os.path.join(home, "channels"))


def valid_name(name: str) -> bool:
    return bool(name) and len(name) <= 80 and all(c.isalnum() or c in "-_." for c in name) and name[0] != "."


class LocalChannel:
    def __init__(self, directory: str, name: str) -> None:
        if not valid_name(name):
            raise ValueError(f"{name!r} is not a channel name: use letters, digits, - _ and . (e.g. general).")
        self.name = name
        self.path = os.path.join(directory, f"{name}.jsonl")

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write one record (its ts given here, under the lock) and return it as written."""
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                out = {"ts": self._next_ts(), **{k: v for k, v in record.items() if k != "ts"}}
                line = (json.dumps(out, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
                if len(line) > MAX_LINE:
                    raise ValueError(f"a record of {len(line)} bytes is over the {MAX_LINE}-byte limit")
                written = os.write(fd, line)
                while written < len(line):  # a regular file takes it whole; never leave half a line
                    written += os.write(fd, line[written:])
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        return out

    def _next_ts(self) -> str:
        now = int(time.time() * 1_000_000)
        last = self.last_ts()
        if last is not None:
            whole, _, frac = last.partition(".")
            now = max(now, int(whole) * 1_000_000 + int((frac or "0").ljust(6, "0")[:6]) + 1)
        return f"{now // 1_000_000}.{now % 1_000_000:06d}"

    def last_ts(self) -> str | None:
        """The newest record's ts: the last whole line, read from the file's tail (4 KB, more if a line is longer)."""
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                span = 4096
                while True:
                    start = max(size - span, 0)
                    f.seek(start)
                    tail = f.read()
                    lines = tail.splitlines()
                    if start > 0:
                        lines = lines[1:]  # the first may be cut
                    for raw in reversed(lines):
                        try:
                            ts = json.loads(raw).get("ts")
                        except (ValueError, AttributeError):
                            continue
                        if isinstance(ts, str):
                            return ts
                    if start == 0 or span >= TAIL_BYTES * 16:
                        return None
                    span *= 4
        except FileNotFoundError:
            return None

    def read(self, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Whole records from byte `offset` on, and the offset after the last whole line."""
        try:
            with open(self.path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return [], offset
        end = data.rfind(b"\n") + 1
        records = []
        for raw in data[:end].splitlines():
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("ts"), str):
                records.append(rec)
        return records, offset + end

    def size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0


def channels_in(directory: str) -> Iterator[str]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for n in sorted(names):
        if n.endswith(".jsonl") and valid_name(n[:-6]):
            yield n[:-6]
