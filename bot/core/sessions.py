"""Which `claude` process serves a thread: warm sessions, a pool of pre-started ones, and a cap on them all.

- warm: a thread's session stays alive after its turn (SLACKBUS_IDLE_SECONDS), so a follow-up skips the
  CLI's cold start; an idle reaper closes it afterwards.
- pool: SLACKBUS_WARM_POOL pre-started, connected new sessions per working directory, refilled in the
  background, so a mention's first query goes to a process that is already up. When new threads come faster
  than one process can start (a task found no ready process within BURST_GAP_S of the previous new thread),
  the pool grows to SLACKBUS_WARM_POOL_MAX and refills in parallel; after SLACKBUS_IDLE_SECONDS without new
  threads coming that close together it shrinks back, closing the extra idle processes.
- cap: pool + warm + running ≤ SLACKBUS_MAX_PROCESSES. A new process first evicts an idle pooled or warm one
  (least recently used); pool refills only use free room.
"""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from bot.core.claude_runner import CONNECT_TIMEOUT_S, ClaudeSession, SessionSpec
from bot.errors import RunError
from bot.log import get_logger

log = get_logger("slackbus.sessions")

ThreadKey = tuple[str, str]
BURST_GAP_S = 5.0  # a task that finds no ready process this soon after the previous new thread grows the pool


