"""progress.Progress: a run's status message, shown at its first tool call (or after a delay), edited in place,
coalesced, paced and within the bot-wide RateBudget; progress.RateBudget itself on a fake clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest
from pytest_mock import MockerFixture
from structlog.testing import capture_logs

from bot.core import progress
from bot.core.pipeline import RunHandle
from bot.core.progress import Progress, RateBudget, describe_step
from bot.core.renderer import SlackMessage
from bot.core.stream_parser import AssistantText, ToolCall
from tests.fakes.poster import FakePoster

C, THREAD = "C1", "1700000001.000100"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def paced(mocker: MockerFixture) -> Callable[..., None]:
    """Set the status delay and the pace between edits (seconds) for this test."""

    def pace(delay: float = 30.0, interval: float = 0.0) -> None:
        mocker.patch.object(progress, "STATUS_DELAY_S", delay)
        mocker.patch.object(progress, "MIN_EDIT_INTERVAL_S", interval)

    return pace


def handle(**kw: Any) -> RunHandle:
    return RunHandle(run_id="r1", channel=C, thread_ts=THREAD, requester="U1", trigger_ts=(THREAD,), **kw)


def tool(name: str, n: int = 1, **args: Any) -> ToolCall:
    return ToolCall(f"toolu_{n}", name, args)


async def until(predicate: Callable[[], object]) -> None:
    """For what no event signals (a spy's count, a log line): look again every millisecond."""
    with anyio.fail_after(2):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.001)


def called(spy: Any, times: int) -> Callable[[], bool]:
    return lambda: spy.call_count >= times


def facts(message: Any) -> str:
    """The status message's line of facts (where · elapsed · tool calls)."""
    (context,) = [b for b in message.blocks if b["type"] == "context"]
    return str(context["elements"][0]["text"])


# --- RateBudget -------------------------------------------------------------------------------------------------


def test_the_budget_allows_a_burst_then_refills_at_its_rate(mocker: MockerFixture) -> None:
    clock = mocker.patch.object(progress, "time")
    clock.monotonic.return_value = 100.0
    budget = RateBudget(rate=0.5, burst=2)
    assert [budget.try_take() for _ in range(3)] == [True, True, False]
    clock.monotonic.return_value = 101.0  # half a token back
    assert budget.try_take() is False
    clock.monotonic.return_value = 102.0  # a whole one
    assert [budget.try_take(), budget.try_take()] == [True, False]
    clock.monotonic.return_value = 1000.0  # a long quiet time refills up to the burst, no more
    assert [budget.try_take() for _ in range(3)] == [True, True, False]


# --- what a step says ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("call", "in_a_row", "step"), [
    (tool("Bash", command="pytest -q\n  tests/unit"), 1, "Running `pytest -q tests/unit`"),
    (tool("Read", file_path="/home/me/repo/bot/core/progress.py"), 1, "Reading bot/core/progress.py"),
    (tool("Read", file_path="/x/a.py"), 3, "Reading 3 files"),
    (tool("Edit", file_path="/r/a.py"), 2, "Editing 2 files"),
    (tool("Write", file_path="notes.md"), 1, "Writing notes.md"),
    (tool("Grep", pattern="TODO"), 1, "Searching for `TODO`"),
    (tool("Task", description="find the flaky test"), 1, "Running a subagent: find the flaky test"),
    (tool("mcp__slackbus__post"), 1, "Using mcp__slackbus__post"),
])
def test_a_step_says_what_the_tool_call_does(call: ToolCall, in_a_row: int, step: str) -> None:
    assert describe_step(call, in_a_row) == step


# --- the status message -------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_quick_answer_without_tools_never_shows_a_status(paced: Callable[..., None]) -> None:
    paced(delay=0.05)
    poster, h = FakePoster(), handle()
    p = Progress(h, poster, RateBudget())

    async def answer_soon() -> None:
        p.on_event(AssistantText("Here it is."))  # text is not a step
        async with h.lock:  # what the pipeline does as it delivers the answer
            h.answered = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(answer_soon)
        with anyio.fail_after(2):
            await p.run()  # returns by itself once the delay is over: the run was answered
    assert poster.calls == []
    assert h.status_ts is None and p.first_shown_at is None


@pytest.mark.anyio
async def test_the_first_tool_call_shows_the_status_at_once_with_a_stop_button(paced: Callable[..., None]) -> None:
    paced(delay=30.0)
    poster, h = FakePoster(), handle(where="repo · model opus")
    p = Progress(h, poster, RateBudget())
    async with anyio.create_task_group() as tg:
        tg.start_soon(p.run)
        p.on_event(tool("Bash", command="pytest -q"))
        await poster.until(lambda: poster.posts)
        tg.cancel_scope.cancel()
    (status,) = poster.in_thread(C, THREAD)
    assert h.status_ts == status.ts
    assert status.message.text == "Running `pytest -q`…"
    assert facts(status.message).startswith("repo · model opus · ") and facts(status.message).endswith("1 tool call")
    (actions,) = [b for b in status.message.blocks if b["type"] == "actions"]
    (stop,) = actions["elements"]
    assert (stop["action_id"], stop["value"], stop["text"]["text"]) == ("slackbus_stop", f"{C}|{THREAD}", "Stop")
    assert p.tool_calls == 1 and p.first_step_at is not None and p.first_shown_at is not None
    assert p.edits == 0


