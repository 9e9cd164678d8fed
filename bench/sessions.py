"""Warm threads, the pre-started pool, /claude acks, memory, shutdown.

- follow-up → answer in a warm thread; in a thread whose process was evicted, and after a restart (cold
  `--resume`), with the bot's own share of those (matched by run id)
- one `claude` start alone: its wall and CPU time (what every cold start costs, whatever the bot does)
- mention → answer with the pool warm vs off (SLACKBUS_WARM_POOL=0)
- /claude ack time
- RSS of the bot and all its claude children after 28 threads
- shutdown time with 4 runs in flight, and processes left after it
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import answered_at, bot_share_ms, rig, sent_at, summary, wait_done, write_results
from tests.fakes.fake_model import FakeModel
from tests.fakes.fake_slack import FakeSlack
from tests.support import BotProcess, claude_cli, fake_environment, processes_in

SLOW = {"SLACKBUS_ALLOWED_TOOLS": "Bash(./slow.sh)"}


def follow_ups(n: int) -> list[float]:
    """Follow-up → answer in a thread whose process is still warm."""
    out = []
    with rig(SLACKBUS_WARM_POOL="0") as (slack, _model, _bot, _root):
        for i in range(n):
            ts = slack.user_says("C1", "U1", f"start {i} [[id:a{i}]]", mention=True)
            answered_at(slack, "C1", ts, f"answer for a{i}")
            wait_done(slack, "C1", ts)
            reply = slack.user_says("C1", "U1", f"follow-up {i} [[id:b{i}]]", thread_ts=ts)
            out.append((answered_at(slack, "C1", ts, f"answer for b{i}") - sent_at(slack, reply)) * 1000)
            wait_done(slack, "C1", reply)
    return out


def follow_ups_evicted(n: int) -> dict[str, Any]:
    """Follow-up → answer in a thread whose process was evicted: the cap (2) is full of newer threads, so the bot
    closes the least recently used one and starts `claude --resume` for this thread. Each round: a new thread
    (which evicts the thread of two rounds before), then a follow-up in that evicted thread."""
    totals, shares, origins = [], [], []
    with rig(SLACKBUS_WARM_POOL="0", SLACKBUS_MAX_CONCURRENT="2", SLACKBUS_MAX_PROCESSES="2") as (slack, _m, bot, _r):
        tss = []
        for i in range(n + 2):
            ts = slack.user_says("C1", "U1", f"thread {i} [[id:a{i}]]", mention=True)
            answered_at(slack, "C1", ts, f"answer for a{i}")
            wait_done(slack, "C1", ts)
            tss.append(ts)
            if i < 2:
                continue
            bot.wait_quiet(slack)  # the evicted process has exited: the follow-up does not race its exit
            old = i - 2
            reply = slack.user_says("C1", "U1", f"follow-up {old} [[id:b{old}]]", thread_ts=tss[old])
            total = (answered_at(slack, "C1", tss[old], f"answer for b{old}") - sent_at(slack, reply)) * 1000
            totals.append(total)
            shares.append(bot_share_ms(bot, reply, total))
            wait_done(slack, "C1", reply)
            bot.wait_quiet(slack)
        origins = [e.get("origin") for e in bot.events("run.spawning") if e.get("resume")]
    return {"answer_ms": summary(totals), "bot_share_ms": summary(shares), "cold_resumes": len(origins),
            "follow_ups": len(totals)}


def follow_ups_after_restart(n: int) -> dict[str, Any]:
    """Follow-up → answer in threads answered before the bot restarted (no process survives a restart): each one
    starts `claude --resume`. The restarted bot is ready and quiet (its pool started) before the first one."""
    totals, shares = [], []
    with tempfile.TemporaryDirectory(prefix="slackbus-bench-") as tmp, FakeSlack() as slack, FakeModel() as model:
        root = Path(tmp)
        env = fake_environment(root, slack, model)
        bot = BotProcess(env, root / "bot.log")
        try:
            bot.wait_ready(60)
            tss = []
            for i in range(n):
                ts = slack.user_says("C1", "U1", f"thread {i} [[id:a{i}]]", mention=True)
                answered_at(slack, "C1", ts, f"answer for a{i}")
                wait_done(slack, "C1", ts)
                tss.append(ts)
            bot.stop()
            bot.close_log()
            bot = BotProcess(env, root / "bot-restarted.log")
            bot.wait_ready(60)
            bot.wait_event("sessions.pooled", timeout=60)
            bot.wait_quiet(slack)
            for i, ts in enumerate(tss):
                reply = slack.user_says("C1", "U1", f"follow-up {i} [[id:b{i}]]", thread_ts=ts)
                total = (answered_at(slack, "C1", ts, f"answer for b{i}") - sent_at(slack, reply)) * 1000
                totals.append(total)
                shares.append(bot_share_ms(bot, reply, total))
                wait_done(slack, "C1", reply)
                bot.wait_quiet(slack)
            resumed = sum(1 for e in bot.events("run.spawning") if e.get("resume"))
        finally:
            if bot.proc.poll() is None:
                bot.stop()
            bot.close_log()
    return {"answer_ms": summary(totals), "bot_share_ms": summary(shares), "cold_resumes": resumed,
            "follow_ups": len(totals)}


def cli_start(n: int = 10) -> dict[str, Any]:
    """What one `claude` start costs on this machine, without the bot: `claude -p` in a new session against the
    fake model, to its exit; the wall time and the CPU time (user + system) of the process and its children."""
    wall, cpu = [], []
    with tempfile.TemporaryDirectory(prefix="slackbus-bench-cli-") as tmp, FakeModel() as model:
        home, work = Path(tmp) / "home", Path(tmp) / "work"
        home.mkdir()
        work.mkdir()
        env = {"PATH": os.environ.get("PATH", ""), **model.cli_env(str(home))}
        for i in range(n):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.monotonic()
            subprocess.run([claude_cli(), "-p", f"start {i}", "--output-format", "json"], cwd=work, env=env,
                           stdin=subprocess.DEVNULL, capture_output=True, check=True, timeout=60)
            wall.append((time.monotonic() - started) * 1000)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000)
    return {"wall_ms": summary(wall), "cpu_ms": summary(cpu)}


def mentions(n: int, pool: bool) -> list[float]:
    out = []
    with rig(SLACKBUS_WARM_POOL="1" if pool else "0", SLACKBUS_IDLE_SECONDS="0") as (slack, _model, bot, _root):
        for i in range(n):
            if pool:
                bot.wait_event("sessions.pooled", count=i + 1, timeout=30)
            ts = slack.user_says("C1", "U1", f"question {i} [[id:m{i}]]", mention=True)
            out.append((answered_at(slack, "C1", ts, f"answer for m{i}") - sent_at(slack, ts)) * 1000)
            wait_done(slack, "C1", ts)
    return out


def acks(n: int) -> list[float]:
    out = []
    with rig() as (slack, _model, _bot, _root):
        for _ in range(n):
            envelope = slack.slash_command(text="status", user="U1")
            acked, _payload = slack.wait_ack(envelope)
            sent = next(e.t for e in slack.envelopes if e.envelope_id == envelope)
            out.append((acked - sent) * 1000)
    return out


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False)
    return [int(x) for x in out.stdout.split()]


def memory_after_threads(n: int) -> dict[str, Any]:
    with rig() as (slack, _model, bot, _root):
        idle_rss = rss_kb(bot.proc.pid)
        peak_children = 0
        for i in range(n):
            ts = slack.user_says(f"C{i % 4}", "U1", f"thread {i} [[id:t{i}]]", mention=True)
            answered_at(slack, f"C{i % 4}", ts, f"answer for t{i}")
            peak_children = max(peak_children, len(children(bot.proc.pid)))
        time.sleep(1.0)
        kids = children(bot.proc.pid)
        return {
            "threads": n,
            "max_processes": int(bot.events("bot.ready")[0]["max_processes"]),  # the cap this bot ran with
            "bot_rss_mb_idle": round(idle_rss / 1024, 1),
            "bot_rss_mb": round(rss_kb(bot.proc.pid) / 1024, 1),
            "claude_children": len(kids),
            "claude_children_peak": peak_children,
            "claude_rss_mb_total": round(sum(rss_kb(k) for k in kids) / 1024, 1),
            "claude_rss_mb_each": round(sum(rss_kb(k) for k in kids) / 1024 / max(len(kids), 1), 1),
        }


def shutdown_with_runs(runs: int = 4) -> dict[str, Any]:
    with rig(**SLOW) as (slack, model, bot, root):
        work = root / "work"
        script = work / "slow.sh"
        script.write_text("#!/bin/sh\nsleep 47\n")
        script.chmod(0o755)
        for i in range(runs):
            model.enqueue_tool_use("Bash", {"command": "./slow.sh", "description": "wait"})
            slack.user_says(f"C{i}", "U1", f"long job {i}", mention=True)
        slack.wait_for(lambda: sum("sleep 47" in c for _p, c in processes_in(work)) >= runs, timeout=60)
        started = time.monotonic()
        bot.proc.send_signal(signal.SIGTERM)
        code = bot.proc.wait(30)
        elapsed = time.monotonic() - started
        time.sleep(0.5)
        left = processes_in(work)
        notices = sum(1 for c in range(runs) for m in slack.bot_messages(f"C{c}") if "shutting down" in m["text"])
        return {"runs_in_flight": runs, "shutdown_s": round(elapsed, 2), "exit_code": code,
                "processes_left": len(left), "notices_posted": notices}


def run(n: int = 20) -> dict[str, Any]:
    return {
        "follow_up_warm_ms": summary(follow_ups(n)),
        "follow_up_evicted": follow_ups_evicted(n),
        "follow_up_after_restart": follow_ups_after_restart(n),
        "cli_start": cli_start(),
        "mention_pool_warm_ms": summary(mentions(n, pool=True)),
        "mention_pool_off_ms": summary(mentions(n, pool=False)),
        "slash_ack_ms": summary(acks(50)),
        "memory": memory_after_threads(28),
        "shutdown": shutdown_with_runs(4),
    }


def print_table(f: dict[str, Any]) -> None:
    print("sessions (ms: p50 / p95 / max)")
    for key in ("follow_up_warm_ms", "mention_pool_warm_ms", "mention_pool_off_ms", "slash_ack_ms"):
        s = f[key]
        print(f"  {key:<26} {s['p50']:>8} / {s['p95']:>8} / {s['max']:>8}   (n={s['n']})")
    for key in ("follow_up_evicted", "follow_up_after_restart"):
        for part in ("answer_ms", "bot_share_ms"):
            s = f[key][part]
            print(f"  {key + ' ' + part:<26} {s['p50']:>8} / {s['p95']:>8} / {s['max']:>8}   (n={s['n']}, "
                  f"{f[key]['cold_resumes']} cold --resume)")
    c = f["cli_start"]
    print(f"  one `claude` start, alone: wall {c['wall_ms']['p50']} ms, CPU {c['cpu_ms']['p50']} ms (p50)")
    print(f"  memory: {f['memory']}")
    print(f"  shutdown: {f['shutdown']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--memory-only", action="store_true", help="only the memory scenario")
    args = parser.parse_args()
    if args.memory_only:
        from bench.common import RESULTS

        earlier = json.loads(RESULTS.read_text()).get("sessions", {}) if RESULTS.exists() else {}
        figures = {**earlier, "memory": memory_after_threads(28)}
    else:
        figures = run(args.n)
    write_results("sessions", figures, measured=["memory"] if args.memory_only else None)
    print_table(figures)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
