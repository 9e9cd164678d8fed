"""A `claude` that misbehaves on purpose: a proxy in front of the REAL CLI that injects one fault.

`install(dest, real_cli)` writes an executable copy of this file (shebang `#!{sys.executable}`) into `dest`;
point the bot at it with CLAUDE_CLI_PATH. It runs the real CLI with the same argv, proxies stdin → child and
child stdout → its stdout line by line, and lets the child's stderr through (the child inherits it).

The fault is SLACKBUS_FAULT (the bot passes its environment to the CLI) and is injected only while the marker
file `<dest>/armed` exists; the run that injects it removes the marker, so the next run is normal:

    malformed  just before the first stream-json "assistant" line, a line that is not JSON
    huge       just before the first "assistant" line, one valid JSON line of about 3 MB
    noresult   the "result" line is dropped, the real child killed, and the wrapper exits 0 at once
    crash      on the first "assistant" line: a few stderr lines (with a Slack-token-like string), the real
               child killed, exit 3
    hang       after the first "assistant" line nothing more is forwarded, either way, and the wrapper never
               exits by itself; SIGINT, SIGTERM or SIGHUP kill it (and its child), and the child dies with it
               on SIGKILL too (PR_SET_PDEATHSIG)

Outside a fault the wrapper is transparent: a signal is forwarded to the child, stdin EOF reaches it, and the
wrapper exits with the child's code. `--version` (anything that is not a stream-json run) execs the real CLI.
Every path reaps the real child. What it did goes to `<dest>/journal.log`, one line per step, for the tests.

Only the standard library: the installed copy runs outside the test process.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FAULTS = ("malformed", "huge", "noresult", "crash", "hang")
FAULT_ENV = "SLACKBUS_FAULT"
MALFORMED_LINE = b'{"type": "assistant", oops\n'
HUGE_BYTES = 3 * 1024 * 1024
FAKE_TOKEN = "xoxb-1234-5678-abcdefghijkl"
CRASH_STDERR = (
    "fault_cli: lost the connection to the model",
    f"fault_cli: request failed (auth {FAKE_TOKEN})",
    "fault_cli: giving up",
)
CRASH_CODE = 3
FLUSH_GRACE_S = 2.0  # after the child is gone, for the reader to take what is left of our output
_PR_SET_PDEATHSIG = 1


def install(dest: Path, real_cli: str) -> Path:
    """Write the executable wrapper into `dest` and return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    script = dest / "fault-claude"
    source = Path(__file__).read_text()
    trailer = f"\n\nif __name__ == '__main__':\n    sys.exit(main({real_cli!r}, Path({str(dest)!r})))\n"
    script.write_text(f"#!{sys.executable}\n" + source + trailer)
    script.chmod(0o755)
    return script


def arm(dest: Path) -> None:
    """Inject the fault in the next run (the first stream-json process to start after this)."""
    (dest / "armed").write_text("1")


def journal(dest: Path) -> list[str]:
    path = dest / "journal.log"
    return path.read_text().splitlines() if path.exists() else []


# ---------------------------------------------------------------------------------------------------------
# The wrapper itself
# ---------------------------------------------------------------------------------------------------------


