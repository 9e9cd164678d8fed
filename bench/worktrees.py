"""A worktree per thread: time to create one on a repository of 20,000 files.

- spare ready: the background makes the next spare between threads, as when people ask a few seconds apart
- back to back: new threads with no pause at all (a spare when one happens to be ready, else a plain add)
- no spare: a plain `git worktree add -b` (parallel checkout) every time, for comparison
- preparing a spare (the full checkout the background does), and `changes()` on a worktree with a few edits
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from bench.common import RESULTS, summary, write_results
from bot.core.worktrees import Worktree, Worktrees
from bot.log import configure_logging


def git(where: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(where), *args], check=True, capture_output=True)


def file_of(i: int) -> Path:
    return Path(f"pkg{i % 20}") / f"mod{(i // 20) % 50}" / f"file{i}.py"


def build_repo(root: Path, files: int) -> Path:
    """`files` small files in nested folders (20 packages x 50 modules), one commit."""
    repo = root / "big"
    repo.mkdir()
    for i in range(files):
        path = repo / file_of(i)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# file {i}\nVALUE = {i}\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "bench")
    git(repo, "config", "user.email", "bench@example.com")
    git(repo, "config", "commit.gpgsign", "false")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "20,000 files")
    return repo.resolve()


async def clean(wts: Worktrees, made: list[Worktree]) -> None:
    for wt in made:
        await wts.remove(wt)
    made.clear()


async def creates(repo: Path, home: Path, n: int, *, spare: int, paced: bool) -> dict[str, Any]:
    wts = Worktrees(home, spare=spare)
    times: list[float] = []
    made: list[Worktree] = []
    from_spare = 0
    async with anyio.create_task_group() as tg:
        await tg.start(wts.run)
        if spare:
            await wts.prepare(repo)
        for i in range(n):
            if paced:
                with anyio.fail_after(120):
                    await wts.settled()  # a person takes longer than the background to ask again
            ready = wts.ready(repo, "main")
            started = time.perf_counter()
            wt = await wts.create(repo, thread_ts=f"{1764150000 + i}.000100", task=f"fix the flaky test {i}")
            times.append((time.perf_counter() - started) * 1000)
            from_spare += 1 if ready else 0
            made.append(wt)
            if paced:  # outside the timing; back to back keeps them all until the end
                await clean(wts, made)
        with anyio.fail_after(120):
            await wts.settled()
        tg.cancel_scope.cancel()
    await clean(wts, made)
    return {**summary(times), "from_spare": from_spare}


async def spare_preparation(repo: Path, home: Path, n: int) -> dict[str, Any]:
    wts = Worktrees(home, spare=1)
    times: list[float] = []
    made: list[Worktree] = []
    for i in range(n):
        started = time.perf_counter()
        await wts.prepare(repo)
        times.append((time.perf_counter() - started) * 1000)
        made.append(await wts.create(repo, thread_ts=f"{1764160000 + i}.000100", task="use the spare"))
        await clean(wts, made)
    return summary(times)


async def changes_time(repo: Path, home: Path, n: int) -> dict[str, Any]:
    wts = Worktrees(home, spare=0)
    wt = await wts.create(repo, thread_ts="1764170000.000100", task="edit a few files")
    for i in range(3):
        (wt.path / file_of(i)).write_text("changed\n")
    (wt.path / "NEW.md").write_text("new\n")
    times = []
    for _ in range(n):
        started = time.perf_counter()
        await wts.changes(wt)
        times.append((time.perf_counter() - started) * 1000)
    (wt.path / "NEW.md").unlink()
    git(wt.path, "checkout", "-q", ".")
    if not await wts.remove(wt):
        raise AssertionError(f"{wt.path} was kept: the bench left changes in it")
    return summary(times)


async def measure(files: int, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="slackbus-bench-wt-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        repo = build_repo(root, files)
        built_s = time.perf_counter() - started
        started = time.perf_counter()
        for i in range(files):  # how fast this machine's disk makes files today: checkouts are bound by it
            path = root / "plain" / file_of(i)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x\n")
        write_s = time.perf_counter() - started
        return {
            "files": files,
            "threads": n,
            "repo_built_s": round(built_s, 1),
            "write_files_s": round(write_s, 2),
            "create_spare_ready_ms": await creates(repo, root / "home-paced", n, spare=1, paced=True),
            "create_back_to_back_ms": await creates(repo, root / "home-b2b", n, spare=1, paced=False),
            "create_no_spare_ms": await creates(repo, root / "home-plain", n, spare=0, paced=True),
            "prepare_spare_ms": await spare_preparation(repo, root / "home-prep", min(n, 10)),
            "changes_ms": await changes_time(repo, root / "home-changes", 10),
        }


def answer_latency(repo: Path, root: Path, n: int, *, worktrees: bool) -> dict[str, Any]:
    """Mention → the Slack call that carries the answer, the channel's folder being `repo`, with a worktree
    per thread or without (SLACKBUS_WORKTREES=off); mentions a few seconds apart, as people ask."""
    from bench.common import wait_done
    from tests.fakes.fake_model import FakeModel
    from tests.fakes.fake_slack import Call, FakeSlack
    from tests.support import BotProcess, fake_environment

    root.mkdir()
    with FakeSlack() as slack, FakeModel() as model:
        env = {**fake_environment(root, slack, model), "SLACKBUS_WORKDIR": str(repo), "SLACKBUS_ROOTS": str(repo),
               "SLACKBUS_WORKTREES": "on" if worktrees else "off"}
        bot = BotProcess(env, root / "bot.log")
        try:
            bot.wait_ready(60)
            answered, origins = [], []
            for i in range(n + 1):  # the first is a warm-up (first contact with the channel)
                wait = time.monotonic() + 30
                while time.monotonic() < wait and not bot.events("sessions.pooled")[i:]:
                    time.sleep(0.05)  # the next process (and spare) is ready, as between people asking
                ts = slack.user_says("C1", "U2", f"question {i} [[id:q{i}]]", mention=True)
                sent = min(e.t for e in slack.envelopes_for(ts))

                def carried(needle: str = f"answer for q{i}") -> Call | None:
                    return next((c for c in slack.calls if c.method in ("chat.postMessage", "chat.update")
                                 and needle in str(c.params.get("text") or "")), None)

                call = slack.wait_for(carried, timeout=60)
                if i:
                    answered.append((call.t - sent) * 1000)
                wait_done(slack, "C1", ts, timeout=10)
            origins = [e.get("origin") for e in bot.events("run.reusing") + bot.events("run.spawning")][1:]
        finally:
            if bot.proc.poll() is None:
                bot.stop()
            bot.close_log()
    return {**summary(answered), "from_pool": sum(1 for o in origins if o == "pool")}


def run(files: int = 20_000, n: int = 30, *, answers_only: bool = False) -> dict[str, Any]:
    configure_logging(level="warning")
    figures: dict[str, Any] = {} if answers_only else anyio.run(measure, files, n)
    with tempfile.TemporaryDirectory(prefix="slackbus-bench-wt-") as tmp:
        root = Path(tmp)
        repo = build_repo(root, files)
        figures["answer_worktrees_on_ms"] = answer_latency(repo, root / "on", 20, worktrees=True)
        figures["answer_worktrees_off_ms"] = answer_latency(repo, root / "off", 20, worktrees=False)
    return figures


def print_table(f: dict[str, Any]) -> None:
    print(f"worktrees on a repository of {f['files']} files, {f['threads']} new threads (ms: p50 / p95 / max);"
          f" writing {f['files']} small files takes {f['write_files_s']} s here")
    for key in ("create_spare_ready_ms", "create_back_to_back_ms", "create_no_spare_ms", "prepare_spare_ms",
                "changes_ms", "answer_worktrees_on_ms", "answer_worktrees_off_ms"):
        if key not in f:
            continue
        s = f[key]
        spare = f"   from a spare: {s['from_spare']}" if "from_spare" in s else ""
        print(f"  {key:<24} {s['p50']:>8} / {s['p95']:>8} / {s['max']:>8}   (n={s['n']}){spare}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("-n", type=int, default=30)
    parser.add_argument("--answers-only", action="store_true", help="only mention → answer, worktrees on and off")
    args = parser.parse_args()
    figures = run(args.files, args.n, answers_only=args.answers_only)
    if args.answers_only:  # the creation figures measured before stay
        figures = {**json.loads(RESULTS.read_text()).get("worktrees", {}), **figures}
    write_results("worktrees", figures,
                  measured=["answer_worktrees_on_ms", "answer_worktrees_off_ms"] if args.answers_only else None)
    print_table(figures)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
