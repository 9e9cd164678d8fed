"""Bursts: 200 mentions in 2 s across 50 threads under a cap of 4, and 8 mentions in one channel within a second.

- burst: 50 threads; each gets a mention then three more mentions in its thread, all 200 sent within 2 s.
  Measured: time until every one of them has its ✅ (drained), that each got exactly one ✅ and no answer was
  posted twice, the peak of runs at once (must stay ≤ the cap), and the bot's RSS at its peak while ~200
  tasks were queued.
- eight: 8 mentions in one channel within a second (default cap 4): time until all are answered. Slack
  posts about one message per second per channel, so the bot posts one message per answer.
"""

from __future__ import annotations

import argparse
import collections
import json
import threading
import time
from typing import Any

from bench.common import rig, summary, write_results
from bench.sessions import rss_kb


def _sample_rss(pid: int, stop: threading.Event, out: list[int]) -> None:
    while not stop.is_set():
        out.append(rss_kb(pid))
        time.sleep(0.05)


def burst(threads: int = 50, per_thread: int = 4, seconds: float = 2.0, cap: int = 4) -> dict[str, Any]:
    with rig(SLACKBUS_MAX_CONCURRENT=str(cap)) as (slack, model, bot, _root):
        idle = rss_kb(bot.proc.pid)
        samples: list[int] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_rss, args=(bot.proc.pid, stop, samples), daemon=True)
        sampler.start()
        total = threads * per_thread
        gap = seconds / total
        started = time.monotonic()
        parents: list[str] = []
        sent: list[tuple[str, str]] = []  # (ts, marker)
        for i in range(total):
            if i < threads:  # first a mention per thread, then follow-ups spread over the threads
                ts = slack.user_says("C1", "U1", f"task {i} [[id:p{i}]]", mention=True, wait=10)
                parents.append(ts)
                sent.append((ts, f"p{i}"))
            else:
                thread = parents[i % threads]
                ts = slack.user_says("C1", "U2", f"more on it {i} [[id:f{i}]]", thread_ts=thread, mention=True,
                                     wait=10)
                sent.append((ts, f"f{i}"))
            delay = started + (i + 1) * gap - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        send_s = time.monotonic() - started

        def checked() -> int:
            calls = slack.calls_of("reactions.add")
            return sum(1 for c in calls if c.params.get("name") == "white_check_mark")

        slack.wait_for(lambda: checked() >= total, timeout=600, what="every mention's ✅")
        drained = time.monotonic() - started
        stop.set()
        sampler.join()
        time.sleep(0.5)
        checks = collections.Counter(c.params.get("timestamp") for c in slack.calls_of("reactions.add")
                                     if c.params.get("name") == "white_check_mark")
        answers = [str(m.get("text") or "") for m in slack.bot_messages("C1") if "answer for" in str(m.get("text"))]
        dup_answers = [a for a, n in collections.Counter(answers).items() if n > 1]
        runs = len(bot.events("run.answered")) if bot.events("run.answered") else None
        return {
            "messages": total, "threads": threads, "cap": cap, "sent_in_s": round(send_s, 2),
            "drained_s": round(drained, 2),
            "each_checked_once": all(checks.get(ts) == 1 for ts, _ in sent) and len(checks) == total,
            "duplicate_answers": len(dup_answers),
            "runs": runs,
            "model_max_active": model.max_active,
            "bot_rss_mb_idle": round(idle / 1024, 1),
            "bot_rss_mb_peak": round(max(samples) / 1024, 1) if samples else None,
        }


def eight_in_a_second(rounds: int = 3) -> dict[str, Any]:
    times = []
    with rig() as (slack, _model, _bot, _root):
        warm = slack.user_says("C1", "U1", "warm-up [[id:w]]", mention=True)
        slack.wait_for(lambda: slack.bot_messages("C1", warm), timeout=60)
        for r in range(rounds):
            tss = []
            for i in range(8):
                tss.append(slack.user_says("C1", "U1", f"q{r}-{i} [[id:e{r}x{i}]]", mention=True))
                time.sleep(1.0 / 8)
            started = min(e.t for ts in tss for e in slack.envelopes_for(ts))
            # an answer is the Slack call that carried its text (a "Queued, position N" notice is not one)
            needles = [f"answer for e{r}x{i}" for i in range(8)]

            def carried(needles: list[str] = needles) -> list[float] | None:
                found = []
                for needle in needles:
                    call = next((c for c in slack.calls if c.method in ("chat.postMessage", "chat.update")
                                 and needle in str(c.params.get("text") or "")), None)
                    if call is None:
                        return None
                    found.append(call.t)
                return found

            answered_at = slack.wait_for(carried, timeout=120)
            times.append(max(answered_at) - started)

            def all_done(tss: list[str] = tss) -> bool:
                return all("white_check_mark" in slack.reactions("C1", ts) for ts in tss)

            slack.wait_for(all_done, timeout=30)
    return {"rounds": rounds, "all_answered_s": summary(times), "measured_by": "the call carrying each answer"}


def run(*, eight_only: bool = False) -> dict[str, Any]:
    if eight_only:
        from bench.common import RESULTS

        earlier = json.loads(RESULTS.read_text()).get("burst", {}) if RESULTS.exists() else {}
        return {**earlier, "eight_in_a_second": eight_in_a_second()}
    return {"burst": burst(), "eight_in_a_second": eight_in_a_second()}


def print_table(f: dict[str, Any]) -> None:
    b = f["burst"]
    print(f"\nburst: {b['messages']} mentions in {b['sent_in_s']} s across {b['threads']} threads, cap {b['cap']}: "
          f"drained in {b['drained_s']} s; each ✅ once: {b['each_checked_once']}; duplicate answers: "
          f"{b['duplicate_answers']}; model requests at once ≤ {b['model_max_active']}; bot RSS "
          f"{b['bot_rss_mb_idle']} MB idle, {b['bot_rss_mb_peak']} MB at peak")
    e = f["eight_in_a_second"]["all_answered_s"]
    print(f"8 mentions in one channel within a second: all answered in {e['p50']} s p50, {e['max']} s max")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--eight-only", action="store_true", help="only the 8-in-a-second burst")
    eight_only = parser.parse_args().eight_only
    figures = run(eight_only=eight_only)
    write_results("burst", figures, measured=["eight_in_a_second"] if eight_only else None)
    print_table(figures)