@pytest.mark.anyio
async def test_a_run_without_tools_shows_its_status_after_the_delay(paced: Callable[..., None]) -> None:
    paced(delay=0.05)
    poster, h = FakePoster(), handle()
    p = Progress(h, poster, RateBudget())
    async with anyio.create_task_group() as tg:
        tg.start_soon(p.run)
        await poster.until(lambda: poster.posts)
        tg.cancel_scope.cancel()
    (status,) = poster.posts.values()
    assert status.message.text == "Working on it…"
    assert facts(status.message).endswith("0 tool calls")


@pytest.mark.anyio
async def test_steps_that_come_together_make_one_edit(paced: Callable[..., None]) -> None:
    paced(delay=30.0, interval=0.0)
    poster, h = FakePoster(), handle()
    p = Progress(h, poster, RateBudget())
    async with anyio.create_task_group() as tg:
        tg.start_soon(p.run)
        p.on_event(tool("Bash", 1, command="ls"))
        await poster.until(lambda: poster.posts)
        for n in range(2, 5):  # three reads in one go, before the progress task runs again
            p.on_event(tool("Read", n, file_path=f"/r/{n}.py"))
        await poster.until(lambda: poster.count("update"))
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    (status,) = poster.posts.values()
    assert poster.count("update") == 1 and p.edits == 1
    assert status.message.text == "Reading 3 files…"
    assert facts(status.message).endswith("4 tool calls")


@pytest.mark.anyio
async def test_edits_wait_for_the_pace(paced: Callable[..., None]) -> None:
    paced(delay=30.0, interval=30.0)
    poster, h = FakePoster(), handle()
    p = Progress(h, poster, RateBudget())
    async with anyio.create_task_group() as tg:
        tg.start_soon(p.run)
        p.on_event(tool("Bash", 1, command="ls"))
        await poster.until(lambda: poster.posts)
        p.on_event(tool("Bash", 2, command="make"))
        await anyio.sleep(0.1)
        tg.cancel_scope.cancel()
    assert poster.count("update") == 0  # the next edit is due 30 s after the first post
    assert p.step == "Running `make`"  # though the step is known


@pytest.mark.anyio
async def test_edits_stop_when_the_bot_wide_budget_is_spent(paced: Callable[..., None], mocker: MockerFixture) -> None:
    paced(delay=30.0, interval=0.0)
    poster, h = FakePoster(), handle()
    budget = RateBudget(rate=0.0, burst=2)  # two edits, never more
    asked = mocker.spy(budget, "try_take")
    p = Progress(h, poster, budget)
    async with anyio.create_task_group() as tg:
        tg.start_soon(p.run)
        p.on_event(tool("Bash", 0, command="ls"))
        await poster.until(lambda: poster.posts)
        for n in range(1, 6):
            p.on_event(tool("Bash", n, command=f"step {n}"))
            await until(called(asked, n))
        tg.cancel_scope.cancel()
    assert poster.count("post") == 1 and poster.count("update") == 2 and p.edits == 2
    (status,) = poster.posts.values()
    assert status.message.text == "Running `step 2`…"  # the last edit the budget allowed


@pytest.mark.anyio
async def test_a_queued_notice_becomes_the_status_without_waiting(paced: Callable[..., None]) -> None:
    paced(delay=30.0)
    poster = FakePoster()
    notice = await poster.post(C, THREAD, SlackMessage(text="Queued, position 1"))
    h = handle(status_ts=notice)
    p = Progress(h, poster, RateBudget())
    async with anyio.create_task_group() as tg:
        tg.start_soon(p.run)
        await poster.until(lambda: poster.count("update"))
        tg.cancel_scope.cancel()
    assert poster.count("post") == 1  # the notice only
    assert poster.posts[notice].message.text == "Working on it…"
    assert p.first_shown_at is not None


@pytest.mark.anyio
async def test_a_refused_status_is_logged_and_tried_again_at_the_next_step(paced: Callable[..., None]) -> None:
    paced(delay=30.0, interval=0.0)
    poster, h = FakePoster(), handle()
    poster.fail.add("post")
    p = Progress(h, poster, RateBudget())
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(p.run)
            p.on_event(tool("Bash", 1, command="ls"))
            await until(lambda: any(e["event"] == "progress.failed" for e in logs))
            poster.fail.clear()
            p.on_event(tool("Bash", 2, command="make"))
            await poster.until(lambda: poster.posts)
            tg.cancel_scope.cancel()
    (failed,) = [e for e in logs if e["event"] == "progress.failed"]
    assert (failed["channel"], failed["thread_ts"]) == (C, THREAD) and "post refused" in failed["error"]
    (status,) = poster.posts.values()
    assert status.message.text == "Running `make`…" and h.status_ts == status.ts


@pytest.mark.anyio
async def test_nothing_is_edited_once_the_run_is_answered(paced: Callable[..., None]) -> None:
    paced(delay=30.0, interval=0.0)
    poster, h = FakePoster(), handle()
    p = Progress(h, poster, RateBudget())
    ended = anyio.Event()

    async def run() -> None:
        await p.run()
        ended.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        p.on_event(tool("Bash", 1, command="ls"))
        await poster.until(lambda: poster.posts)
        async with h.lock:  # what the pipeline does as it delivers the answer
            h.answered = True
        p.on_event(tool("Bash", 2, command="make"))
        with anyio.fail_after(2):
            await ended.wait()  # run() returns on its own
    assert poster.count("update") == 0
