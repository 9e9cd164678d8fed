"""One live Claude Code session: a `claude` process driven through claude-agent-sdk, owned by its own task.

The rest of the bot sees SessionSpec in and stream_parser events out. A session serves turns one at a time
and can stay alive between them (a warm thread answers a follow-up without the CLI's cold start).

Every wait is bounded; the child is always reaped. Stopping never uses SIGTERM (it orphans the Bash tool's
processes): the stream-json interrupt request first, then stdin EOF, then SIGINT, and SIGKILL only for a CLI
that ignores all three.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pwd
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus
from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient
from claude_agent_sdk import CLIJSONDecodeError as SdkJSONDecodeError
from claude_agent_sdk import CLINotFoundError as SdkCLINotFound
from claude_agent_sdk import ProcessError as SdkProcessError

from bot.core import stream_parser
from bot.core.approvals import Approvals
from bot.core.stream_parser import Finished, RunEvent
from bot.errors import (
    CLINotFoundError,
    CLIOutputError,
    CLIProcessError,
    RunCancelledError,
    RunError,
    RunStalledError,
    RunTimeoutError,
    SessionNotFoundError,
)
from bot.log import get_logger
from bot.redact import redact

log = get_logger("slackbus.runner")

STDERR_LINES = 40
CONNECT_TIMEOUT_S = 60.0
INTERRUPT_GRACE_S = 3.0  # for the interrupt request to be answered
EOF_GRACE_S = 5.0  # after stdin is closed, for the CLI to exit by itself
SIGINT_GRACE_S = 5.0  # after SIGINT, before SIGKILL
MAX_MESSAGE_BYTES = 1024 * 1024  # one stream-json line from the CLI; a longer one ends the run (the SDK's default)
SDK_STDERR_PLACEHOLDER = "Check stderr output for details"  # what the SDK puts in ProcessError.stderr

EventSink = Callable[[RunEvent], None]


@dataclass(frozen=True)
class SessionSpec:
    cwd: Path
    session_id: str
    resume: bool  # True: continue session_id; False: create a new session with that id
    cli_path: str
    env: Mapping[str, str] = field(repr=False)
    system_prompt_append: str | None = None
    model: str | None = None
    allowed_tools: tuple[str, ...] = ()
    disallowed_tools: tuple[str, ...] = ()
    max_turns: int | None = None
    max_budget_usd: float | None = None
    permission_mode: str | None = None
    approvals: Approvals | None = field(default=None, compare=False, repr=False)
    mcp_servers: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    run_as: str | None = None  # the OS user the CLI runs as (SLACKBUS_RUN_AS; the bot is root); None: the bot's own
    add_dirs: tuple[Path, ...] = ()  # folders outside cwd the CLI may read (the thread's attachments)
    cost_before: float | None = None  # a resumed session's cost so far: the CLI's first total includes it


@dataclass
class _Turn:
    prompt: str
    on_event: EventSink
    deadline: float  # monotonic
    timeout: float
    stall: float
    run_id: str
    where: tuple[str, str, str] | None = None  # (channel, thread_ts, requester): who can approve tools
    images: tuple[dict[str, Any], ...] = ()  # image content blocks sent with the prompt (attachments)
    done: anyio.Event = field(default_factory=anyio.Event)
    outcome: Finished | RunError | None = None
    cancelled_by: str | None = None


def take_groups_of(user: str) -> None:
    """Give this process (root) the group and supplementary groups of `user`, which its children inherit.

    The SDK switches only the user id of the child it starts (ClaudeAgentOptions.user), so a claude started
    by root would keep root's group (gid 0) and could read files readable by group root (a .env at 0640, say).
    The bot stays uid 0 and can still reach every file; only what its children inherit changes.
    """
    entry = pwd.getpwnam(user)
    groups = os.getgrouplist(user, entry.pw_gid)
    if os.getresgid() == (entry.pw_gid,) * 3 and set(os.getgroups()) == set(groups):
        return
    os.setgroups(groups)
    os.setresgid(entry.pw_gid, entry.pw_gid, entry.pw_gid)
    log.info("claude.run_as_groups", user=user, gid=entry.pw_gid, groups=groups)


def _options(spec: SessionSpec, stderr_lines: deque[str], can_use_tool: Any = None) -> ClaudeAgentOptions:
    if spec.run_as:
        take_groups_of(spec.run_as)
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
        max_turns=spec.max_turns,
        max_budget_usd=spec.max_budget_usd,
        permission_mode=spec.permission_mode,  # type: ignore[arg-type]
        can_use_tool=can_use_tool,
        mcp_servers=dict(spec.mcp_servers),
        max_buffer_size=MAX_MESSAGE_BYTES,
        stderr=lambda line: stderr_lines.append(redact(line.rstrip())),
        user=spec.run_as,
        add_dirs=list(spec.add_dirs),
    )


class ClaudeSession:
    """A `claude` process and its session. States: starting → idle ⇄ busy → closed.

    `serve` is the owner task (start it with `task_group.start`); `turn` is called from any task.
    """

    def __init__(self, spec: SessionSpec) -> None:
        self.spec = spec
        self.session_id = spec.session_id
        self.state = "starting"
        self.pid: int | None = None
        self.parked = False  # stopped with SIGSTOP while idle: no CPU at all; continued before anything else
        self.turns = 0
        self.created = time.monotonic()
        self.last_used = self.created
        self.healthy = True  # false after a failed, stalled or cancelled turn: do not reuse
        self._stderr: deque[str] = deque(maxlen=STDERR_LINES)
        self._send, self._receive = anyio.create_memory_object_stream[_Turn](1)
        self._client: ClaudeSDKClient | None = None
        self._current: _Turn | None = None
        self._closed = anyio.Event()
        self.ready = anyio.Event()  # set once connected (or failed to)
        self.waiting_approval = 0
        self.claimed = False  # taken by a task while still starting (see SessionManager)
        # what the bench and the logs call the CLI's time, as opposed to the bot's own work (monotonic seconds)
        self.spawned_at: float | None = None  # serve began starting the process
        self.connected_at: float | None = None  # the CLI answered the SDK's initialize request
        self.last_turn_s = 0.0  # the last turn, from writing its prompt to reading its result
        # what the CLI said this process had cost at its last result; a resumed session's reports start from what
        # the session cost before (measured: a resumed third turn reported all three)
        self._reported_cost: float | None = spec.cost_before if spec.resume else None

    # --- owner task -----------------------------------------------------------------------------
    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        can_use_tool = None
        if self.spec.approvals is not None:
            ask = self.spec.approvals.callback_for(self.session_id, self._where)

            async def can_use_tool(tool: str, args: dict[str, Any], context: Any) -> Any:
                self.waiting_approval += 1  # a person is deciding: not a stall
                try:
                    return await ask(tool, args, context)
                finally:
                    self.waiting_approval -= 1

        client = ClaudeSDKClient(options=_options(self.spec, self._stderr, can_use_tool))
        self._client = client
        bound = log.bind(session_id=self.session_id)
        started = self.spawned_at = time.monotonic()
        try:
            try:
                with anyio.fail_after(CONNECT_TIMEOUT_S):
                    await client.connect()
            except TimeoutError:
                raise CLIProcessError(
                    f"The Claude Code CLI did not start within {CONNECT_TIMEOUT_S:g} s.",
                    stderr_tail="\n".join(self._stderr),
                    session_id=self.session_id,
                ) from None
            except Exception as exc:
                raise self._error(exc) from None
            process = _process_of(client)
            self.pid = getattr(process, "pid", None)
            self.connected_at = time.monotonic()
            self.state = "idle"
            bound.info("claude.connected", pid=self.pid, resume=self.spec.resume,
                       ms=round((time.monotonic() - started) * 1000))
            self.ready.set()
            task_status.started()
            async with self._receive:
                async for turn in self._receive:
                    self._current = turn
                    self.state = "busy"
                    try:
                        await self._run_turn(client, turn)
                    finally:
                        self._current = None
                        turn.done.set()
                    del turn  # a warm process waits here for hours: it must not keep the last prompt and its images
                    self.turns += 1
                    self.last_used = time.monotonic()
                    if not self.healthy:
                        break
                    self.state = "idle"
            self.state = "idle"  # input closed between turns
        finally:
            self.unpark()  # a stopped process could not hear its stdin close, nor SIGINT
            mid_turn = self.state == "busy"  # cancelled (shutdown) or broken during a turn
            self.state = "closing"
            with anyio.CancelScope(shield=True):
                await _stop_process(client, mid_turn=mid_turn)
            self.state = "closed"
            self.ready.set()
            self._closed.set()
            bound.info("claude.reaped", pid=self.pid, turns=self.turns)

    def _turn_cost(self, finished: Finished) -> Finished:
        """The CLI reports what the process has cost so far (a warm process's second turn reports both turns):
        the turn's own cost is what it added since the last result."""
        total = finished.cost_usd
        if total is None:
            return finished
        before, self._reported_cost = self._reported_cost, total
        if before is None or total < before:
            return finished
        return dataclasses.replace(finished, cost_usd=round(total - before, 10))

    async def _run_turn(self, client: ClaudeSDKClient, turn: _Turn) -> None:
        finished: Finished | None = None
        ended = False
        # A pump task moves the SDK's messages into a stream, so waiting for the next one can time out and
        # wait again (while a person decides on a tool) without tearing the SDK's generator down.
        send, receive = anyio.create_memory_object_stream[Any](64)

        async def pump() -> None:
            async with send:
                async for item in client.receive_response():
                    await send.send(item)

        sent_at = time.monotonic()
        self.last_turn_s = 0.0
        try:
            if turn.images:  # one user message whose content is the text and the images
                await client.query(_one_message(turn.prompt, turn.images, self.session_id), session_id=self.session_id)
            else:
                await client.query(turn.prompt, session_id=self.session_id)
            async with anyio.create_task_group() as tg, receive:
                tg.start_soon(pump)
                while finished is None:
                    remaining = turn.deadline - time.monotonic()
                    wait = min(turn.stall, remaining)
                    message: Any = None
                    with anyio.move_on_after(max(wait, 0)):
                        try:
                            message = await receive.receive()
                        except anyio.EndOfStream:
                            ended = True
                            break
                    if message is None and self.waiting_approval and remaining > turn.stall:
                        continue  # silent because a person is deciding on a tool: not a stall
                    if message is None:
                        self.healthy = False
                        if turn.cancelled_by is None:
                            turn.outcome = self._limit_error(turn, stalled=remaining > turn.stall)
                        await self._interrupt(client)
                        break
                    for event in stream_parser.parse(message):
                        if isinstance(event, Finished):
                            event = finished = self._turn_cost(event)
                            self.last_turn_s = time.monotonic() - sent_at
                        turn.on_event(event)
                tg.cancel_scope.cancel()
            if ended and turn.cancelled_by is None:  # the CLI stopped talking without a result
                self.healthy = False
                process = _process_of(client)
                with anyio.move_on_after(2.0):
                    await process.wait()
                turn.outcome = self._process_error(getattr(process, "returncode", None))
                return
        except Exception as exc:
            self.healthy = False
            if turn.cancelled_by is None:
                turn.outcome = self._error(_first_error(exc))
                return
        # a cancelled turn is a cancellation however the CLI ended it: a result, or an exit after the interrupt
        # (on a loaded machine the interrupt may not be answered in time, and SIGINT ends the process)
        if turn.cancelled_by is not None:
            self.healthy = False
            turn.outcome = RunCancelledError("The run was cancelled.", by=turn.cancelled_by,
                                             session_id=self.session_id)
        elif finished is not None:
            if finished.is_error:
                self.healthy = False
                if _missing_session(finished, self._stderr):
                    turn.outcome = SessionNotFoundError(
                        "The Claude session for this thread was not found on this host.", session_id=self.session_id
                    )
                    return
            turn.outcome = finished

    def _limit_error(self, turn: _Turn, *, stalled: bool) -> RunError:
        if stalled:
            return RunStalledError(
                f"Claude Code produced no output for {turn.stall:g} s (SLACKBUS_STALL_SECONDS), so the run was "
                "stopped.",
                session_id=self.session_id,
            )
        return RunTimeoutError(
            f"The run took longer than SLACKBUS_RUN_TIMEOUT ({turn.timeout:g} s) and was stopped.",
            session_id=self.session_id,
        )

    async def _interrupt(self, client: ClaudeSDKClient) -> None:
        with anyio.move_on_after(INTERRUPT_GRACE_S), contextlib.suppress(Exception):
            await client.interrupt()

    def _error(self, exc: BaseException) -> RunError:
        if isinstance(exc, RunError):
            return exc
        if isinstance(exc, SdkCLINotFound):
            return CLINotFoundError(
                f"The Claude Code CLI could not be started ({exc}): check CLAUDE_CLI_PATH.", session_id=self.session_id
            )
        if isinstance(exc, SdkProcessError):
            stderr = str(getattr(exc, "stderr", "") or "")
            if stderr == SDK_STDERR_PLACEHOLDER:  # not the CLI's words: nothing to show
                stderr = ""
            return self._process_error(getattr(exc, "exit_code", None), redact(stderr))
        if isinstance(exc, SdkJSONDecodeError):
            # the line itself is for the log, not the thread (raw JSON, maybe megabytes of it)
            too_large = not isinstance(exc.original_error, json.JSONDecodeError)
            log.warning("claude.unreadable_output", session_id=self.session_id, too_large=too_large,
                        line=redact(str(exc.line)[:200]), error=redact(str(exc.original_error))[:200])
            if too_large:
                return CLIOutputError(
                    f"The Claude Code CLI sent one message larger than {MAX_MESSAGE_BYTES // (1024 * 1024)} MB, more "
                    "than slackbus reads, so the run was stopped.",
                    too_large=True,
                    session_id=self.session_id,
                )
            return CLIOutputError(
                "The Claude Code CLI wrote output slackbus could not read (a line that is not valid JSON), so the "
                "run was stopped.",
                session_id=self.session_id,
            )
        return CLIProcessError(
            f"The Claude Code CLI failed: {redact(str(exc))}",
            stderr_tail="\n".join(self._stderr),
            session_id=self.session_id,
        )

    def _process_error(self, exit_code: int | None, extra: str = "") -> RunError:
        tail = "\n".join(self._stderr) or extra
        if "no conversation found" in tail.lower():
            return SessionNotFoundError(
                "The Claude session for this thread was not found on this host.", session_id=self.session_id
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
            session_id=self.session_id,
        )

    def _where(self) -> tuple[str, str, str] | None:
        """(channel, thread_ts, requester) of the turn now running: who may approve its tool calls."""
        return self._current.where if self._current is not None else None

    # --- called from other tasks ------------------------------------------------------------------
    def start_overlap(self, since: float, until: float) -> float:
        """Seconds of [since, until] during which this process was starting (spawned, not yet connected):
        a task that waited for its process this long waited for the CLI, not for the bot."""
        if self.spawned_at is None:
            return 0.0
        end = min(until, self.connected_at if self.connected_at is not None else until)
        return max(0.0, end - max(since, self.spawned_at))

    def claim(self) -> bool:
        """Take a process that is still starting for one task (True), unless another task took it first."""
        if self.claimed:
            return False
        self.claimed = True
        return True

    def never_started(self) -> None:
        """A process the SessionManager gave up on before it started (no room under the cap, or it failed):
        whoever waits on `ready` sees it closed."""
        if self.state == "starting":
            self.state = "closed"
        self.ready.set()

    @property
    def alive(self) -> bool:
        return self.state in {"idle", "busy"} and self.healthy

    def park(self) -> bool:
        """Stop an idle process (SIGSTOP): it then uses no CPU until `unpark`, which every turn, cancel and close
        does first. The stream-json pipes simply wait; the CLI's timers run late, not lost."""
        if self.parked or self.state != "idle" or self.pid is None or self._current is not None:
            return False
        try:
            os.kill(self.pid, signal.SIGSTOP)
        except ProcessLookupError:
            return False
        self.parked = True
        return True

    def unpark(self) -> None:
        if not self.parked:
            return
        self.parked = False
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)

    async def turn(
        self,
        prompt: str,
        on_event: EventSink,
        *,
        timeout: float,  # noqa: ASYNC109 - the bound is enforced by the owner task, per message
        stall: float,
        run_id: str = "",
        where: tuple[str, str, str] | None = None,
        images: Sequence[dict[str, Any]] = (),
    ) -> Finished:
        """Run one turn; returns the CLI's result or raises a RunError. Cancelling the caller aborts the
        turn and closes the session (shielded, bounded) before the cancellation goes on."""
        self.unpark()
        if not self.alive:
            raise CLIProcessError("The Claude session is not running.", session_id=self.session_id)
        turn = _Turn(prompt, on_event, time.monotonic() + timeout, timeout, stall, run_id, where, tuple(images))
        try:
            await self._send.send(turn)
            await turn.done.wait()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self.abort()
            raise
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise CLIProcessError("The Claude session ended.", session_id=self.session_id) from None
        if isinstance(turn.outcome, RunError):
            raise turn.outcome
        if turn.outcome is None:
            raise self._process_error(None)
        return turn.outcome

    async def cancel(self, by: str) -> None:
        """Stop the current turn on behalf of `by` (the turn ends with RunCancelledError)."""
        turn = self._current
        if turn is None:
            return
        turn.cancelled_by = by
        self.healthy = False
        if self._client is not None:
            await self._interrupt(self._client)
        # a CLI that does not end the turn after the interrupt is brought down
        with anyio.move_on_after(INTERRUPT_GRACE_S):
            await turn.done.wait()
        if not turn.done.is_set():
            await self.abort()

    async def abort(self) -> None:
        """Stop whatever runs and close the session; bounded (about 20 s worst case).

        SIGINT stops the turn and its tools at once (the interrupt request would need the SDK's reader task,
        which shutdown may have cancelled already); the owner task then closes stdin and reaps the process.
        """
        self.unpark()
        self.healthy = False
        self._send.close()
        client, turn = self._client, self._current
        log.info("claude.abort", session_id=self.session_id, mid_turn=turn is not None)
        process = _process_of(client) if client is not None else None
        if turn is not None and process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGINT)
        with anyio.move_on_after(25.0):
            await self._closed.wait()

    async def close(self) -> None:
        """Close an idle session (stdin EOF → the CLI exits); aborts a busy one."""
        self.unpark()
        if self.state == "busy":
            await self.abort()
            return
        self._send.close()
        with anyio.move_on_after(25.0):
            await self._closed.wait()


