"""Keep the bot's secrets out of reach of the processes it starts, and its state private.

A `claude` child and every tool it runs (a Bash command, say) are processes of the same OS user as the bot,
unless SLACKBUS_RUN_AS separates them. Removing the Slack tokens from `os.environ` is not enough for that:

- `/proc/<bot pid>/environ` keeps the environment the bot was *started* with, and any process of the same
  user can read it by walking up its parents. So the bot re-executes itself once at start with the secrets
  removed from its environment and hands them to the new image over a pipe (`hide_secrets`): its environ
  then holds none, and the pipe is read and closed before anything is spawned.
- `/proc/<bot pid>/mem` (the tokens are in the bot's memory) and the rest of its /proc entries are readable
  by the same user too, unless the process is marked not dumpable (`prctl(PR_SET_DUMPABLE, 0)`): then they
  belong to root (`undumpable`). The flag is not inherited by `claude`, which execs a new image.
- SLACKBUS_HOME is made 0700 and the state database 0600 (`private_state`), so other local users cannot read
  the record of every message the bot saw.

What this does not do: a same-user child can still read files that user can read, a `.env` next to the bot
included (doctor warns when it is readable by others) — SLACKBUS_RUN_AS is the answer to that.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from bot.log import get_logger

log = get_logger("slackbus.hardening")

SECRETS_FD = "SLACKBUS_SECRETS_FD"
MAX_SECRETS_BYTES = 60_000  # below a pipe's buffer, so the write before exec cannot block
PR_SET_DUMPABLE = 4


def secret_names(env: Mapping[str, str]) -> list[str]:
    """The variables the child must never see, and so the bot's environ must not hold either."""
    from bot.config import NESTING_ENV_NAMES, child_environment

    return [k for k, v in env.items() if k not in NESTING_ENV_NAMES and k not in child_environment({k: v})]


def hide_secrets(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Re-execute this process without its secret variables (once), and return them from the pipe.

    In the re-executed image this returns what the first one handed over; with nothing secret in the
    environment it returns {} and does not re-execute. The caller merges the result into the settings'
    environment — never into os.environ."""
    if environ is None:
        environ = os.environ
    raw_fd = environ.pop(SECRETS_FD, None)
    if raw_fd is not None:
        return _receive(raw_fd)
    names = secret_names(environ)
    orig_argv = getattr(sys, "orig_argv", None)
    if not names or not orig_argv:
        return {}
    secrets = {k: environ[k] for k in names}
    data = json.dumps(secrets).encode()
    if len(data) > MAX_SECRETS_BYTES:  # never in practice; the scrub below still keeps them from children
        log.warning("hardening.secrets_too_large", bytes=len(data))
        return {}
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    os.set_inheritable(read_end, True)
    clean = {k: v for k, v in environ.items() if k not in secrets}
    clean[SECRETS_FD] = str(read_end)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *orig_argv[1:]], clean)
    raise AssertionError("unreachable")  # pragma: no cover - execve does not return


def _receive(raw_fd: str) -> dict[str, str]:
    try:
        fd = int(raw_fd)
    except ValueError:
        return {}
    chunks: list[bytes] = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return {}
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    try:
        data = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def undumpable() -> bool:
    """Mark this process not dumpable: its /proc/PID/{environ,mem,fd,…} become root's, not readable by
    another process of the same user (a tool the `claude` child runs). Linux only; False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def is_undumpable() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(3, 0, 0, 0, 0) == 0)  # PR_GET_DUMPABLE
    except (OSError, AttributeError):
        return False


def private_state(home: Path, db_path: Path) -> None:
    """SLACKBUS_HOME 0700; the database (and its WAL and shared-memory files, which SQLite creates with the
    database's mode) 0600 — created so before SQLite opens it, and tightened if an older run left it wider."""
    with contextlib.suppress(OSError):
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
    _tighten(home, 0o700)
    if not db_path.exists():
        with contextlib.suppress(OSError):
            os.close(os.open(db_path, os.O_WRONLY | os.O_CREAT, 0o600))
    for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm"), Path(f"{db_path}-journal"),
                 home / "console.log"):
        _tighten(path, 0o600)


def _tighten(path: Path, mode: int) -> None:
    try:
        current = stat.S_IMODE(path.stat().st_mode)
        if current & ~mode:
            path.chmod(current & mode)
    except OSError:
        return


def world_readable(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH))
    except OSError:
        return False
