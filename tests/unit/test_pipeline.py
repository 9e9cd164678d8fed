"""pipeline.TaskPipeline: one run from the queue to the thread, over a real Store, ContextBuilder and Signs, with a fake
Poster and a fake SessionManager whose session plays a scripted turn (stream_parser events, then a result or an
error). Every outcome ends in the thread; every run.* log line names its run, channel and thread."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType
from typing import Any, cast

import anyio
import pytest
from pytest_mock import MockerFixture
from structlog.testing import capture_logs

from bot.config import Settings, load_settings
from bot.core import pipeline, signs
from bot.core.attachments import Fetched, Fetcher, Limits
from bot.core.context_builder import ContextBuilder
from bot.core.dispatcher import Job
from bot.core.events import FileRef
from bot.core.pipeline import TaskPipeline
from bot.core.sessions import SessionManager
from bot.core.signs import Signs
from bot.core.store import Store, StoredMessage, ThreadSession
from bot.core.stream_parser import AssistantText, Finished, RunEvent, SessionStarted, ToolCall
from bot.errors import RunCancelledError, RunError, RunTimeoutError, SessionNotFoundError
from tests.fakes.poster import FakePoster

C, USER, BOT = "C1", "U1", "UBOT"
THREAD = "1700000001.000100"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def finished(text: str = "The answer is 42.", *, session_id: str = "sess-new", is_error: bool = False) -> Finished:
    return Finished(is_error=is_error, subtype="success", text=text, session_id=session_id, num_turns=2,
                    duration_ms=1500, cost_usd=0.0123, api_error_status=None, terminal_reason=None,
                    permission_denials=(), errors=())


Probe = Callable[[], None]  # run in the middle of a turn: a look at the store while the CLI works
Script = list[RunEvent | RunError | Probe | EllipsisType]  # what a turn streams (... waits), then its result or error


class FakeSession:
    """A ClaudeSession as the pipeline sees it: `turn` plays the next script; `cancel` ends the turn running."""

    def __init__(self, session_id: str, script: Script) -> None:
        self.session_id = session_id
        self.state = "idle"
        self.script = script
        self.prompts: list[str] = []
        self.turn_args: dict[str, Any] = {}
        self.last_turn_s = 0.25
        self.in_turn = anyio.Event()
        self.let_go = anyio.Event()  # a script ending in Ellipsis waits for this (or a cancel) before its result
        self.cancelled_by: str | None = None

    def start_overlap(self, since: float, until: float) -> float:
        return 0.0

    async def turn(self, prompt: str, on_event: Callable[[RunEvent], None], **kw: Any) -> Finished:
        self.prompts.append(prompt)
        self.turn_args = kw
        self.state = "busy"
        self.in_turn.set()
        try:
            for step in self.script:
                if step is Ellipsis:
                    await self.let_go.wait()
                    if self.cancelled_by is not None:
                        raise RunCancelledError("The run was cancelled.", by=self.cancelled_by)
                elif isinstance(step, RunError):
                    raise step
                elif callable(step):
                    step()
                else:
                    on_event(step)
                    if isinstance(step, Finished):
                        return step
            raise AssertionError("the script ended without a result")
        finally:
            self.state = "idle"

    async def cancel(self, by: str) -> None:
        self.cancelled_by = by
        self.let_go.set()


@dataclass
class FakeSessions:
    """SessionManager as the pipeline sees it: each acquire gives the next scripted session."""

    scripts: list[Script]
    acquired: list[tuple[tuple[str, str], Path, str | None, bool]] = field(default_factory=list)
    released: list[FakeSession] = field(default_factory=list)
    made: list[FakeSession] = field(default_factory=list)

    async def acquire(self, key: tuple[str, str], cwd: Path, resume_id: str | None, *,
                      pooled: bool = True) -> tuple[FakeSession, str]:
        self.acquired.append((key, cwd, resume_id, pooled))
        session = FakeSession(resume_id or f"sess-{len(self.made)}", self.scripts.pop(0))
        self.made.append(session)
        return session, "warm" if resume_id else "cold"

    def release(self, key: tuple[str, str], session: FakeSession) -> None:
        self.released.append(session)

    def warm_since(self, key: tuple[str, str]) -> float | None:
        return None

    def forget_warm(self, key: tuple[str, str]) -> None: ...

    def counts(self) -> dict[str, int]:
        return {"live": len(self.made), "pool": 0, "warm": 0, "busy": 0}


class Directory:
    def label(self, channel: str, is_dm: bool) -> str:
        return "#general"

    def name_of(self, user_id: str) -> str:
        return {"U1": "alice", "U2": "bob"}.get(user_id, user_id)

    async def ensure(self, channel: str) -> None: ...

    async def resolve(self, user_ids: Iterable[str], within: float = 2.0) -> None: ...

    async def fetch_thread(self, channel: str, thread_ts: str) -> None: ...


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({
        "SLACK_BOT_TOKEN": "xoxb-test-bot-token-123", "SLACK_APP_TOKEN": "xapp-test-app-token-456",
        "CLAUDE_CLI_PATH": sys.executable, "SLACKBUS_ALLOWED_USERS": "U1,U2",
        "SLACKBUS_HOME": str(tmp_path / "state"), "SLACKBUS_WORKDIR": str(tmp_path / "work"),
        "SLACKBUS_ENV_FILE": str(tmp_path / "no.env"), "SLACKBUS_WORKTREES": "off", "PATH": "/usr/bin:/bin",
    })


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "slackbus.db")
    yield s
    s.close()


@dataclass
class Rig:
    pipeline: TaskPipeline
    poster: FakePoster
    sessions: FakeSessions
    store: Store
    signs: Signs


@asynccontextmanager
async def rig(settings: Settings, store: Store, *scripts: Script, fetcher: Fetcher | None = None) -> AsyncIterator[Rig]:
    poster, sessions = FakePoster(), FakeSessions(list(scripts))
    contexts = ContextBuilder(store, bot_user_id=BOT, max_messages=20, max_chars=8000,
                              name_of=Directory().name_of, is_allowed=lambda user: user in {"U1", "U2"})
    async with anyio.create_task_group() as tg:
        def spawn(fn: Callable[..., Coroutine[Any, Any, object]], *args: object) -> None:
            tg.start_soon(fn, *args)

        sign = Signs(poster, spawn, max_concurrent=2)
        yield Rig(TaskPipeline(settings, store, poster, contexts, Directory(), cast(SessionManager, sessions), sign,
                               fetcher=fetcher), poster, sessions, store, sign)
        tg.cancel_scope.cancel()


def ask(store: Store, n: int, text: str, *, thread: str = THREAD) -> Job:
    """A request as the dispatcher hands it over: recorded and claimed, then a Job."""
    ts = thread if n == 1 else f"1700000{n:03d}.000100"
    store.record_message(StoredMessage(C, ts, None if ts == thread else thread, USER, None, text))
    store.claim_request(C, ts, thread, USER, "mention")
    return Job(channel=C, thread_ts=thread, trigger_ts=ts, user=USER, new_session=n == 1, received=time.monotonic())


def answer_of(r: Rig) -> str:
    (delivery,) = r.poster.deliveries
    return "\n".join(m.text for m in delivery[2])


def run_lines(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if str(e["event"]).startswith("run.")]


# --- outcomes ------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_answer_goes_to_the_thread_and_the_session_is_kept_for_the_next_turn(settings: Settings,
                                                                                        store: Store) -> None:
    seen: list[ThreadSession | None] = []
    script: Script = [SessionStarted("sess-0", "opus", None), lambda: seen.append(store.get_thread(C, THREAD)),
                      AssistantText("thinking"), finished(session_id="sess-0")]
    job = ask(store, 1, "<@UBOT> what is six times seven?")
    async with rig(settings, store, script) as r:
        await r.pipeline([job])
        await r.poster.until(lambda: r.poster.on(C, job.trigger_ts))
    (session,) = r.sessions.made
    # once the CLI has the session, the thread is saved as started: a reply after a crash resumes it
    assert [(t.session_id, t.started) if t else None for t in seen] == [("sess-0", True)]
    assert r.sessions.acquired == [((C, THREAD), settings.workdir.resolve(), None, True)]
    assert "what is six times seven?" in session.prompts[0]
    assert session.turn_args["where"] == (C, THREAD, USER)
    assert session.turn_args["timeout"] == settings.run_timeout and session.turn_args["stall"] == settings.stall_seconds
    assert r.sessions.released == [session]

    (delivery,) = r.poster.deliveries
    channel, thread, messages, replace_ts, attachment = delivery
    assert (channel, thread, replace_ts, attachment) == (C, THREAD, None, None)  # no status was showing: one post
    assert messages[0].text.startswith("The answer is 42.")
    last = messages[-1].blocks[-1]
    assert last["type"] == "actions" and "Continue in a terminal" in str(last)  # Slack: the attach button
    assert r.poster.on(C, job.trigger_ts) == {signs.DONE}

    saved = store.get_thread(C, THREAD)
    assert saved is not None and (saved.session_id, saved.started) == ("sess-0", True)
    assert store.unfinished_requests() == []
    assert [(run[1], run[2]) for run in store.recent_runs(C, 0)] == [(THREAD, "done")]
    assert r.pipeline.active == {}


@pytest.mark.anyio
async def test_a_follow_up_resumes_the_threads_session(settings: Settings, store: Store) -> None:
    ask(store, 1, "<@UBOT> start")
    store.save_thread(ThreadSession(C, THREAD, "sess-old", str(settings.workdir), True, THREAD, USER))
    follow_up = ask(store, 2, "and then?")
    async with rig(settings, store, [finished("Then this.", session_id="sess-old-2")]) as r:
        await r.pipeline([follow_up])
    assert r.sessions.acquired[0][2] == "sess-old"
    assert "and then?" in r.sessions.made[0].prompts[0]
    assert answer_of(r).startswith("Then this.")
    saved = store.get_thread(C, THREAD)
    assert saved is not None and saved.session_id == "sess-old-2"  # the id the result gives is the one kept


@pytest.mark.anyio
async def test_a_failed_run_says_what_went_wrong_in_the_thread(settings: Settings, store: Store) -> None:
    job = ask(store, 1, "<@UBOT> a long job")
    script: Script = [ToolCall("t1", "Bash", {"command": "sleep 999"}),
                      RunTimeoutError("The run took longer than SLACKBUS_RUN_TIMEOUT (60 s) and was stopped.")]
    with capture_logs() as logs:
        async with rig(settings, store, script) as r:
            await r.pipeline([job])
            await r.poster.until(lambda: r.poster.on(C, job.trigger_ts))
    assert answer_of(r) == (":hourglass: The run took longer than SLACKBUS_RUN_TIMEOUT (60 s) and was stopped. Reply "
                            "here to continue from where it stopped.")
    assert r.poster.on(C, job.trigger_ts) == {signs.FAILED}
    assert [(run[2]) for run in store.recent_runs(C, 0)] == ["failed"]
    (failed,) = [e for e in logs if e["event"] == "run.failed"]
    assert failed["kind"] == "RunTimeoutError" and (failed["channel"], failed["thread_ts"]) == (C, THREAD)


@pytest.mark.anyio
async def test_an_error_result_is_a_failure_with_the_clis_words(settings: Settings, store: Store) -> None:
    job = ask(store, 1, "<@UBOT> hi")
    async with rig(settings, store, [finished("API Error: 529 overloaded", is_error=True)]) as r:
        await r.pipeline([job])
        await r.poster.until(lambda: r.poster.on(C, job.trigger_ts))
    assert "529 overloaded" in answer_of(r)
    assert r.poster.on(C, job.trigger_ts) == {signs.FAILED}
    saved = store.get_thread(C, THREAD)
    assert saved is not None and saved.started  # the session exists: a reply can resume it


@pytest.mark.anyio
async def test_a_session_missing_on_this_host_starts_again_with_the_whole_thread(settings: Settings,
                                                                                 store: Store) -> None:
    ask(store, 1, "<@UBOT> start")
    store.save_thread(ThreadSession(C, THREAD, "sess-gone", str(settings.workdir), True, THREAD, USER))
    follow_up = ask(store, 2, "still there?")
    lost: Script = [SessionNotFoundError("The Claude session for this thread was not found on this host.")]
    seen: list[ThreadSession | None] = []
    again: Script = [SessionStarted("sess-1", None, None), lambda: seen.append(store.get_thread(C, THREAD)),
                     finished("Back again.", session_id="sess-1")]
    with capture_logs() as logs:
        async with rig(settings, store, lost, again) as r:
            await r.pipeline([follow_up])
    assert [(t.session_id, t.started) if t else None for t in seen] == [("sess-1", True)]  # the new one, saved
    assert [a[2] for a in r.sessions.acquired] == ["sess-gone", None]  # resumed, then a new session
    assert "start" in r.sessions.made[1].prompts[0] and "still there?" in r.sessions.made[1].prompts[0]
    assert answer_of(r).startswith("Back again.")
    saved = store.get_thread(C, THREAD)
    assert saved is not None and saved.session_id == "sess-1"
    (missing,) = [e for e in logs if e["event"] == "run.session_missing"]
    (answered,) = [e for e in logs if e["event"] == "run.answered"]
    assert answered["run_id"] == missing["run_id"] + "-new"


@pytest.mark.anyio
async def test_a_cancelled_run_stops_its_session_and_shows_the_stop_sign(settings: Settings, store: Store) -> None:
    job = ask(store, 1, "<@UBOT> go")
    async with rig(settings, store, [ToolCall("t1", "Bash", {"command": "make"}), ..., finished()]) as r:
        async with anyio.create_task_group() as tg:
            tg.start_soon(r.pipeline, [job])
            await r.poster.until(lambda: r.sessions.made and r.sessions.made[0].in_turn.is_set())
            handle = r.pipeline.find(C, job.trigger_ts)
            assert handle is not None and r.pipeline.find(C, THREAD) is handle
            await r.pipeline.cancel(handle, "U2")
        await r.poster.until(lambda: r.poster.on(C, job.trigger_ts))
    assert r.sessions.made[0].cancelled_by == "U2"
    assert r.poster.on(C, job.trigger_ts) == {signs.STOPPED}
    assert "<@U2>" in answer_of(r)
    assert [(run[2]) for run in store.recent_runs(C, 0)] == ["cancelled"]


# --- the status message and notices ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_answer_replaces_the_queued_notice_that_became_the_status(settings: Settings, store: Store) -> None:
    job = ask(store, 1, "<@UBOT> hi")
    async with rig(settings, store, [finished("Done.")]) as r:
        r.signs.queued(job, 3, behind_own_thread=False, still_waiting=lambda: True)
        await r.poster.until(lambda: r.poster.posts)
        (notice,) = r.poster.posts
        await r.pipeline([job])
    (delivery,) = r.poster.deliveries
    assert delivery[3] == notice  # the answer replaces it: one message, where the notice was
    assert r.poster.posts[notice].text.startswith("Done.")


@pytest.mark.anyio
async def test_a_long_run_posts_its_answer_anew_mentioning_the_requester(settings: Settings, store: Store,
                                                                         mocker: MockerFixture) -> None:
    mocker.patch.object(pipeline, "NOTIFY_AFTER_S", 0.0)  # every run is a long one
    job = ask(store, 1, "<@UBOT> hi")
    async with rig(settings, store, [finished("Done.")]) as r:
        r.signs.queued(job, 1, behind_own_thread=False, still_waiting=lambda: True)
        await r.poster.until(lambda: r.poster.posts)
        (status,) = r.poster.posts
        await r.pipeline([job])
    (delivery,) = r.poster.deliveries
    assert delivery[3] is None and delivery[2][0].text.startswith(f"<@{USER}> Done.")  # a new message, notifying
    assert r.poster.posts[status].text.startswith(":white_check_mark: Done after")


# --- the log --------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_every_run_line_names_its_run_channel_and_thread(settings: Settings, store: Store) -> None:
    job = ask(store, 1, "<@UBOT> go")
    script: Script = [SessionStarted("sess-0", None, None), ToolCall("t1", "Read", {"file_path": "/a"}),
                      finished(session_id="sess-0")]
    with capture_logs() as logs:
        async with rig(settings, store, script) as r:
            await r.pipeline([job])
    lines = run_lines(logs)
    events = [e["event"] for e in lines]
    for name in ("run.start", "run.acquiring", "run.spawning", "run.tool", "run.result", "run.answered", "run.end"):
        assert name in events
    run_id = lines[0]["run_id"]
    assert all((e.get("run_id"), e.get("channel"), e.get("thread_ts")) == (run_id, C, THREAD) for e in lines), lines
    # what bench/ reads from these lines
    fields = {e["event"]: e for e in lines}
    assert fields["run.start"]["trigger_ts"] == job.trigger_ts
    assert {"since_received_ms", "cli_ms"} <= set(fields["run.answered"])
    assert fields["run.spawning"]["origin"] == "cold" and fields["run.spawning"]["resume"] is False
    assert fields["run.answered"]["cli_ms"] == 250.0  # the turn's time, as the session measured it


class DiskFetcher:
    """The transport's edge: every file 'downloads' as a few bytes written into the thread's folder."""

    async def fetch(self, ref: FileRef, folder: Path, limits: Limits) -> Fetched:
        path = anyio.Path(folder) / ref.name
        await path.parent.mkdir(parents=True, exist_ok=True)
        await path.write_bytes(b"a line of a log\n")
        return Fetched(ref, Path(path))


@pytest.mark.anyio
async def test_a_run_that_fetched_files_gives_their_memory_back_and_one_without_does_not(settings: Settings,
                                                                                          store: Store) -> None:
    with_file = ask(store, 1, "<@UBOT> what does this log say?")
    store.record_files(C, with_file.trigger_ts, [FileRef("F1", "run.log", "text/plain", 16, "https://x/run.log").data()])
    other = "1700000099.000100"
    without = ask(store, 1, "<@UBOT> and without a file?", thread=other)
    with capture_logs() as logs:
        async with rig(settings, store, [finished()], [finished()], fetcher=DiskFetcher()) as r:
            await r.pipeline([with_file])
            await r.pipeline([without])
    trimmed = [e for e in logs if e["event"] == "run.memory_trimmed"]
    assert [e["thread_ts"] for e in trimmed] == ([THREAD] if sys.platform == "linux" else [])
    assert "a line of a log" in r.sessions.made[0].prompts[0]  # the file did reach the prompt