async def _one_message(
    prompt: str, images: tuple[dict[str, Any], ...], session_id: str
) -> AsyncIterator[dict[str, Any]]:
    """The prompt and its images as one user message (ClaudeSDKClient.query takes a stream of messages)."""
    yield {"type": "user", "message": {"role": "user", "content": [{"type": "text", "text": prompt}, *images]},
           "parent_tool_use_id": None, "session_id": session_id}


def _first_error(exc: BaseException) -> BaseException:
    """The pump's own error out of a task group's ExceptionGroup."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _process_of(client: ClaudeSDKClient) -> Any:
    transport = getattr(client, "_transport", None)
    return getattr(transport, "_process", None)


def _missing_session(finished: Finished, stderr_lines: deque[str]) -> bool:
    haystack = " ".join([finished.text, *finished.errors, *stderr_lines]).lower()
    return "no conversation found" in haystack


async def _stop_process(client: ClaudeSDKClient, *, mid_turn: bool) -> None:
    """Bring the CLI down without SIGTERM; every step bounded (about 15 s worst case).

    Between turns: close stdin and the CLI exits by itself. Mid-turn (shutdown, abort): SIGINT first, which
    stops the turn and its tools like Ctrl-C (the SDK's interrupt request needs its reader task, which may be
    cancelled by now), then stdin EOF; SIGKILL only for a CLI that ignores both.
    """
    process = _process_of(client)
    transport = getattr(client, "_transport", None)
    log.debug("claude.stopping", pid=getattr(process, "pid", None), mid_turn=mid_turn)
    if process is not None and process.returncode is None:
        if mid_turn:
            # stops the turn and its tools; in stream-json mode the CLI then waits for input, hence the EOF next
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGINT)
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
            log.warning("claude.kill", pid=process.pid, reason="ignored SIGINT and stdin EOF")
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with anyio.move_on_after(2.0):
                await process.wait()
    with anyio.move_on_after(8.0):
        try:
            await client.disconnect()
        except Exception as exc:
            log.warning("claude.disconnect_failed", error=str(exc))


__all__ = ["ClaudeSession", "EventSink", "SessionSpec"]
