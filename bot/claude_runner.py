"""Runs one Claude Code turn through claude-agent-sdk (which drives the `claude` CLI over stream-json).

The rest of the bot sees only RunSpec in and stream_parser events out. Every wait is bounded; the child is
always reaped. Cancelling never uses SIGTERM (it orphans the Bash tool's processes): first the stream-json
interrupt request, then SIGINT, and SIGKILL only as the last resort for a CLI that ignores both.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient
from claude_agent_sdk import CLINotFoundError as SdkCLINotFound
from claude_agent_sdk import ProcessError as SdkProcessError

from bot import stream_parser
from bot.errors import (
    CLINotFoundError,
    CLIProcessError,
    RunCancelledError,
    RunError,
    RunTimeoutError,
    SessionNotFoundError,
)
from bot.log import get_logger
from bot.redact import redact
from bot.stream_parser import Finished, RunEvent

log = get_logger("slackbus.runner")

STDERR_LINES = 40
INTERRUPT_GRACE_S = 3.0  # for the interrupt request to be answered
EOF_GRACE_S = 5.0  # after stdin is closed, for the CLI to exit by itself
SIGINT_GRACE_S = 5.0  # after SIGINT, before SIGKILL


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    prompt: str
    cwd: Path
    session_id: str
    resume: bool  # True: continue session_id; False: create a new session with that id
    cli_path: str
    env: Mapping[str, str] = field(repr=False)
    timeout: float
    system_prompt_append: str | None = None
    model: str | None = None
    allowed_tools: tuple[str, ...] = ()
    disallowed_tools: tuple[str, ...] = ()


EventSink = Callable[[RunEvent], None]


def _process_of(client: ClaudeSDKClient) -> Any:
    transport = getattr(client, "_transport", None)
    return getattr(transport, "_process", None)


async def _stop_process(client: ClaudeSDKClient, turn_done: bool) -> None:
    """Bring the CLI down without SIGTERM. Runs shielded; every step bounded (about 20 s worst case).

    A finished turn: close stdin and the CLI exits by itself. An unfinished one: the interrupt request
    first (the CLI stops its tools and ends the turn), then stdin EOF, then SIGINT, then SIGKILL.
    """
    process = _process_of(client)
    transport = getattr(client, "_transport", None)
    if process is not None and process.returncode is None:
        if not turn_done:
            with anyio.move_on_after(INTERRUPT_GRACE_S):
                with contextlib.suppress(Exception):
                    await client.interrupt()
        if transport is not None:
            with anyio.move_on_after(2.0):
                await transport.end_input()
        with anyio.move_on_after(EOF_GRACE_S):
            await process.wait()
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGINT)
            with anyio.move_on_after(SIGINT_GRACE_S):
                await process.wait()
        if process.returncode is None:
            log.warning("claude.kill", pid=process.pid, reason="ignored interrupt, EOF and SIGINT")
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with anyio.move_on_after(2.0):
                await process.wait()
    with anyio.move_on_after(8.0):
        try:
            await client.disconnect()
        except Exception as exc:
            log.warning("claude.disconnect_failed", error=str(exc))


def _options(spec: RunSpec, stderr_lines: deque[str]) -> ClaudeAgentOptions:
    system_prompt: Any = None
    if spec.system_prompt_append:
        system_prompt = {"type": "preset", "preset": "claude_code", "append": spec.system_prompt_append}
    return ClaudeAgentOptions(
        cli_path=spec.cli_path,
        cwd=str(spec.cwd),
        env=dict(spec.env),
        resume=spec.session_id if spec.resume else None,
        session_id=None if spec.resume else spec.session_id,
        system_prompt=system_prompt,
        model=spec.model,
        allowed_tools=list(spec.allowed_tools),
        disallowed_tools=list(spec.disallowed_tools),
        stderr=lambda line: stderr_lines.append(redact(line.rstrip())),
    )


async def run_turn(spec: RunSpec, on_event: EventSink) -> Finished:
    """Send `spec.prompt` to a new or resumed session; return the CLI's result.

    Raises a RunError subclass when there is no usable result. Cancelling the calling task interrupts
    the run and still reaps the child before the cancellation propagates.
    """
    stderr_lines: deque[str] = deque(maxlen=STDERR_LINES)
    client = ClaudeSDKClient(options=_options(spec, stderr_lines))
    finished: Finished | None = None
    started = time.monotonic()
    bound = log.bind(run_id=spec.run_id, session_id=spec.session_id)
    try:
        with anyio.fail_after(spec.timeout):
            bound.info("claude.spawn", resume=spec.resume, cwd=str(spec.cwd))
            await client.connect()
            process = _process_of(client)
            bound.info(
                "claude.connected", pid=getattr(process, "pid", None), ms=round((time.monotonic() - started) * 1000)
            )
            await client.query(spec.prompt, session_id=spec.session_id)
            async for message in client.receive_response():
                for event in stream_parser.parse(message):
                    if isinstance(event, Finished):
                        finished = event
                    on_event(event)
    except TimeoutError:
        raise RunTimeoutError(
            f"The run took longer than SLACKBUS_RUN_TIMEOUT ({spec.timeout:g} s) and was stopped.",
            session_id=spec.session_id,
        ) from None
    except SdkCLINotFound as exc:
        raise CLINotFoundError(
            f"The Claude Code CLI could not be started ({exc}): check CLAUDE_CLI_PATH.", session_id=spec.session_id
        ) from None
    except SdkProcessError as exc:
        tail = "\n".join(stderr_lines) or redact(str(getattr(exc, "stderr", "") or ""))
        raise _process_error(getattr(exc, "exit_code", None), tail, spec) from None
    except RunError:
        raise
    except Exception as exc:  # the SDK's own connection/JSON errors
        tail = "\n".join(stderr_lines)
        raise CLIProcessError(
            f"The Claude Code CLI failed: {redact(str(exc))}", stderr_tail=tail, session_id=spec.session_id
        ) from exc
    finally:
        with anyio.CancelScope(shield=True):
            await _stop_process(client, turn_done=finished is not None)
        bound.info("claude.reaped", ms=round((time.monotonic() - started) * 1000))

    if finished is None:
        process = _process_of(client)
        raise _process_error(getattr(process, "returncode", None), "\n".join(stderr_lines), spec)
    if finished.is_error and _is_missing_session(finished, stderr_lines):
        raise SessionNotFoundError(
            "The Claude session for this thread was not found on this host.", session_id=spec.session_id
        )
    return finished


def _is_missing_session(finished: Finished, stderr_lines: deque[str]) -> bool:
    haystack = " ".join([finished.text, *finished.errors, *stderr_lines]).lower()
    return "no conversation found" in haystack


def _process_error(exit_code: int | None, tail: str, spec: RunSpec) -> RunError:
    if "no conversation found" in tail.lower():
        return SessionNotFoundError(
            "The Claude session for this thread was not found on this host.", session_id=spec.session_id
        )
    if exit_code is not None and exit_code < 0:
        what = f"was killed by signal {-exit_code}"
    elif exit_code is not None:
        what = f"exited with code {exit_code}"
    else:
        what = "stopped"
    return CLIProcessError(
        f"The Claude Code CLI {what} before giving an answer.",
        exit_code=exit_code,
        stderr_tail=tail,
        session_id=spec.session_id,
    )


__all__ = ["EventSink", "RunCancelledError", "RunSpec", "run_turn"]
