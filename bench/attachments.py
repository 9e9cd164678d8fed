"""Attachments (issue 17): what a 1 MB file adds to a mention's answer, and the memory the bot keeps for it.

With the defaults, mentions one after another (each answered before the next, the pool warm), answer times by the
call that carried the answer:
- no attachment;
- a 1 MB log: downloaded, named by its path (too long to inline), so the run takes a process started for its
  thread, which may read the thread's folder: a cold `claude` start instead of the pool's;
- a 1 MB image: downloaded and sent to the model as an image block: the pool's process will do.
Memory: the bot's RSS before the attachments and after them, less what as many runs without a file add (each run
is a new thread: its record, its warm process), per attachment (files are streamed to disk in 64 KB pieces; an
image is held only while its turn is sent).
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


def run(n: int = 20) -> dict[str, Any]:
    plain, with_log, with_image = [], [], []
    mb = 1024 * 1024
    with rig() as (slack, _model, bot, _root):
        bot.wait_event("sessions.pooled", timeout=60)
        for i in range(n):  # the same path without a file, first
            ts = slack.user_says("C1", "U1", f"plain {i} [[id:p{i}]]", mention=True)
            plain.append((answered_at(slack, "C1", ts, f"answer for p{i}") - sent_at(slack, ts)) * 1000)
            wait_done(slack, "C1", ts)
            bot.wait_quiet(slack)
        rss_before = rss_kb(bot.proc.pid)
        log_line = b"2026-12-02 03:00:01 worker-7 disk usage 97% on /var, retrying the upload\n"
        for i in range(n):
            log = slack.add_file(f"run{i}.log", (log_line * (mb // len(log_line) + 1))[:mb], "text/plain")
            ts = slack.user_says("C1", "U1", f"log {i} [[id:l{i}]]", mention=True, files=[log])
            with_log.append((answered_at(slack, "C1", ts, f"answer for l{i}") - sent_at(slack, ts)) * 1000)
            wait_done(slack, "C1", ts)
            bot.wait_quiet(slack)
        for i in range(n):
            image = slack.add_file(f"shot{i}.png", _png_of(mb), "image/png")
            ts = slack.user_says("C1", "U1", f"image {i} [[id:i{i}]]", mention=True, files=[image])
            with_image.append((answered_at(slack, "C1", ts, f"answer for i{i}") - sent_at(slack, ts)) * 1000)
            wait_done(slack, "C1", ts)
            bot.wait_quiet(slack)
        rss_after = rss_kb(bot.proc.pid)
        downloads = len([d for d in slack.downloads if d[1]])
        for i in range(n):  # what a run without a file adds to the bot's RSS, for comparison
            ts = slack.user_says("C1", "U1", f"plain again {i} [[id:q{i}]]", mention=True)
            answered_at(slack, "C1", ts, f"answer for q{i}")
            wait_done(slack, "C1", ts)
            bot.wait_quiet(slack)
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