class SessionManager:
    def __init__(
        self,
        make_spec: Callable[[Path, str, bool, ThreadKey | None], SessionSpec],
        *,
        max_processes: int,
        warm_pool: int,
        idle_seconds: float,
        default_cwd: Path,
        warm_pool_max: int | None = None,
        pool_default: bool = True,
        park_seconds: float = 0.0,
    ) -> None:
        self.park_seconds = park_seconds  # an idle process is stopped (SIGSTOP) after this long; 0: never
        self._pool_default = pool_default  # False: threads there get worktrees, whose spares have the processes
        self._make_spec = make_spec
        self.max_processes = max_processes
        self.warm_pool = warm_pool
        self.warm_pool_max = max(warm_pool, warm_pool if warm_pool_max is None else warm_pool_max)
        self.idle_seconds = idle_seconds
        self.default_cwd = default_cwd
        self._warm: dict[ThreadKey, ClaudeSession] = {}
        self._pool: dict[Path, list[ClaudeSession]] = {}
        self._live: set[ClaudeSession] = set()
        self._starting: dict[Path, list[ClaudeSession]] = {}  # pool processes being started, per cwd
        self._target: dict[Path, int] = {}  # the pool's size per cwd, between warm_pool and warm_pool_max
        self._last_new: dict[Path, float] = {}  # when a task last asked for a new session there
        self._last_rush: dict[Path, float] = {}  # when a task last came within BURST_GAP_S of the previous
        self._tg: TaskGroup | None = None
        self._once: set[Path] = set()  # spare worktrees: one pre-started process each, for the thread claiming it
        self._room = anyio.Lock()
        self.peak_live = 0

    # --- lifecycle ----------------------------------------------------------------------------------
    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._reaper)
            if self._pool_default:
                self.refill(self.default_cwd)
            else:
                self._target[self.default_cwd] = 0
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await self.close_all()
                tg.cancel_scope.cancel()

    async def close_all(self) -> None:
        """Abort busy sessions and close idle ones, all at once; bounded by the sessions' own bounds."""
        sessions = list(self._live)
        self._warm.clear()
        self._pool.clear()
        if not sessions:
            return
        async with anyio.create_task_group() as tg:
            for s in sessions:
                tg.start_soon(s.close)

    # --- numbers for status and benchmarks ---------------------------------------------------------------
    @property
    def live(self) -> int:
        self._live = {s for s in self._live if s.state != "closed"}
        return len(self._live)

    def pids(self) -> list[int]:
        return [s.pid for s in self._live if s.pid and s.state != "closed"]

    def counts(self) -> dict[str, int]:
        pooled = sum(1 for v in self._pool.values() for s in v if s.alive)
        busy = sum(1 for s in self._live if s.state == "busy")
        warm = sum(1 for s in self._warm.values() if s.alive and s.state == "idle")
        return {"live": self.live, "pool": pooled, "warm": warm, "busy": busy}

    # --- acquire / release ------------------------------------------------------------------------------
    async def acquire(
        self, key: ThreadKey, cwd: Path, resume_id: str | None, *, pooled: bool = True
    ) -> tuple[ClaudeSession, str]:
        """A session for this thread: its warm one, a pooled one (new sessions; not when `pooled` is False: the
        thread wants a model of its own), or a new process.

        Returns the session and where it came from ("warm", "pool" or "cold").
        """
        warm = self._warm.pop(key, None)
        if warm is not None:
            if warm.alive and warm.state == "idle" and warm.session_id == resume_id:
                return warm, "warm"
            await warm.close()
        if resume_id is None and not pooled and cwd in self._once:  # another model: the process waiting is no use
            self._once.discard(cwd)
            self._target[cwd] = 0
            for idle in self._pool.pop(cwd, []):
                self._spawn(idle.close)
        if resume_id is None and pooled and cwd in self._once:  # a spare worktree a thread has just claimed
            self._once.discard(cwd)
            self._target[cwd] = 0  # the folder is the thread's now: nothing more is pre-started in it
            ready = self._take_pooled(cwd)
            if ready is not None:
                return ready, "pool"
            starting = next((s for s in self._starting.get(cwd, []) if s.claim()), None)
            if starting is not None:
                with anyio.move_on_after(CONNECT_TIMEOUT_S):
                    await starting.ready.wait()
                if starting.alive and starting.state == "idle":
                    return starting, "pool"
        elif resume_id is None and pooled:
            ready = self._take_pooled(cwd)
            self._note_demand(cwd, missed=ready is None)
            if ready is not None:
                self.refill(cwd)
                return ready, "pool"
            # a pool process already starting is closer to ready than a new one (and two cold starts at
            # once slow each other down)
            starting = next((s for s in self._starting.get(cwd, []) if s.claim()), None)
            if starting is not None:
                if self.pool_target(cwd) > self.warm_pool:  # a burst: the next one starts now, in parallel
                    self.refill(cwd)
                with anyio.move_on_after(CONNECT_TIMEOUT_S):
                    await starting.ready.wait()
                self.refill(cwd)
                if starting.alive and starting.state == "idle":
                    return starting, "pool"
            elif self.warm_pool == 0 and self.pool_target(cwd) > 0:  # a rush with no standing pool: this task
                self.refill(cwd)  # starts its own process, the pool one for the next
        session = ClaudeSession(self._make_spec(cwd, resume_id or str(uuid.uuid4()), resume_id is not None, key))
        await self._start(session)
        return session, "cold"

    def release(self, key: ThreadKey, session: ClaudeSession) -> None:
        """After a turn: keep a healthy session warm for the thread, close anything else."""
        if session.alive and self.idle_seconds > 0:
            previous = self._warm.get(key)
            if previous is not None and previous is not session:
                self._spawn(previous.close)
            self._warm[key] = session
        elif session.state != "closed":
            self._spawn(session.close)

    def forget_warm(self, key: ThreadKey) -> None:
        """Close a thread's warm process: its session was continued elsewhere (a terminal), so what that
        process holds in memory is stale; the next turn resumes from the session's file."""
        warm = self._warm.pop(key, None)
        if warm is not None:
            self._spawn(warm.close)

    def warm_since(self, key: ThreadKey) -> float | None:
        """Wall-clock time of the warm process's last turn, if the thread has one."""
        warm = self._warm.get(key)
        return None if warm is None else time.time() - (time.monotonic() - warm.last_used)

    def cwd_of(self, session_id: str) -> Path | None:
        for s in self._live:
            if s.session_id == session_id:
                return s.spec.cwd
        return None

    def warm_session(self, key: ThreadKey) -> ClaudeSession | None:
        return self._warm.get(key)

    # --- internals -----------------------------------------------------------------------------------------
    def _spawn(self, fn: Callable[[], object]) -> None:
        """Run in the background; during shutdown the task group is gone and close_all does the closing."""
        if self._tg is None:
            return
        try:
            self._tg.start_soon(fn)  # type: ignore[arg-type]
        except RuntimeError:
            log.debug("sessions.spawn_after_shutdown")

    def _take_pooled(self, cwd: Path) -> ClaudeSession | None:
        pool = self._pool.get(cwd, [])
        while pool:
            session = pool.pop(0)
            if session.alive and session.state == "idle":
                return session
            self._spawn(session.close)
        return None

    async def _start(self, session: ClaudeSession, *, for_pool: bool = False, evict: bool = True) -> bool:
        """Start and connect a process, closing an idle one first if the cap is reached.

        A task may close a pooled or a warm session (pool first); a pool refill only the least recently
        used warm one, so a busy bot keeps its pool instead of filling the cap with old threads; a pool
        process beyond SLACKBUS_WARM_POOL (a burst) closes nothing (evict=False).
        """
        assert self._tg is not None, "SessionManager.run must be running"
        async with self._room:  # making room and taking the slot are one step
            if not evict and self.live >= self.max_processes:
                return False
            if not await self._make_room(warm_only=for_pool):
                return False
            self._live.add(session)
        self.peak_live = max(self.peak_live, self.live)
        try:
            await self._tg.start(session.serve)
        except RunError:
            self._live.discard(session)
            raise
        return True

    async def _make_room(self, *, warm_only: bool = False) -> bool:
        """Close idle sessions until one more process fits under the cap; False if none can go."""
        while self.live >= self.max_processes:
            victim = self._pick_victim(warm_only)
            if victim is None:
                if not warm_only:
                    log.warning("sessions.over_cap", live=self.live, cap=self.max_processes)
                return not warm_only
            await victim.close()
            self._live.discard(victim)
        return True

    def _pick_victim(self, warm_only: bool) -> ClaudeSession | None:
        for cwd, pool in self._pool.items():
            if pool and not warm_only:
                victim = pool.pop(0)
                log.info("sessions.evict", kind="pool", cwd=str(cwd))
                return victim
        idle = [(s.last_used, key) for key, s in self._warm.items() if s.state == "idle"]
        if idle:
            _, key = min(idle)
            log.info("sessions.evict", kind="warm", channel=key[0], thread_ts=key[1])
            return self._warm.pop(key)
        return None

    def pool_once(self, cwd: Path) -> None:
        """Pre-start one process in `cwd`, a spare worktree, for the new thread that will claim it (bot.core.worktrees):
        never more than one there, and none once it is taken. Not with SLACKBUS_WARM_POOL=0."""
        if self.warm_pool <= 0 or cwd in self._once:
            return
        self._once.add(cwd)
        self._target[cwd] = 1
        self.refill(cwd)

    def pool_target(self, cwd: Path) -> int:
        return self._target.get(cwd, self.warm_pool)

    def _note_demand(self, cwd: Path, *, missed: bool) -> None:
        """A task wants a new session in cwd. Within BURST_GAP_S of the previous one that is a rush, which keeps
        a grown pool from shrinking; a rush that finds no ready process grows the pool."""
        now = time.monotonic()
        previous = self._last_new.get(cwd)
        self._last_new[cwd] = now
        if previous is None or now - previous > BURST_GAP_S:
            return
        self._last_rush[cwd] = now
        target = self.pool_target(cwd)
        if missed and target < self.warm_pool_max:
            self._target[cwd] = target + 1
            log.info("sessions.pool_grow", cwd=str(cwd), size=target + 1)

    def refill(self, cwd: Path) -> None:
        """Start, in parallel, as many pool processes as the pool lacks (counting those on their way)."""
        if self.warm_pool_max <= 0 or self._tg is None:
            return
        pooled = sum(1 for s in self._pool.get(cwd, []) if s.alive)
        starting = self._starting.setdefault(cwd, [])
        have = pooled + sum(1 for s in starting if not s.claimed)
        for n in range(have, self.pool_target(cwd)):
            try:
                spec = self._make_spec(cwd, str(uuid.uuid4()), False, None)
            except RunError as err:  # the folder no longer passes SLACKBUS_ROOTS: no pool there
                log.warning("sessions.pool_start_failed", cwd=str(cwd), error=str(err))
                return
            session = ClaudeSession(spec)
            starting.append(session)  # counted from now on, so a second refill does not start it twice
            self._spawn(functools.partial(self._start_pooled, cwd, session, n < self.warm_pool))

    async def _start_pooled(self, cwd: Path, session: ClaudeSession, evict: bool) -> None:
        try:
            started = await self._start(session, for_pool=True, evict=evict)
        except RunError as err:
            log.warning("sessions.pool_start_failed", cwd=str(cwd), error=str(err))
            session.never_started()
            return
        finally:
            with contextlib.suppress(ValueError):
                self._starting.get(cwd, []).remove(session)
        if not started:  # no room under the cap: a task waiting for this one starts its own
            session.never_started()
            return
        if session.claimed:  # a task took it while it was starting
            return
        pool = self._pool.setdefault(cwd, [])
        if sum(1 for s in pool if s.alive) >= self.pool_target(cwd):  # the pool shrank while it started
            self._spawn(session.close)
            return
        pool.append(session)
        log.info("sessions.pooled", cwd=str(cwd), session_id=session.session_id, pid=session.pid)

    def _shrink_pools(self, now: float) -> None:
        """Back to SLACKBUS_WARM_POOL where new threads have not come in a rush for SLACKBUS_IDLE_SECONDS."""
        for cwd, target in list(self._target.items()):
            if target <= self.warm_pool or now - self._last_rush.get(cwd, 0.0) < self.idle_seconds:
                continue
            self._target[cwd] = self.warm_pool
            pool = self._pool.get(cwd, [])
            while len(pool) > self.warm_pool:
                extra = pool.pop()
                self._spawn(extra.close)
            log.info("sessions.pool_shrink", cwd=str(cwd), size=self.warm_pool)

    def _park_idle(self, now: float) -> None:
        """Warm and pooled processes idle for SLACKBUS_PARK_SECONDS are stopped: parked, they use no CPU."""
        if self.park_seconds <= 0:
            return
        idle = [*self._warm.values(), *(s for pool in self._pool.values() for s in pool)]
        for session in idle:
            if session.alive and not session.parked and now - session.last_used >= self.park_seconds \
                    and session.park():
                log.info("sessions.parked", session_id=session.session_id, pid=session.pid)

    async def _reaper(self) -> None:
        interval = max(0.2, min(5.0, self.idle_seconds / 4 if self.idle_seconds > 0 else 5.0))
        if self.park_seconds > 0:
            interval = max(0.1, min(interval, self.park_seconds / 2))
        while True:
            await anyio.sleep(interval)
            now = time.monotonic()
            self._shrink_pools(now)
            self._park_idle(now)
            for key, session in list(self._warm.items()):
                if session.state == "idle" and now - session.last_used >= self.idle_seconds:
                    self._warm.pop(key, None)
                    log.info("sessions.reaped_idle", channel=key[0], thread_ts=key[1], session_id=session.session_id)
                    self._spawn(session.close)
                elif not session.alive and session.state != "busy":
                    self._warm.pop(key, None)
