"""sessions.SessionManager: which process serves a thread (warm, pooled or cold), the cap on them all, least recently
used eviction, pool refill and growth, parking and reaping of idle ones, forget_warm. ClaudeSession is replaced by a
fake that "starts" at once (or when let), on a fake clock; ClaudeSession.park itself is checked on a real process."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import TaskStatus
from pytest_mock import MockerFixture
from structlog.testing import capture_logs

from bot.core import sessions
from bot.core.claude_runner import ClaudeSession, SessionSpec
from bot.core.sessions import SessionManager, ThreadKey
from bot.errors import CLIProcessError, RunError

CWD = Path("/work/repo")
A, B, C = ("C1", "1700000001.000100"), ("C1", "1700000002.000100"), ("C1", "1700000003.000100")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    """time.monotonic and time.time for bot.core.sessions: they move only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now


class FakeSession:
    """What SessionManager uses of a ClaudeSession, without a process. `serve` connects at once, or once the rig
    lets it (`Rig.hold_starts`); `fail_start` makes it fail as a CLI that cannot start does."""

    def __init__(self, spec: SessionSpec, rig: Rig) -> None:
        self.spec = spec
        self.session_id = spec.session_id
        self.state = "starting"
        self.pid: int | None = None
        self.parked = False
        self.park_ok = True  # what park() answers (False: the process was gone)
        self.healthy = True
        self.claimed = False
        self.ready = anyio.Event()
        self.last_used = rig.clock.now
        self._rig = rig
        self._stop = anyio.Event()
        self._served = anyio.Event()
        self._serving = False
        self.close_asked = False

    @property
    def alive(self) -> bool:
        return self.state in {"idle", "busy"} and self.healthy

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._serving = True
        try:
            if self._rig.starts_held is not None:
                await self._rig.starts_held.wait()
            if self._rig.fail_start:
                raise CLIProcessError("The Claude Code CLI did not start.", session_id=self.session_id)
            self._rig.pids += 1
            self.pid = self._rig.pids
            self.state = "idle"
            self._rig.note_running()
            self.ready.set()
            task_status.started()
            await self._stop.wait()
        finally:
            self.state = "closed"
            self.ready.set()
            self._served.set()

    async def close(self) -> None:
        self.close_asked = True
        self.parked = False
        self._stop.set()
        if self._serving:
            await self._served.wait()
        else:
            self.state = "closed"

    def claim(self) -> bool:
        if self.claimed:
            return False
        self.claimed = True
        return True

    def never_started(self) -> None:
        if self.state == "starting":
            self.state = "closed"
        self.ready.set()

    def park(self) -> bool:
        if not self.park_ok:
            return False
        self.parked = True
        return True

    def used(self) -> None:
        """What a turn leaves behind: the session was used now."""
        self.last_used = self._rig.clock.now


@dataclass
class Rig:
    clock: Clock
    made: list[FakeSession] = field(default_factory=list)
    specs: list[tuple[Path, str, bool, ThreadKey | None]] = field(default_factory=list)
    pids: int = 0
    peak_running: int = 0  # the most processes up at once, counted by the fakes themselves
    starts_held: anyio.Event | None = None
    fail_start: bool = False

    def note_running(self) -> None:
        up = sum(1 for s in self.made if s.state in {"idle", "busy"})
        self.peak_running = max(self.peak_running, up)

    def make_spec(self, cwd: Path, session_id: str, resume: bool, key: ThreadKey | None) -> SessionSpec:
        self.specs.append((cwd, session_id, resume, key))
        return SessionSpec(cwd=cwd, session_id=session_id, resume=resume, cli_path="claude", env={})

    def hold_starts(self) -> None:
        self.starts_held = anyio.Event()

    def let_starts(self) -> None:
        assert self.starts_held is not None
        self.starts_held.set()
        self.starts_held = None

    def up(self) -> list[ClaudeSession]:
        """The processes up now, as the manager hands them out."""
        return cast(list[ClaudeSession], [s for s in self.made if s.state in {"idle", "busy"}])

    @asynccontextmanager
    async def running(self, *, max_processes: int = 4, warm_pool: int = 0, idle_seconds: float = 60.0,
                      **kw: Any) -> AsyncIterator[SessionManager]:
        manager = SessionManager(self.make_spec, max_processes=max_processes, warm_pool=warm_pool,
                                 idle_seconds=idle_seconds, default_cwd=CWD, **kw)
        async with anyio.create_task_group() as tg:
            await tg.start(manager.run)
            await settled()
            yield manager
            tg.cancel_scope.cancel()


@pytest.fixture
def rig(mocker: MockerFixture) -> Iterator[Rig]:
    r = Rig(Clock())
    mocker.patch.object(sessions, "time", r.clock)

    def session(spec: SessionSpec) -> FakeSession:
        made = FakeSession(spec, r)
        r.made.append(made)
        return made

    mocker.patch.object(sessions, "ClaudeSession", session)
    yield r


