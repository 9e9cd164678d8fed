"""Mention → first sign → claude spawned → answer posted, over N sequential mentions; Slack calls per answer.

Times are taken on both sides: at the fake Slack (the envelope leaving it, the Web API calls arriving: one
clock, the bench process's) and in the bot's own log (event received → claude spawned, result → posted).
"""

from __future__ import annotations

import argparse
import collections
import functools
from typing import Any

from bench.common import answered_at, bot_share_ms, rig, summary, wait_done, write_results


def run(n: int = 50, channels: int = 5) -> dict[str, Any]:
    with rig() as (slack, model, bot, _root):
        first_sign, answered, first_model_request, overhead = [], [], [], []
        asked: set[str] = set()
        calls_before = len(slack.calls)
        # warm-up: first contact with each channel (backfill, names) is not what we measure
        for c in range(channels):
            ts = slack.user_says(f"C{c}", "U1", f"warm-up [[id:w{c}]]", mention=True)
            slack.wait_for(functools.partial(slack.bot_messages, f"C{c}", ts), timeout=60)
        history_after_first_contact = slack.count("conversations.history")
        calls_before = len(slack.calls)
        requests_before = len(model.requests)
        for i in range(n):
            channel = f"C{i % channels}"
            ts = slack.user_says(channel, "U2", f"question {i} [[id:q{i}]]", mention=True)
            asked.add(ts)
            sent = min(e.t for e in slack.envelopes_for(ts))
            slack.wait_for(functools.partial(slack.bot_messages, channel, ts), timeout=60)
            calls = [c for c in slack.calls[calls_before:] if c.params.get("timestamp") == ts
                     or c.params.get("thread_ts") == ts]
            react = next(c.t for c in calls if c.method == "reactions.add" and c.params.get("name") == "eyes")
            post = answered_at(slack, channel, ts, f"answer for q{i}")  # the call carrying it, not a status message
            first_sign.append((react - sent) * 1000)
            answered.append((post - sent) * 1000)
            overhead.append(bot_share_ms(bot, ts, (post - sent) * 1000))
            first_model_request.append((model.request_times[requests_before + i] - sent) * 1000)
            # let the ✅ land before the next mention so calls are attributed to the right answer
            wait_done(slack, channel, ts, timeout=10)
        bot.wait_quiet(slack)  # the last ✅ and anything after it
        window = slack.calls[calls_before:]
        by_method = collections.Counter(c.method for c in window)
        # per run, matched by run id: "run.acquiring" is the moment the bot asks for a claude process (takes a
        # pooled one, or spawns one); "run.result" the CLI's result read; "run.answered" the answer delivered
        measured = {e["run_id"] for e in bot.events("run.start") if str(e.get("trigger_ts")) in asked}
        by_run = {name: {e["run_id"]: e["since_received_ms"] for e in bot.events(name) if e["run_id"] in measured}
                  for name in ("run.acquiring", "run.result", "run.answered")}
        spawn = list(by_run["run.acquiring"].values())
        result_to_posted = [by_run["run.answered"][r] - t for r, t in by_run["run.result"].items()
                            if r in by_run["run.answered"]]
        return {
            "mentions": n,
            "first_sign_ms": summary(first_sign),
            "spawn_ms": summary(spawn),
            "first_model_request_ms": summary(first_model_request),
            "result_to_posted_ms": summary(result_to_posted),
            "answer_ms": summary(answered),
            "bot_overhead_ms": summary(overhead),
            "slack_calls_per_answer": round(len(window) / n, 2),
            "slack_calls_by_method": {k: round(v / n, 2) for k, v in sorted(by_method.items())},
            "history_calls_after_first_contact": slack.count("conversations.history") - history_after_first_contact,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=50)
    args = parser.parse_args()
    figures = run(args.n)
    write_results("reactive", figures)
    print_table(figures)


def print_table(f: dict[str, Any]) -> None:
    print(f"reactive path, {f['mentions']} mentions on loopback (ms: p50 / p95 / max)")
    for key in ("first_sign_ms", "spawn_ms", "first_model_request_ms", "result_to_posted_ms", "answer_ms",
                "bot_overhead_ms"):
        s = f[key]
        print(f"  {key:<26} {s['p50']:>8} / {s['p95']:>8} / {s['max']:>8}")
    print(f"  slack calls per answer     {f['slack_calls_per_answer']}  {f['slack_calls_by_method']}")
    print(f"  history calls after first contact: {f['history_calls_after_first_contact']}")


if __name__ == "__main__":
    main()
