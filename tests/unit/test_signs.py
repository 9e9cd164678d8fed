"""signs.Signs: the reactions on a request (👀 ⏳ ✅ ❌ 🛑) and the notices that go with them, over a fake Poster."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup

from bot.core import signs
from bot.core.dispatcher import Job
from bot.core.signs import Signs
from tests.fakes.poster import FakePoster

C = "C1"
THREAD = "1700000001.000100"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def job(n: int, thread: str = THREAD) -> Job:
    return Job(channel=C, thread_ts=thread, trigger_ts=f"1700000{n:03d}.000200", user="U1", new_session=False,
               received=0.0)


@pytest.fixture
async def tg() -> AsyncIterator[TaskGroup]:
    async with anyio.create_task_group() as group:
        yield group
        group.cancel_scope.cancel()


@pytest.fixture
async def poster() -> FakePoster:
    return FakePoster()


@pytest.fixture
def sign(poster: FakePoster, tg: TaskGroup) -> Signs:
    def spawn(fn: Callable[..., Coroutine[Any, Any, object]], *args: object) -> None:  # the bot's: in its root group
        tg.start_soon(fn, *args)

    return Signs(poster, spawn, max_concurrent=2)


def test_queued_text_says_task_or_tasks() -> None:
    assert signs.queued_text(3, 1) == (":hourglass_flowing_sand: Queued, position 3: 1 task is running. I'll start as "
                                       "soon as one finishes.")
    assert "position 1: 4 tasks are running" in signs.queued_text(1, 4)


@pytest.mark.anyio
async def test_seen_puts_eyes_on_the_request(poster: FakePoster, sign: Signs) -> None:
    j = job(2)
    sign.seen(j)
    await poster.until(lambda: poster.on(C, j.trigger_ts))
    assert poster.on(C, j.trigger_ts) == {"eyes"}
    assert poster.posts == {}


@pytest.mark.anyio
async def test_a_queued_notice_is_posted_in_the_thread_and_taken_once(poster: FakePoster, sign: Signs) -> None:
    j = job(2)
    sign.queued(j, 3, behind_own_thread=False, still_waiting=lambda: True)
    await poster.until(lambda: poster.posts)
    (notice,) = poster.in_thread(C, THREAD)
    assert notice.text == signs.queued_text(3, 2)  # the running count is the bot's cap, not the position
    assert poster.on(C, j.trigger_ts) == set()  # a notice, not ⏳

    assert await sign.take_notices([j]) == notice.ts  # the run's status message takes it over
    assert await sign.take_notices([j]) is None  # once
    assert notice.versions == [notice.message]  # taking it edits nothing


@pytest.mark.anyio
async def test_a_batch_keeps_the_first_notice_and_tells_the_others_it_started(poster: FakePoster, sign: Signs) -> None:
    first, second, third = job(2), job(3), job(4)
    sign.queued(first, 1, behind_own_thread=False, still_waiting=lambda: True)
    await poster.until(lambda: len(poster.posts) == 1)
    sign.queued(third, 2, behind_own_thread=False, still_waiting=lambda: True)
    await poster.until(lambda: len(poster.posts) == 2)
    first_ts, third_ts = list(poster.posts)

    assert await sign.take_notices([first, second, third]) == first_ts
    assert poster.posts[first_ts].text == signs.queued_text(1, 2)  # the status message will replace it
    assert poster.posts[third_ts].text == signs.STARTED_TOGETHER
    assert await sign.take_notices([third]) is None


@pytest.mark.anyio
async def test_a_notice_posted_after_the_run_started_says_started(poster: FakePoster, sign: Signs) -> None:
    j = job(2)
    waiting = True
    poster.hold("post")
    sign.queued(j, 1, behind_own_thread=False, still_waiting=lambda: waiting)
    await poster.until(lambda: poster.count("post") == 1)
    waiting = False  # the run took the request while its notice was on its way
    poster.release("post")
    await poster.until(lambda: poster.count("update") == 1)
    (notice,) = poster.posts.values()
    assert notice.text == signs.STARTED
    assert await sign.take_notices([j]) is None  # nothing left for the run's status to take over


@pytest.mark.anyio
async def test_a_follow_up_behind_its_own_thread_shows_the_hourglass_until_its_run_starts(
    poster: FakePoster, sign: Signs, tg: TaskGroup
) -> None:
    j = job(2)
    sign.queued(j, 1, behind_own_thread=True, still_waiting=lambda: True)
    await poster.until(lambda: poster.on(C, j.trigger_ts))
    assert poster.on(C, j.trigger_ts) == {"hourglass_flowing_sand"}
    assert poster.posts == {}  # no notice for it

    sign.starting([j])
    await poster.until(lambda: not poster.on(C, j.trigger_ts))
    sign.starting([j])  # only once
    await anyio.wait_all_tasks_blocked()
    assert poster.count("unreact") == 1


@pytest.mark.anyio
async def test_an_hourglass_for_a_request_that_already_started_comes_off_at_once(poster: FakePoster,
                                                                                  sign: Signs) -> None:
    j = job(2)
    sign.queued(j, 1, behind_own_thread=True, still_waiting=lambda: False)
    await poster.until(lambda: poster.count("unreact") == 1)
    assert poster.on(C, j.trigger_ts) == set()
    sign.starting([j])  # it was taken off already: nothing more to take off
    await anyio.wait_all_tasks_blocked()
    assert poster.count("unreact") == 1


@pytest.mark.anyio
async def test_starting_leaves_requests_without_an_hourglass_alone(poster: FakePoster, sign: Signs) -> None:
    sign.starting([job(2), job(3)])
    await anyio.wait_all_tasks_blocked()
    assert poster.calls == []


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "reaction"), [("done", "white_check_mark"), ("cancelled", "octagonal_sign"),
                                                  ("failed", "x"), ("interrupted", "x")])
async def test_finished_swaps_the_eyes_for_the_outcome_on_every_request(
    poster: FakePoster, sign: Signs, status: str, reaction: str
) -> None:
    jobs = [job(2), job(3)]
    for j in jobs:
        sign.seen(j)
    await poster.until(lambda: poster.count("react") == 2)
    await sign.finished(jobs, status)  # awaited: the signs are on when it returns
    for j in jobs:
        assert poster.on(C, j.trigger_ts) == {reaction}


@pytest.mark.anyio
async def test_a_request_cancelled_before_it_started_gets_the_stop_sign(poster: FakePoster, sign: Signs) -> None:
    j = job(2)
    sign.seen(j)
    await poster.until(lambda: poster.on(C, j.trigger_ts))
    sign.cancelled_before_start([j])
    await poster.until(lambda: poster.on(C, j.trigger_ts) == {"octagonal_sign"})


@pytest.mark.anyio
async def test_after_a_restart_the_thread_is_told_and_the_eyes_come_off(poster: FakePoster, sign: Signs) -> None:
    j = job(2)
    sign.seen(j)
    await poster.until(lambda: poster.on(C, j.trigger_ts))
    sign.restarted(C, THREAD)
    sign.interrupted(C, j.trigger_ts)
    await poster.until(lambda: poster.posts and not poster.on(C, j.trigger_ts))
    (notice,) = poster.in_thread(C, THREAD)
    assert notice.text == signs.RESTARTED
