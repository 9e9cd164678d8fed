"""Wires the pieces together and runs the bot: one root task group, Socket Mode in, Web API out.

Shutdown (SIGTERM/SIGINT): stop taking events, interrupt running sessions (they post a notice and are
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
from pathlib import Path
from typing import Any

import aiohttp
import anyio
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError

from bot import renderer, slack_events
from bot.approvals import Approvals
from bot.backfill import Backfill
from bot.blackboard import MCP_SERVER, MCP_TOOLS, Blackboard
from bot.claude_runner import SessionSpec
from bot.commands import Commands
from bot.config import Settings
from bot.context_builder import SYSTEM_PROMPT_APPEND, ContextBuilder
from bot.dispatcher import Dispatcher, IncomingMessage, Job, JobQueue, too_long
from bot.errors import ConfigError, StoreError, WorktreeError
from bot.local_events import LOCAL_BOT, LocalDirectory, LocalEvents
from bot.local_poster import LocalPoster
from bot.log import get_logger
from bot.pipeline import WORKING, TaskPipeline, checked_workdir
from bot.poster import Directory, Poster
from bot.sessions import SessionManager
from bot.slack_poster import SlackPoster, make_client
from bot.store import Store
from bot.worktrees import Worktrees

log = get_logger("slackbus.app")

QUEUED = "hourglass_flowing_sand"
CONNECT_TIMEOUT_S = 30.0
# Socket Mode keep-alive. slack_bolt's default ping every 10 s (aiohttp then waits 5 s for the pong) left a
# dead link unnoticed for ~18 s; at 5 s the heartbeat closes it within ~7.5 s.
SOCKET_PING_S = 5.0
# slack_sdk looks at a closed socket only at its next ping; the bot looks every SOCKET_CHECK_S and reconnects.
SOCKET_CHECK_S = 0.5
WORKTREE_SWEEP_S = 3600.0


class Bot:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store.open(settings.db_path)
        self.client = make_client(settings.slack_bot_token, settings.slack_api_url)
        self._tg: Any = None
        self._follow_up_waiting: set[tuple[str, str]] = set()  # (channel, ts) showing the ⏳ reaction
        self.approvals: Approvals | None = None
        self.blackboard: Blackboard | None = None

    async def _identify(self) -> dict[str, Any]:
        try:
            with anyio.fail_after(CONNECT_TIMEOUT_S):
                auth = await self.client.auth_test()
        except SlackApiError as exc:
            error = exc.response.get("error")
            if error in {"invalid_auth", "not_authed", "token_revoked", "account_inactive"}:
                raise ConfigError(
                    f"Slack refused SLACK_BOT_TOKEN ({error}): copy the Bot User OAuth Token (xoxb-…) again from "
                    "the app's OAuth & Permissions page, and reinstall the app if it was revoked."
                ) from None
            raise ConfigError(f"Slack's auth.test failed ({error}); check SLACK_API_URL and the token.") from None
        except (TimeoutError, OSError) as exc:
            raise ConfigError(
                f"Slack's Web API at {self.settings.slack_api_url} cannot be reached ({type(exc).__name__}): "
                "check the network or SLACK_API_URL."
            ) from None
        data = auth.data
        return data if isinstance(data, dict) else {}

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
        if key is not None:  # a pooled session learns its thread later, through its session id
            env.update(SLACKBUS_CHANNEL=key[0], SLACKBUS_THREAD_TS=key[1])
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
            mcp[MCP_SERVER] = self.blackboard.mcp_server(session_id)
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
        )

    def _model_for(self, key: tuple[str, str] | None) -> str | None:
        """The model a thread asked for (`model=…`), else SLACKBUS_MODEL; a pooled process has the default."""
        planned = self.store.thread_options(*key) if key is not None else None
        return (planned.model if planned is not None else None) or self.settings.model

    async def serve(self, *, ready: anyio.Event | None = None, signals: bool = True) -> None:
        """Run until cancelled (or, with signals, until SIGINT/SIGTERM); `slackbus console` handles SIGINT itself."""
        # one HTTP session for every Web API call: slack_sdk otherwise opens a new connection per call
        # (about 10 ms each on loopback, more to Slack), which is most of the time to the first 👀
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=60), connector=aiohttp.TCPConnector(limit=32, keepalive_timeout=60)
        ) as session:
            self.client.session = session
            try:
                await self._serve(ready, signals)
            finally:
                self.client.session = None

    async def _serve(self, ready: anyio.Event | None, signals: bool = True) -> None:
        s = self.settings
        local = s.transport == "local"
        poster: Poster
        backfill: Directory
        if local:
            auth: dict[str, Any] = {"user_id": LOCAL_BOT, "bot_id": LOCAL_BOT, "url": ""}
            bot_user_id = LOCAL_BOT
            bot_id: str | None = LOCAL_BOT
            poster = LocalPoster(str(s.local_dir), self.store, bot_user_id=bot_user_id)
            backfill = LocalDirectory(self.store)
        else:
            auth = await self._identify()
            bot_user_id = str(auth["user_id"])
            bot_id = str(auth["bot_id"]) if auth.get("bot_id") else None
            poster = SlackPoster(self.client, self.store, bot_user_id=bot_user_id, bot_id=bot_id)
            backfill = Backfill(self.client, self.store, bot_user_id=bot_user_id, limit=s.context_messages or 1)
        # buttons need Slack's interactivity; on the local channel the question names the commands that answer it
        self.approvals = Approvals(
            post=lambda channel, thread_ts, message: poster.post(channel, thread_ts, message),
            update=poster.update,
            is_admin=s.is_admin,
            timeout=s.approval_seconds,
            buttons=not local,
        )
        contexts = ContextBuilder(
            self.store,
            bot_user_id=bot_user_id,
            max_messages=s.context_messages,
            max_chars=s.context_chars,
            name_of=backfill.name_of,
            is_allowed=s.is_allowed,
        )
        self.blackboard = blackboard = Blackboard(
            s, self.store, poster, name_of=backfill.name_of, cwd_of=lambda sid: sessions.cwd_of(sid)
        )
        blackboard.forget_warm = lambda key: sessions.forget_warm(key)
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
        worktrees = Worktrees(s.home, on_spare=sessions.pool_once) if use_worktrees else None
        pipeline = TaskPipeline(s, self.store, poster, contexts, backfill, sessions, worktrees)
        queue = JobQueue(self._starting(pipeline, poster), s.max_concurrent)

        def on_seen(job: Job) -> None:
            self._spawn(self._first_sign, poster, job)

        def on_accepted(job: Job, position: int) -> None:
            if position > 0:
                behind_own_thread = queue.thread_busy(job.key)
                self._spawn(self._queued_sign, poster, pipeline, queue, job, position, behind_own_thread)
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
            on_seen=on_seen,
            on_unrecorded=on_unrecorded,
            max_input_chars=s.max_input_chars,
        )
        commands = Commands(
            s, self.store, queue, pipeline, poster, dispatcher,
            workspace_url=str(auth.get("url") or ""),
            workdir_for=self.workdir_for,
            spawn=self._spawn,
            approvals=self.approvals,
            worktrees=worktrees,
        )
        close_source: Any
        if local:
            events = LocalEvents(
                str(s.local_dir), self.store, dispatcher, on_slash=commands.slash, on_reaction=commands.on_reaction,
                ephemeral=poster.post_ephemeral, spawn=self._spawn,
            )

            async def close_source() -> None:
                return None
        else:
            app = AsyncApp(client=self.client, process_before_response=False, ignoring_self_events_enabled=False)
            slack_events.register(
                app,
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
            handler = AsyncSocketModeHandler(app, s.slack_app_token, ping_interval=SOCKET_PING_S)
            close_source = handler.close_async

        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                await tg.start(blackboard.serve_socket)
                await tg.start(sessions.run)
                if worktrees is not None:
                    await tg.start(worktrees.run)
                    tg.start_soon(self._sweep_worktrees, worktrees)
                    for folder in {s.workdir, *s.channel_dirs.values()}:  # the first thread need not wait
                        self._spawn(self._prepare_spares, worktrees, folder)
                tg.start_soon(poster.run_outbox)
                queue.attach(tg)
                if signals:
                    tg.start_soon(self._watch_signals, tg.cancel_scope, close_source, queue)
                self._recover(dispatcher, poster)
                if local:
                    await tg.start(events.run)
                else:
                    await self._connect(handler)
                    tg.start_soon(self._watch_socket, handler)
                log.info(
                    "bot.ready",
                    transport=s.transport,
                    bot_user_id=bot_user_id,
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
                await close_source()

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

    async def _watch_socket(self, handler: AsyncSocketModeHandler) -> None:
        """Reconnect as soon as the Socket Mode link is closed (by Slack, by the network, or by the heartbeat
        that found it dead), instead of at slack_sdk's next ping; log every link change."""
        client = handler.client
        session = client.current_session
        lost_at: float | None = None
        pause = SOCKET_CHECK_S
        while not client.closed:
            await anyio.sleep(pause)
            pause = SOCKET_CHECK_S
            current = client.current_session
            if current is not session and current is not None and not current.closed:
                gap_ms = None if lost_at is None else round((time.monotonic() - lost_at) * 1000)
                log.info("slack.reconnected", ms=gap_ms)
                session, lost_at = current, None
            elif current is not None and current.closed and not client.closed:
                if lost_at is None:
                    lost_at = time.monotonic()
                    log.warning("slack.socket_lost")
                try:
                    await client.connect_to_new_endpoint()
                except Exception as exc:  # e.g. apps.connections.open refused: try again, not in a tight loop
                    log.warning("slack.reconnect_failed", error=f"{type(exc).__name__}: {exc}")
                    pause = min(max(2.0, (time.monotonic() - lost_at) / 2), 30.0)

    def _starting(self, pipeline: TaskPipeline, poster: Poster) -> Any:
        async def handle(jobs: list[Job]) -> None:
            for job in jobs:
                key = (job.channel, job.trigger_ts)
                if key in self._follow_up_waiting:
                    self._follow_up_waiting.discard(key)
                    self._spawn(poster.unreact, job.channel, job.trigger_ts, QUEUED)
            await pipeline(jobs)

        return handle

    async def _first_sign(self, poster: Poster, job: Job) -> None:
        await poster.react(job.channel, job.trigger_ts, WORKING)
        log.info(
            "run.first_sign",
            channel=job.channel,
            ts=job.trigger_ts,
            ms=round((time.monotonic() - job.received) * 1000, 2),
        )

    async def _queued_sign(
        self, poster: Poster, pipeline: TaskPipeline, queue: JobQueue, job: Job, position: int,
        behind_own_thread: bool,
    ) -> None:
        if behind_own_thread:
            # a follow-up while its thread's run is going: answered right after it
            self._follow_up_waiting.add((job.channel, job.trigger_ts))
            await poster.react(job.channel, job.trigger_ts, QUEUED)
            if not queue.is_waiting(job.channel, job.trigger_ts):
                self._follow_up_waiting.discard((job.channel, job.trigger_ts))
                await poster.unreact(job.channel, job.trigger_ts, QUEUED)
            return
        notice = renderer.render_notice(
            f":hourglass_flowing_sand: Queued, position {position}: {self.settings.max_concurrent} "
            f"{'task is' if self.settings.max_concurrent == 1 else 'tasks are'} running. "
            "I'll start as soon as one finishes."
        )
        ts = await poster.post(job.channel, job.thread_ts, notice)
        if queue.is_waiting(job.channel, job.trigger_ts):
            pipeline.queued_notices[(job.channel, job.trigger_ts)] = ts
        else:  # it started while the notice was being posted
            await poster.update(job.channel, ts, renderer.render_notice(":arrow_forward: Started."))

    def _recover(self, dispatcher: Dispatcher, poster: Poster) -> None:
        """After a restart: runs cut off are recorded as interrupted and their threads told; queued tasks run."""
        told: set[tuple[str, str]] = set()
        for run_id, channel, thread_ts in self.store.interrupted_runs():
            self.store.finish_run(run_id, "interrupted", error="the bot stopped during the run")
            if (channel, thread_ts) not in told:
                told.add((channel, thread_ts))
                self._spawn(
                    poster.post,
                    channel,
                    thread_ts,
                    renderer.render_notice(
                        ":warning: slackbus restarted while working on this, so the run stopped. Reply here to "
                        "continue."
                    ),
                )
        for req in self.store.unfinished_requests():
            if req.status == "running":
                self.store.set_request_status(req.channel, [req.ts], "interrupted")
                self._spawn(poster.unreact, req.channel, req.ts, WORKING)
                continue
            thread = self.store.get_thread(req.channel, req.thread_ts)
            log.info("bot.requeue", channel=req.channel, ts=req.ts)
            dispatcher.submit(
                Job(
                    channel=req.channel,
                    thread_ts=req.thread_ts,
                    trigger_ts=req.ts,
                    user=req.user,
                    new_session=thread is None or not thread.started,
                    received=time.monotonic(),
                    is_dm=req.channel.startswith("D"),
                )
            )

    async def _connect(self, handler: AsyncSocketModeHandler) -> None:
        try:
            with anyio.fail_after(CONNECT_TIMEOUT_S):
                await handler.connect_async()  # type: ignore[no-untyped-call]
        except SlackApiError as exc:
            error = exc.response.get("error")
            raise ConfigError(
                f"Slack refused SLACK_APP_TOKEN for Socket Mode ({error}): create an app-level token with the "
                "connections:write scope (Basic Information → App-Level Tokens) and enable Socket Mode."
            ) from None

    async def _watch_signals(self, scope: anyio.CancelScope, close_source: Any, queue: JobQueue) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                started = time.monotonic()
                log.info("bot.stopping", signal=signal.Signals(signum).name, running=queue.running,
                         queued=queue.pending)
                queue.close()
                with anyio.move_on_after(2.0):
                    await close_source()
                log.info("bot.disconnected", ms=round((time.monotonic() - started) * 1000))
                scope.cancel()
                return

    def close(self) -> None:
        self.store.close()


def install_shim(bin_dir: Path) -> None:
    """SLACKBUS_HOME/bin/slackbus, first on the PATH of the sessions the bot spawns, so their Bash tool and
    hooks find this slackbus without the bot's virtualenv (and its `python`) on their PATH."""
    from bot.cli import slackbus_argv

    argv = slackbus_argv()
    target = bin_dir / "slackbus"
    try:
        bin_dir.mkdir(parents=True, exist_ok=True)
        body = "#!/bin/sh\nexec " + " ".join(f"'{a}'" for a in argv) + ' "$@"\n'
        if not target.is_file() or target.read_text() != body:
            tmp = bin_dir / f".slackbus.{os.getpid()}"
            tmp.write_text(body)
            tmp.chmod(0o755)
            os.replace(tmp, target)
    except OSError as exc:
        log.warning("bot.shim_failed", path=str(target), error=str(exc), python=sys.executable)
