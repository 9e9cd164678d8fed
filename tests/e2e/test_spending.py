"""Spending limits and usage end to end: fake Slack ⇄ the real bot ⇄ the real `claude` CLI ⇄ the fake model, whose
token counts the CLI prices (the cost in the store is the one the CLI reported)."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.e2e.test_job_control import ack_text
from tests.e2e.test_reactive import answer_in

pytestmark = pytest.mark.e2e


def stored_runs(bot_env: dict[str, str]) -> list[sqlite3.Row]:
    db = sqlite3.connect(f"file:{Path(bot_env['SLACKBUS_HOME']) / 'slackbus.db'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM runs ORDER BY started_at").fetchall()
    finally:
        db.close()


def footer_cost(fake_slack, channel: str, thread_ts: str) -> str:
    """The cost the answer's footer shows ($0.0104), from the CLI's result line."""
    texts = [json.dumps(m.get("blocks") or m.get("text")) for m in fake_slack.bot_messages(channel, thread_ts)]
    found = [c for t in texts for c in re.findall(r"\$(\d+\.\d{4})", t)]
    assert found, texts
    return found[-1]


def estimated_input_tokens(body: dict) -> int:  # what the fake model reports for one request (its usage)
    return max(1, len(json.dumps(body.get("messages"), ensure_ascii=False)) // 4)


def test_a_user_over_the_daily_limit_gets_the_sentence_and_no_run(start_bot, fake_slack, fake_model, bot_env):
    start_bot(SLACKBUS_BUDGET_USER_DAY="0.001", SLACKBUS_ADMIN_USERS="U3")
    fake_model.cache_tokens = (1000, 200)  # each response reports cache reads and writes too
    first = fake_slack.user_says("C1", "U1", "spend a little [[id:b1]]", mention=True)
    answer_in(fake_slack, "C1", first, "answer for b1")
    [run] = stored_runs(bot_env)
    # the run keeps what the CLI reported: its cost (the footer shows the same), tokens and model
    assert run["cost_usd"] > 0.001 and f"{run['cost_usd']:.4f}" == footer_cost(fake_slack, "C1", first)
    assert run["input_tokens"] == sum(estimated_input_tokens(b) for b in fake_model.requests)
    calls = len(fake_model.requests)
    assert (run["cache_read_tokens"], run["cache_creation_tokens"]) == (1000 * calls, 200 * calls)
    assert run["output_tokens"] > 0 and run["model"]
    assert (run["user"], run["channel"], run["num_turns"], run["status"]) == ("U1", "C1", 1, "done")
    asked = len(fake_model.requests)

    # over the limit: one sentence in the thread, and no claude turn
    second = fake_slack.user_says("C1", "U1", "spend more [[id:b2]]", mention=True)
    refusal = answer_in(fake_slack, "C1", second, "daily spending limit")
    assert "<@U1>'s daily spending limit of $0.0010 (SLACKBUS_BUDGET_USER_DAY)" in refusal["text"]
    assert f"(${run['cost_usd']:.4f} spent this UTC day)" in refusal["text"]
    assert "resets at 00:00 UTC" in refusal["text"]
    fake_slack.wait_for(lambda: "x" in fake_slack.reactions("C1", second), what="the ❌ on the refused request")
    assert len(fake_model.requests) == asked and len(stored_runs(bot_env)) == 1
    assert len(fake_slack.bot_messages("C1", second)) == 1

    # the limit is the user's: someone else in the channel still runs
    other = fake_slack.user_says("C1", "U2", "my turn [[id:b3]]", mention=True)
    answer_in(fake_slack, "C1", other, "answer for b3")

    # an admin lifts the limits for the refused thread: it runs there (and only there)
    link = f"https://fake-team.slack.com/archives/C1/p{second.replace('.', '')}"
    assert "lifted for that thread" in ack_text(fake_slack, fake_slack.slash_command(text=f"budget lift {link}",
                                                                                     user="U3", channel="C1"))
    again = fake_slack.user_says("C1", "U1", "now please [[id:b4]]", thread_ts=second, mention=True)
    answer_in(fake_slack, "C1", second, "answer for b4")
    assert again
    elsewhere = fake_slack.user_says("C1", "U1", "and here [[id:b5]]", mention=True)
    answer_in(fake_slack, "C1", elsewhere, "daily spending limit")


def totals(answer: str) -> tuple[int, int, str, int]:
    m = re.search(r"\): (\d+) runs?, (\d+) turns?, \$([0-9.]+), [^,]+, tokens ([0-9,]+) in", answer)
    assert m, answer
    return int(m.group(1)), int(m.group(2)), m.group(3), int(m.group(4).replace(",", ""))


def test_usage_totals_equal_the_sum_of_the_runs_and_the_csv_rows_match(start_bot, fake_slack, fake_model, bot_env):
    start_bot(SLACKBUS_ADMIN_USERS="U3")
    one = fake_slack.user_says("C1", "U1", "first [[id:u1]]", mention=True)
    answer_in(fake_slack, "C1", one, "answer for u1")
    fake_slack.user_says("C1", "U1", "again [[id:u2]]", thread_ts=one)
    answer_in(fake_slack, "C1", one, "answer for u2")
    two = fake_slack.user_says("C2", "U2", "elsewhere [[id:u3]]", mention=True)
    answer_in(fake_slack, "C2", two, "answer for u3")
    runs = stored_runs(bot_env)
    assert len(runs) == 3 and all(r["cost_usd"] > 0 and r["status"] == "done" for r in runs)

    everything = ack_text(fake_slack, fake_slack.slash_command(text="usage 30d", user="U3", channel="C1"))
    assert totals(everything) == (3, sum(r["num_turns"] for r in runs), f"{sum(r['cost_usd'] for r in runs):.4f}",
                                  sum(r["input_tokens"] for r in runs))
    u1 = [r for r in runs if r["user"] == "U1"]
    assert f"• <@U1>: 2 runs, {sum(r['num_turns'] for r in u1)} turns, ${sum(r['cost_usd'] for r in u1):.4f}" \
        in everything
    assert f"• <#C2>: 1 run, {runs[2]['num_turns']} turn" in everything
    # a non-admin in C1 sees C1's runs and their own: U2's run in C2 is left out
    mine = ack_text(fake_slack, fake_slack.slash_command(text="usage today", user="U1", channel="C1"))
    assert totals(mine)[:3] == (2, sum(r["num_turns"] for r in u1), f"{sum(r['cost_usd'] for r in u1):.4f}")
    assert "1 other run, not yours" in mine
    bad = ack_text(fake_slack, fake_slack.slash_command(text="usage last-week", user="U1", channel="C1"))
    assert "I could not read `last-week`" in bad

    # the books: one CSV row per run, the same numbers (the bot is running: the record is read read-only)
    done = subprocess.run([sys.executable, "-m", "bot", "usage", "--csv", "--since", "1d"], env=bot_env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [r["run_id"] for r in rows] == [r["run_id"] for r in runs]
    for got, stored in zip(rows, runs, strict=True):
        assert float(got["cost_usd"]) == stored["cost_usd"]
        assert (got["user"], got["channel"], got["thread_ts"], got["status"]) == (
            stored["user"], stored["channel"], stored["thread_ts"], "done")
        assert (int(got["turns"]), int(got["duration_ms"]), int(got["input_tokens"]), int(got["output_tokens"]),
                got["model"]) == (stored["num_turns"], stored["duration_ms"], stored["input_tokens"],
                                  stored["output_tokens"], stored["model"])
    bad_since = subprocess.run([sys.executable, "-m", "bot", "usage", "--csv", "--since", "lately"], env=bot_env,
                               cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad_since.returncode == 2 and "--since 'lately' is not a time" in bad_since.stderr


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"SLACKBUS_BUDGET_CHANNEL_DAY": "ten dollars"},
     "SLACKBUS_BUDGET_CHANNEL_DAY must be an amount in USD (like 5 or 2.50), got 'ten dollars'."),
    ({"SLACKBUS_BUDGET_MONTH": "-5"}, "SLACKBUS_BUDGET_MONTH must be more than 0 USD"),
])
def test_an_invalid_budget_value_stops_the_start_with_a_sentence_naming_it(start_bot, overrides, expected):
    bot = start_bot(wait=False, **overrides)
    assert bot.proc.wait(30) == 2
    output = bot.log_path.read_text()
    assert expected in output and "Traceback" not in output


def test_a_bad_budget_table_in_the_config_file_stops_the_start(start_bot, tmp_path):
    config = tmp_path / "slackbus.toml"
    config.write_text('[budget]\nuser_day = "a lot"\n')
    bot = start_bot(wait=False, SLACKBUS_CONFIG=str(config))
    assert bot.proc.wait(30) == 2
    output = bot.log_path.read_text()
    assert "SLACKBUS_CONFIG's [budget] user_day must be an amount in USD" in output and "Traceback" not in output


def test_each_turn_costs_what_it_added_warm_or_resumed(start_bot, fake_slack, fake_model, bot_env):
    """The CLI reports a process's running total, and a resumed session's total includes its earlier turns: each
    stored run is the turn's own cost (the fake model answers every turn alike, so the costs are alike)."""
    bot = start_bot(SLACKBUS_WARM_POOL="0")
    ts = fake_slack.user_says("C1", "U1", "first [[id:c1]]", mention=True)
    answer_in(fake_slack, "C1", ts, "answer for c1")
    fake_slack.user_says("C1", "U1", "warm [[id:c2]]", thread_ts=ts)  # the same process
    answer_in(fake_slack, "C1", ts, "answer for c2")
    bot.wait_quiet(fake_slack)
    bot.stop()
    bot = start_bot(SLACKBUS_WARM_POOL="0")
    fake_slack.user_says("C1", "U1", "resumed [[id:c3]]", thread_ts=ts)  # a new process, --resume
    answer_in(fake_slack, "C1", ts, "answer for c3")
    bot.wait_quiet(fake_slack)
    db = sqlite3.connect(Path(bot_env["SLACKBUS_HOME"]) / "slackbus.db")
    costs = [row[0] for row in db.execute("SELECT cost_usd FROM runs ORDER BY started_at")]
    assert len(costs) == 3 and all(c is not None and c > 0 for c in costs), costs
    assert max(costs) < 1.3 * min(costs), costs  # not 1×, 2×, 3× one turn