def fake(session: object) -> FakeSession:
    assert isinstance(session, FakeSession)
    return session


async def settled() -> None:
    """Let the manager's background work (refills, closes) run to where it waits. None of it waits on a clock, so a
    number of event-loop turns does it (anyio.wait_all_tasks_blocked would too, 0.1 s at a time)."""
    for _ in range(50):
        await anyio.lowlevel.checkpoint()


# --- warm ----------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_follow_up_gets_its_threads_warm_process(rig: Rig) -> None:
    async with rig.running() as m:
        first, origin = await m.acquire(A, CWD, None)
        assert origin == "cold" and rig.specs[-1] == (CWD, first.session_id, False, A)
        m.release(A, first)
        assert m.warm_session(A) is first and m.counts() == {"live": 1, "pool": 0, "warm": 1, "busy": 0}

        again, origin = await m.acquire(A, CWD, first.session_id)
        assert (again, origin) == (first, "warm")
        assert m.warm_session(A) is None  # taken while it runs
        assert len(rig.made) == 1


@pytest.mark.anyio
async def test_a_warm_process_of_another_session_is_closed_and_the_session_resumed(rig: Rig) -> None:
    async with rig.running() as m:
        first, _ = await m.acquire(A, CWD, None)
        m.release(A, first)
        other, origin = await m.acquire(A, CWD, "a-session-continued-elsewhere")
        assert origin == "cold" and other is not first
        assert first.state == "closed"
        assert rig.specs[-1] == (CWD, "a-session-continued-elsewhere", True, A)  # resumed, by id


@pytest.mark.anyio
async def test_an_unhealthy_session_is_closed_on_release_not_kept(rig: Rig) -> None:
    async with rig.running() as m:
        first, _ = await m.acquire(A, CWD, None)
        first.healthy = False  # a failed, stalled or cancelled turn
        m.release(A, first)
        await settled()
        assert first.state == "closed" and m.warm_session(A) is None and m.live == 0


@pytest.mark.anyio
async def test_without_idle_seconds_nothing_is_kept_warm(rig: Rig) -> None:
    async with rig.running(idle_seconds=0) as m:
        first, _ = await m.acquire(A, CWD, None)
        m.release(A, first)
        await settled()
        assert first.state == "closed" and m.warm_session(A) is None


@pytest.mark.anyio
async def test_forget_warm_closes_the_threads_process_and_the_next_turn_resumes_from_the_file(rig: Rig) -> None:
    async with rig.running() as m:
        first, _ = await m.acquire(A, CWD, None)
        m.release(A, first)
        m.forget_warm(B)  # no warm process there: nothing happens
        m.forget_warm(A)
        assert m.warm_session(A) is None
        await settled()
        assert first.state == "closed"
        again, origin = await m.acquire(A, CWD, first.session_id)
        assert origin == "cold" and again is not first
        assert rig.specs[-1] == (CWD, first.session_id, True, A)


# --- the cap and eviction ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_new_process_at_the_cap_evicts_the_least_recently_used_warm_one(rig: Rig) -> None:
    async with rig.running(max_processes=2) as m:
        a, _ = await m.acquire(A, CWD, None)
        m.release(A, a)
        rig.clock.now += 1
        b, _ = await m.acquire(B, CWD, None)
        fake(b).used()
        m.release(B, b)
        rig.clock.now += 1
        a, origin = await m.acquire(A, CWD, a.session_id)  # A is used again: B is now the older one
        assert origin == "warm"
        fake(a).used()
        m.release(A, a)

        with capture_logs() as logs:
            c, origin = await m.acquire(C, CWD, None)
        assert origin == "cold" and c.state == "idle"
        assert b.state == "closed" and m.warm_session(B) is None
        assert m.warm_session(A) is a and a.state == "idle"
        assert m.live == 2 and rig.peak_running == 2
        assert [(e["kind"], e.get("thread_ts")) for e in logs if e["event"] == "sessions.evict"] == [("warm", B[1])]


@pytest.mark.anyio
async def test_a_task_evicts_a_pooled_process_before_a_warm_one(rig: Rig) -> None:
    async with rig.running(max_processes=2, warm_pool=1) as m:
        a, origin = await m.acquire(A, CWD, None)
        assert origin == "pool"
        m.release(A, a)
        await settled()
        assert m.counts() == {"live": 2, "pool": 1, "warm": 1, "busy": 0}  # refilled up to the cap
        (pooled,) = [s for s in rig.up() if s is not a]

        b, origin = await m.acquire(B, CWD, None, pooled=False)  # a model of its own: a process of its own
        assert origin == "cold" and b.state == "idle"
        assert pooled.state == "closed" and a.state == "idle" and m.warm_session(A) is a
        assert rig.peak_running == 2


