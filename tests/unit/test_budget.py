"""Spending limits and usage, without the bot: the windows and resets (a clock passed in), the check against a real
store, the settings, the result line's usage, `/claude usage`'s totals and `/claude budget lift`."""

from __future__ import annotations

import stat
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import ResultMessage

from bot.config import Limits, Settings, _budget, load_settings
from bot.core import budget, usage
from bot.core.events import SlashCommand
from bot.core.store import Store
from bot.core.stream_parser import Finished, Usage, parse
from bot.errors import ConfigError


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# --- windows and resets ------------------------------------------------------------------------------------------

def test_a_day_runs_from_utc_midnight_to_the_next() -> None:
    assert budget.window(budget.DAY, at("2026-03-14 17:45:00")) == (at("2026-03-14"), at("2026-03-15"))
    assert budget.window(budget.DAY, at("2026-03-14 00:00:00"))[0] == at("2026-03-14 00:00:00")


def test_a_month_runs_from_the_first_to_the_next_first_across_the_year() -> None:
    assert budget.window(budget.MONTH, at("2026-02-28 23:59:59")) == (at("2026-02-01"), at("2026-03-01"))
    assert budget.window(budget.MONTH, at("2026-12-31 12:00:00")) == (at("2026-12-01"), at("2027-01-01"))


class Ledger:
    """spent(since, user=, channel=) over (time, user, channel, cost) entries: the arithmetic without SQLite."""

    def __init__(self, *entries: tuple[str, str, str, float]) -> None:
        self.entries = [(at(t), u, c, cost) for t, u, c, cost in entries]
        self.asked: list[tuple[float, str | None, str | None]] = []

    def __call__(self, since: float, *, user: str | None = None, channel: str | None = None) -> float:
        self.asked.append((since, user, channel))
        return sum(cost for t, u, c, cost in self.entries
                   if t >= since and (user is None or u == user) and (channel is None or c == channel))


def test_a_user_over_the_daily_limit_is_refused_with_which_limit_the_amount_and_the_reset() -> None:
    ledger = Ledger(("2026-03-14 09:00", "U1", "C1", 0.30), ("2026-03-14 10:00", "U1", "C2", 0.25),
                    ("2026-03-13 23:59", "U1", "C1", 5.0), ("2026-03-14 11:00", "U2", "C1", 9.0))
    now = at("2026-03-14 18:30:00")
    found = budget.over(Limits(user_day=0.5), ledger, "U1", "C1", now)
    assert found is not None
    assert (found.scope, found.period, found.limit, round(found.used, 6)) == ("user", "day", 0.5, 0.55)
    assert found.resets_at == at("2026-03-15 00:00:00")
    sentence = found.sentence("U1", "C1")
    assert "<@U1>'s daily spending limit of $0.5000 (SLACKBUS_BUDGET_USER_DAY)" in sentence
    assert "$0.5500 spent this UTC day" in sentence and "resets at 00:00 UTC (in 5 h 30 min)" in sentence
    assert "/claude budget lift" in sentence and sentence.count(". ") == 0  # one sentence
    # yesterday's spending does not count; another user's neither
    assert budget.over(Limits(user_day=0.6), ledger, "U1", "C1", now) is None
    assert budget.over(Limits(user_day=1.0), ledger, "U3", "C1", now) is None


def test_the_limit_resets_at_utc_midnight_and_the_month_on_the_first() -> None:
    ledger = Ledger(("2026-03-14 23:00", "U1", "C1", 1.0))
    assert budget.over(Limits(user_day=1.0), ledger, "U1", "C1", at("2026-03-14 23:59:59")) is not None
    assert budget.over(Limits(user_day=1.0), ledger, "U1", "C1", at("2026-03-15 00:00:00")) is None
    monthly = budget.over(Limits(month=1.0), ledger, "U9", "C9", at("2026-03-31 10:00"))
    assert monthly is not None and monthly.scope == "all" and monthly.setting == "SLACKBUS_BUDGET_MONTH"
    assert "resets at 2026-04-01 00:00 UTC" in monthly.sentence("U9", "C9")
    assert "this bot's overall monthly spending limit" in monthly.sentence("U9", "C9")
    assert budget.over(Limits(month=1.0), ledger, "U9", "C9", at("2026-04-01 00:00")) is None


def test_channel_limits_key_on_the_jobs_channel_and_user_limits_on_its_user() -> None:
    ledger = Ledger(("2026-03-14 09:00", "OWNER", "C1", 2.0))
    now = at("2026-03-14 12:00")
    found = budget.over(Limits(channel_day=2.0), ledger, "U2", "C1", now)
    assert found is not None and found.setting == "SLACKBUS_BUDGET_CHANNEL_DAY"
    assert "<#C1>'s daily spending limit" in found.sentence("U2", "C1")
    assert budget.over(Limits(channel_day=2.0), ledger, "OWNER", "C2", now) is None
    assert budget.over(Limits(user_month=2.0), ledger, "OWNER", "C2", now) is not None
    assert ledger.asked[-1] == (at("2026-03-01"), "OWNER", None)


