"""The local channel: round trip (a message appended → the bot sees it; → its 👀), and appends per second with
8 writer processes at once. The bot is the real one (`slackbus run --local`) with the real `claude` CLI."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import summary, write_results
from bot.local.channel import LocalChannel
from tests.fakes.chat import LocalChat, wait_for
from tests.fakes.fake_model import FakeModel
from tests.support import BotProcess, claude_cli


def _writers_as(writers: int) -> list[str | None]:
    """Who writes: as root, that many distinct system accounts (a file each, as a team would have); otherwise
    this user, every writer appending to the same own file."""
    import pwd

    if os.geteuid() != 0:
        return [None] * writers
    names = [p.pw_name for p in pwd.getpwall() if 0 < p.pw_uid < 1000 and p.pw_name.isidentifier()]
    return [names[w % len(names)] if names else None for w in range(writers)]


def _writer(directory: str, as_user: str | None, w: int, n: int) -> None:
    ch = LocalChannel(directory, "busy", as_user=as_user)
    for i in range(n):
        ch.append({"kind": "message", "seq": i, "text": f"writer {w} message {i}"})


def appends_per_second(writers: int = 8, each: int = 1000) -> dict[str, Any]:
    who = _writers_as(writers)
    with tempfile.TemporaryDirectory(prefix="slackbus-bench-") as tmp:
        procs = [multiprocessing.get_context("fork").Process(target=_writer, args=(tmp, who[w], w, each))
                 for w in range(writers)]
        started = time.perf_counter()
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        took = time.perf_counter() - started
        records = LocalChannel(tmp, "busy").records()
        tss = [r.ts for r in records]
        in_order = tss == sorted(tss) and len(set(tss)) == len(tss)
        return {"writers": writers, "files": len({w for w in who}), "appends": writers * each,
                "whole_lines": len(records), "in_order": in_order, "seconds": round(took, 3),
                "appends_per_second": round(writers * each / took)}


def round_trip(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="slackbus-bench-") as tmp, FakeModel() as model:
        root = Path(tmp)
        (root / "home").mkdir()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1",
               "SLACKBUS_HOME": str(root / "state"), "SLACKBUS_WORKDIR": str(root / "work"),
               "SLACKBUS_ENV_FILE": str(root / "no.env"), "CLAUDE_CLI_PATH": claude_cli(),
               "SLACKBUS_TRANSPORT": "local", **model.cli_env(root / "home")}
        bot = BotProcess(env, root / "bot.log")
        try:
            bot.wait_ready(60)
            chat = LocalChat(root / "state" / "channels", "bench")
            for i in range(n):  # plain messages: the bot records them, nothing runs
                chat.say("alice", f"note {i}")
                time.sleep(0.05)
            seen = [e["lag_ms"] for e in bot.wait_event("local.seen", count=n, timeout=30)]
            first_sign, answered = [], []
            for i in range(min(n, 20)):
                ts = chat.mention("alice", f"question {i} [[id:r{i}]]")

                def done(ts: str = ts) -> bool:
                    return "white_check_mark" in chat.reactions(ts)

                wait_for(done, timeout=60)
                recs = chat.records()
                eyes = next(r.ts for r in recs if r.kind == "reaction" and r.target == ts and r.name == "eyes")
                answer = next(r.ts for r in recs if r.bot and r.kind == "message" and r.thread_ts == ts)
                first_sign.append((float(eyes) - float(ts)) * 1000)
                answered.append((float(answer) - float(ts)) * 1000)
                time.sleep(1.5)  # paced, as people type: the warm pool refills between mentions
        finally:
            if bot.proc.poll() is None:
                bot.stop()
            bot.close_log()
        return {"appended_to_seen_ms": summary(seen), "appended_to_first_sign_ms": summary(first_sign),
                "mention_to_answer_ms": summary(answered)}


def run(n: int = 100) -> dict[str, Any]:
    return {"round_trip": round_trip(n), "eight_writers": appends_per_second()}


def print_table(f: dict[str, Any]) -> None:
    print("\nlocal channel, ms (p50 / p95 / max)")
    for key, label in (("appended_to_seen_ms", "message appended → bot sees it"),
                       ("appended_to_first_sign_ms", "mention appended → 👀 appended"),
                       ("mention_to_answer_ms", "mention appended → answer appended")):
        s = f["round_trip"][key]
        print(f"  {label:40s} {s['p50']:8.1f} {s['p95']:8.1f} {s['max']:8.1f}   (n={s['n']})")
    w = f["eight_writers"]
    print(f"  {w['writers']} writers x {w['appends'] // w['writers']}: {w['whole_lines']}/{w['appends']} whole lines, "
          f"{w['appends_per_second']} appends/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=100)
    figures = run(parser.parse_args().n)
    write_results("local", figures)
    print_table(figures)
