"""Schedules end to end: `/claude schedule` with a cron a few seconds out (six fields, seconds first, so no test
clock is needed) runs once, in a new top-level message's thread, as its owner's request; a restart across its time
runs it once; list and rm; a bad cron refused by the command, a bad cron or time zone in the config file stopping
the start."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from tests.e2e.test_job_control import ack_text
from tests.e2e.test_reactive import answer_in

pytestmark = pytest.mark.e2e

HEADING = ":alarm_clock: Scheduled"


def cron_in(seconds: float) -> tuple[str, float]:
    """A six-field cron expression (UTC) for the whole second `seconds` from now, and that time."""
    due = int(time.time() + seconds)
    t = datetime.fromtimestamp(due, UTC)
    return f"{t.second} {t.minute} {t.hour} * * *", float(due)


def scheduled_posts(fake_slack, channel: str = "C1") -> list[dict]:
    return [m for m in fake_slack.bot_messages(channel)
            if m.get("thread_ts") in (None, m["ts"]) and HEADING in (m.get("text") or "")]


def add(fake_slack, cron: str, prompt: str, user: str = "U1") -> str:
    return ack_text(fake_slack, fake_slack.slash_command(text=f'schedule "{cron}" tz=UTC {prompt}', user=user,
                                                         channel="C1"))


def test_a_schedule_runs_once_in_its_own_thread_and_list_and_rm_work(start_bot, fake_slack, fake_model):
    bot = start_bot(SLACKBUS_ADMIN_USERS="U1")
    refused = add(fake_slack, "0 9 * * 8", "never")
    assert "`0 9 * * 8` is not a cron expression I can read (bad day-of-week)" in refused
    assert "Only an admin" in add(fake_slack, "0 9 * * *", "not yours", user="U2")

    cron, due = cron_in(4)
    answer = add(fake_slack, cron, "summarise the day [[id:sc1]]")
    assert answer.startswith("Scheduled `s"), answer
    schedule_id = answer.split("`")[1]
    post = fake_slack.wait_for(lambda: next(iter(scheduled_posts(fake_slack)), None), timeout=20,
                               what="the scheduled run's top-level message")
    assert f"(`{schedule_id}`, owner <@U1>): summarise the day" in post["text"]
    assert time.time() >= due
    answer_in(fake_slack, "C1", post["ts"], "answer for sc1")
    bot.wait_quiet(fake_slack)
    assert len(scheduled_posts(fake_slack)) == 1 and len(fake_model.requests) == 1
    assert "summarise the day [[id:sc1]]" in fake_model.last_user_text(0)
    [ran] = bot.events("schedule.ran")
    assert (ran["schedule"], ran["owner"], ran["thread_ts"]) == (schedule_id, "U1", post["ts"])

    listed = ack_text(fake_slack, fake_slack.slash_command(text="schedule list", user="U1", channel="C1"))
    assert schedule_id in listed and "(1 run)" in listed
    removed = ack_text(fake_slack, fake_slack.slash_command(text=f"schedule rm {schedule_id}", user="U1",
                                                            channel="C1"))
    assert removed.startswith(f"Removed the schedule `{schedule_id}`")
    assert "No schedules" in ack_text(fake_slack, fake_slack.slash_command(text="schedule list", user="U1",
                                                                           channel="C1"))


def test_a_restart_across_its_time_runs_it_once(start_bot, fake_slack, fake_model):
    bot = start_bot(SLACKBUS_SCHEDULES="users")
    cron, due = cron_in(6)
    assert add(fake_slack, cron, "the nightly check [[id:sr1]]", user="U2").startswith("Scheduled")
    assert bot.stop() == 0
    assert time.time() < due, "the bot took too long to stop for this test"
    fake_slack.wait_for(lambda: time.time() > due + 1, timeout=10, what="the schedule's time to pass")
    assert scheduled_posts(fake_slack) == []

    bot = start_bot(SLACKBUS_SCHEDULES="users")  # within SLACKBUS_SCHEDULE_GRACE (an hour): runs once at start
    post = fake_slack.wait_for(lambda: next(iter(scheduled_posts(fake_slack)), None), timeout=20,
                               what="the missed run's top-level message")
    assert "owner <@U2>" in post["text"]
    answer_in(fake_slack, "C1", post["ts"], "answer for sr1")
    assert bot.events("schedule.ran")[0]["late_ms"] > 1000
    assert bot.stop() == 0

    bot = start_bot(SLACKBUS_SCHEDULES="users")  # and again: that time was taken
    bot.wait_quiet(fake_slack)
    assert len(scheduled_posts(fake_slack)) == 1 and len(fake_model.requests) == 1
    assert bot.events("schedule.ran") == []


@pytest.mark.parametrize(("entry", "named"), [
    ('cron = "0 9 * * 1-7x"', "has cron = '0 9 * * 1-7x', which is not a cron expression"),
    ('cron = "0 9 * * *"\ntz = "Europe/Atlantis"', "has tz = 'Europe/Atlantis', which is not a time zone"),
])
def test_a_bad_cron_or_zone_in_the_config_file_stops_the_start(start_bot, tmp_path, entry, named):
    config = tmp_path / "slackbus.toml"
    config.write_text(f'[[schedules]]\nchannel = "C1"\nprompt = "p"\nowner = "U1"\n{entry}\n')
    bot = start_bot(wait=False, SLACKBUS_CONFIG=str(config))
    assert bot.proc.wait(30) == 2
    output = bot.log_path.read_text()
    assert f"SLACKBUS_CONFIG's schedule #1 {named}" in output and "Traceback" not in output


def test_a_schedule_from_the_config_file_runs(start_bot, fake_slack, fake_model, tmp_path):
    cron, _due = cron_in(8)
    config = tmp_path / "slackbus.toml"
    config.write_text(f'[[schedules]]\nchannel = "C1"\ncron = "{cron}"\ntz = "UTC"\nowner = "U3"\n'
                      'prompt = "from the file [[id:sf1]]"\n')
    bot = start_bot(SLACKBUS_CONFIG=str(config))
    post = fake_slack.wait_for(lambda: next(iter(scheduled_posts(fake_slack)), None), timeout=20,
                               what="the configured schedule's top-level message")
    assert "owner <@U3>" in post["text"]
    answer_in(fake_slack, "C1", post["ts"], "answer for sf1")
    listed = ack_text(fake_slack, fake_slack.slash_command(text="schedule list", user="U3", channel="C1"))
    assert "from SLACKBUS_CONFIG" in listed
    schedule_id = bot.events("schedule.ran")[0]["schedule"]
    refused = ack_text(fake_slack, fake_slack.slash_command(text=f"schedule rm {schedule_id}", user="U3",
                                                            channel="C1"))
    assert "comes from SLACKBUS_CONFIG" in refused
