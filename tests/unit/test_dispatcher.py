"""dispatcher: the JobQueue's cap, order and batching (anyio), and what Dispatcher.on_message makes of a message."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from bot.core.dispatcher import Dispatcher, Job, JobQueue
from bot.core.events import IncomingMessage
from bot.core.store import Store, ThreadSession

BOT = "UBOT"
ALLOWED = {"U1", "U2"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def ts(n: int) -> str:
    return f"1700000{n:03d}.000100"


def job(thread: str, n: int, *, new_session: bool = True, channel: str = "C1") -> Job:
    return Job(channel=channel, thread_ts=thread, trigger_ts=ts(n), user="U1", new_session=new_session, received=0.0)


class Gate:
    """A handler whose runs stay open until released; it records what ran, together and at once."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []  # trigger ts of each batch, in start order
        self.running: set[tuple[str, str]] = set()
        self.peak = 0
        self.overlap_same_thread = False
        self._release: dict[str, anyio.Event] = {}
        self.finished: list[str] = []
        self._changed = anyio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def __call__(self, jobs: list[Job]) -> None:
        key = jobs[0].key
        if key in self.running:
            self.overlap_same_thread = True
        self.running.add(key)
        self.peak = max(self.peak, len(self.running))
        first = jobs[0].trigger_ts
        self.batches.append([j.trigger_ts for j in jobs])
        self._notify()
        event = self._release.setdefault(first, anyio.Event())
        try:
            await event.wait()
        finally:
            self.running.discard(key)
            self.finished.append(first)
            self._notify()

    def release(self, trigger_ts: str) -> None:
        self._release.setdefault(trigger_ts, anyio.Event()).set()

    async def until(self, predicate: Callable[[], bool]) -> None:
        with anyio.fail_after(1.0):
            while not predicate():
                await self._changed.wait()

    def started(self) -> list[str]:
        return [ts_ for batch in self.batches for ts_ in batch]


# --- JobQueue ------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_never_more_than_max_concurrent_and_fifo():
    gate = Gate()
    queue = JobQueue(gate, max_concurrent=2)
    async with anyio.create_task_group() as tg:
        queue.attach(tg)
        positions = [queue.submit(job(f"T{n}", n)) for n in range(1, 7)]
        assert positions == [0, 0, 1, 2, 3, 4]
        assert queue.running == 2
        assert queue.pending == 4
        await gate.until(lambda: len(gate.batches) == 2)
        await anyio.wait_all_tasks_blocked()  # give a wrongly started job every chance to show up
        assert gate.started() == [ts(1), ts(2)]

        for n in range(1, 7):
            gate.release(ts(n))

            def finished(trigger: str = ts(n)) -> bool:
                return trigger in gate.finished

            await gate.until(finished)
            assert len(gate.running) <= 2
        with anyio.fail_after(1.0):
            await queue.wait_idle()
    assert gate.started() == [ts(n) for n in range(1, 7)]
    assert gate.peak == 2
    assert queue.peak_running == 2
    assert queue.running == 0
    assert queue.pending == 0


@pytest.mark.anyio
async def test_jobs_wait_until_the_queue_is_attached():
    gate = Gate()
    queue = JobQueue(gate, max_concurrent=3)
    assert queue.submit(job("T1", 1)) == 1
    assert queue.submit(job("T2", 2)) == 2
    assert queue.position(("C1", "T2")) == 2
    assert queue.position(("C1", "T9")) == 0
    async with anyio.create_task_group() as tg:
        queue.attach(tg)
        await gate.until(lambda: len(gate.batches) == 2)
        assert queue.pending == 0
        gate.release(ts(1))
        gate.release(ts(2))
    assert gate.started() == [ts(1), ts(2)]


@pytest.mark.anyio
async def test_one_thread_never_runs_twice_at_once_and_keeps_its_order():
    gate = Gate()
    queue = JobQueue(gate, max_concurrent=4)
    async with anyio.create_task_group() as tg:
        queue.attach(tg)
        assert queue.submit(job("A", 1)) == 0
        assert queue.submit(job("A", 2)) == 1  # same thread: waits although there is capacity
        assert queue.submit(job("B", 3)) == 0  # another thread goes past it
        assert queue.submit(job("A", 4)) == 2
        await gate.until(lambda: len(gate.batches) == 2)
        await anyio.wait_all_tasks_blocked()  # give a wrongly started job every chance to show up
        assert gate.started() == [ts(1), ts(3)]

        gate.release(ts(1))
        await gate.until(lambda: ts(2) in gate.started())
        assert ts(4) not in gate.started()
        gate.release(ts(2))
        await gate.until(lambda: ts(4) in gate.started())
        gate.release(ts(3))
        gate.release(ts(4))
    assert gate.batches == [[ts(1)], [ts(3)], [ts(2)], [ts(4)]]
    assert not gate.overlap_same_thread


