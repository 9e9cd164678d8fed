"""Schedules: a prompt run in a channel at the times a cron expression names, as its owner's request.

`/claude schedule "0 9 * * 1-5" [tz=Europe/Berlin] summarise yesterday's merged PRs` adds one (admins, or every
allowed user with SLACKBUS_SCHEDULES=users); `/claude schedule list` and `/claude schedule rm ID`; SLACKBUS_CONFIG's
[[schedules]] add more (checked by bot.config; kept in step with the file at each start). All live in the store.

The loop sleeps until the nearest due time (at most MAX_SLEEP, and woken when a schedule is added or removed),
then, for each schedule, looks at the last time its cron names at or before now: if that is later than the last
time taken (or than its creation), the store takes it (once: `Store.claim_schedule`), and if it is at most
SLACKBUS_SCHEDULE_GRACE old it runs: a new top-level message in the channel (":alarm_clock: Scheduled (…)") and a
run in its thread, started the way `/claude <task>` starts one (Commands.start_task), with job.user = the owner,
so the spending limits count it against the owner and the channel. So a time missed while the bot was down runs
once at start if it is recent enough and is skipped otherwise; several missed times run once; never twice.

On several hosts (SLACKBUS_NATS_URL) each node keeps its own store: a schedule added with the command lives on the
node that took the command; one from the config file is on every node, and the cluster lets one node run each due
time (`claim_elsewhere`, bot.cluster.claims).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import anyio

from bot.config import Settings
from bot.core.events import SlashCommand
from bot.core.store import Schedule, Store
from bot.cron import CRON_HELP, ScheduleSpec, cron_problem, host_zone, latest_at_or_before, next_after, zone_problem
from bot.errors import StoreError
from bot.log import get_logger

log = get_logger("slackbus.schedules")

MAX_SLEEP = 60.0  # the clock is looked at again at least this often (a host suspended, the clock moved)
START_TIMEOUT = 60.0  # posting the top-level message and queueing the run
HEADING_CHARS = 300

USAGE = """\
*Schedules* run a prompt in this channel at the times a cron expression names, as if its owner had asked.
• `/claude schedule "0 9 * * 1-5" summarise yesterday's merged PRs`: add one (five fields: minute hour \
day-of-month month day-of-week; optional `tz=Europe/Berlin` after the quotes, default {tz}).
• `/claude schedule list`: this channel's schedules (admins: all), with their next and last runs.
• `/claude schedule rm ID`: remove one (its owner, whoever added it, or an admin)."""


class StartTask(Protocol):
    """Commands.start_task: posts `heading` in the channel and runs `text` in its thread as `user`'s request."""

    def __call__(self, user: str, channel: str, text: str, *, heading: str | None = ...,
                 kind: str = ...) -> Awaitable[str | None]: ...


def decision(schedule: Schedule, now: float, grace: float) -> tuple[str, float] | None:
    """What a schedule should do at `now`: ("run", due) for a due time not yet taken and at most `grace` seconds
    old, ("skip", due) for one older than that (missed while the bot was down), None when nothing is due."""
    due = latest_at_or_before(schedule.cron, schedule.tz, now)
    taken = schedule.last_due_at if schedule.last_due_at is not None else schedule.created_at
    if due <= taken:
        return None
    return ("run" if now - due <= grace else "skip", due)


def config_schedule(spec: ScheduleSpec, now: float) -> Schedule:
    """A [[schedules]] entry as a stored schedule; its id comes from what it says, so an unchanged entry keeps its
    history across restarts and a changed one starts afresh."""
    digest = hashlib.sha256("\0".join((spec.channel, spec.cron, spec.tz, spec.prompt, spec.owner)).encode())
    return Schedule(id=f"c{digest.hexdigest()[:6]}", channel=spec.channel, cron=spec.cron, tz=spec.tz,
                    prompt=spec.prompt, owner=spec.owner, created_by=None, created_at=now, source="config")


_QUOTED = re.compile(r"""\s*["“”'‘’]([^"“”'‘’]*)["“”'‘’]\s*(.*)""", re.S)


def _shortened(text: str, limit: int = HEADING_CHARS) -> str:
    return text if len(text) <= limit else text[:limit].rstrip() + " …"