@pytest.mark.anyio
async def test_pool_refills_never_go_past_the_cap(rig: Rig) -> None:
    async with rig.running(max_processes=2, warm_pool=2) as m:
        assert m.counts()["pool"] == 2
        a, origin_a = await m.acquire(A, CWD, None)
        await settled()
        b, origin_b = await m.acquire(B, CWD, None)
        await settled()
        assert (origin_a, origin_b) == ("pool", "pool")
        # both processes run a thread now: the refills found no room and started nothing
        assert m.counts() == {"live": 2, "pool": 0, "warm": 0, "busy": 0}
        assert len(rig.up()) == 2 and a in rig.up() and b in rig.up()

        m.release(A, a)  # a warm one may make room for a refill, the least recently used first
        await settled()
        assert rig.peak_running == 2 and m.live == 2 and m.peak_live == 2


@pytest.mark.anyio
async def test_with_nothing_idle_to_close_a_task_still_gets_a_process_and_the_log_says_over_cap(rig: Rig) -> None:
    async with rig.running(max_processes=1) as m:
        await m.acquire(A, CWD, None)  # running a turn: not closed for another thread
        with capture_logs() as logs:
            b, origin = await m.acquire(B, CWD, None)
        assert origin == "cold" and b.state == "idle" and m.live == 2
        assert [(e["live"], e["cap"]) for e in logs if e["event"] == "sessions.over_cap"] == [(1, 1)]


# --- the pool ----------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_new_thread_takes_a_pooled_process_and_the_pool_is_refilled(rig: Rig) -> None:
    async with rig.running(warm_pool=1) as m:
        (pooled,) = rig.up()
        a, origin = await m.acquire(A, CWD, None)
        assert (a, origin) == (pooled, "pool")
        await settled()
        (refill,) = [s for s in rig.up() if s is not a]
        assert m.counts()["pool"] == 1 and refill.spec.cwd == CWD
        assert rig.specs[-1][2:] == (False, None)  # a pool process: a new session, for no thread yet
        follow_up, origin = await m.acquire(A, CWD, a.session_id)  # a follow-up never takes a pooled one
        assert origin == "cold" and follow_up is not refill


@pytest.mark.anyio
async def test_a_task_takes_a_pool_process_still_starting_rather_than_start_another(rig: Rig) -> None:
    rig.hold_starts()
    async with rig.running(warm_pool=1) as m:
        (starting,) = rig.made
        got: list[tuple[Any, str]] = []

        async def take() -> None:
            got.append(await m.acquire(A, CWD, None))

        async with anyio.create_task_group() as tg:
            tg.start_soon(take)
            await settled()
            assert got == [] and starting.claimed and len(rig.made) == 1  # waiting for it, nothing new started
            rig.let_starts()
        assert got == [(starting, "pool")]
        await settled()
        assert m.counts()["pool"] == 1 and len(rig.made) == 2  # and the next one is in the pool


@pytest.mark.anyio
async def test_new_threads_in_a_rush_grow_the_pool_and_a_quiet_time_shrinks_it(rig: Rig) -> None:
    async with rig.running(warm_pool=1, warm_pool_max=3, idle_seconds=0.4, park_seconds=0.2) as m:
        with capture_logs() as logs:
            await m.acquire(A, CWD, None)  # takes the pooled one; its refill is only on its way
            await m.acquire(B, CWD, None)  # the same moment: no ready process, a rush
        assert m.pool_target(CWD) == 2
        assert [e["size"] for e in logs if e["event"] == "sessions.pool_grow"] == [2]
        await settled()
        assert m.counts()["pool"] == 2

        rig.clock.now += 1.0  # no rush for longer than idle_seconds: back to SLACKBUS_WARM_POOL at the next look
        with anyio.fail_after(2):
            while m.counts()["pool"] != 1:  # noqa: ASYNC110 - the reaper looks every 0.1 s
                await anyio.sleep(0.02)
        assert m.pool_target(CWD) == 1


@pytest.mark.anyio
async def test_a_spare_worktree_gets_one_process_for_the_thread_that_claims_it(rig: Rig) -> None:
    spare = Path("/work/.slackbus/worktrees/spare-1")
    async with rig.running(warm_pool=1) as m:
        m.pool_once(spare)
        m.pool_once(spare)  # never more than one
        await settled()
        (waiting,) = [s for s in rig.up() if s.spec.cwd == spare]
        a, origin = await m.acquire(A, spare, None)
        assert (a, origin) == (waiting, "pool")
        await settled()
        assert [s for s in rig.up() if s.spec.cwd == spare] == [a]  # nothing more is started there
        assert m.pool_target(spare) == 0


