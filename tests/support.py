"""What the tests and the benchmarks share, apart from pytest fixtures: the real bot as a subprocess
(`python -m bot run`) and its environment wired to the fakes, and looks at the processes it leaves. bench/ imports
these from here; tests/conftest.py builds its fixtures on them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import pytest

from bot.config import bundled_cli_path
from tests.fakes.fake_model import FakeModel
from tests.fakes.fake_slack import FakeSlack

REPO = Path(__file__).resolve().parent.parent
ALLOWED = "U1,U2,U3"


def claude_cli() -> str:
    path = os.environ.get("CLAUDE_CLI_PATH") or bundled_cli_path()
    if not path:
        pytest.fail("the claude CLI is not installed: run scripts/install")
    return path


class BotProcess:
    """`python -m bot run` against the fakes; its JSON log lines are kept for assertions."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "run"],
            env=env,
            cwd=str(REPO),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
        )

    def lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.lines():
            if not line.startswith("{"):
                continue
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if name is None or data.get("event") == name:
                out.append(data)
        return out

    def wait_event(self, name: str, count: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(name)
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                raise AssertionError(f"bot exited ({self.proc.returncode}) waiting for {name}:\n" + self.tail())
            time.sleep(0.02)
        raise AssertionError(f"no {count}x {name} within {timeout}s:\n" + self.tail())

    def wait_quiet(self, fake_slack: FakeSlack | None = None, quiet: float = 0.5, timeout: float = 20.0) -> None:
        """Wait until the bot has gone quiet: no new log line, and no new call to `fake_slack`, for `quiet` seconds.
        For checks that nothing more happened (no duplicate, no late cancel): unlike a fixed sleep, it waits as long
        as the bot is still at work, as it is under load."""

        def state() -> tuple[int, int]:
            size = self.log_path.stat().st_size if self.log_path.exists() else 0
            return size, len(fake_slack.calls) if fake_slack is not None else 0

        deadline = time.monotonic() + timeout
        last, since = state(), time.monotonic()
        while time.monotonic() - since < quiet:
            if time.monotonic() > deadline:
                raise AssertionError(f"the bot did not go quiet for {quiet} s within {timeout} s:\n" + self.tail())
            time.sleep(0.02)
            now = state()
            if now != last:
                last, since = now, time.monotonic()

    def wait_ready(self, timeout: float = 30.0) -> Self:
        self.wait_event("bot.ready", timeout=timeout)
        return self

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines()[-n:])

    def stop(self, timeout: float = 20.0) -> int:
        """Graceful stop (SIGTERM, as a process manager sends it); the bot itself must reap its children."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"the bot did not stop within {timeout}s of SIGTERM:\n" + self.tail()) from None
        self.close_log()
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL the bot and whatever it left in its process group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.close_log()

    def close_log(self) -> None:
        if not self._log.closed:
            self._log.close()


def fake_environment(root: Path, fake_slack: FakeSlack, fake_model: FakeModel) -> dict[str, str]:
    """The environment of a bot wired to the fakes, with its state, work folder and HOME under `root`."""
    home = root / "home"
    home.mkdir(exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "SLACK_BOT_TOKEN": "xoxb-test-bot-token-123",
        "SLACK_APP_TOKEN": "xapp-test-app-token-456",
        "SLACK_API_URL": fake_slack.api_url,
        "CLAUDE_CLI_PATH": claude_cli(),
        "SLACKBUS_HOME": str(root / "state"),
        "SLACKBUS_WORKDIR": str(root / "work"),
        "SLACKBUS_ALLOWED_USERS": ALLOWED,
        "SLACKBUS_ENV_FILE": str(root / "no.env"),
        **fake_model.cli_env(home),
    }


def processes_in(workdir: Path) -> list[tuple[int, str]]:
    """(pid, command line) of live processes whose working directory is `workdir` (claude and its tools)."""
    found = []
    target = str(workdir.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            if cwd != target and not cwd.startswith(target + "/"):
                continue
            state = (entry / "stat").read_text().split(") ", 1)[1][:1]
            if state == "Z":
                found.append((int(entry.name), "<zombie>"))
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            found.append((int(entry.name), cmd))
        except OSError:
            continue
    return found


def wait_no_processes(
    workdir: Path, timeout: float = 15.0, allow: Callable[[str], bool] | None = None, at_most: int = 0
) -> None:
    """Wait until no process runs in `workdir`, except up to `at_most` whose command line `allow` accepts."""

    def leftovers() -> list[tuple[int, str]]:
        found = processes_in(workdir)
        allowed = [p for p in found if allow is not None and allow(p[1])]
        return [p for p in found if p not in allowed] + (allowed[at_most:] if len(allowed) > at_most else [])

    deadline = time.monotonic() + timeout
    while leftovers():
        if time.monotonic() > deadline:
            raise AssertionError(f"processes left behind in {workdir}: {leftovers()}")
        time.sleep(0.1)