@pytest.mark.anyio
async def test_follow_ups_for_a_busy_thread_are_handed_over_as_one_batch():
    gate = Gate()
    queue = JobQueue(gate, max_concurrent=2)
    async with anyio.create_task_group() as tg:
        queue.attach(tg)
        queue.submit(job("A", 1))
        assert queue.submit(job("A", 2, new_session=False)) == 1
        assert queue.submit(job("A", 3, new_session=False)) == 2
        queue.submit(job("B", 4))
        assert queue.submit(job("A", 5, new_session=False)) == 3
        await gate.until(lambda: len(gate.batches) == 2)
        gate.release(ts(1))
        await gate.until(lambda: len(gate.batches) == 3)
        assert gate.batches[2] == [ts(2), ts(3), ts(5)]
        assert queue.pending == 0
        gate.release(ts(2))
        gate.release(ts(4))
    assert not gate.overlap_same_thread


@pytest.mark.anyio
async def test_a_crashing_handler_does_not_stop_the_queue():
    ran: list[str] = []

    async def handler(jobs: list[Job]) -> None:
        ran.append(jobs[0].trigger_ts)
        if jobs[0].trigger_ts == ts(1):
            raise RuntimeError("boom")

    queue = JobQueue(handler, max_concurrent=1)
    async with anyio.create_task_group() as tg:
        queue.attach(tg)
        queue.submit(job("A", 1))
        queue.submit(job("A", 2))
        queue.submit(job("B", 3))
        with anyio.fail_after(1.0):
            await queue.wait_idle()
    assert ran == [ts(1), ts(2), ts(3)]
    assert queue.running == 0


# --- Dispatcher.on_message --------------------------------------------------------------------------------------


class Harness:
    def __init__(self, store: Store, max_input_chars: int | None = None) -> None:
        self.store = store
        self.accepted: list[tuple[Job, int]] = []
        self.refused: list[IncomingMessage] = []
        self.why: list[str] = []
        self.queue = JobQueue(self._never_runs, max_concurrent=2)  # not attached: jobs only queue
        self.dispatcher = Dispatcher(
            store,
            self.queue,
            bot_user_id=BOT,
            is_allowed=lambda user: user in ALLOWED,
            on_accepted=lambda j, position: self.accepted.append((j, position)),
            on_refused=self._refused,
            workdir_for=lambda _channel: "/work/dir",
            max_input_chars=max_input_chars,
        )

    def _refused(self, msg: IncomingMessage, why: str) -> None:
        self.refused.append(msg)
        self.why.append(why)

    @staticmethod
    async def _never_runs(jobs: list[Job]) -> None:  # pragma: no cover - the queue is never attached
        raise AssertionError("no job should run here")

    def say(self, n: int, text: str = "hello", **kw: object) -> Job | None:
        fields: dict[str, object] = {"channel": "C1", "ts": ts(n), "text": text, "user": "U1"}
        fields.update(kw)
        return self.dispatcher.on_message(IncomingMessage(**fields))  # type: ignore[arg-type]


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    store = Store.open(tmp_path / "x.db")
    yield Harness(store)
    store.close()


def test_plain_channel_chatter_is_recorded_but_makes_no_job(harness):
    assert harness.say(1, "lunch?") is None
    assert harness.say(2, "in a thread nobody asked me in", thread_ts=ts(1)) is None
    stored = harness.store.get_message("C1", ts(1))
    assert stored is not None
    assert (stored.text, stored.user, stored.from_self) == ("lunch?", "U1", False)
    assert harness.store.get_message("C1", ts(2)) is not None
    assert harness.accepted == []
    assert harness.refused == []
    assert harness.queue.pending == 0


@pytest.mark.parametrize("subtype", ["channel_join", "group_join", "channel_topic", "bot_add"])
def test_join_and_housekeeping_subtypes_are_ignored(harness, subtype):
    assert harness.say(1, f"<@{BOT}> has joined", subtype=subtype, mentions_bot=True) is None
    assert harness.store.get_message("C1", ts(1)) is None
    assert harness.accepted == []


