"""The hook bridge: added latency per hook call, and three concurrent writers on one channel.

Each hook call is what Claude Code pays: a fresh `slackbus hook EVENT` process (interpreter start included),
timed from spawn to exit, N times each:
  - SessionStart with 200 messages in the bot's record (read-only SQLite, no Slack call);
  - SessionStart through the Web API (token, no bot; after the first fetch the paced cache serves it);
  - Stop through the bot's socket (the bot posts to the fake Slack and records it);
  - Stop through the Web API with a token (no bot).
The baseline is a bare `python -c pass` (the interpreter's own start).
Three writers: three processes post M messages each at once through the bot; every message must arrive once,
each writer's in its own order, each tagged with its writer.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import rig, summary, write_results
from bot.core import identity
from bot.core.store import Store, StoredMessage
from tests.fakes.fake_slack import FakeSlack
from tests.support import REPO

SLACKBUS = [sys.executable, "-m", "bot"]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "SLACKBUS_HOME": str(home),
           "SLACKBUS_CHANNEL": "C1", "SLACKBUS_ENV_FILE": str(home / "no.env"), "PYTHONPATH": str(REPO)}
    env.update(extra)
    return env


def _time_call(argv: list[str], env: dict[str, str], stdin: str, n: int, check: Any = None) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        proc = subprocess.run(argv, env=env, input=stdin, capture_output=True, text=True, timeout=30, check=False)
        out.append((time.perf_counter() - started) * 1000)
        if proc.returncode != 0 or (check is not None and not check(proc)):
            raise RuntimeError(f"{argv} failed: {proc.stdout[-300:]} {proc.stderr[-300:]}")
    return out


def _seed_record(home: Path, count: int) -> None:
    store = Store.open(home / "slackbus.db")
    base = time.time() - count * 60
    store.record_messages([
        StoredMessage(channel="C1", ts=f"{base + i * 60:.6f}", thread_ts=None, user=f"U{i % 5 + 1}", bot_id=None,
                      text=f"message {i}: " + "finding about the build cache " * 3)
        for i in range(count)
    ])
    store.mark_backfilled("C1", "general")
    store.close()


def hook_latency(n: int) -> dict[str, Any]:
    start = json.dumps({"session_id": "bench-session", "cwd": str(REPO), "hook_event_name": "SessionStart",
                        "source": "startup"})
    stop = json.dumps({"session_id": "bench-session", "cwd": str(REPO), "hook_event_name": "Stop",
                       "last_assistant_message": "All 212 tests pass; the flaky one was a timing bug."})
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="slackbus-bench-") as tmp:
        home = Path(tmp) / "state"
        home.mkdir()
        _seed_record(home, 200)
        env = _env(home)
        figures["python_start_ms"] = summary(_time_call([sys.executable, "-c", "pass"], env, "", n))
        figures["session_start_record_200_ms"] = summary(_time_call(
            [*SLACKBUS, "hook", "SessionStart"], env, start, n,
            check=lambda p: "message 199" in p.stdout and "message 150" in p.stdout,
        ))
        with FakeSlack() as slack:
            slack.bot_channels = ["C1"]
            for i in range(200):
                slack.seed_message("C1", f"message {i}: finding about the build cache", "U1")
            api = _env(Path(tmp) / "api-state", SLACK_BOT_TOKEN="xoxb-bench", SLACK_API_URL=slack.api_url)
            figures["session_start_api_ms"] = summary(_time_call(
                [*SLACKBUS, "hook", "SessionStart"], api, start, n, check=lambda p: "message 199" in p.stdout))
            figures["session_start_api_history_calls"] = slack.count("conversations.history")
            figures["stop_api_ms"] = summary(_time_call([*SLACKBUS, "hook", "Stop"], api, stop, n))
            figures["stop_api_posts"] = slack.count("chat.postMessage")
    with rig() as (slack, _model, _bot, root):
        env = _env(root / "state")
        figures["stop_via_bot_ms"] = summary(_time_call([*SLACKBUS, "hook", "Stop"], env, stop, n))
        figures["stop_via_bot_posts"] = slack.count("chat.postMessage")
    return figures


def three_writers(m: int) -> dict[str, Any]:
    """Three sessions post m messages each at once, through the bot; order and attribution checked."""
    with rig() as (slack, _model, _bot, root):
        writers = []
        started = time.perf_counter()
        for w in range(3):
            script = (
                "import subprocess, sys\n"
                f"for i in range({m}):\n"
                f"    subprocess.run({SLACKBUS!r} + ['post', f'step {{i}} of writer {w}'], check=True,"
                " capture_output=True)\n"
            )
            env = _env(root / "state", SLACKBUS_SESSION_ID=f"writer{w}-0000-1111", SLACKBUS_AGENT_NAME=f"agent-{w}")
            writers.append(subprocess.Popen([sys.executable, "-c", script], env=env))
        for p in writers:
            if p.wait(300) != 0:
                raise RuntimeError("a writer failed")
        took = time.perf_counter() - started
        msgs = [m_ for m_ in slack.messages("C1") if "of writer" in m_["text"]]
        in_order = True
        attributed = True
        for w in range(3):
            mine = [x for x in msgs if x["text"].endswith(f"of writer {w}")]
            steps = [int(x["text"].split("step ")[1].split(" ")[0]) for x in mine]
            in_order &= steps == list(range(m))
            who, _ = identity.parse(mine[0]["text"]) if mine else (None, "")
            attributed &= all(identity.parse(x["text"])[0] == who for x in mine) and who is not None \
                and who.name == f"agent-{w}" and who.short == f"writer{w}-"[:8]
        ts = [x["ts"] for x in msgs]
        return {
            "writers": 3, "per_writer": m, "arrived": len(msgs), "expected": 3 * m,
            "each_writer_in_order": in_order, "all_attributed": attributed,
            "channel_chronological": ts == sorted(ts), "seconds": round(took, 2),
            "posts_per_second": round(len(msgs) / took, 1),
        }


def run(n: int = 50, m: int = 20) -> dict[str, Any]:
    return {"hooks": hook_latency(n), "three_writers": three_writers(m)}


def print_table(f: dict[str, Any]) -> None:
    print("\nhook bridge: one `slackbus hook` process per call, ms (p50 / p95 / max)")
    h = f["hooks"]
    for key, label in (("python_start_ms", "bare `python -c pass` (baseline)"),
                       ("session_start_record_200_ms", "SessionStart, 200 msgs, bot's record"),
                       ("session_start_api_ms", "SessionStart, Web API (paced cache)"),
                       ("stop_via_bot_ms", "Stop, through the bot's socket"),
                       ("stop_api_ms", "Stop, Web API with a token")):
        s = h[key]
        print(f"  {label:42s} {s['p50']:7.1f} {s['p95']:7.1f} {s['max']:7.1f}   (n={s['n']})")
    print(f"  conversations.history calls for {h['session_start_api_ms']['n']} SessionStarts: "
          f"{h['session_start_api_history_calls']}")
    t = f["three_writers"]
    print(f"\nthree concurrent writers x {t['per_writer']}: {t['arrived']}/{t['expected']} arrived, "
          f"each in order: {t['each_writer_in_order']}, attributed: {t['all_attributed']}, "
          f"{t['posts_per_second']} posts/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=50)
    parser.add_argument("-m", type=int, default=20)
    a = parser.parse_args()
    figures = run(a.n, a.m)
    write_results("bridge", figures)
    print_table(figures)
