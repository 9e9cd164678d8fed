"""What a request shows in Slack while it waits and runs, in one place: the reactions on the message that asked
(👀 working, ⏳ waiting behind its own thread, ✅ done, ❌ failed, 🛑 stopped) and the notices that go with them
(queued, started, restarted, shutting down).

Signs are side tasks: each goes through `spawn` (started in the bot's root task group, its failure logged), so
a slow or failing reaction never holds up a run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import anyio

from bot.core import renderer
from bot.core.dispatcher import Job
from bot.core.poster import Poster
from bot.log import get_logger

log = get_logger("slackbus.signs")

WORKING = "eyes"
QUEUED = "hourglass_flowing_sand"
DONE = "white_check_mark"
FAILED = "x"
STOPPED = "octagonal_sign"
FINAL = {"done": DONE, "cancelled": STOPPED}  # a run's status → its reaction; anything else is FAILED

RESTARTED = (":warning: slackbus restarted while working on this, so the run stopped. Reply here to continue.")
SHUTTING_DOWN = (":warning: slackbus is shutting down, so this run stopped. Reply here to continue once it is "
                 "back.")
HANDED_ON = (":warning: This host of slackbus is shutting down, so this run stopped here; another host picks it up "
             "and goes on in this thread.")
STARTED = ":arrow_forward: Started."
STARTED_TOGETHER = ":arrow_forward: Started, together with the messages before it in this thread."

Spawn = Callable[..., None]  # spawn(async_fn, *args): a side task in the bot's root task group


def queued_text(position: int, running: int) -> str:
    tasks = "task is" if running == 1 else "tasks are"
    return (f":hourglass_flowing_sand: Queued, position {position}: {running} {tasks} running. I'll start as soon "
            "as one finishes.")


class Signs:
    def __init__(self, poster: Poster, spawn: Spawn, *, max_concurrent: int) -> None:
        self._poster = poster
        self._spawn = spawn
        self._max_concurrent = max_concurrent
        self._waiting_reaction: set[tuple[str, str]] = set()  # (channel, ts) showing ⏳
        self._notices: dict[tuple[str, str], str] = {}  # (channel, trigger ts) → its "Queued" notice's ts

    # --- a request arrives ------------------------------------------------------------------------------------
    def seen(self, job: Job) -> None:
        """👀 on the message, as soon as it is accepted."""
        self._spawn(self._first_sign, job)

    async def _first_sign(self, job: Job) -> None:
        await self._poster.react(job.channel, job.sign_ts, WORKING)
        log.info("run.first_sign", channel=job.channel, ts=job.trigger_ts,
                 ms=round((time.monotonic() - job.received) * 1000, 2))

    def queued(self, job: Job, position: int, *, behind_own_thread: bool,
               still_waiting: Callable[[], bool]) -> None:
        """A request that waits: ⏳ on a follow-up behind its own thread's run, else a "Queued" notice in the thread
        (which the run that takes it turns into its status message)."""
        self._spawn(self._queued, job, position, behind_own_thread, still_waiting)

    async def _queued(self, job: Job, position: int, behind_own_thread: bool,
                      still_waiting: Callable[[], bool]) -> None:
        key = (job.channel, job.trigger_ts)
        if behind_own_thread:  # answered right after its thread's run
            self._waiting_reaction.add(key)
            await self._poster.react(job.channel, job.sign_ts, QUEUED)
            if not still_waiting():
                self._waiting_reaction.discard(key)
                await self._poster.unreact(job.channel, job.sign_ts, QUEUED)
            return
        ts = await self._poster.post(job.channel, job.thread_ts,
                                     renderer.render_notice(queued_text(position, self._max_concurrent)))
        if still_waiting():
            self._notices[key] = ts
        else:  # it started while the notice was being posted
            await self._poster.update(job.channel, ts, renderer.render_notice(STARTED))

    # --- a run takes requests ----------------------------------------------------------------------------------
    def starting(self, jobs: Iterable[Job]) -> None:
        """The ⏳ of requests a run now takes comes off."""
        for job in jobs:
            key = (job.channel, job.trigger_ts)
            if key in self._waiting_reaction:
                self._waiting_reaction.discard(key)
                self._spawn(self._poster.unreact, job.channel, job.sign_ts, QUEUED)

    async def take_notices(self, jobs: list[Job]) -> str | None:
        """The "Queued" notice the run's status takes over (the first one), the others saying the run started with
        them; None when no notice was posted."""
        status: str | None = None
        for job in jobs:
            notice = self._notices.pop((job.channel, job.trigger_ts), None)
            if notice and status is None:
                status = notice
            elif notice:
                await self._poster.update(job.channel, notice, renderer.render_notice(STARTED_TOGETHER))
        return status

    async def finished(self, jobs: Iterable[Job], status: str) -> None:
        """👀 off, and ✅, 🛑 or ❌ on every message the run answered."""
        reaction = FINAL.get(status, FAILED)
        async with anyio.create_task_group() as tg:
            for job in jobs:
                tg.start_soon(self._poster.unreact, job.channel, job.sign_ts, WORKING)
                tg.start_soon(self._poster.react, job.channel, job.sign_ts, reaction)

    def cancelled_before_start(self, jobs: Iterable[Job]) -> None:
        for job in jobs:
            self._spawn(self._poster.unreact, job.channel, job.sign_ts, WORKING)
            self._spawn(self._poster.react, job.channel, job.sign_ts, STOPPED)

    # --- after a restart -----------------------------------------------------------------------------------------
    def restarted(self, channel: str, thread_ts: str) -> None:
        """A run the last bot process was running: its thread is told it stopped."""
        self._spawn(self._poster.post, channel, thread_ts, renderer.render_notice(RESTARTED))

    def interrupted(self, channel: str, ts: str) -> None:
        """A request that was running when the bot stopped: its 👀 comes off."""
        self._spawn(self._poster.unreact, channel, ts, WORKING)
