"""Builds the services and runs them: one root task group, a transport's events in, its poster out.

`Bot._build` makes every piece, each given what it needs at construction; `Bot._run` starts them in order and
waits. Shutdown (SIGTERM/SIGINT): stop taking events, interrupt running sessions (they post a notice and are
recorded as interrupted), close the warm and pooled ones, exit — all bounded.
"""

from __future__ import annotations

import functools
import os
import pwd
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import anyio

from bot.bridge.blackboard import Blackboard
from bot.bridge.mcp import MCP_SERVER, MCP_TOOLS, mcp_server
from bot.bridge.server import SocketServer
from bot.bridge.shim import install_shim
from bot.cluster import jetstream
from bot.cluster.claims import ScheduleClaims
from bot.cluster.nodes import Nodes
from bot.cluster.outbox import SharedOutbox
from bot.cluster.record import Record
from bot.cluster.threads import Threads
from bot.cluster.work import Work
from bot.config import Settings
from bot.core import renderer
from bot.core.approvals import Approvals
from bot.core.attachments import thread_dir
from bot.core.claude_runner import SessionSpec
from bot.core.commands import Commands
from bot.core.context_builder import SYSTEM_PROMPT_APPEND, ContextBuilder
from bot.core.dispatcher import Dispatcher, Job, JobQueue, too_long
from bot.core.events import IncomingMessage
from bot.core.files_out import FilesOut, forget_empty_outboxes, prepare_outbox
from bot.core.pipeline import TaskPipeline, checked_workdir
from bot.core.poster import Directory, Poster
from bot.core.recovery import recover
from bot.core.schedules import Schedules
from bot.core.sessions import SessionManager
from bot.core.signs import Signs
from bot.core.store import Store, ThreadSession
from bot.core.triggers import Triggers
from bot.core.usage import UsageCommands
from bot.core.worktrees import Worktrees
from bot.errors import StoreError, WorktreeError
from bot.local.events_in import LOCAL_BOT, LocalDirectory, LocalEvents
from bot.local.files import LocalFetcher
from bot.local.poster import LocalPoster
from bot.log import get_logger
from bot.slack import cluster_intake
from bot.slack import events_in as slack_events
from bot.slack.backfill import Backfill
from bot.slack.connection import SocketModeSource, identify
from bot.slack.files import SlackFetcher
from bot.slack.poster import SlackPoster, make_client

log = get_logger("slackbus.app")

WORKTREE_SWEEP_S = 3600.0


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LARGE_BUFFER = 256 * 1024


def return_large_buffers() -> bool:
    """Large short-lived buffers (an attached image, its base64, the stream-json line that carries it) go back to
    the OS when freed. glibc raises its mmap threshold each time such a block is freed, so the next ones come from
    the heap, where they fragment it and stay in the bot's RSS; a fixed threshold keeps them mmapped
    (bench/attachments.py measures what a run with a file keeps). glibc only; False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, LARGE_BUFFER) == 1)
    except (OSError, AttributeError):
        return False


class Source(Protocol):
    """A transport's events in (bot.slack.connection.SocketModeSource, bot.local.events_in.LocalEvents)."""

    async def start(self, tg: anyio.abc.TaskGroup) -> None: ...

    async def close(self) -> None: ...


@dataclass
class Services:
    """Everything `_build` made, for `_run` to start."""

    bot_user_id: str
    poster: Poster
    backfill: Directory
    socket: SocketServer
    sessions: SessionManager
    worktrees: Worktrees | None
    queue: JobQueue
    dispatcher: Dispatcher
    signs: Signs
    source: Source
    cluster: ClusterParts | None = None


