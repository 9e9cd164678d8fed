"""Progress figures: Slack calls for a 20-tool-call run; CLI's first event → first visible progress."""

from __future__ import annotations

import collections
from typing import Any

from bench.common import rig, summary, wait_done, write_results


def run(n: int = 20) -> dict[str, Any]:
    with rig() as (slack, model, bot, root):
        notes = root / "work" / "notes.txt"
        notes.write_text("a note\n")
        # a 20-tool-call task
        before = len(slack.calls)
        for _ in range(20):
            model.enqueue_tool_use("Read", {"file_path": str(notes)})
        model.enqueue_text("done reading [[id:t20]]")
        ts = slack.user_says("C1", "U1", "read it 20 times", mention=True)
        slack.wait_for(lambda: [m for m in slack.bot_messages("C1", ts) if "done reading" in m["text"]], timeout=120)
        slack.wait_for(lambda: "white_check_mark" in slack.reactions("C1", ts), timeout=10)
        window = slack.calls[before:]
        by_method = collections.Counter(c.method for c in window if c.method not in {"auth.test"})
        # first visible progress after the CLI's first event, over n tool-using runs
        delays = []
        for i in range(n):
            model.enqueue_tool_use("Read", {"file_path": str(notes)})
            model.enqueue_text(f"ok [[id:p{i}]]")
            t = slack.user_says("C2", "U1", f"read once {i}", mention=True)
            wait_done(slack, "C2", t, timeout=60)
        ends = bot.events("run.end")[1:]
        delays = [e["first_event_to_progress_ms"] for e in ends if e.get("first_event_to_progress_ms") is not None]
        tool_delays = [e["first_tool_to_progress_ms"] for e in ends if e.get("first_tool_to_progress_ms") is not None]
        return {
            "first_tool_call_to_progress_ms": summary(tool_delays),
            "twenty_tool_calls": {"slack_calls": sum(by_method.values()), "by_method": dict(sorted(by_method.items()))},
            "first_event_to_progress_ms": summary(delays),
        }


def print_table(f: dict[str, Any]) -> None:
    t = f["twenty_tool_calls"]
    print(f"progress: a 20-tool-call run made {t['slack_calls']} Slack calls {t['by_method']}")
    s = f["first_event_to_progress_ms"]
    print(f"  CLI's first event → first visible progress (ms): p50 {s.get('p50')} / p95 {s.get('p95')} "
          f"/ max {s.get('max')} (n={s['n']})")
    s = f["first_tool_call_to_progress_ms"]
    print(f"  first tool call event → its status message (ms): p50 {s.get('p50')} / p95 {s.get('p95')} "
          f"/ max {s.get('max')} (n={s['n']})")


def main() -> None:
    figures = run()
    write_results("progress", figures)
    print_table(figures)


if __name__ == "__main__":
    main()
