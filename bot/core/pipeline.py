"""One task, from the queue to the answer: context builder → claude session → renderer → Slack poster.

Every outcome ends in the thread: the answer, or one sentence saying what went wrong and what to do. The
bot keeps serving whatever happens to one run. A run shows one status message (with a Stop button) only
if it takes longer than a moment; the answer then replaces it, so a quick answer costs a single post.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio

from bot.config import Settings
from bot.core import budget, handoff, renderer, signs
from bot.core.attachments import (
    Fetched,
    Fetcher,
    Limits,
    give_back_memory,
    left_out_notes,
    prompt_section,
    thread_dir,
)
from bot.core.claude_runner import ClaudeSession
from bot.core.context_builder import Context, ContextBuilder, links_in
from bot.core.dispatcher import Job
from bot.core.events import FileRef
from bot.core.files_out import FilesOut
from bot.core.poster import Directory, Poster
from bot.core.progress import Progress, RateBudget
from bot.core.renderer import SlackMessage
from bot.core.sessions import SessionManager
from bot.core.signs import Signs
from bot.core.store import Store, StoredMessage, ThreadOptions, ThreadSession
from bot.core.stream_parser import Finished, RunEvent, SessionStarted, ToolCall
from bot.core.triggers import Triggers
from bot.core.worktrees import WORKTREES_DIR, Worktree, Worktrees
from bot.errors import (
    OptionsError,
    RunCancelledError,
    RunError,
    SessionNotFoundError,
    StoreError,
    WorkdirError,
    WorktreeError,
)
from bot.log import get_logger
from bot.request_options import choose, split_options

log = get_logger("slackbus.pipeline")

NOTIFY_AFTER_S = 30.0  # a longer run's answer is a new message mentioning the requester (edits do not notify)
MAX_INLINE_PARTS = 4  # a longer answer goes up as a file, with its beginning in the thread


@dataclass
class RunHandle:
    run_id: str
    channel: str
    thread_ts: str
    requester: str
    trigger_ts: tuple[str, ...]
    started: float = field(default_factory=time.monotonic)
    status_ts: str | None = None
    answered: bool = False
    session: ClaudeSession | None = None
    cancelled_by: str | None = None
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    progress: Progress | None = None
    first_event_at: float | None = None
    cli_s: float = 0.0  # time this run spent waiting for the CLI (its start, its turns): the rest is the bot's
    where: str = ""  # the repository, branch and model, for the status line and the footer
    worktree: Worktree | None = None
    fetched: int = 0  # files this run fetched

    @property
    def key(self) -> tuple[str, str]:
        return (self.channel, self.thread_ts)

    @property
    def step(self) -> str | None:
        """What the run is doing now ("Running `pytest -q`"), once its progress shows a step."""
        return self.progress.step if self.progress is not None else None


def _run_log(handle: RunHandle) -> Any:
    """The pipeline's logger carrying the run's ids: every run.* line says which run, channel and thread (the run
    id as it is now: a run that starts its session again goes on as <run id>-new)."""
    return log.bind(run_id=handle.run_id, channel=handle.channel, thread_ts=handle.thread_ts)


@dataclass(frozen=True)
class Attached:
    """A run's attachments, ready for the turn: the text naming them, the images, and whether a file is named only
    by its path (then the process must be one started for this thread, which may read the thread's folder)."""

    text: str = ""
    images: tuple[dict[str, Any], ...] = ()
    needs_dir: bool = False


class TaskPipeline:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        poster: Poster,
        contexts: ContextBuilder,
        backfill: Directory,
        sessions: SessionManager,
        signs: Signs,
        worktrees: Worktrees | None = None,
        fetcher: Fetcher | None = None,
        files_out: FilesOut | None = None,
    ) -> None:
        self._files_out = files_out  # files the session wrote into the thread's outbox go to the thread
        self._fetcher = fetcher  # the transport's way to fetch attached files; None: attachments are only named
        self._signs = signs
        self._worktrees = worktrees
        self._settings = settings
        self._store = store
        self._poster = poster
        self._contexts = contexts
        self._backfill = backfill
        self._sessions = sessions
        self.active: dict[tuple[str, str], RunHandle] = {}
        self.triggers: Triggers | None = None  # a job a trigger rule started is asked the rule's prompt
        self.peak_runs = 0
        self._edit_budget = RateBudget()  # chat.update for status messages, shared by all runs

    def process_counts(self) -> dict[str, int]:
        """The `claude` processes alive: all of them, running a turn, kept warm for a thread, pre-started."""
        return self._sessions.counts()

    # --- cancel -------------------------------------------------------------------------------------
    def runs(self) -> list[RunHandle]:
        """The runs going now, oldest first (the run registry commands read)."""
        return sorted(self.active.values(), key=lambda h: h.started)

    def is_running(self, key: tuple[str, str]) -> bool:
        """Whether the thread `key` (channel, thread ts) has a run going."""
        return key in self.active

    def find(self, channel: str, ts: str) -> RunHandle | None:
        """The active run a message belongs to: its thread, a request in it, or its status message."""
        for handle in self.active.values():
            if handle.channel == channel and ts in (handle.thread_ts, handle.status_ts, *handle.trigger_ts):
                return handle
        return None

    async def cancel(self, handle: RunHandle, by: str) -> None:
        if handle.cancelled_by is not None:
            return
        handle.cancelled_by = by
        _run_log(handle).info("run.cancel", by=by)
        if handle.session is not None and handle.session.state == "busy":
            await handle.session.cancel(by)
        else:
            handle.scope.cancel()

    # --- a run -------------------------------------------------------------------------------------------
    async def __call__(self, jobs: list[Job]) -> None:
        first = jobs[0]
        handle = RunHandle(
            run_id=uuid.uuid4().hex[:12],
            channel=first.channel,
            thread_ts=first.thread_ts,
            requester=first.user,
            trigger_ts=tuple(j.trigger_ts for j in jobs),
        )
        bound = _run_log(handle)  # run.start, run.crashed and run.end keep the id the run began with
        bound.info("run.start", jobs=len(jobs), trigger_ts=handle.trigger_ts[-1],
                   waited_ms=round((time.monotonic() - first.received) * 1000, 1))
        self._store.set_request_status(first.channel, list(handle.trigger_ts), "running")
        self.active[handle.key] = handle
        self.peak_runs = max(self.peak_runs, len(self.active))
        handle.status_ts = await self._signs.take_notices(jobs)
        status = "failed"
        try:
            handle.progress = Progress(handle, self._poster, self._edit_budget)
            async with anyio.create_task_group() as tg:
                tg.start_soon(handle.progress.run)
                with handle.scope:
                    status = await self._run(jobs, handle)
                if handle.scope.cancelled_caught:
                    status = "cancelled"
                    await self._finish(handle, renderer.describe_run_error(
                        RunCancelledError("cancelled", by=handle.cancelled_by)))
                tg.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True), anyio.move_on_after(3.0):
                self._store.set_request_status(first.channel, list(handle.trigger_ts), "interrupted")
                self._store.finish_run(handle.run_id, "interrupted", error="the bot stopped")
                # in a cluster another node takes the task over (bot.cluster.work hands it back)
                await self._finish(handle, signs.HANDED_ON if self._settings.nats_url else signs.SHUTTING_DOWN)
            raise
        except Exception as exc:
            bound.exception("run.crashed")
            await self._finish(handle, f":x: slackbus hit an internal error ({type(exc).__name__}); see its log.")
        finally:
            self.active.pop(handle.key, None)
        self._store.set_request_status(first.channel, list(handle.trigger_ts), status)
        await self._signs.finished(jobs, status)
        if handle.fetched:  # the answer is out: the heap the files' buffers used goes back to the OS
            trimmed_at = time.monotonic()
            if give_back_memory():
                bound.info("run.memory_trimmed", ms=round((time.monotonic() - trimmed_at) * 1000, 1))
        progress = handle.progress
        shown = progress.first_shown_at if progress else None
        bound.info(
            "run.end",
            status=status,
            total_ms=round((time.monotonic() - jobs[-1].received) * 1000, 1),
            tool_calls=progress.tool_calls if progress else 0,
            status_edits=progress.edits if progress else 0,
            first_event_to_progress_ms=round((shown - handle.first_event_at) * 1000, 1)
            if shown and handle.first_event_at else None,
            first_tool_to_progress_ms=round((shown - progress.first_step_at) * 1000, 1)
            if shown and progress and progress.first_step_at else None,
        )

    async def _finish(self, handle: RunHandle, text: str) -> None:
        await self._deliver(handle, [renderer.render_notice(text)])

    async def _deliver(
        self, handle: RunHandle, messages: list[SlackMessage], attachment: str | None = None, *, answer: bool = False
    ) -> None:
        """The first message replaces the status message (if one is showing); the rest follow it.

        After a long run the answer is posted anew instead (an edit does not notify anyone) and the status
        message says where it is. Delivery goes through the poster's outbox: kept and retried until Slack
        takes it.
        """
        async with handle.lock:
            handle.answered = True
            elapsed = time.monotonic() - handle.started
            replace_ts = handle.status_ts
            if replace_ts is not None and elapsed >= NOTIFY_AFTER_S:
                done = renderer.render_notice(f":white_check_mark: Done after {renderer.duration(elapsed)}; the answer "
                                              "is below.")
                await self._poster.update(handle.channel, replace_ts, done)
                replace_ts = None
                messages = [renderer.mention(m, handle.requester) for m in messages[:1]] + messages[1:]
            if answer and self._settings.transport == "slack" and messages:
                messages = [*messages[:-1], renderer.with_attach_button(messages[-1], handle.channel, handle.thread_ts,
                                                                        worktree=handle.worktree is not None)]
            await self._poster.deliver(handle.channel, handle.thread_ts, messages, replace_ts=replace_ts,
                                       attachment=attachment)

    def over_budget(self, job: Job, now: float | None = None) -> str | None:
        """The sentence refusing a job whose user, channel or the bot is over a spending limit (SLACKBUS_BUDGET_*),
        unless an admin lifted the limits for its thread; None when it may run. Keyed on the job's user and channel:
        a trigger's or a schedule's job is its owner's, in its channel."""
        limits = self._settings.budget
        if not limits or self._store.budget_lifted(job.channel, job.thread_ts):
            return None
        found = budget.over(limits, self._store.spent, job.user, job.channel, time.time() if now is None else now)
        return None if found is None else found.sentence(job.user, job.channel)

    async def _run(self, jobs: list[Job], handle: RunHandle) -> str:
        first, last = jobs[0], jobs[-1]
        # every person in a batch of follow-ups is held to their own limits (the run is recorded as the first's)
        refusal = next((r for r in (self.over_budget(j) for j in {j.user: j for j in jobs}.values()) if r), None)
        if refusal is not None:  # one sentence, and no claude turn
            _run_log(handle).info("run.over_budget", user=first.user)
            await self._finish(handle, refusal)
            return "refused"
        with anyio.move_on_after(5.0):
            await self._backfill.ensure(first.channel)
        row = self._store.get_thread(first.channel, first.thread_ts) or ThreadSession(
            first.channel, first.thread_ts, "", str(self._settings.workdir_for(first.channel)), False, "0", first.user
        )
        label = self._backfill.label(first.channel, first.is_dm)
        await self._resolve_names(first)
        resume_id = row.session_id if row.started and row.session_id else None
        try:
            row = await self._plan(handle, row, first)
        except (OptionsError, WorktreeError) as err:  # one sentence, nothing runs
            self._store.finish_run(handle.run_id, "failed", error=str(err))
            _run_log(handle).info("run.refused_options", error=str(err))
            await self._finish(handle, f":x: {err}")
            return "failed"
        attached = await self._attachments(handle, jobs)
        await self._linked_threads(jobs)
        try:
            try:
                finished, context, session_id = await self._turn(handle, row, resume_id, label, last, attached)
            except SessionNotFoundError:
                if resume_id is None:
                    raise
                # The CLI lost the session (other HOME, files removed): start again with the whole thread.
                _run_log(handle).warning("run.session_missing", session_id=resume_id)
                self._store.finish_run(handle.run_id, "failed", error="session not found")
                handle.run_id += "-new"
                row = replace(row, started=False, session_id="")
                finished, context, session_id = await self._turn(handle, row, None, label, last, attached)
        except RunError as err:
            if isinstance(err, RunCancelledError) and err.by is None:
                err.by = handle.cancelled_by
            self._store.finish_run(handle.run_id, "cancelled" if isinstance(err, RunCancelledError) else "failed",
                                   error=str(err))
            _run_log(handle).warning("run.failed", error=str(err), kind=type(err).__name__)
            await self._finish(handle, renderer.describe_run_error(err))
            return "cancelled" if isinstance(err, RunCancelledError) else "failed"

        # The session exists now (a result came back), even if that result is an error. The bookkeeping must not
        # cost the answer: with the state database unwritable (a full disk) it is logged and the answer still goes.
        try:
            self._store.save_thread(
                replace(row, session_id=finished.session_id or session_id, started=True, last_ts=context.last_ts)
            )
            self._store.finish_run(
                handle.run_id,
                "error" if finished.is_error else "done",
                error=finished.text[:500] if finished.is_error else None,
                num_turns=finished.num_turns,
                cost_usd=finished.cost_usd,
                duration_ms=finished.duration_ms,
                usage=finished.usage,
            )
        except StoreError as exc:
            _run_log(handle).error("run.record_failed", error=str(exc))
        if finished.is_error:
            await self._finish(handle, renderer.describe_result_error(finished))
            return "failed"
        posted_at = time.monotonic()
        messages, attachment = renderer.render_answer_or_file(
            finished.text, renderer.footer(finished, where=handle.where, changes=await self._changes(handle)),
            max_parts=MAX_INLINE_PARTS,
        )
        await self._deliver(handle, messages, attachment, answer=True)
        if self._files_out is not None:
            problems = await self._files_out.send_outbox(handle.channel, handle.thread_ts,
                                                         finished.session_id or session_id)
            if problems:
                await self._poster.post(handle.channel, handle.thread_ts,
                                        renderer.render_notice("\n".join(f":warning: {p}" for p in problems)))
        _run_log(handle).info(
            "run.answered",
            session_id=finished.session_id,
            turns=finished.num_turns,
            post_ms=round((time.monotonic() - posted_at) * 1000, 1),
            since_received_ms=round((time.monotonic() - last.received) * 1000, 1),
            cli_ms=round(handle.cli_s * 1000, 1),  # waiting for the CLI: its start, if this run waited, and the turn
        )
        return "done"

    # --- the thread's repository, branch and model ----------------------------------------------------------
    async def _plan(self, handle: RunHandle, row: ThreadSession, first: Job) -> ThreadSession:
        """A new thread: the options at the start of its request (`[repo=… branch=… model=…]` or `--repo …`)
        over the channel's defaults; when that folder is a git repository, a worktree of its own on a new
        branch. A thread already planned keeps what it has. Raises OptionsError / WorktreeError (a sentence)."""
        planned = self._store.thread_options(handle.channel, handle.thread_ts)
        if planned is None and row.started:  # a session from before options (or handed over): as it is
            planned = ThreadOptions()
        if planned is None:
            trigger = self._store.get_message(first.channel, first.trigger_ts)  # the request that starts it
            options, task = split_options(trigger.text if trigger and not first.rule else "")
            choice = choose(options, self._settings, handle.channel, Path(row.workdir))
            workdir, branch = choice.folder, choice.branch
            worktree = None
            repo = await Worktrees.repo_of(choice.folder) if self._worktrees is not None else None
            if repo is not None and self._worktrees is not None:
                worktree = await self._worktrees.create(repo, thread_ts=handle.thread_ts, task=task,
                                                        base=choice.branch)
                self._store.save_worktree(handle.channel, handle.thread_ts, worktree)
                workdir, branch = worktree.path, worktree.base
                _run_log(handle).info("run.worktree", branch=worktree.branch, path=str(worktree.path))
            elif choice.branch:
                raise OptionsError(f"branch={choice.branch} needs a git repository with worktrees on, and "
                                   f"{choice.folder} is not one (or SLACKBUS_WORKTREES=off).")
            planned = ThreadOptions(repo=choice.repo_name, branch=branch, model=choice.model)
            self._store.save_thread_options(handle.channel, handle.thread_ts, planned)
            row = replace(row, workdir=str(workdir))
            self._store.save_thread(row)
        handle.worktree = self._store.worktree_of(handle.channel, handle.thread_ts)
        handle.where = self._where(planned, handle.worktree)
        return row

    def _where(self, planned: ThreadOptions, worktree: Worktree | None) -> str:
        bits = []
        if worktree is not None:
            bits.append(f"{planned.repo or worktree.repo.name} · branch `{worktree.branch}` from `{worktree.base}`")
        elif planned.repo:
            bits.append(planned.repo)
        if planned.model:
            bits.append(f"model {planned.model}")
        return " · ".join(bits)

    async def _changes(self, handle: RunHandle) -> str:
        """What the run left in its worktree ("3 files changed, +40 −12 on branch …"); "" without one."""
        if handle.worktree is None or self._worktrees is None:
            return ""
        if handle.progress is None or handle.progress.tool_calls == 0:
            return ""  # a turn without tools changed nothing: no git walk on the answer's path
        try:
            with anyio.fail_after(10.0):
                return (await self._worktrees.changes(handle.worktree)).summary()
        except (WorktreeError, TimeoutError) as exc:
            _run_log(handle).warning("run.changes_failed", error=str(exc))
            return ""

    def model_of(self, key: tuple[str, str]) -> str | None:
        planned = self._store.thread_options(*key)
        return planned.model if planned is not None else None

    def forget_warm(self, key: tuple[str, str]) -> None:
        self._sessions.forget_warm(key)

    async def _wait_for_terminal(self, handle: RunHandle, session_id: str, workdir: str) -> None:
        """A session open in a terminal (a hold its hooks took) is not run here at the same time: wait, saying so,
        until the terminal closes it. Its file may then hold turns the warm process here has not seen."""
        held = handoff.holder(str(self._settings.home), session_id)
        if held is not None:
            _run_log(handle).info("run.waiting_for_terminal", session_id=session_id, pid=held.get("pid"))
            await self._poster.post(handle.channel, handle.thread_ts, renderer.render_notice(
                f":pause_button: This session is open in a terminal on my host (`{held.get('cwd')}`). I will continue "
                "here as soon as it is closed there (exit Claude Code in that terminal)."))
            with anyio.fail_after(self._settings.run_timeout):
                while handoff.holder(str(self._settings.home), session_id) is not None:  # noqa: ASYNC110
                    await anyio.sleep(0.5)  # the hold is a file another process removes: nothing to await
        since = self._sessions.warm_since(handle.key)
        if since is not None:
            home = self._store.handoff_home(handle.channel, handle.thread_ts) or handoff.HOME
            try:
                changed = os.stat(handoff.transcript_path(home, workdir, session_id)).st_mtime > since + 0.5
            except OSError:
                changed = False
            if changed or held is not None:
                self._sessions.forget_warm(handle.key)

    async def _attachments(self, handle: RunHandle, jobs: list[Job]) -> Attached:
        """Fetch the files attached to the run's messages into the thread's folder; say in the thread, one sentence
        each, which were left out and why (the run goes on without them)."""
        refs = [FileRef.from_data(d) for j in jobs for d in self._store.files_of(j.channel, j.trigger_ts)]
        if not refs or self._fetcher is None:
            return Attached()
        s = self._settings
        limits = Limits(s.max_attachment_mb * 1024 * 1024, s.attachment_types, s.inline_chars)
        folder = thread_dir(s.home, handle.channel, handle.thread_ts)
        fetched: list[Fetched] = []
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for ref in refs:
                tg.start_soon(self._fetch_one, handle, fetched, ref, folder, limits)
        fetched.sort(key=lambda f: refs.index(f.ref))
        handle.fetched = sum(1 for f in fetched if f.path is not None)
        notes = left_out_notes(fetched)
        if notes:
            await self._poster.post(handle.channel, handle.thread_ts,
                                    renderer.render_notice("\n".join(f":warning: {n}" for n in notes)))
        text, images, by_path = prompt_section(fetched, limits)
        _run_log(handle).info("run.attachments", files=len(refs), fetched=sum(1 for f in fetched if f.path),
                              images=len(images), ms=round((time.monotonic() - started) * 1000, 1))
        return Attached(text, tuple(images), needs_dir=by_path)

    async def _linked_threads(self, jobs: list[Job]) -> None:
        """Messages linked in the run's requests that the bot's record lacks: read once from the transport (the
        context builder then takes them from the record, as data)."""
        for job in jobs:
            m = self._store.get_message(job.channel, job.trigger_ts)
            for channel, ts, root in links_in(m.text if m else ""):
                if self._store.get_message(channel, ts) is None and self._contexts.may_see(job.channel, job.user,
                                                                                             channel):
                    with anyio.move_on_after(5.0):
                        await self._backfill.fetch_thread(channel, root)

    async def _fetch_one(self, handle: RunHandle, out: list[Fetched], ref: FileRef, folder: Path,
                         limits: Limits) -> None:
        assert self._fetcher is not None
        try:
            out.append(await self._fetcher.fetch(ref, folder, limits))
        except Exception as exc:  # a fetcher's bug leaves the file out; it never fails the run
            _run_log(handle).error("run.attachment_failed", file_id=ref.id, error=f"{type(exc).__name__}: {exc}")
            out.append(Fetched(ref, left_out=f"{ref.name} was left out: it could not be fetched "
                                             f"({type(exc).__name__})."))

    async def _turn(
        self, handle: RunHandle, row: ThreadSession, resume_id: str | None, label: str, last: Job,
        attached: Attached | None = None,
    ) -> tuple[Finished, Context, str]:
        attached = attached or Attached()
        context = self._context(row, last, label, resume=resume_id is not None, worktree=handle.worktree)
        if attached.text:
            context = replace(context, prompt=f"{context.prompt}\n\n{attached.text}")
        _run_log(handle).info("run.acquiring", resume=resume_id is not None,
                 since_received_ms=round((time.monotonic() - last.received) * 1000, 1))
        if resume_id is not None:
            await self._wait_for_terminal(handle, resume_id, row.workdir)
        workdir = checked_workdir(self._settings, row.workdir)  # again now: links and SLACKBUS_ROOTS may have changed
        model = self.model_of(handle.key)
        asked = time.monotonic()
        session, origin = await self._sessions.acquire(handle.key, workdir, resume_id,
                                                       pooled=(model is None or model == self._settings.model)
                                                       and not attached.needs_dir)  # a pooled one cannot read them
        handle.session = session
        handle.cli_s += session.start_overlap(asked, time.monotonic())
        self._store.start_run(handle.run_id, handle.channel, handle.thread_ts, session.session_id, handle.requester)
        _run_log(handle).info(
            "run.spawning" if origin == "cold" else "run.reusing",
            session_id=session.session_id,
            origin=origin,
            resume=resume_id is not None,
            context_messages=context.included,
            prompt_chars=len(context.prompt),
            since_received_ms=round((time.monotonic() - last.received) * 1000, 1),
        )

        def on_event(event: RunEvent) -> None:
            if handle.first_event_at is None:
                handle.first_event_at = time.monotonic()
            if handle.progress is not None:
                handle.progress.on_event(event)
            if isinstance(event, ToolCall):
                _run_log(handle).debug("run.tool", tool=event.name)
            elif isinstance(event, SessionStarted) and not row.started:
                # the CLI has the session now: a reply after a crash can resume it
                try:
                    self._store.save_thread(replace(row, session_id=session.session_id, started=True))
                except StoreError as exc:
                    _run_log(handle).error("run.record_failed", error=str(exc))
            elif isinstance(event, Finished):
                _run_log(handle).info(
                    "run.result",
                    is_error=event.is_error,
                    since_received_ms=round((time.monotonic() - last.received) * 1000, 1),
                )

        try:
            finished = await session.turn(
                context.prompt,
                on_event,
                timeout=self._settings.run_timeout,
                stall=self._settings.stall_seconds,
                run_id=handle.run_id,
                where=(handle.channel, handle.thread_ts, handle.requester),
                images=attached.images,
            )
        finally:
            handle.cli_s += session.last_turn_s
            self._sessions.release(handle.key, session)
        return finished, context, session.session_id

    def _context(self, session: ThreadSession, last: Job, label: str, resume: bool,
                 worktree: Worktree | None = None) -> Context:
        stored = self._store.get_message(last.channel, last.trigger_ts)
        request = self.triggers.request_for(last, stored, label, self._contexts, self._backfill.name_of) \
            if last.rule and self.triggers is not None else None
        if resume:
            return self._contexts.for_follow_up(session, last.trigger_ts, label, ask=request)
        trigger = stored or StoredMessage(last.channel, last.trigger_ts, last.thread_ts, last.user, None, "")
        if request is None:
            with contextlib.suppress(OptionsError):  # the options chose the folder; the task goes on without them
                trigger = replace(trigger, text=split_options(trigger.text)[1])
        context = self._contexts.for_new_session(last.channel, last.thread_ts, trigger, label, ask=request)
        if worktree is None:
            return context
        note = (f"You work in a git worktree made for this Slack thread: branch `{worktree.branch}` of "
                f"{worktree.repo.name}, started from `{worktree.base}`. You may commit there; do not switch branches "
                "or touch other worktrees. The people in the thread can see the diff, push the branch and open a "
                "pull request from Slack.")
        return replace(context, prompt=f"{note}\n\n{context.prompt}")

    async def _resolve_names(self, job: Job) -> None:
        users = {m.user for m in self._store.channel_messages(job.channel, job.trigger_ts, 50) if m.user}
        users.update(m.user for m in self._store.thread_messages(job.channel, job.thread_ts) if m.user)
        await self._backfill.resolve(users)