@dataclass
class ClusterParts:
    """A node's share of the cluster (SLACKBUS_NATS_URL), started before events come in."""

    link: jetstream.Link
    nodes: Nodes
    threads: Threads
    record: Record
    work: Work
    intake: cluster_intake.SlackIntake
    outbox: SharedOutbox

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        await tg.start(self.record.run)
        await tg.start(self.nodes.run)
        await tg.start(self.outbox.run)
        tg.start_soon(self.threads.mirror)
        await self.intake.serve_control()
        await tg.start(self.work.run)

    async def stop(self) -> None:
        """Shutdown, before the runs are interrupted: they (and what waits here) go to other nodes."""
        self.work.stopping = True

    async def close(self) -> None:
        """After the runs ended: what this node still held goes back, its heartbeat goes, the link closes."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(3.0):
            await self.work.hand_back()
            await self.nodes.leave()
        await self.link.close()


TAKEN_OVER = ":arrows_counterclockwise: The host that was running this thread stopped; resuming it here."


class Bot:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store.open(settings.db_path)
        self.client = make_client(settings.slack_bot_token, settings.slack_api_url)
        self._tg: Any = None
        self.approvals: Approvals | None = None
        self.blackboard: Blackboard | None = None
        self.schedules: Schedules | None = None  # cron routines (bot.core.schedules), started in _run

    def workdir_for(self, channel: str) -> str:
        """An admin's `/claude cwd` for the channel, else the configured map, else SLACKBUS_WORKDIR."""
        return self.store.channel_workdir(channel) or str(self.settings.workdir_for(channel))

    def session_spec(self, cwd: Path, session_id: str, resume: bool, key: tuple[str, str] | None = None) -> SessionSpec:
        s = self.settings
        cwd = checked_workdir(s, cwd)  # every spawn, the pool's included
        env = dict(s.child_env)
        # the session's hooks and `slackbus post` reach the channel through the bot's socket (no token here)
        env.update(SLACKBUS_SPAWNED="1", SLACKBUS_SESSION_ID=session_id, SLACKBUS_HOME=str(s.home))
        env["PATH"] = f"{s.home / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}"
        add_dirs: tuple[Path, ...] = ()
        if not s.run_as:  # files to hand back: the session's outbox (the other user cannot reach SLACKBUS_HOME)
            outbox = prepare_outbox(s.home, session_id)
            env["SLACKBUS_OUTBOX"] = str(outbox)
            add_dirs = (outbox,)
        if key is not None:  # a pooled session learns its thread later, through its session id
            env.update(SLACKBUS_CHANNEL=key[0], SLACKBUS_THREAD_TS=key[1])
            if not s.run_as:  # the thread's attachments
                add_dirs = (*add_dirs, thread_dir(s.home, *key))
            home = self.store.handoff_home(*key)
            if home:  # a session handed over from a terminal lives under that HOME: `--resume` needs it
                env["HOME"] = home
        if s.run_as:  # claude runs as that user, in its HOME (its sessions and login), never the bot's own folders
            user = pwd.getpwnam(s.run_as)
            env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
            for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR"):
                env.pop(name, None)  # the bot user's folders
        allowed = s.allowed_tools
        mcp: dict[str, Any] = {}
        if self.blackboard is not None:
            mcp[MCP_SERVER] = mcp_server(self.blackboard, session_id)
            allowed = (*allowed, MCP_TOOLS)
        return SessionSpec(
            cwd=cwd,
            session_id=session_id,
            resume=resume,
            cli_path=s.claude_cli_path,
            env=env,
            mcp_servers=mcp,
            system_prompt_append=SYSTEM_PROMPT_APPEND,
            model=self._model_for(key),
            allowed_tools=allowed,
            disallowed_tools=s.disallowed_tools,
            max_turns=s.max_turns,
            max_budget_usd=s.max_budget_usd,
            permission_mode=s.permission_mode,
            approvals=self.approvals,
            run_as=s.run_as,
            add_dirs=add_dirs,
            cost_before=self.store.session_cost(session_id) if resume else None,
        )

    def _model_for(self, key: tuple[str, str] | None) -> str | None:
        """The model a thread asked for (`model=…`), else SLACKBUS_MODEL; a pooled process has the default."""
        planned = self.store.thread_options(*key) if key is not None else None
        return (planned.model if planned is not None else None) or self.settings.model

    async def serve(self, *, ready: anyio.Event | None = None, signals: bool = True) -> None:
        """Run until cancelled (or, with signals, until SIGINT/SIGTERM); `slackbus console` handles SIGINT itself."""
        return_large_buffers()
        # one HTTP session for every Web API call: slack_sdk otherwise opens a new connection per call
        # (about 10 ms each on loopback, more to Slack), which is most of the time to the first 👀
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=60), connector=aiohttp.TCPConnector(limit=32, keepalive_timeout=60)
        ) as session:
            self.client.session = session
            try:
                services = await self._build()
                await self._run(services, ready, signals)
            finally:
                self.client.session = None

    # --- building ------------------------------------------------------------------------------------------------
    async def _build(self) -> Services:
        s = self.settings
        local = s.transport == "local"
        poster: Poster
        backfill: Directory
        if local:
            auth: dict[str, Any] = {"user_id": LOCAL_BOT, "bot_id": LOCAL_BOT, "url": ""}
            poster = LocalPoster(str(s.local_dir), self.store, bot_user_id=LOCAL_BOT)
            backfill = LocalDirectory(self.store)
        else:
            auth = await identify(self.client, s.slack_api_url)
            poster = SlackPoster(self.client, self.store, bot_user_id=str(auth["user_id"]),
                                 bot_id=str(auth["bot_id"]) if auth.get("bot_id") else None)
            backfill = Backfill(self.client, self.store, bot_user_id=str(auth["user_id"]),
                                limit=s.context_messages or 1)
        bot_user_id = str(auth["user_id"])
        bot_id = str(auth["bot_id"]) if auth.get("bot_id") else None
        signs = Signs(poster, self._spawn, max_concurrent=s.max_concurrent)
        # buttons need Slack's interactivity; on the local channel the question names the commands that answer it
        self.approvals = Approvals(poster, is_admin=s.is_admin, timeout=s.approval_seconds, buttons=not local)
        contexts = ContextBuilder(self.store, bot_user_id=bot_user_id, max_messages=s.context_messages,
                                  max_chars=s.context_chars, name_of=backfill.name_of, is_allowed=s.is_allowed)
        files_out = FilesOut(s, self.store, poster)
        forget_empty_outboxes(s.home)
        self.blackboard = Blackboard(s, self.store, poster, name_of=backfill.name_of, files_out=files_out)
        install_shim(s.home / "bin")
        # a default folder that is a git repository gives every thread a worktree: the processes wait in spares
        # not with SLACKBUS_RUN_AS (yet): that user cannot reach worktrees under the private SLACKBUS_HOME
        use_worktrees = s.worktrees and not s.run_as
        if s.worktrees and s.run_as:
            log.warning("worktrees.off_with_run_as", run_as=s.run_as,
                        why="the other user cannot reach SLACKBUS_HOME/worktrees; threads work in the channel's folder")
        default_repo = await Worktrees.repo_of(s.workdir) if use_worktrees else None
        sessions = SessionManager(
            self.session_spec,
            max_processes=s.max_processes,
            warm_pool=s.warm_pool,
            warm_pool_max=s.warm_pool_max,
            idle_seconds=s.idle_seconds,
            default_cwd=s.workdir,
            pool_default=default_repo is None,
            park_seconds=s.park_seconds,
        )
        socket = SocketServer(self.blackboard, s, self.store, poster, forget_warm=sessions.forget_warm)
        worktrees = Worktrees(s.home, on_spare=sessions.pool_once) if use_worktrees else None
        pipeline = TaskPipeline(s, self.store, poster, contexts, backfill, sessions, signs, worktrees,
                                fetcher=LocalFetcher() if local else SlackFetcher(self.client), files_out=files_out)
        queue = JobQueue(self._starting(pipeline, signs), s.max_concurrent)

        def on_accepted(job: Job, position: int) -> None:
            if position > 0:
                signs.queued(job, position, behind_own_thread=queue.thread_busy(job.key),
                             still_waiting=functools.partial(queue.is_waiting, job.channel, job.trigger_ts))
            self._spawn(backfill.ensure, job.channel)

        def on_refused(msg: IncomingMessage, why: str) -> None:
            if why == "too_long":
                text = too_long(len(msg.text), s.max_input_chars)
            elif why == "user":
                text = (f"Sorry <@{msg.user}>, you are not on this bot's allow list, so nothing was run. Ask the "
                        f"person who runs slackbus to add your member id ({msg.user}) to SLACKBUS_ALLOWED_USERS.")
            else:
                text = ("I am not enabled in this channel, so nothing was run. Ask the person who runs slackbus to add "
                        f"it ({msg.channel}) to SLACKBUS_ALLOWED_CHANNELS.")
            self._spawn(poster.post_ephemeral, msg.channel, msg.user or "", text, msg.thread_ts)

        def on_unrecorded(msg: IncomingMessage, exc: StoreError) -> None:
            notice = renderer.render_notice(
                ":warning: I could not take this request, so nothing was run: my state database cannot be written "
                "(the disk may be full). Ask the person who runs slackbus to check its log and free space, then "
                "ask again."
            )
            self._spawn(poster.post, msg.channel, msg.reply_target, notice)

        dispatcher = Dispatcher(
            self.store,
            queue,
            bot_user_id=bot_user_id,
            is_allowed=s.is_allowed,
            on_accepted=on_accepted,
            on_refused=on_refused,
            workdir_for=self.workdir_for,
            is_channel_allowed=s.is_channel_allowed,
            on_seen=signs.seen,
            on_unrecorded=on_unrecorded,
            max_input_chars=s.max_input_chars,
        )
        cluster = await self._cluster(bot_user_id, bot_id, dispatcher, queue, pipeline, poster) \
            if s.nats_url and not local else None
        more = UsageCommands(s, self.store).handlers()  # /claude usage, /claude budget (spending limits)
        self.schedules = Schedules(s, self.store)
        more["schedule"] = self.schedules.command
        triggers = Triggers(s.triggers, self.store, cooldown=s.trigger_cooldown, bot_user_id=bot_user_id, bot_id=bot_id,
                            notify=lambda c, t, text: self._spawn(poster.post, c, t, renderer.render_notice(text)),
                            is_admin=s.is_admin, workspace_url=str(auth.get("url") or ""))
        dispatcher.triggers = pipeline.triggers = triggers  # messages that match a rule start runs
        more["triggers"] = triggers.command
        commands = Commands(
            s, self.store, queue, pipeline, poster, dispatcher, signs,
            workspace_url=str(auth.get("url") or ""),
            workdir_for=self.workdir_for,
            spawn=self._spawn,
            approvals=self.approvals,
            worktrees=worktrees,
            cluster_view=cluster.nodes.view if cluster is not None else None,
            more=more,
        )
        self.schedules.start_task = commands.start_task  # a due schedule starts its run as `/claude <task>` does
        if cluster is not None:  # one node runs each due time of a schedule every node has
            self.schedules.claim_elsewhere = ScheduleClaims(cluster.link, s.node_id).take
        source: Source
        if local:
            source = LocalEvents(
                str(s.local_dir), self.store, dispatcher, on_slash=commands.slash, on_reaction=commands.on_reaction,
                ephemeral=poster.post_ephemeral, spawn=self._spawn,
            )
        else:
            events = functools.partial(
                slack_events.register,
                dispatcher=dispatcher,
                store=self.store,
                bot_user_id=bot_user_id,
                bot_id=bot_id,
                on_slash=commands.slash,
                on_reaction=commands.on_reaction,
                on_stop=commands.on_stop_button,
                on_approval=commands.on_approval_button,
                on_attach=commands.on_attach_button,
                on_change=commands.on_change_button,
            )

            def register(app: Any) -> None:
                if cluster is not None:
                    cluster.intake.register(app)  # before everything: stores the event, or hands it to its node
                events(app)

            source = SocketModeSource(self.client, s.slack_app_token, register, ack_after_listeners=cluster is not None)
        return Services(bot_user_id, poster, backfill, socket, sessions, worktrees, queue, dispatcher, signs, source,
                        cluster)

    async def _cluster(self, bot_user_id: str, bot_id: str | None, dispatcher: Dispatcher, queue: JobQueue,
                       pipeline: TaskPipeline, poster: Poster) -> ClusterParts:
        """Join the cluster: the record, who lives, the threads' owners and sessions, the shared work."""
        s = self.settings
        assert s.nats_url is not None
        me = s.node_id
        link = await jetstream.connect(s.nats_url, me, replicas=s.nats_replicas)
        store = self.store

        def report() -> dict[str, Any]:
            return {"running": queue.running, "queued": queue.pending, "max_concurrent": s.max_concurrent,
                    "processes": pipeline.process_counts(),
                    "runs": [{"channel": h.channel, "thread_ts": h.thread_ts, "run_id": h.run_id,
                              "requester": h.requester, "seconds": round(time.monotonic() - h.started)}
                             for h in pipeline.runs()]}

        nodes = Nodes(link, me, report)
        home = Path(s.child_env.get("HOME") or Path.home())
        threads = Threads(link, store, me, home / ".claude" / "projects")
        record = Record(link, me, store, s.home, functools.partial(cluster_intake.apply, store,
                                                                   bot_user_id=bot_user_id, bot_id=bot_id))

        async def accept(job: Job, takeover: bool) -> None:
            await record.wait_message(job.channel, job.trigger_ts)
            try:
                store.claim_request(job.channel, job.trigger_ts, job.thread_ts, job.user, "message")
                if store.get_thread(*job.key) is None:
                    store.save_thread(ThreadSession(job.channel, job.thread_ts, "", self.workdir_for(job.channel),
                                                    False, "0", job.user))
            except StoreError as exc:
                log.error("store.write_failed", what="cluster_task", channel=job.channel, error=str(exc))
            if takeover:
                await poster.post(job.channel, job.thread_ts, renderer.render_notice(TAKEN_OVER))
            dispatcher.submit_here(job, seen=True)

        work = Work(link, nodes, threads, me,
                    capacity=lambda: s.max_concurrent - queue.running - queue.pending,
                    accept=accept, workdir_for=self.workdir_for)
        dispatcher.place = work.place
        queue.on_done = work.done
        outbox = SharedOutbox(link, store, nodes)
        if isinstance(poster, SlackPoster):
            poster.use_outbox(outbox)
        return ClusterParts(link, nodes, threads, record, work,
                            cluster_intake.SlackIntake(link, nodes, threads, work, record, store), outbox)

    # --- running -------------------------------------------------------------------------------------------------
    async def _run(self, sv: Services, ready: anyio.Event | None, signals: bool) -> None:
        s = self.settings
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                await tg.start(sv.socket.serve_socket)
                await tg.start(sv.sessions.run)
                if sv.worktrees is not None:
                    await tg.start(sv.worktrees.run)
                    tg.start_soon(self._sweep_worktrees, sv.worktrees)
                    for folder in {s.workdir, *s.channel_dirs.values()}:  # the first thread need not wait
                        self._spawn(self._prepare_spares, sv.worktrees, folder)
                tg.start_soon(sv.poster.run_outbox)
                sv.queue.attach(tg)
                if signals:
                    tg.start_soon(self._watch_signals, tg.cancel_scope, sv.source, sv.queue, sv.cluster)
                if sv.cluster is not None:  # unfinished work is in JetStream: redelivered, not recovered here
                    await sv.cluster.start(tg)
                else:
                    recover(self.store, sv.dispatcher, sv.signs)
                await sv.source.start(tg)
                if self.schedules is not None:  # after recovery and the queue: a missed time may run at once
                    await tg.start(self.schedules.run)
                log.info(
                    "bot.ready",
                    transport=s.transport,
                    bot_user_id=sv.bot_user_id,
                    max_concurrent=s.max_concurrent,
                    max_processes=s.max_processes,
                    max_processes_why=s.max_processes_why,
                    warm_pool=s.warm_pool,
                    workdir=str(s.workdir),
                    cli=s.claude_cli_path,
                    db=str(s.db_path),
                )
                if ready is not None:
                    ready.set()
                try:
                    self.store.forget_old_events()
                except StoreError as exc:
                    log.error("store.write_failed", what="forget_old_events", error=str(exc))
                await anyio.sleep_forever()
        finally:  # also when start-up fails: an open socket left to the garbage collector spills warnings
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                await sv.source.close()
            if sv.cluster is not None:
                await sv.cluster.close()

    async def _prepare_spares(self, worktrees: Worktrees, folder: Path) -> None:
        repo = await Worktrees.repo_of(folder)
        if repo is not None:
            try:
                await worktrees.prepare(repo)
            except WorktreeError as exc:  # e.g. a repository with no commit yet: threads there will say so
                log.warning("worktrees.spare_failed", repo=str(repo), error=str(exc))

    async def _sweep_worktrees(self, worktrees: Worktrees) -> None:
        """Hourly: worktrees whose thread has been quiet for SLACKBUS_WORKTREE_TTL and that hold no unpushed work
        are removed (unpushed work never is)."""
        while True:
            try:
                by_path = {wt.path: (channel, thread_ts) for channel, thread_ts, wt in self.store.worktrees()}
                idle = functools.partial(self._idle_seconds, by_path)
                for path in await worktrees.sweep(idle, self.settings.worktree_ttl):
                    key = by_path.get(path)
                    if key is not None:
                        self.store.forget_worktree(*key)
            except Exception as exc:  # the next hour tries again; the bot goes on
                log.error("worktrees.sweep_failed", error=f"{type(exc).__name__}: {exc}")
            await anyio.sleep(WORKTREE_SWEEP_S)

    def _idle_seconds(self, by_path: dict[Path, tuple[str, str]], path: Path) -> float | None:
        """How long the thread a worktree belongs to has been quiet (None: unknown, so it is kept)."""
        key = by_path.get(path)
        updated = self.store.thread_updated_at(*key) if key is not None else None
        return None if updated is None else time.time() - updated

    def _spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start a side task (a reaction, a notice, a backfill) in the root task group. Its failure is logged:
        it must not take the bot down, as an exception in the root group would."""

        async def guarded() -> None:
            try:
                await fn(*args)
            except Exception as exc:
                log.error("bot.task_failed", task=getattr(fn, "__qualname__", repr(fn)),
                          error=f"{type(exc).__name__}: {exc}")

        self._tg.start_soon(guarded)

    def _starting(self, pipeline: TaskPipeline, signs: Signs) -> Callable[[list[Job]], Awaitable[None]]:
        async def handle(jobs: list[Job]) -> None:
            signs.starting(jobs)
            await pipeline(jobs)

        return handle

    async def _watch_signals(self, scope: anyio.CancelScope, source: Source, queue: JobQueue,
                             cluster: ClusterParts | None = None) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                started = time.monotonic()
                log.info("bot.stopping", signal=signal.Signals(signum).name, running=queue.running,
                         queued=queue.pending)
                queue.close()
                if cluster is not None:
                    await cluster.stop()
                with anyio.move_on_after(2.0):
                    await source.close()
                log.info("bot.disconnected", ms=round((time.monotonic() - started) * 1000))
                scope.cancel()
                return

    def close(self) -> None:
        self.store.close()
