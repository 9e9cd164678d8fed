"""Attachments (issue 17): what a 1 MB file adds to a mention's answer, and the memory the bot keeps for it.

With the defaults, mentions one after another (each answered before the next, the pool warm), answer times by the
call that carried the answer:
- no attachment;
- a 1 MB log: downloaded, named by its path (too long to inline), so the run takes a process started for its
  thread, which may read the thread's folder: a cold `claude` start instead of the pool's;
- a 1 MB image: downloaded and sent to the model as an image block: the pool's process will do.
Memory: the bot's RSS before the attachments and after them, less what as many runs without a file add (each run
is a new thread: its record, its warm process), per attachment (files are streamed to disk in 64 KB pieces; an
image is held only while its turn is sent). It is measured in a bot of its own with SLACKBUS_MAX_PROCESSES=CAP,
which the runs before the first measure fill: every later run, with a file or without, then replaces an idle warm
process instead of adding one (the answer times come from a bot with the defaults, as before). Without it the cap
(sized from the machine's memory, at most 64) was reached during the last runs without a file, so they added no
process while each run with a file had: the bookkeeping of a `claude` process (its pipes, its child-watcher
thread, ~100-150 KB) was counted as memory the attachment kept.
"""

from __future__ import annotations

import argparse
import os
import random
import struct
import zlib
from typing import Any

from bench.common import answered_at, rig, sent_at, summary, wait_done, write_results
from bench.sessions import rss_kb


def _png_of(size: int) -> bytes:
    """A real PNG of random pixels (they do not compress), about `size` bytes: the CLI decodes and checks every
    image it is given, so it must be a real one."""
    side = int((size / 3) ** 0.5)
    rng = random.Random(size)
    raw = b"".join(b"\0" + rng.randbytes(side * 3) for _ in range(side))  # filter byte 0, then RGB

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 1))
            + chunk(b"IEND", b""))


CAP = 8  # SLACKBUS_MAX_PROCESSES for the memory rig: the floor for 4 concurrent runs and a pool of 1


def _mentions(slack: Any, bot: Any, kind: str, n: int, file: Any = None) -> list[float]:
    """`n` mentions one after another (each answered and quiet before the next): their answer times in ms."""
    times = []
    for i in range(n):
        files = None if file is None else [file(i)]
        ts = slack.user_says("C1", "U1", f"{kind} {i} [[id:{kind}{i}]]", mention=True, files=files)
        times.append((answered_at(slack, "C1", ts, f"answer for {kind}{i}") - sent_at(slack, ts)) * 1000)
        wait_done(slack, "C1", ts)
        bot.wait_quiet(slack)
    return times


def run(n: int = 20) -> dict[str, Any]:
    mb = 1024 * 1024
    log_line = b"2026-12-02 03:00:01 worker-7 disk usage 97% on /var, retrying the upload\n"
    log_bytes = (log_line * (mb // len(log_line) + 1))[:mb]
    image_bytes = _png_of(mb)
    with rig() as (slack, _model, bot, _root):  # answer times, with the defaults
        bot.wait_event("sessions.pooled", timeout=60)
        plain = _mentions(slack, bot, "p", n)  # the same path without a file, first
        with_log = _mentions(slack, bot, "l", n, lambda i: slack.add_file(f"run{i}.log", log_bytes, "text/plain"))
        with_image = _mentions(slack, bot, "i", n, lambda i: slack.add_file(f"shot{i}.png", image_bytes, "image/png"))
    with rig(SLACKBUS_MAX_PROCESSES=str(CAP)) as (slack, _model, bot, _root):  # memory, at the process cap
        bot.wait_event("sessions.pooled", timeout=60)
        _mentions(slack, bot, "w", n)  # fills the cap: from here every run replaces an idle warm process
        rss_before = rss_kb(bot.proc.pid)
        _mentions(slack, bot, "l", n, lambda i: slack.add_file(f"run{i}.log", log_bytes, "text/plain"))
        _mentions(slack, bot, "i", n, lambda i: slack.add_file(f"shot{i}.png", image_bytes, "image/png"))
        rss_after = rss_kb(bot.proc.pid)
        downloads = len([d for d in slack.downloads if d[1]])
        _mentions(slack, bot, "q", n)  # what a run without a file adds to the bot's RSS, for comparison
        plain_growth = (rss_kb(bot.proc.pid) - rss_after) / n
    p50 = summary(plain)["p50"]
    return {
        "mentions_each": n,
        "no_attachment_ms": summary(plain),
        "log_1mb_ms": summary(with_log),
        "image_1mb_ms": summary(with_image),
        "added_log_1mb_ms_p50": round(summary(with_log)["p50"] - p50, 1),
        "added_image_1mb_ms_p50": round(summary(with_image)["p50"] - p50, 1),
        "downloads": downloads,
        "bot_rss_mb_before": round(rss_before / 1024, 1),
        "bot_rss_mb_after": round(rss_after / 1024, 1),
        "bot_rss_kb_per_run_without_file": round(plain_growth, 1),
        # what a run with a file keeps beyond what any run keeps (a new thread's record, its warm process's state)
        "bot_rss_kb_per_attachment": round((rss_after - rss_before - 2 * n * plain_growth) / max(downloads, 1), 1),
    }


def print_table(f: dict[str, Any]) -> None:
    print(f"attachments: {f['mentions_each']} mentions each (ms: p50 / p95 / max)")
    for key in ("no_attachment_ms", "log_1mb_ms", "image_1mb_ms"):
        s = f[key]
        print(f"  {key:<20} {s['p50']:>8} / {s['p95']:>8} / {s['max']:>8}")
    print(f"  added p50: 1 MB log {f['added_log_1mb_ms_p50']} ms, 1 MB image {f['added_image_1mb_ms_p50']} ms")
    print(f"  bot RSS {f['bot_rss_mb_before']} → {f['bot_rss_mb_after']} MB over {f['downloads']} downloads; a run "
          f"without a file keeps {f['bot_rss_kb_per_run_without_file']} KB, one with a file "
          f"{f['bot_rss_kb_per_attachment']} KB more")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=20)
    figures = run(parser.parse_args().n)
    write_results("attachments", figures)
    print_table(figures)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