def test_other_bots_are_recorded_but_never_start_work(harness):
    made = harness.say(1, f"<@{BOT}> deploy", user=None, bot_id="B999", subtype="bot_message", mentions_bot=True)
    assert made is None
    assert harness.say(2, f"<@{BOT}> deploy", user="U2", bot_id="B998", mentions_bot=True) is None
    stored = harness.store.get_message("C1", ts(1))
    assert stored is not None
    assert stored.bot_id == "B999"
    assert harness.accepted == []
    assert harness.refused == []


def test_own_messages_are_recorded_as_from_self_and_make_no_job(harness):
    harness.store.save_thread(ThreadSession("C1", ts(1), "sess", "/w", True, ts(1), "U1"))
    assert harness.say(2, "my answer", user=BOT, bot_id="BSELF", thread_ts=ts(1)) is None
    assert harness.say(3, "my notice", user=BOT, thread_ts=ts(1)) is None
    stored = harness.store.get_message("C1", ts(2))
    assert stored is not None
    assert stored.from_self is True
    assert harness.accepted == []


def test_a_mention_from_an_allowed_user_makes_one_job(harness):
    made = harness.say(1, f"<@{BOT}> fix the test", mentions_bot=True, received=12.5)
    assert made == Job("C1", ts(1), ts(1), "U1", new_session=True, received=12.5, is_dm=False)
    assert harness.accepted == [(made, 1)]  # queued: the queue is not attached in these tests
    assert harness.queue.pending == 1
    thread = harness.store.get_thread("C1", ts(1))
    assert thread is not None
    assert (thread.requester, thread.workdir, thread.started) == ("U1", "/work/dir", False)
    assert [r.ts for r in harness.store.unfinished_requests()] == [ts(1)]


def test_a_mention_inside_a_thread_targets_the_thread(harness):
    harness.say(1, "the build is red")
    made = harness.say(2, f"<@{BOT}> why?", thread_ts=ts(1), mentions_bot=True)
    assert made is not None
    assert (made.thread_ts, made.trigger_ts) == (ts(1), ts(2))


def test_the_same_message_twice_makes_one_job(harness):
    # a mention arrives as app_mention and as message, with different event ids
    first = harness.say(1, f"<@{BOT}> go", mentions_bot=True, event_id="Ev1")
    second = harness.say(1, f"<@{BOT}> go", mentions_bot=True, event_id="Ev2")
    assert first is not None
    assert second is None
    assert len(harness.accepted) == 1
    assert harness.queue.pending == 1


def test_a_reply_in_a_session_thread_is_a_follow_up_without_a_mention(harness):
    harness.store.save_thread(ThreadSession("C1", ts(1), "sess-1", "/w", True, ts(2), "U1"))
    made = harness.say(3, "and the docs too", user="U2", thread_ts=ts(1))
    assert made is not None
    assert (made.thread_ts, made.trigger_ts, made.user, made.new_session) == (ts(1), ts(3), "U2", False)
    assert harness.store.get_thread("C1", ts(1)) == ThreadSession("C1", ts(1), "sess-1", "/w", True, ts(2), "U1")


def test_a_reply_while_the_first_run_is_going_is_a_follow_up(harness):
    # the thread row exists (its first run is queued or running) but the session has not started yet:
    # the reply is a follow-up, so it waits for that run and is batched with other replies
    harness.store.save_thread(ThreadSession("C1", ts(1), "", "/w", False, "0", "U1"))
    made = harness.say(2, "more detail", thread_ts=ts(1))
    assert made is not None
    assert made.new_session is False


def test_a_top_level_message_whose_ts_has_a_session_is_not_a_follow_up(harness):
    harness.store.save_thread(ThreadSession("C1", ts(1), "sess-1", "/w", True, ts(1), "U1"))
    assert harness.say(1, "the parent itself, edited or re-delivered") is None