def checked_workdir(settings: Settings, workdir: str | Path) -> Path:
    """The folder a `claude` process may start in, checked at every spawn against the current SLACKBUS_ROOTS
    with symlinks resolved (a folder approved once may since have become a link out of the roots, or the
    roots may have been narrowed); its real path, or a WorkdirError sentence for the thread."""
    real = settings.within_roots(Path(workdir))
    if real is None:  # a thread's own worktree: made by the bot, from a repository under the roots
        resolved = Path(workdir).expanduser().resolve()
        worktrees = (settings.home / WORKTREES_DIR).resolve()
        real = resolved if resolved.is_relative_to(worktrees) and resolved != worktrees else None
    if real is None:
        roots = ", ".join(f"`{r}`" for r in settings.roots)
        raise WorkdirError(
            f"This thread's folder `{workdir}` is outside the folders I may work in (SLACKBUS_ROOTS: {roots}) once "
            "links and `..` are resolved, so nothing was run. Ask an admin to set this channel's folder with "
            "`/claude cwd`, then start a new thread."
        )
    if not real.is_dir():
        raise WorkdirError(f"This thread's folder `{workdir}` does not exist any more, so nothing was run. Ask an "
                           "admin to set this channel's folder with `/claude cwd`, then start a new thread.")
    return real