class Schedules:
    def __init__(self, settings: Settings, store: Store, *, now: Callable[[], float] = time.time,
                 max_sleep: float = MAX_SLEEP) -> None:
        self._settings = settings
        self._store = store
        self._now = now
        self._max_sleep = max_sleep
        self._changed = anyio.Event()
        self.start_task: StartTask | None = None  # set once Commands exists (it takes this module's command)
        # several hosts: whether this node runs a due time (one node does; bot.cluster.claims); None on one host
        self.claim_elsewhere: Callable[[str, float], Awaitable[bool]] | None = None

    # --- the loop ------------------------------------------------------------------------------------------------
    def sync_config(self) -> None:
        """The config file's schedules into the store (new ones from now on, gone ones removed)."""
        now = self._now()
        self._store.sync_config_schedules([config_schedule(spec, now) for spec in self._settings.schedules])

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        self.sync_config()
        log.info("schedules.ready", count=len(self._store.schedules()), grace_s=self._settings.schedule_grace)
        task_status.started()
        while True:
            try:
                wait = await self.tick()
            except Exception as exc:  # the next pass tries again; the bot goes on
                log.error("schedules.tick_failed", error=f"{type(exc).__name__}: {exc}")
                wait = self._max_sleep
            with anyio.move_on_after(wait):
                await self._changed.wait()
            if self._changed.is_set():
                self._changed = anyio.Event()

    async def tick(self) -> float:
        """Run (or skip) what is due now; the seconds until the next due time (at most max_sleep)."""
        now = self._now()
        nearest = now + self._max_sleep
        for schedule in self._store.schedules():
            try:
                what = decision(schedule, now, self._settings.schedule_grace)
                nearest = min(nearest, next_after(schedule.cron, schedule.tz, now))
            except Exception as exc:  # a stored expression or zone this host cannot read (any more)
                log.error("schedules.unreadable", schedule=schedule.id, cron=schedule.cron, tz=schedule.tz,
                          error=f"{type(exc).__name__}: {exc}")
                continue
            if what is None or not self._store.claim_schedule(schedule.id, what[1]):
                continue
            kind, due = what
            if kind == "skip":
                log.warning("schedule.missed", schedule=schedule.id, channel=schedule.channel, due=due,
                            late_s=round(now - due), grace_s=self._settings.schedule_grace)
                continue
            with anyio.move_on_after(START_TIMEOUT) as scope:
                if self.claim_elsewhere is not None and not await self.claim_elsewhere(schedule.id, due):
                    log.info("schedule.run_elsewhere", schedule=schedule.id, channel=schedule.channel, due=due)
                    continue
                await self._fire(schedule, due)
            if scope.cancelled_caught:
                log.error("schedule.start_timeout", schedule=schedule.id, channel=schedule.channel)
        return max(0.0, nearest - self._now())

    async def _fire(self, schedule: Schedule, due: float) -> None:
        s = self._settings
        if not s.is_allowed(schedule.owner) or not s.is_channel_allowed(schedule.channel):
            log.warning("schedule.owner_refused", schedule=schedule.id, owner=schedule.owner, channel=schedule.channel,
                        why="the owner or the channel is no longer allowed")
            return
        assert self.start_task is not None, "Schedules.start_task is set when the bot is built"
        heading = (f":alarm_clock: Scheduled (`{schedule.id}`, owner <@{schedule.owner}>): "
                   f"{_shortened(schedule.prompt)}")
        thread_ts = await self.start_task(schedule.owner, schedule.channel, schedule.prompt, heading=heading,
                                          kind="schedule")
        if thread_ts is None:
            log.warning("schedule.not_started", schedule=schedule.id, channel=schedule.channel)
            return
        self._store.schedule_ran(schedule.id, thread_ts)
        log.info("schedule.ran", schedule=schedule.id, channel=schedule.channel, thread_ts=thread_ts,
                 owner=schedule.owner, due=due, late_ms=round((self._now() - due) * 1000))

    # --- /claude schedule ----------------------------------------------------------------------------------------
    async def command(self, command: SlashCommand) -> str:
        """`/claude schedule …`: add, list or remove; the answer, in a sentence or a list."""
        rest = command.text.strip().partition(" ")[2].strip()
        word = rest.split(maxsplit=1)[0].lower() if rest else ""
        if word in ("", "help"):
            return USAGE.format(tz=host_zone())
        if word in ("list", "ls"):
            return self._list(command)
        if word in ("rm", "remove", "delete"):
            return self._remove(command, rest.split(maxsplit=1)[1].strip() if len(rest.split()) > 1 else "")
        return self._add(command, rest)

    def _add(self, command: SlashCommand, rest: str) -> str:
        s = self._settings
        if s.schedules_by == "admins" and not s.is_admin(command.user):
            return ("Only an admin (SLACKBUS_ADMIN_USERS) can add a schedule here (SLACKBUS_SCHEDULES=users lets "
                    "every allowed user), so nothing was scheduled.")
        quoted = _QUOTED.fullmatch(rest)
        if quoted is None:
            return (f"Put the cron expression in quotes before the prompt, e.g. `/claude schedule \"0 9 * * 1-5\" "
                    f"summarise yesterday's merged PRs` ({CRON_HELP}), so nothing was scheduled.")
        cron, prompt = " ".join(quoted[1].split()), quoted[2].strip()
        tz, words = host_zone(), prompt.split()
        if words and words[0].lower().startswith("tz="):  # right after the expression, or the last word
            tz, prompt = words[0][3:], prompt.split(maxsplit=1)[1] if len(words) > 1 else ""
        elif words and words[-1].lower().startswith("tz="):
            tz, prompt = words[-1][3:], prompt.rsplit(maxsplit=1)[0] if len(words) > 1 else ""
        problem = cron_problem(cron)
        if problem is not None:
            return (f"`{cron}` is not a cron expression I can read ({problem}): write {CRON_HELP}; nothing was "
                    "scheduled.")
        problem = zone_problem(tz)
        if problem is not None:
            return f"`tz={tz}` is {problem}; nothing was scheduled."
        if not prompt:
            return "Say what to run after the cron expression, e.g. `summarise yesterday's merged PRs`."
        if len(prompt) > s.max_input_chars:
            return (f"That prompt is {len(prompt):,} characters, over the limit of {s.max_input_chars:,} "
                    "(SLACKBUS_MAX_INPUT_CHARS), so nothing was scheduled.")
        now = self._now()
        schedule = Schedule(id=f"s{secrets.token_hex(3)}", channel=command.channel, cron=cron, tz=tz, prompt=prompt,
                            owner=command.user, created_by=command.user, created_at=now, source="command")
        try:
            self._store.add_schedule(schedule)
        except StoreError as exc:
            return f"I could not keep the schedule, so nothing was scheduled: {exc}"
        self._changed.set()
        log.info("schedule.added", schedule=schedule.id, channel=schedule.channel, cron=cron, tz=tz,
                 owner=schedule.owner)
        return (f"Scheduled `{schedule.id}`: `{cron}` ({tz}), next {self._when(next_after(cron, tz, now), tz)}, "
                f"as <@{schedule.owner}>'s request in this channel. `/claude schedule rm {schedule.id}` removes it.")

    def _list(self, command: SlashCommand) -> str:
        admin = self._settings.is_admin(command.user)
        shown = [x for x in self._store.schedules() if admin or x.channel == command.channel]
        if not shown:
            return ("No schedules here yet: `/claude schedule \"0 9 * * 1-5\" <prompt>` adds one."
                    if not admin else "No schedules yet: `/claude schedule \"0 9 * * 1-5\" <prompt>` adds one.")
        now = self._now()
        lines = ["*Schedules*" + ("" if admin else " in this channel") + ":"]
        for x in shown:
            try:
                upcoming = self._when(next_after(x.cron, x.tz, now), x.tz)
            except Exception:
                upcoming = "never (its expression or time zone cannot be read here)"
            last = (f"last ran {self._when(x.last_run_at, x.tz)} ({x.runs} run{'s' if x.runs != 1 else ''})"
                    if x.last_run_at else "not run yet")
            where = "" if x.channel == command.channel else f" in <#{x.channel}>"
            source = ", from SLACKBUS_CONFIG" if x.source == "config" else ""
            lines.append(f"• `{x.id}`{where}: `{x.cron}` ({x.tz}), owner <@{x.owner}>{source}: "
                         f"{_shortened(x.prompt, 120)} (next {upcoming}; {last})")
        return "\n".join(lines)

    def _remove(self, command: SlashCommand, schedule_id: str) -> str:
        if not schedule_id:
            return "Say which schedule to remove: `/claude schedule rm ID` (`/claude schedule list` shows the ids)."
        found = next((x for x in self._store.schedules() if x.id == schedule_id.strip("`")), None)
        admin = self._settings.is_admin(command.user)
        if found is None or (found.channel != command.channel and not admin):
            return f"There is no schedule `{schedule_id}` here (`/claude schedule list` shows the ids)."
        if found.source == "config":
            return (f"`{found.id}` comes from SLACKBUS_CONFIG: remove it from that file and restart the bot, so it "
                    "was not removed.")
        if command.user not in (found.owner, found.created_by) and not admin:
            return (f"Only <@{found.owner}>, its owner, or an admin (SLACKBUS_ADMIN_USERS) can remove `{found.id}`, "
                    "so it was not removed.")
        self._store.remove_schedule(found.id)
        self._changed.set()
        log.info("schedule.removed", schedule=found.id, channel=found.channel, by=command.user)
        return f"Removed the schedule `{found.id}` (`{found.cron}`: {_shortened(found.prompt, 120)})."

    @staticmethod
    def _when(t: float, tz: str) -> str:
        return datetime.fromtimestamp(t, ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M:%S %Z")
