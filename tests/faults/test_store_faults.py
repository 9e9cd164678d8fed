"""The bot's SQLite record under faults: locked by another process at start, and the disk filling up mid-run.

Neither may end in a hang, a traceback, a silent death or a corrupt database.
"""

from __future__ import annotations

import contextlib
import io
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, BotProcess
from tests.e2e.test_reactive import answer_in
from tests.fakes.fake_model import Reply

pytestmark = pytest.mark.e2e

BUSY_TIMEOUT_S = 5.0  # bot/core/store.py: PRAGMA busy_timeout=5000


def db_path(env: dict[str, str]) -> Path:
    return Path(env["SLACKBUS_HOME"]) / "slackbus.db"


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[sqlite3.Connection]:
    """Another process's view of the file: an open connection holding BEGIN EXCLUSIVE."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, timeout=1.0)
    try:
        db.execute("BEGIN EXCLUSIVE")
        yield db
        db.execute("ROLLBACK")
    finally:
        db.close()


def integrity(path: Path) -> str:
    db = sqlite3.connect(path, timeout=5.0)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


@pytest.mark.parametrize("existing", [False, True], ids=["new-db", "wal-db-of-an-earlier-run"])
def test_a_state_database_locked_by_another_process_stops_the_start_with_one_sentence(
    start_bot, bot_env, fake_slack, existing
):
    if existing:  # the usual case: a second slackbus (or a sqlite3 shell) on the WAL file of an earlier run
        assert start_bot().stop() == 0
    path = db_path(bot_env)
    with exclusive_lock(path):
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "bot", "run"],
            env=bot_env, cwd=str(REPO), stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=BUSY_TIMEOUT_S + 25,
        )
        took = time.monotonic() - started
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert took < BUSY_TIMEOUT_S + 10, took  # the busy timeout, the CLI check, start-up: no hang
    err = proc.stderr.strip()
    print(f"exit {proc.returncode} after {took:.1f} s: {err}")
    assert proc.stdout.strip() == ""
    assert len(err.splitlines()) == 1, err  # one sentence, no traceback, no log lines
    assert "Traceback" not in err
    assert err.startswith("slackbus: ")
    assert str(path) in err
    assert "locked" in err or "busy" in err
    assert "another slackbus" in err and "SLACKBUS_HOME" in err  # what to do
    for secret in (bot_env["SLACK_BOT_TOKEN"], bot_env["SLACK_APP_TOKEN"]):
        assert secret not in err
    assert fake_slack.connection_count == (1 if existing else 0)  # it never went online with a store it cannot write

    # once the other process lets go, the same state starts normally
    bot = start_bot()
    ts = fake_slack.user_says("C1", "U1", "are you there? [[id:unlocked]]", mention=True)
    answer_in(fake_slack, "C1", ts, "answer for unlocked")
    assert bot.stop() == 0
    assert integrity(path) == "ok"


class LimitedBot(BotProcess):
    """`python -m bot run` (like BotProcess) under a file-size limit: the disk is "full" for every file the bot and
    its children write past `limit` bytes (write() fails with EFBIG; SIGXFSZ is ignored, as SIG_IGN survives exec).
    Its output goes through a pipe (a pipe has no size) to the log file, so that the log, kept elsewhere as a
    journal would be, is not what fills up."""

    def __init__(self, env: dict[str, str], log_path: Path, limit: int) -> None:
        self.env = env
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in close_log()

        def limited() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            # only the soft limit: the test can lift it from outside (prlimit) without privileges, as if space
            # were freed
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "run"],
            env=env,
            cwd=str(REPO),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=limited,
        )
        self._copier = threading.Thread(target=self._copy_output, name="limited-bot-log", daemon=True)
        self._copier.start()

    def _copy_output(self) -> None:
        out = self.proc.stdout
        assert isinstance(out, io.BufferedReader)  # a pipe, buffered (Popen's default)
        for chunk in iter(lambda: out.read1(65536), b""):
            with contextlib.suppress(ValueError):  # the log was closed
                self._log.write(chunk)
                self._log.flush()

    def close_log(self) -> None:
        self._copier.join(5.0)
        super().close_log()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def free_space(self) -> None:
        resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


FULL_DISK_SENTENCE = "state database cannot be written"
# bot/app.py on_unrecorded: what the requester is told when the store cannot take the request
FULL_DISK_NOTICE = (
    ":warning: I could not take this request, so nothing was run: my state database cannot be written (the disk "
    "may be full). Ask the person who runs slackbus to check its log and free space, then ask again."
)


def texts(fake_slack, channel: str, ts: str | None = None) -> list[str]:
    return [m.get("text") or "" for m in fake_slack.bot_messages(channel, ts)]


def test_a_full_disk_mid_run_is_a_logged_error_not_a_dead_bot_nor_a_corrupt_record(
    start_bot, bot_env, fake_slack, fake_model, tmp_path
):
    # an earlier run leaves a record behind; the disk is then "full" just above its size
    first = start_bot()
    ts = fake_slack.user_says("C1", "U1", "hello [[id:before]]", mention=True)
    answer_in(fake_slack, "C1", ts, "answer for before")
    assert first.stop() == 0
    path = db_path(bot_env)
    sizes = {p.name: p.stat().st_size for p in path.parent.glob("slackbus.db*")}
    limit = max(sizes.values()) + 128 * 1024
    print(f"record after start-up: {sizes}; file-size limit {limit} bytes")

    bot = LimitedBot(bot_env, tmp_path / "bot-limited.log", limit).wait_ready()
    try:
        # a run is in flight while the disk fills up
        fake_model.enqueue(Reply(text="answer for in-flight", delay=6))
        in_flight = fake_slack.user_says("C1", "U1", "a slow one [[id:in-flight]]", mention=True)
        fake_model.wait_for_requests(2, timeout=30)
        chatter = "the quarterly numbers look fine, more detail follows " * 60  # ~3 KB a message
        for i in range(200):
            fake_slack.user_says("C1", "U2", f"chatter {i}: {chatter}")
        failures = bot.wait_event("store.write_failed", timeout=30)
        assert any("full" in str(f.get("error")) or "too large" in str(f.get("error")) for f in failures), failures

        # a mention once the disk is full cannot be recorded, so it is not run: the requester is told why (never
        # silence), and the run already in flight still delivers its answer
        after = fake_slack.user_says("C1", "U3", "are you still there? [[id:after-full]]", mention=True)
        reply = answer_in(fake_slack, "C1", after, FULL_DISK_SENTENCE, timeout=60)
        print("after the disk filled:", reply["text"])
        assert reply["text"] == FULL_DISK_NOTICE
        reply = answer_in(fake_slack, "C1", in_flight, "answer for in-flight", timeout=60)
        print("the run in flight:", reply["text"])
        assert bot.proc.poll() is None, "the bot died:\n" + bot.tail()

        # space is freed: the same process takes requests again (no write failure left stuck in the store)
        bot.free_space()
        ts = fake_slack.user_says("C1", "U1", "room again? [[id:room-again]]", mention=True)
        answer_in(fake_slack, "C1", ts, "answer for room-again", timeout=60)
        # a later request fully answered: both deliveries of the mention (message and app_mention) were handled
        # long before, so anything they were to post is posted. The requester was told once, with that sentence
        # alone; the mention was never run; the run in flight was answered once; nothing else got the sentence.
        assert texts(fake_slack, "C1", after) == [FULL_DISK_NOTICE]
        everything = texts(fake_slack, "C1")
        assert not [t for t in everything if "answer for after-full" in t], everything
        flight = texts(fake_slack, "C1", in_flight)
        assert len([t for t in flight if "answer for in-flight" in t]) == 1, flight
        assert len([t for t in everything if FULL_DISK_SENTENCE in t]) == 1, everything
        # errors are log events, not a crash: no traceback outside the JSON log lines
        assert not [line for line in bot.lines() if "Traceback" in line and not line.startswith("{")], bot.tail()
        assert bot.stop() == 0
    finally:
        if bot.proc.poll() is None:
            bot.kill()
    assert integrity(path) == "ok"

    # with room again, the same record serves: a new mention is answered
    again = start_bot()
    ts = fake_slack.user_says("C1", "U1", "back to normal? [[id:after-restart]]", mention=True)
    answer_in(fake_slack, "C1", ts, "answer for after-restart")
    assert again.stop() == 0
    assert integrity(path) == "ok"
