"""Triggers end to end: another bot's post that matches a rule starts exactly one run in its thread, as the rule's
owner; the bot's own answer that matches the same pattern starts nothing (Slack sends the app its own posts); the
per-hour cap lets N runs start, then says so once; an invalid regex in the config file stops the start with a
sentence naming the rule."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from tests.e2e.test_job_control import ack_text
from tests.e2e.test_reactive import answer_in

pytestmark = pytest.mark.e2e

_seq = itertools.count(1)


def rules_file(tmp_path: Path, pattern: str, *, max_per_hour: int = 10) -> str:
    config = tmp_path / "slackbus.toml"
    config.write_text(f"[[triggers]]\nname = \"ci-failure\"\nchannel = \"C1\"\npattern = '{pattern}'\nbots = true\n"
                      f"owner = \"U2\"\nmax_per_hour = {max_per_hour}\n"
                      "prompt = \"Another bot says a build failed: {text}. Find out why ({link}).\"\n")
    return str(config)


def bot_posts(fake_slack, text: str, channel: str = "C1") -> str:
    """Another app's post (subtype bot_message, a bot_id and an app_id, no user), as Slack sends it."""
    ts = f"{int(time.time())}.{next(_seq):06d}"
    fake_slack.seed_message(channel, text, user="", ts=ts, subtype="bot_message", bot_id="BCIBOT", app_id="ACIAPP")
    fake_slack.send_event({"type": "message", "subtype": "bot_message", "channel": channel, "ts": ts, "text": text,
                           "bot_id": "BCIBOT", "app_id": "ACIAPP", "channel_type": "channel"}, store=False)
    return ts


def notices(fake_slack, needle: str) -> list[dict]:
    return [m for m in fake_slack.bot_messages("C1") if needle in (m.get("text") or "")]


def test_another_bots_post_starts_exactly_one_run_in_its_thread(start_bot, fake_slack, fake_model, tmp_path):
    bot = start_bot(SLACKBUS_CONFIG=rules_file(tmp_path, r"Build \d+ failed"))
    fake_slack.user_says("C1", "U3", "lunch at noon?")  # ordinary talk: context, never a run
    ts = bot_posts(fake_slack, "Build 42 failed on main [[id:tr1]]")
    answer_in(fake_slack, "C1", ts, "answer for tr1")
    bot.wait_quiet(fake_slack)
    assert len(fake_model.requests) == 1
    in_thread = fake_slack.bot_messages("C1", ts)
    assert [m["text"] for m in in_thread if "answer for" in m["text"]] == ["answer for tr1"]
    assert any("Triggered by rule `ci-failure` (owner <@U2>)" in m["text"] for m in in_thread)
    prompt = fake_model.last_user_text(0)
    assert 'made by the trigger rule "ci-failure"' in prompt and "Another bot says a build failed" in prompt
    assert '<slack_quote id="' in prompt and "Build 42 failed on main" in prompt
    [started] = bot.events("dispatch.triggered")
    assert (started["rule"], started["owner"], started["thread_ts"]) == ("ci-failure", "U2", ts)
    [run] = bot.events("run.start")
    assert run["thread_ts"] == ts


def test_the_bots_own_answer_that_matches_starts_nothing(start_bot, fake_slack, fake_model, tmp_path):
    fake_slack.echo_bot_messages = True  # Slack sends the app its own posts: the answer comes back as an event
    bot = start_bot(SLACKBUS_CONFIG=rules_file(tmp_path, r"answer for|\[\[id:"))
    ts = bot_posts(fake_slack, "deploy alarm [[id:loop1]]")
    answer = answer_in(fake_slack, "C1", ts, "answer for loop1")
    assert "answer for" in answer["text"]  # the answer matches the rule's pattern too
    bot.wait_quiet(fake_slack, quiet=1.5)
    assert len(fake_model.requests) == 1
    assert len(bot.events("dispatch.triggered")) == 1
    assert len(bot.events("run.start")) == 1


def test_the_per_hour_cap_starts_n_runs_then_says_so_once(start_bot, fake_slack, fake_model, tmp_path):
    bot = start_bot(SLACKBUS_CONFIG=rules_file(tmp_path, r"Build \d+ failed", max_per_hour=2))
    posted = [bot_posts(fake_slack, f"Build {n} failed [[id:cap{n}]]") for n in range(1, 5)]
    for n, ts in enumerate(posted[:2], start=1):
        answer_in(fake_slack, "C1", ts, f"answer for cap{n}")
    capped = fake_slack.wait_for(lambda: next(iter(notices(fake_slack, "its limit")), None), timeout=20,
                                 what="the cap's notice")
    assert capped["thread_ts"] == posted[2]
    assert "Trigger rule `ci-failure` has started 2 runs in the last hour" in capped["text"]
    bot.wait_quiet(fake_slack)
    assert len(fake_model.requests) == 2
    assert len(notices(fake_slack, "its limit")) == 1
    assert [e["outcome"] for e in bot.events("trigger.match")] == ["started", "started", "capped", "capped"]
    listed = ack_text(fake_slack, fake_slack.slash_command(text="triggers", user="U2", channel="C1"))
    assert "`ci-failure`" in listed and "2 runs (2 of 2 this hour)" in listed


def test_an_invalid_regex_in_the_config_file_stops_the_start(start_bot, tmp_path):
    bot = start_bot(wait=False, SLACKBUS_CONFIG=rules_file(tmp_path, r"Build (\d+ failed"))
    assert bot.proc.wait(30) == 2
    output = bot.log_path.read_text()
    assert "SLACKBUS_CONFIG's trigger rule 'ci-failure' has pattern = " in output
    assert "not a valid regular expression" in output and "Traceback" not in output
