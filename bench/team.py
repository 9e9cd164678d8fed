"""A team's channel: 20 threads answered one after another, then a follow-up in each of the 20 in random order,
with the default settings (issue 15). Follow-up latency is the Slack call that carried each answer; memory is the
RSS of every `claude` process the bot keeps; idle CPU is what those processes use while nobody asks anything.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from typing import Any

from bench.common import answered_at, rig, sent_at, summary, write_results
from bench.sessions import children, rss_kb

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError, ValueError):
            continue
    return total / TICKS


def state_of(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def run(threads: int = 20, idle_window: float = 20.0, seed: int = 7) -> dict[str, Any]:
    with rig() as (slack, _model, bot, _root):
        cap = int(bot.events("bot.ready")[0]["max_processes"])
        tss = []
        for i in range(threads):
            ts = slack.user_says("C1", f"U{1 + i % 3}", f"thread {i} [[id:t{i}]]", mention=True)
            answered_at(slack, "C1", ts, f"answer for t{i}")
            tss.append(ts)
        kids = children(bot.proc.pid)
        rss_mb = sum(rss_kb(k) for k in kids) / 1024
        # idle CPU of the parked processes: once every one is parked (SLACKBUS_PARK_SECONDS after its last use)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(state_of(k) == "T" for k in kids):
            time.sleep(0.1)
        parked = sum(1 for k in kids if state_of(k) == "T")
        before = cpu_seconds(kids)
        time.sleep(idle_window)  # measuring idle CPU: nothing is asked for this long, by design
        idle_cpu = (cpu_seconds(kids) - before) / idle_window * 100
        order = list(range(threads))
        random.Random(seed).shuffle(order)
        follow_ups, origins_before = [], len(bot.events("run.reusing"))
        for i in order:
            ts = slack.user_says("C1", f"U{1 + i % 3}", f"and then? [[id:f{i}]]", thread_ts=tss[i])
            follow_ups.append((answered_at(slack, "C1", tss[i], f"answer for f{i}") - sent_at(slack, ts)) * 1000)
        warm = sum(1 for e in bot.events("run.reusing")[origins_before:] if e.get("origin") == "warm")
        return {
            "threads": threads,
            "max_processes": cap,
            "max_processes_why": bot.events("bot.ready")[0].get("max_processes_why"),
            "follow_up_ms": summary(follow_ups),
            "follow_ups_warm": warm,
            "claude_processes": len(kids),
            "claude_processes_parked": parked,
            "claude_rss_mb_total": round(rss_mb, 1),
            "idle_cpu_percent_of_a_core": round(idle_cpu, 2),
            "idle_window_s": idle_window,
        }


def print_table(f: dict[str, Any]) -> None:
    s = f["follow_up_ms"]
    print(f"team: {f['threads']} threads, then a follow-up in each in random order (defaults; cap "
          f"{f['max_processes']}: {f['max_processes_why']})")
    print(f"  follow-up → answer: {s['p50']} / {s['p95']} / {s['max']} ms (p50 / p95 / max); warm: "
          f"{f['follow_ups_warm']} of {f['threads']}")
    print(f"  claude processes kept: {f['claude_processes']} ({f['claude_processes_parked']} parked), "
          f"{f['claude_rss_mb_total']} MB RSS in all; idle CPU "
          f"{f['idle_cpu_percent_of_a_core']}% of a core over {f['idle_window_s']} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=20)
    args = parser.parse_args()
    figures = run(args.threads)
    write_results("team", figures)
    print_table(figures)