def test_no_limits_ask_nothing() -> None:
    ledger = Ledger()
    assert not Limits() and budget.over(Limits(), ledger, "U1", "C1", 0.0) is None and ledger.asked == []


# --- against the store ----------------------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "state.db")
    yield s
    s.close()


def run(store: Store, run_id: str, user: str, channel: str, cost: float, **counts: Any) -> None:
    store.start_run(run_id, channel, f"{run_id}.1", "s-" + run_id, user)
    store.finish_run(run_id, "done", num_turns=2, cost_usd=cost, duration_ms=1500,
                     usage=Usage(counts.get("i", 100), counts.get("o", 10), counts.get("cr", 5), counts.get("cc", 1),
                                 "claude-opus-5-5"))


def test_a_run_that_crosses_the_limit_finished_and_the_next_request_is_refused(store: Store) -> None:
    import time

    limits = Limits(user_day=0.05)
    run(store, "r1", "U1", "C1", 0.03)
    assert budget.over(limits, store.spent, "U1", "C1", time.time()) is None  # under: the next run starts…
    run(store, "r2", "U1", "C1", 0.04)  # …and crosses the limit on its way: it finished
    found = budget.over(limits, store.spent, "U1", "C1", time.time())
    assert found is not None and found.used == pytest.approx(0.07)
    assert store.spent(0.0, channel="C2") == 0 and store.spent(0.0) == pytest.approx(0.07)


def test_each_run_keeps_what_the_cli_reported(store: Store) -> None:
    run(store, "r1", "U1", "C1", 0.0123, i=2539, o=10, cr=7, cc=3)
    [row] = store.usage_rows(0.0)
    assert (row.user, row.channel, row.status, row.num_turns, row.cost_usd, row.duration_ms) == (
        "U1", "C1", "done", 2, 0.0123, 1500)
    assert (row.input_tokens, row.output_tokens, row.cache_read_tokens, row.cache_creation_tokens, row.model) == (
        2539, 10, 7, 3, "claude-opus-5-5")


def test_the_result_lines_usage_is_parsed_with_the_costliest_model() -> None:
    message = ResultMessage(
        subtype="success", duration_ms=900, duration_api_ms=800, is_error=False, num_turns=1, session_id="s1",
        total_cost_usd=0.0104, result="hi",
        usage={"input_tokens": 2539, "output_tokens": 10, "cache_read_input_tokens": 40,
               "cache_creation_input_tokens": 2, "server_tool_use": {}},
        model_usage={"claude-haiku-4-5": {"costUSD": 0.0001}, "claude-opus-5-5": {"costUSD": 0.0103}},  # type: ignore[typeddict-item]
    )
    [finished] = parse(message)
    assert isinstance(finished, Finished) and finished.cost_usd == 0.0104
    assert finished.usage == Usage(2539, 10, 40, 2, "claude-opus-5-5")
    bare = ResultMessage(subtype="success", duration_ms=1, duration_api_ms=1, is_error=True, num_turns=0,
                         session_id="s2", usage={"input_tokens": "many"})
    assert parse(bare)[0].usage == Usage()  # type: ignore[union-attr]


# --- settings --------------------------------------------------------------------------------------------------------

def test_limits_come_from_the_environment_over_the_config_files_budget_table() -> None:
    limits = _budget({"SLACKBUS_BUDGET_USER_DAY": "0.50", "SLACKBUS_BUDGET_MONTH": "$200"},
                     {"user_day": 9, "channel_month": "40", "day": 12.5})
    assert limits == Limits(user_day=0.5, channel_month=40.0, day=12.5, month=200.0)


@pytest.mark.parametrize(("env", "table", "named"), [
    ({"SLACKBUS_BUDGET_USER_DAY": "five"}, {}, "SLACKBUS_BUDGET_USER_DAY must be an amount in USD"),
    ({"SLACKBUS_BUDGET_CHANNEL_MONTH": "-3"}, {}, "SLACKBUS_BUDGET_CHANNEL_MONTH must be more than 0 USD"),
    ({"SLACKBUS_BUDGET_DAY": "0"}, {}, "SLACKBUS_BUDGET_DAY must be more than 0 USD"),
    ({"SLACKBUS_BUDGET_MONTH": "inf"}, {}, "SLACKBUS_BUDGET_MONTH must be more than 0 USD"),
    ({}, {"user_month": True}, "SLACKBUS_CONFIG's [budget] user_month must be an amount in USD"),
    ({}, {"per_user": 3}, "SLACKBUS_CONFIG's [budget] has an unknown key 'per_user'"),
])
def test_a_bad_limit_is_one_sentence_naming_it(env: dict[str, str], table: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]").replace("$", r"\$")):
        _budget(env, table)


