"""Schedules without a bot: cron and time zones read (or refused with a sentence naming them), the next time in a
zone, the grace rule (a missed time within grace runs once, beyond it is skipped, never twice) on a fake clock,
and `/claude schedule` add, list and rm."""

from __future__ import annotations

import stat
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bot.config import Settings, load_settings
from bot.core.events import SlashCommand
from bot.core.schedules import Schedules, config_schedule, decision
from bot.core.store import Schedule, Store
from bot.cron import ScheduleSpec, cron_problem, latest_at_or_before, next_after, zone_problem
from bot.errors import ConfigError

ADMIN = "UADMIN"
BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def settings_for(tmp_path: Path, **more: str) -> Settings:
    cli = tmp_path / "claude"
    cli.write_text(f"#!{sys.executable}\n")
    cli.chmod(cli.stat().st_mode | stat.S_IXUSR)
    return load_settings({
        "SLACK_BOT_TOKEN": "xoxb-1111-2222-schedulebot", "SLACK_APP_TOKEN": "xapp-1-A111-2222-scheduleapp",
        "CLAUDE_CLI_PATH": str(cli), "SLACKBUS_ALLOWED_USERS": "U1,U2", "SLACKBUS_ADMIN_USERS": ADMIN,
        "SLACKBUS_HOME": str(tmp_path / "state"), "SLACKBUS_WORKDIR": str(tmp_path / "work"), **more,
    }, env_file=str(tmp_path / "no.env"))


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    """Epoch seconds of a wall-clock time in Berlin."""
    return datetime(year, month, day, hour, minute, second, tzinfo=BERLIN).timestamp()


# --- reading ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("expr", "named"), [
    ("0 9 * * 8", "bad day-of-week"),
    ("61 * * * *", "bad minute"),
    ("0 9 * *", "4 fields"),
    ("every morning", "2 fields"),
    ("0 0 31 2 *", "bad day-of-month"),
])
def test_a_bad_cron_is_named(expr: str, named: str) -> None:
    assert named in (cron_problem(expr) or "")


def test_good_crons_and_zones_pass() -> None:
    for expr in ("0 9 * * 1-5", "*/15 * * * *", "30 8 1 JAN,JUL MON", "5 0 9 * * *"):
        assert cron_problem(expr) is None, expr
    assert zone_problem("Europe/Berlin") is None and zone_problem("UTC") is None
    assert "not a time zone" in (zone_problem("Mars/Olympus") or "")
    assert "not a time zone" in (zone_problem("../../etc/passwd") or "")


def test_next_time_is_read_in_the_schedules_zone() -> None:
    friday_evening = at(2026, 3, 27, 18, 0)
    # weekdays at 09:00 Berlin: after Friday evening comes Monday, and Monday 30 March is summer time (UTC+2)
    assert next_after("0 9 * * 1-5", "Europe/Berlin", friday_evening) == at(2026, 3, 30, 9, 0)
    assert datetime.fromtimestamp(at(2026, 3, 30, 9, 0), ZoneInfo("UTC")).hour == 7
    assert next_after("0 9 * * 1-5", "America/New_York", friday_evening) == datetime(
        2026, 3, 30, 9, 0, tzinfo=ZoneInfo("America/New_York")).timestamp()
    # at a due time exactly: that one is the latest at or before, the next is a day later
    monday = at(2026, 3, 30, 9, 0)
    assert latest_at_or_before("0 9 * * 1-5", "Europe/Berlin", monday) == monday
    assert next_after("0 9 * * 1-5", "Europe/Berlin", monday) == at(2026, 3, 31, 9, 0)
    assert next_after("10 0 9 * * *", "Europe/Berlin", monday) == monday + 10  # six fields: seconds first


# --- the grace rule -----------------------------------------------------------------------------------------------

def schedule(created: float, last_due: float | None = None, cron: str = "0 9 * * *") -> Schedule:
    return Schedule(id="s1", channel="C1", cron=cron, tz="Europe/Berlin", prompt="p", owner="U1", created_by="U1",
                    created_at=created, source="command", last_due_at=last_due)


