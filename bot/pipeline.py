"""One task, from the queue to the answer: context builder → claude runner → renderer → Slack poster.

Every outcome ends in the thread: the answer, or one sentence saying what went wrong and what to do. The
bot keeps serving whatever happens to one run.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from pathlib import Path

import anyio

from bot import renderer
from bot.backfill import Backfill
from bot.claude_runner import RunSpec, run_turn
from bot.config import Settings
from bot.context_builder import SYSTEM_PROMPT_APPEND, Context, ContextBuilder
from bot.dispatcher import Job
from bot.errors import RunError, SessionNotFoundError
from bot.log import get_logger
from bot.slack_poster import SlackPoster
from bot.store import Store, StoredMessage, ThreadSession
from bot.stream_parser import Finished, RunEvent, ToolCall

log = get_logger("slackbus.pipeline")

WORKING = "eyes"
DONE = "white_check_mark"
FAILED = "x"


class TaskPipeline:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        poster: SlackPoster,
        contexts: ContextBuilder,
        backfill: Backfill,
    ) -> None:
        self._settings = settings
        self._store = store
        self._poster = poster
        self._contexts = contexts
        self._backfill = backfill
        self.active_runs = 0
        self.peak_runs = 0

    async def __call__(self, jobs: list[Job]) -> None:
        first, last = jobs[0], jobs[-1]
        run_id = uuid.uuid4().hex[:12]
        bound = log.bind(run_id=run_id, channel=first.channel, thread_ts=first.thread_ts)
        bound.info("run.start", jobs=len(jobs), waited_ms=round((time.monotonic() - first.received) * 1000))
        self._store.set_request_status(first.channel, [j.trigger_ts for j in jobs], "running")
        ok = False
        self.active_runs += 1
        self.peak_runs = max(self.peak_runs, self.active_runs)
        try:
            ok = await self._run(jobs, run_id)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True), anyio.move_on_after(3.0):
                await self._notice(
                    first, ":warning: The bot is shutting down, so this run stopped. It will pick the request "
                    "up again when it restarts."
                )
            raise
        except Exception as exc:
            bound.exception("run.crashed")
            await self._notice(first, f":x: slackbus hit an internal error ({type(exc).__name__}); see its log.")
        finally:
            self.active_runs -= 1
        status = "done" if ok else "failed"
        self._store.set_request_status(first.channel, [j.trigger_ts for j in jobs], status)
        async with anyio.create_task_group() as tg:
            for job in jobs:
                tg.start_soon(self._poster.unreact, job.channel, job.trigger_ts, WORKING)
                tg.start_soon(self._poster.react, job.channel, job.trigger_ts, DONE if ok else FAILED)
        bound.info("run.end", ok=ok, total_ms=round((time.monotonic() - last.received) * 1000))

    async def _notice(self, job: Job, text: str) -> None:
        await self._poster.post(job.channel, job.thread_ts, renderer.render_notice(text))

    async def _run(self, jobs: list[Job], run_id: str) -> bool:
        first, last = jobs[0], jobs[-1]
        with anyio.move_on_after(5.0):
            await self._backfill.ensure(first.channel)
        session = self._store.get_thread(first.channel, first.thread_ts)
        if session is None:  # a job re-queued after a restart whose thread row was never written
            session = ThreadSession(first.channel, first.thread_ts, "", str(self._settings.workdir), False, "0",
                                    first.user)
        label = self._backfill.label(first.channel, first.is_dm)
        await self._resolve_names(first)

        resume = session.started and bool(session.session_id)
        context = self._context(session, last, label, resume)
        session_id = session.session_id if resume else str(uuid.uuid4())
        try:
            try:
                finished = await self._turn(run_id, session, session_id, resume, context, first)
            except SessionNotFoundError:
                if not resume:
                    raise
                # The CLI lost the session (other HOME, files removed): start again with the whole thread.
                log.warning("run.session_missing", run_id=run_id, session_id=session_id)
                self._store.finish_run(run_id, "failed", error="session not found")
                run_id = f"{run_id}-new"
                session = replace(session, started=False, session_id="")
                context = self._context(session, last, label, resume=False)
                session_id = str(uuid.uuid4())
                finished = await self._turn(run_id, session, session_id, False, context, first)
        except RunError as err:
            self._store.finish_run(run_id, "failed", error=str(err))
            log.warning("run.failed", run_id=run_id, error=str(err), kind=type(err).__name__)
            await self._notice(first, renderer.describe_run_error(err))
            return False

        # The session exists now (a result came back), even if that result is an error.
        self._store.save_thread(
            replace(session, session_id=finished.session_id or session_id, started=True, last_ts=context.last_ts)
        )
        self._store.finish_run(
            run_id,
            "error" if finished.is_error else "done",
            error=finished.text[:500] if finished.is_error else None,
            num_turns=finished.num_turns,
            cost_usd=finished.cost_usd,
            duration_ms=finished.duration_ms,
        )
        return not finished.is_error

    async def _deliver(self, job: Job, finished: Finished, run_id: str) -> None:
        """Post the outcome in the thread; runs while the CLI is still being shut down."""
        if finished.is_error:
            await self._notice(job, renderer.describe_result_error(finished))
            return
        posted_at = time.monotonic()
        for message in renderer.render_answer(finished.text, renderer.footer(finished)):
            await self._poster.post(job.channel, job.thread_ts, message)
        log.info(
            "run.answered",
            run_id=run_id,
            session_id=finished.session_id,
            turns=finished.num_turns,
            post_ms=round((time.monotonic() - posted_at) * 1000, 1),
            since_received_ms=round((time.monotonic() - job.received) * 1000, 1),
        )

    def _context(self, session: ThreadSession, last: Job, label: str, resume: bool) -> Context:
        if resume:
            return self._contexts.for_follow_up(session, last.trigger_ts, label)
        trigger = self._store.get_message(last.channel, last.trigger_ts) or StoredMessage(
            last.channel, last.trigger_ts, last.thread_ts, last.user, None, ""
        )
        return self._contexts.for_new_session(last.channel, last.thread_ts, trigger, label)

    async def _resolve_names(self, job: Job) -> None:
        users = {m.user for m in self._store.channel_messages(job.channel, job.trigger_ts, 50) if m.user}
        users.update(m.user for m in self._store.thread_messages(job.channel, job.thread_ts) if m.user)
        await self._backfill.resolve(users)

    async def _turn(
        self, run_id: str, session: ThreadSession, session_id: str, resume: bool, context: Context, job: Job
    ) -> Finished:
        self._store.start_run(run_id, session.channel, session.thread_ts, session_id, job.user)
        spec = RunSpec(
            run_id=run_id,
            prompt=context.prompt,
            cwd=Path(session.workdir),
            session_id=session_id,
            resume=resume,
            cli_path=self._settings.claude_cli_path,
            env=self._settings.child_env,
            timeout=self._settings.run_timeout,
            system_prompt_append=SYSTEM_PROMPT_APPEND,
            model=self._settings.model,
            allowed_tools=self._settings.allowed_tools,
            disallowed_tools=self._settings.disallowed_tools,
        )
        log.info(
            "run.spawning",
            run_id=run_id,
            session_id=session_id,
            resume=resume,
            context_messages=context.included,
            prompt_chars=len(context.prompt),
            since_received_ms=round((time.monotonic() - job.received) * 1000, 1),
        )
        outcome: Finished | RunError
        async with anyio.create_task_group() as tg:

            def on_event(event: RunEvent) -> None:
                if isinstance(event, ToolCall):
                    log.debug("run.tool", run_id=run_id, tool=event.name)
                elif isinstance(event, Finished) and not _lost_session(event):
                    log.info(
                        "run.result",
                        run_id=run_id,
                        is_error=event.is_error,
                        since_received_ms=round((time.monotonic() - job.received) * 1000, 1),
                    )
                    # post the answer now; the CLI is shut down and reaped meanwhile
                    tg.start_soon(self._deliver, job, event, run_id)

            try:
                outcome = await run_turn(spec, on_event)
            except RunError as err:  # raised outside the task group, so callers see it as it is
                outcome = err
        if isinstance(outcome, RunError):
            raise outcome
        return outcome


def _lost_session(finished: Finished) -> bool:
    return finished.is_error and "no conversation found" in (finished.text + " ".join(finished.errors)).lower()