def bot_settings(tmp_path: Path, **more: str) -> Settings:
    cli = tmp_path / "claude"
    cli.write_text(f"#!{sys.executable}\n")
    cli.chmod(cli.stat().st_mode | stat.S_IXUSR)
    return load_settings({
        "SLACK_BOT_TOKEN": "xoxb-1111-2222-budgetbot", "SLACK_APP_TOKEN": "xapp-1-A111-2222-budgetapp",
        "CLAUDE_CLI_PATH": str(cli), "SLACKBUS_ALLOWED_USERS": "U1,U2", "SLACKBUS_ADMIN_USERS": "UADMIN",
        "SLACKBUS_HOME": str(tmp_path / "state"), "SLACKBUS_WORKDIR": str(tmp_path / "work"), **more,
    }, env_file=str(tmp_path / "no.env"))


def test_load_settings_reads_the_budget_table_and_stops_on_a_bad_one(tmp_path: Path) -> None:
    config = tmp_path / "slackbus.toml"
    config.write_text('[budget]\nuser_day = 2\nchannel_month = "150.5"\n')
    assert bot_settings(tmp_path, SLACKBUS_CONFIG=str(config)).budget == Limits(user_day=2.0, channel_month=150.5)
    assert not bot_settings(tmp_path).budget
    config.write_text('[budget]\nday = "lots"\n')
    with pytest.raises(ConfigError, match=r"SLACKBUS_CONFIG's \[budget\] day must be an amount in USD"):
        bot_settings(tmp_path, SLACKBUS_CONFIG=str(config))


# --- /claude usage and /claude budget ------------------------------------------------------------------------------

def test_usage_arguments() -> None:
    assert usage.parse_query("") == usage.Query(None, None, "7d")
    assert usage.parse_query("<@U2|bo> today") == usage.Query("U2", None, "today")
    assert usage.parse_query("30d <#C9|ops>") == usage.Query(None, "C9", "30d")
    assert "I could not read `yesterday`" in str(usage.parse_query("yesterday"))
    assert "not both" in str(usage.parse_query("<@U2> <#C1>"))


def totals(answer: str) -> tuple[int, str]:
    import re

    m = re.search(r"\): (\d+) runs?, \d+ turns?, \$([0-9.]+)", answer)
    assert m, answer
    return int(m.group(1)), m.group(2)


@pytest.mark.anyio
async def test_usage_totals_are_the_sum_of_the_rows_and_others_runs_elsewhere_are_left_out(
        tmp_path: Path, store: Store) -> None:
    run(store, "a", "U1", "C1", 0.0100)
    run(store, "b", "U2", "C1", 0.0200)
    run(store, "c", "U2", "C2", 0.0400)
    run(store, "d", "U1", "C2", 0.0800)
    commands = usage.UsageCommands(bot_settings(tmp_path), store).handlers()
    everything = await commands["usage"](SlashCommand("UADMIN", "C1", "usage 30d"))
    assert totals(everything) == (4, "0.1500")
    assert "• <@U1>: 2 runs, 4 turns, $0.0900" in everything and "• <#C2>: 2 runs, 4 turns, $0.1200" in everything
    assert "tokens 400 in / 40 out / 20 cache reads / 4 cache writes" in everything
    mine = await commands["usage"](SlashCommand("U1", "C1", "usage"))  # C1's runs and U1's own
    assert totals(mine) == (3, "0.1100") and "1 other run, not yours" in mine
    assert totals(await commands["usage"](SlashCommand("U1", "C1", "usage <@U2>"))) == (1, "0.0200")
    by_channel = await commands["usage"](SlashCommand("UADMIN", "C1", "usage <#C2> today"))
    assert totals(by_channel) == (2, "0.1200")


@pytest.mark.anyio
async def test_only_an_admin_lifts_the_limits_for_a_thread(tmp_path: Path, store: Store) -> None:
    commands = usage.UsageCommands(bot_settings(tmp_path, SLACKBUS_BUDGET_USER_DAY="1"), store).handlers()
    link = "https://team.slack.com/archives/C1/p1700000000000100"
    refused = await commands["budget"](SlashCommand("U1", "C1", f"budget lift {link}"))
    assert "Only an admin" in refused and store.budget_lifted("C1", "1700000000.000100") is None
    lifted = await commands["budget"](SlashCommand("UADMIN", "C2", f"budget lift <{link}>"))
    assert "lifted for that thread" in lifted and store.budget_lifted("C1", "1700000000.000100") == "UADMIN"
    assert "apply to that thread again" in await commands["budget"](SlashCommand("UADMIN", "C1",
                                                                                f"budget restore {link}"))
    assert store.budget_lifted("C1", "1700000000.000100") is None
    assert "I could not read `raise`" in await commands["budget"](SlashCommand("UADMIN", "C1", "budget raise"))
    run(store, "a", "U1", "C1", 0.25)
    standing = await commands["budget"](SlashCommand("U1", "C1", "budget"))
    assert "• you (<@U1>), per day: $0.2500 of $1.00" in standing