def test_decision_runs_within_grace_skips_beyond_and_not_again() -> None:
    created = at(2026, 3, 1, 12, 0)
    nine = at(2026, 3, 2, 9, 0)
    assert decision(schedule(created), nine - 1, 3600) is None  # not yet
    assert decision(schedule(created), nine, 3600) == ("run", nine)
    assert decision(schedule(created), nine + 3599, 3600) == ("run", nine)
    assert decision(schedule(created), nine + 3601, 3600) == ("skip", nine)
    assert decision(schedule(created, last_due=nine), nine + 60, 3600) is None  # taken
    # created after today's time: nothing until tomorrow's
    assert decision(schedule(nine + 10), nine + 20, 3600) is None
    # down for three days: only the latest missed time counts, once
    assert decision(schedule(created), at(2026, 3, 5, 9, 30), 3600) == ("run", at(2026, 3, 5, 9, 0))


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Started:
    """Commands.start_task's stand-in: records what would have been posted and run."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, user: str, channel: str, text: str, *, heading: str | None = None,
                      kind: str = "command") -> str | None:
        self.calls.append({"user": user, "channel": channel, "text": text, "heading": heading, "kind": kind})
        return f"{len(self.calls)}.000100"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "state.db")
    yield s
    s.close()


def service(settings: Settings, store: Store, clock: Clock) -> tuple[Schedules, Started]:
    started = Started()
    schedules = Schedules(settings, store, now=clock)
    schedules.start_task = started
    return schedules, started


@pytest.mark.anyio
async def test_a_due_schedule_runs_once_as_its_owner_and_a_restart_does_not_repeat_it(tmp_path, store):
    clock = Clock(at(2026, 3, 2, 8, 59, 50))
    settings = settings_for(tmp_path, SLACKBUS_SCHEDULES="users")
    schedules, started = service(settings, store, clock)
    answer = await schedules.command(SlashCommand("U2", "C1", 'schedule "0 9 * * *" tz=Europe/Berlin say hi'))
    assert "Scheduled `s" in answer and "2026-03-02 09:00:00 CET" in answer
    assert await schedules.tick() == pytest.approx(10)  # sleeps until 09:00
    assert started.calls == []
    clock.t += 10
    assert await schedules.tick() == pytest.approx(60)  # the next is a day away: the bounded sleep
    assert len(started.calls) == 1
    call = started.calls[0]
    assert (call["user"], call["channel"], call["text"], call["kind"]) == ("U2", "C1", "say hi", "schedule")
    assert call["heading"].startswith(":alarm_clock: Scheduled (`s") and "owner <@U2>" in call["heading"]
    clock.t += 30
    await schedules.tick()
    # "a restart": a new service on the same store, at the same time
    again, started_again = service(settings, store, clock)
    await again.tick()
    assert len(started.calls) == 1 and started_again.calls == []
    assert store.schedules()[0].runs == 1 and store.schedules()[0].last_thread_ts == "1.000100"


@pytest.mark.anyio
async def test_a_time_missed_while_down_runs_once_within_grace_and_is_skipped_beyond(tmp_path, store):
    settings = settings_for(tmp_path, SLACKBUS_SCHEDULE_GRACE="30m")
    assert settings.schedule_grace == 1800
    created = at(2026, 3, 1, 12, 0)
    store.add_schedule(schedule(created))
    clock = Clock(at(2026, 3, 2, 9, 20))  # the bot comes back 20 minutes after 09:00: within grace
    schedules, started = service(settings, store, clock)
    await schedules.tick()
    await schedules.tick()
    assert len(started.calls) == 1
    clock.t = at(2026, 3, 3, 9, 45)  # down again across the next 09:00, back 45 minutes late: skipped
    await schedules.tick()
    assert len(started.calls) == 1
    assert store.schedules()[0].last_due_at == at(2026, 3, 3, 9, 0)  # taken, so never run later either
    clock.t = at(2026, 3, 4, 9, 0, 1)
    await schedules.tick()
    assert len(started.calls) == 2


@pytest.mark.anyio
async def test_the_command_refuses_a_bad_cron_or_zone_with_a_sentence_naming_it(tmp_path, store):
    schedules, _ = service(settings_for(tmp_path), store, Clock(at(2026, 3, 2, 8, 0)))
    bad_cron = await schedules.command(SlashCommand(ADMIN, "C1", 'schedule "0 9 * * 8" hello'))
    assert "`0 9 * * 8` is not a cron expression" in bad_cron and "day-of-week" in bad_cron
    bad_zone = await schedules.command(SlashCommand(ADMIN, "C1", 'schedule "0 9 * * *" tz=Mars/Base hello'))
    assert "`tz=Mars/Base` is not a time zone" in bad_zone
    unquoted = await schedules.command(SlashCommand(ADMIN, "C1", "schedule 0 9 * * * hello"))
    assert "in quotes" in unquoted
    not_admin = await schedules.command(SlashCommand("U1", "C1", 'schedule "0 9 * * *" hello'))
    assert "Only an admin" in not_admin
    assert store.schedules() == []
    # Slack's curly quotes, and tz= as the last word
    ok = await schedules.command(SlashCommand(ADMIN, "C1", "schedule “30 7 * * 1” weekly report tz=UTC"))
    assert "Scheduled" in ok
    assert [(x.cron, x.tz, x.prompt) for x in store.schedules()] == [("30 7 * * 1", "UTC", "weekly report")]


@pytest.mark.anyio
async def test_list_and_rm(tmp_path, store):
    settings = settings_for(tmp_path, SLACKBUS_SCHEDULES="users")
    schedules, _ = service(settings, store, Clock(at(2026, 3, 2, 8, 0)))
    await schedules.command(SlashCommand("U1", "C1", 'schedule "0 9 * * 1-5" tz=Europe/Berlin standup notes'))
    await schedules.command(SlashCommand("U2", "C2", 'schedule "0 17 * * 5" tz=Europe/Berlin week summary'))
    mine = next(x.id for x in store.schedules() if x.owner == "U1")
    listed = await schedules.command(SlashCommand("U1", "C1", "schedule list"))
    assert mine in listed and "standup notes" in listed and "week summary" not in listed
    assert "next 2026-03-02 09:00:00 CET" in listed and "not run yet" in listed
    everywhere = await schedules.command(SlashCommand(ADMIN, "C1", "schedule list"))
    assert "standup notes" in everywhere and "week summary" in everywhere
    refused = await schedules.command(SlashCommand("U2", "C1", f"schedule rm {mine}"))
    assert "Only <@U1>" in refused
    assert "no schedule `nope`" in await schedules.command(SlashCommand("U1", "C1", "schedule rm nope"))
    assert "Removed" in await schedules.command(SlashCommand("U1", "C1", f"schedule rm {mine}"))
    assert [x.prompt for x in store.schedules()] == ["week summary"]
    assert "No schedules here" in await schedules.command(SlashCommand("U1", "C1", "schedule list"))


# --- the config file ----------------------------------------------------------------------------------------------

def test_config_schedules_are_read_and_a_bad_one_stops_the_start(tmp_path: Path) -> None:
    config = tmp_path / "slackbus.toml"
    config.write_text('[[schedules]]\nchannel = "C1"\ncron = "0 9 * * 1-5"\nprompt = "standup"\nowner = "U1"\n'
                      'tz = "Europe/Berlin"\n')
    assert settings_for(tmp_path, SLACKBUS_CONFIG=str(config)).schedules == (
        ScheduleSpec("C1", "0 9 * * 1-5", "Europe/Berlin", "standup", "U1"),)
    for body, named in [
        ('cron = "0 9 * * 9"\nowner = "U1"\n', "has cron = '0 9 * * 9', which is not a cron expression"),
        ('cron = "0 9 * * *"\nowner = "U1"\ntz = "Berlin"\n', "has tz = 'Berlin', which is not a time zone"),
        ('cron = "0 9 * * *"\nowner = "U9"\n', "owner = 'U9', who is not in SLACKBUS_ALLOWED_USERS"),
        ('cron = "0 9 * * *"\n', "needs owner"),
    ]:
        config.write_text(f'[[schedules]]\nchannel = "C1"\nprompt = "p"\n{body}')
        with pytest.raises(ConfigError, match="SLACKBUS_CONFIG's schedule #1") as caught:
            settings_for(tmp_path, SLACKBUS_CONFIG=str(config))
        assert named in str(caught.value)


def test_config_schedules_keep_their_history_while_unchanged(tmp_path, store):
    spec = ScheduleSpec("C1", "0 9 * * *", "Europe/Berlin", "standup", "U1")
    first = config_schedule(spec, 100.0)
    store.sync_config_schedules([first])
    assert store.claim_schedule(first.id, 200.0)
    store.sync_config_schedules([config_schedule(spec, 300.0)])  # a restart: same entry, same id, history kept
    assert [(x.id, x.last_due_at) for x in store.schedules()] == [(first.id, 200.0)]
    assert not store.claim_schedule(first.id, 200.0)
    changed = config_schedule(ScheduleSpec("C1", "0 10 * * *", "Europe/Berlin", "standup", "U1"), 400.0)
    store.sync_config_schedules([changed])
    assert [x.id for x in store.schedules()] == [changed.id] != [first.id]