class Wrapper:
    def __init__(self, real_cli: str, argv: list[str], state: Path) -> None:
        self.real_cli = real_cli
        self.argv = argv
        self.state = state
        self.fault = ""
        self.child: subprocess.Popen[bytes] | None = None
        self.out_buf = bytearray()  # what is still to be written to our stdout
        self.out_open = True
        self.line_buf = bytearray()  # the child's current, incomplete stdout line
        self.seen_assistant = False
        self.hung = False

    # --- journal --------------------------------------------------------------------------------------
    def note(self, text: str) -> None:
        with contextlib.suppress(OSError), open(self.state / "journal.log", "a") as f:
            f.write(f"{os.getpid()} {text}\n")

    # --- child ----------------------------------------------------------------------------------------
    def claim_fault(self) -> str:
        fault = os.environ.get(FAULT_ENV, "")
        if fault not in FAULTS:
            return ""
        try:
            os.unlink(self.state / "armed")  # atomic: only one process takes the fault
        except FileNotFoundError:
            return ""
        return fault

    def start(self) -> None:
        parent = os.getpid()
        libc = ctypes.CDLL(None, use_errno=True)

        def die_with_parent() -> None:  # in the child, before exec: SIGKILL when the wrapper dies
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the wrapper died already
                os._exit(1)

        self.child = subprocess.Popen(
            [self.real_cli, *self.argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # passed through
            preexec_fn=die_with_parent,
        )
        self.note(f"start child={self.child.pid} fault={self.fault or 'none'}")

    def kill_child(self) -> int:
        """SIGKILL the real child (if it runs) and reap it; returns its exit code."""
        child = self.child
        assert child is not None
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
        code = child.wait()
        self.note(f"reaped child={child.pid} code={code}")
        return code

    # --- signals --------------------------------------------------------------------------------------
    def on_signal(self, signum: int, _frame: Any) -> None:
        child = self.child
        if self.hung or child is None or child.returncode is not None:
            # os.kill/os.waitpid, not Popen's: the handler may interrupt the main loop inside child.wait()
            self.note(f"signal {signum}: exit")
            if child is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(child.pid, 0)
                self.note(f"reaped child={child.pid}")
            os._exit(128 + signum)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)  # transparent: the real CLI decides

    # --- output -----------------------------------------------------------------------------------------
    def emit(self, data: bytes) -> None:
        if self.out_open and not self.hung:
            self.out_buf += data

    def flush_some(self) -> None:
        try:
            n = os.write(1, self.out_buf)
        except BlockingIOError:
            return
        except BrokenPipeError:
            self.out_open = False
            self.out_buf.clear()
            return
        del self.out_buf[:n]

    def flush_bounded(self, grace: float = FLUSH_GRACE_S) -> None:
        deadline = time.monotonic() + grace
        while self.out_buf and time.monotonic() < deadline:
            _, writable, _ = select.select([], [1], [], 0.1)
            if writable:
                self.flush_some()

    def finish(self, code: int) -> int:
        """Exit now: the child killed and reaped, our output flushed as far as the reader takes it."""
        self.kill_child()
        self.flush_bounded()
        self.note(f"exit {code}")
        return code

    def on_line(self, line: bytes) -> int | None:
        """One complete stdout line of the child; returns an exit code to stop the wrapper."""
        kind = None
        if line.lstrip().startswith(b"{"):
            try:
                kind = json.loads(line).get("type")
            except (ValueError, AttributeError):
                kind = None
        if kind == "assistant" and not self.seen_assistant:
            self.seen_assistant = True
            if self.fault == "malformed":
                self.note("inject malformed")
                self.emit(MALFORMED_LINE)
            elif self.fault == "huge":
                self.note("inject huge")
                self.emit(huge_copy(line))
            elif self.fault == "crash":
                self.note("inject crash")
                for text in CRASH_STDERR:
                    os.write(2, (text + "\n").encode())
                return self.finish(CRASH_CODE)
            elif self.fault == "hang":
                self.emit(line)
                self.note("inject hang")
                self.hung = True
                return None
        if kind == "result" and self.fault == "noresult":
            self.note("inject noresult")
            return self.finish(0)
        self.emit(line)
        return None

    # --- main loop --------------------------------------------------------------------------------------
    def run(self) -> int:
        self.fault = self.claim_fault()
        self.start()
        child = self.child
        assert child is not None and child.stdin is not None and child.stdout is not None
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self.on_signal)
        os.set_blocking(1, False)
        child_in, child_out = child.stdin.fileno(), child.stdout.fileno()
        stdin_open, child_eof = True, False
        child_gone_at: float | None = None
        while True:
            if child_eof and not self.hung and (not self.out_buf or time.monotonic() - (child_gone_at or 0) > 2.0):
                break
            readers = ([0] if stdin_open else []) + ([child_out] if not child_eof else [])
            writers = [1] if self.out_buf else []
            readable, writable, _ = select.select(readers, writers, [], 0.5)
            if 0 in readable:
                data = os.read(0, 65536)
                if not data:
                    stdin_open = False
                    if not self.hung:
                        with contextlib.suppress(OSError):
                            child.stdin.close()
                elif not self.hung:
                    try:
                        os.write(child_in, data)  # small control messages: a blocking write is fine
                    except BrokenPipeError:
                        stdin_open = False
            if child_out in readable:
                data = os.read(child_out, 65536)
                if not data:
                    child_eof = True
                    if self.line_buf:
                        self.emit(bytes(self.line_buf))
                        self.line_buf.clear()
                    code = child.wait()
                    child_gone_at = time.monotonic()
                    self.note(f"child exited code={code}")
                else:
                    self.line_buf += data
                    while (nl := self.line_buf.find(b"\n")) >= 0:
                        line = bytes(self.line_buf[: nl + 1])
                        del self.line_buf[: nl + 1]
                        stop = self.on_line(line)
                        if stop is not None:
                            return stop
            if 1 in writable:
                self.flush_some()
        code = child.wait()
        self.note(f"exit {code}")
        return code if code >= 0 else 128 - code


def huge_copy(assistant_line: bytes, size: int = HUGE_BYTES) -> bytes:
    """The assistant line again, valid JSON, with its text made `size` bytes long."""
    message = json.loads(assistant_line)
    inner = message.get("message") if isinstance(message.get("message"), dict) else {}
    inner["content"] = [{"type": "text", "text": "A" * size}]
    message["message"] = inner
    return json.dumps(message).encode() + b"\n"


def main(real_cli: str, state: Path) -> int:
    argv = sys.argv[1:]
    if "stream-json" not in argv:  # `--version`, `doctor`, ...: the real CLI, untouched
        os.execv(real_cli, [real_cli, *argv])
    return Wrapper(real_cli, argv, state).run()
