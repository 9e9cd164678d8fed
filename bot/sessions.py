"""Which `claude` process serves a thread: warm sessions, a pool of pre-started ones, and a cap on them all.

- warm: a thread's session stays alive after its turn (SLACKBUS_IDLE_SECONDS), so a follow-up skips the
  CLI's cold start; an idle reaper closes it afterwards.
- pool: SLACKBUS_WARM_POOL pre-started, connected new sessions per working directory, refilled in the
  background, so a mention's first query goes to a process that is already up.
- cap: pool + warm + running ≤ SLACKBUS_MAX_PROCESSES. A new process first evicts an idle pooled or warm one
  (least recently used); pool refills only use free room.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from bot.claude_runner import CONNECT_TIMEOUT_S, ClaudeSession, SessionSpec
from bot.errors import RunError
from bot.log import get_logger

log = get_logger("slackbus.sessions")

ThreadKey = tuple[str, str]


class SessionManager:
    def __init__(
        self,
        make_spec: Callable[[Path, str, bool, ThreadKey | None], SessionSpec],
        *,
        max_processes: int,
        warm_pool: int,
        idle_seconds: float,
        default_cwd: Path,
    ) -> None:
        self._make_spec = make_spec
        self.max_processes = max_processes
        self.warm_pool = warm_pool
        self.idle_seconds = idle_seconds
        self.default_cwd = default_cwd
        self._warm: dict[ThreadKey, ClaudeSession] = {}
        self._pool: dict[Path, list[ClaudeSession]] = {}
        self._live: set[ClaudeSession] = set()
        self._filling: set[Path] = set()
        self._starting: dict[Path, ClaudeSession] = {}  # a pool process being started, per cwd
        self._tg: TaskGroup | None = None
        self._room = anyio.Lock()
        self.peak_live = 0

    # --- lifecycle ----------------------------------------------------------------------------------
    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._reaper)
            self.refill(self.default_cwd)
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
        pooled = sum(len(v) for v in self._pool.values())
        busy = sum(1 for s in self._live if s.state == "busy")
        return {"live": self.live, "pool": pooled, "warm": len(self._warm), "busy": busy}

    # --- acquire / release ------------------------------------------------------------------------------
    async def acquire(self, key: ThreadKey, cwd: Path, resume_id: str | None) -> tuple[ClaudeSession, str]:
        """A session for this thread: its warm one, a pooled one (new sessions), or a new process.

        Returns the session and where it came from ("warm", "pool" or "cold").
        """
        warm = self._warm.pop(key, None)
        if warm is not None:
            if warm.alive and warm.state == "idle" and warm.session_id == resume_id:
                return warm, "warm"
            await warm.close()
        if resume_id is None:
            pooled = self._take_pooled(cwd)
            if pooled is not None:
                self.refill(cwd)
                return pooled, "pool"
            # a pool process already starting is closer to ready than a new one (and two cold starts at
            # once slow each other down)
            starting = self._starting.get(cwd)
            if starting is not None and not starting.claimed:
                starting.claimed = True
                with anyio.move_on_after(CONNECT_TIMEOUT_S):
                    await starting.ready.wait()
                if starting.alive and starting.state == "idle":
                    self.refill(cwd)
                    return starting, "pool"
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

    async def _start(self, session: ClaudeSession, *, for_pool: bool = False) -> bool:
        """Start and connect a process, closing an idle one first if the cap is reached.

        A task may close a pooled or a warm session (pool first); a pool refill only the least recently
        used warm one, so a busy bot keeps its pool instead of filling the cap with old threads.
        """
        assert self._tg is not None, "SessionManager.run must be running"
        async with self._room:  # making room and taking the slot are one step
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

    def refill(self, cwd: Path) -> None:
        if self.warm_pool > 0 and cwd not in self._filling:
            self._spawn(lambda: self._refill(cwd))

    async def _refill(self, cwd: Path) -> None:
        self._filling.add(cwd)
        try:
            pool = self._pool.setdefault(cwd, [])
            while len([s for s in pool if s.alive]) < self.warm_pool:
                session = ClaudeSession(self._make_spec(cwd, str(uuid.uuid4()), False, None))
                self._starting[cwd] = session
                try:
                    started = await self._start(session, for_pool=True)
                except RunError as err:
                    log.warning("sessions.pool_start_failed", cwd=str(cwd), error=str(err))
                    return
                finally:
                    self._starting.pop(cwd, None)
                if not started:
                    return
                if session.claimed:  # a task took it while it was starting
                    continue
                pool.append(session)
                log.info("sessions.pooled", cwd=str(cwd), session_id=session.session_id, pid=session.pid)
        finally:
            self._filling.discard(cwd)

    async def _reaper(self) -> None:
        interval = max(0.2, min(5.0, self.idle_seconds / 4 if self.idle_seconds > 0 else 5.0))
        while True:
            await anyio.sleep(interval)
            now = time.monotonic()
            for key, session in list(self._warm.items()):
                if session.state == "idle" and now - session.last_used >= self.idle_seconds:
                    self._warm.pop(key, None)
                    log.info("sessions.reaped_idle", channel=key[0], thread_ts=key[1], session_id=session.session_id)
                    self._spawn(session.close)
                elif not session.alive and session.state != "busy":
                    self._warm.pop(key, None)