@pytest.mark.anyio
async def test_a_pool_process_that_cannot_start_is_logged_and_the_task_starts_its_own(rig: Rig) -> None:
    rig.fail_start = True
    with capture_logs() as logs:
        async with rig.running(warm_pool=1) as m:
            assert m.counts()["pool"] == 0 and m.live == 0
            rig.fail_start = False
            a, origin = await m.acquire(A, CWD, None)
            assert origin in {"cold", "pool"} and a.state == "idle"
    failed = [e for e in logs if e["event"] == "sessions.pool_start_failed"]
    assert failed and failed[0]["cwd"] == str(CWD) and "did not start" in failed[0]["error"]


@pytest.mark.anyio
async def test_a_cold_start_that_fails_raises_and_leaves_nothing_counted(rig: Rig) -> None:
    async with rig.running() as m:
        rig.fail_start = True
        with pytest.raises(RunError):
            await m.acquire(A, CWD, None)
        assert m.live == 0 and m.counts()["busy"] == 0


# --- idle processes: parked, reaped, closed at shutdown --------------------------------------------------------


@pytest.mark.anyio
async def test_idle_warm_and_pooled_processes_are_parked_after_park_seconds(rig: Rig) -> None:
    async with rig.running(warm_pool=1, park_seconds=0.2, idle_seconds=600) as m:
        a, _ = await m.acquire(A, CWD, None)
        b, _ = await m.acquire(B, CWD, None)  # running: never parked
        m.release(A, a)
        await settled()
        pooled = [s for s in rig.up() if s not in (a, b)]
        with capture_logs() as logs:
            rig.clock.now += 0.1  # not yet
            await anyio.sleep(0.25)
            assert not any(s.parked for s in rig.made)
            rig.clock.now += 0.2
            with anyio.fail_after(2):
                while not fake(a).parked:  # noqa: ASYNC110 - the reaper looks every 0.1 s
                    await anyio.sleep(0.02)
        assert all(s.parked for s in pooled) and not fake(b).parked
        assert {e["session_id"] for e in logs if e["event"] == "sessions.parked"} == {
            a.session_id, *(s.session_id for s in pooled)}


@pytest.mark.anyio
async def test_a_warm_process_idle_past_idle_seconds_is_closed(rig: Rig) -> None:
    async with rig.running(idle_seconds=0.4, park_seconds=0.2) as m:
        a, _ = await m.acquire(A, CWD, None)
        m.release(A, a)
        b, _ = await m.acquire(B, CWD, None)
        m.release(B, b)
        rig.clock.now += 0.3
        fake(b).used()  # B had a turn since
        rig.clock.now += 0.2
        with anyio.fail_after(2):
            while a.state != "closed":  # noqa: ASYNC110 - the reaper looks every 0.1 s
                await anyio.sleep(0.02)
        assert m.warm_session(A) is None and m.warm_session(B) is b and b.state == "idle"


@pytest.mark.anyio
async def test_shutdown_closes_every_process(rig: Rig) -> None:
    async with rig.running(warm_pool=1) as m:
        a, _ = await m.acquire(A, CWD, None)
        m.release(A, a)
        await m.acquire(B, CWD, None)
        await settled()
        assert len(rig.up()) == 3  # warm, running, pooled
    assert [s.state for s in rig.made] == ["closed"] * 3
    assert all(s.close_asked for s in rig.made)  # each closed (stdin EOF, or abort mid-turn), not just cancelled


# --- ClaudeSession.park on a real process ---------------------------------------------------------------------


def _state_of(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1]


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    yield proc
    proc.send_signal(signal.SIGCONT)
    proc.kill()
    proc.wait(5)


async def _wait_state(pid: int, wanted: Callable[[str], bool]) -> str:
    with anyio.fail_after(2):
        while not wanted(state := _state_of(pid)):  # noqa: ASYNC110 - a kernel state: nothing to await
            await anyio.sleep(0.005)
    return state


@pytest.mark.anyio
async def test_park_stops_an_idle_process_and_unpark_continues_it(child: subprocess.Popen[bytes]) -> None:
    session = ClaudeSession(SessionSpec(cwd=CWD, session_id="s1", resume=False, cli_path="claude", env={}))
    session.pid = child.pid
    assert session.park() is False  # still starting
    session.state = "idle"
    assert session.park() is True and session.parked
    assert await _wait_state(child.pid, lambda s: s == "T") == "T"
    assert session.park() is False  # once
    session.unpark()
    assert not session.parked
    assert await _wait_state(child.pid, lambda s: s != "T") in {"S", "R"}

    child.kill()
    child.wait(5)
    assert session.park() is False and not session.parked  # the process is gone
    session._send.close()  # never served: its turn queue is closed here instead of by serve()
    session._receive.close()