def test_a_not_allowed_user_is_refused_once_per_thread_for_replies_but_on_every_mention(harness):
    harness.store.save_thread(ThreadSession("C1", ts(1), "sess-1", "/w", True, ts(1), "U1"))
    assert harness.say(2, "can I?", user="U9", thread_ts=ts(1)) is None
    assert harness.say(3, "please?", user="U9", thread_ts=ts(1)) is None
    assert [m.ts for m in harness.refused] == [ts(2)]
    assert harness.say(4, f"<@{BOT}> now?", user="U9", thread_ts=ts(1), mentions_bot=True) is None
    assert harness.say(5, f"<@{BOT}> and now?", user="U9", thread_ts=ts(1), mentions_bot=True) is None
    assert [m.ts for m in harness.refused] == [ts(2), ts(4), ts(5)]
    assert harness.say(6, f"<@{BOT}> elsewhere", user="U9", mentions_bot=True) is None
    assert [m.ts for m in harness.refused] == [ts(2), ts(4), ts(5), ts(6)]
    # nothing ran, nothing was claimed, but everything is recorded as context
    assert harness.accepted == []
    assert harness.queue.pending == 0
    assert harness.store.unfinished_requests() == []
    assert harness.store.get_message("C1", ts(3)) is not None


def test_a_not_allowed_users_plain_chatter_is_not_refused(harness):
    assert harness.say(1, "just talking", user="U9") is None
    assert harness.refused == []


def test_one_mention_by_a_not_allowed_user_is_refused_once(harness):
    harness.say(1, f"<@{BOT}> run this", user="U9", mentions_bot=True, event_id="EvMention")
    harness.say(1, f"<@{BOT}> run this", user="U9", mentions_bot=True, event_id="EvMessage")
    assert len(harness.refused) == 1


def test_a_direct_message_makes_a_job_without_a_mention(harness):
    made = harness.say(1, "hi, can you check the logs?", channel="D042", channel_type="im")
    assert made is not None
    assert (made.channel, made.thread_ts, made.is_dm, made.new_session) == ("D042", ts(1), True, True)
    follow = harness.say(2, "and this", channel="D042", channel_type="im")
    assert follow is not None
    assert follow.thread_ts == ts(2)  # each top-level DM is its own conversation
    assert len(harness.accepted) == 2


def test_a_not_allowed_user_in_a_dm_is_refused_every_time(harness):
    harness.say(1, "hi", user="U9", channel="D042", channel_type="im")
    harness.say(2, "hello?", user="U9", channel="D042", channel_type="im")
    assert [m.ts for m in harness.refused] == [ts(1), ts(2)]
    assert harness.accepted == []


def test_file_shares_and_broadcasts_count_as_messages(harness):
    assert harness.say(1, f"<@{BOT}> see attached", subtype="file_share", mentions_bot=True) is not None
    harness.store.save_thread(ThreadSession("C1", ts(5), "s", "/w", True, ts(5), "U1"))
    assert harness.say(6, "also to channel", subtype="thread_broadcast", thread_ts=ts(5)) is not None
    assert harness.say(7, "edited", subtype="message_changed", thread_ts=ts(5)) is None


def test_incoming_message_helpers():
    top = IncomingMessage("C1", ts(1), "x", "U1")
    reply = IncomingMessage("C1", ts(2), "x", "U1", thread_ts=ts(1))
    assert top.reply_target == ts(1)
    assert reply.reply_target == ts(1)
    assert not top.is_dm
    assert IncomingMessage("D1", ts(1), "x", "U1").is_dm
    assert IncomingMessage("C1", ts(1), "x", "U1", channel_type="im").is_dm


def test_a_task_over_the_input_limit_runs_nothing_and_is_told_once(tmp_path):
    store = Store.open(tmp_path / "x.db")
    harness = Harness(store, max_input_chars=100)
    long = f"<@{BOT}> " + "x" * 100
    assert harness.say(1, long, mentions_bot=True, event_id="Ev1") is None  # as app_mention...
    assert harness.say(1, long, mentions_bot=True, event_id="Ev2") is None  # ...and as message: told once
    harness.store.save_thread(ThreadSession("C1", ts(5), "sess-1", "/w", True, ts(5), "U1"))
    assert harness.say(6, "y" * 101, thread_ts=ts(5)) is None  # a follow-up
    assert harness.say(7, "z" * 101, channel="D1", channel_type="im") is None  # a DM
    assert [(m.ts, len(m.text)) for m in harness.refused] == [(ts(1), len(long)), (ts(6), 101), (ts(7), 101)]
    assert harness.why == ["too_long"] * 3
    assert harness.accepted == [] and harness.queue.pending == 0
    assert harness.store.unfinished_requests() == []
    stored = harness.store.get_message("C1", ts(6))  # still recorded: context for what comes next
    assert stored is not None and stored.text == "y" * 101
    assert harness.say(8, "w" * 100, thread_ts=ts(5)) is not None  # at the limit: a task
    store.close()
