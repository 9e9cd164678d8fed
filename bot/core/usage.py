"""What runs cost, from the runs table: `/claude usage [@user|#channel] [today|7d|30d]` and `/claude budget`
(the limits, what is used of them, and an admin's lift for one thread). `slackbus usage --csv` (bot.cli) writes the
same rows for the books.

The totals are the sum of the rows shown: both come from one list of runs. Who sees what follows `/claude status`:
the runs in the channel the command was typed in and the person's own; admins see every run.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from bot.config import Settings
from bot.core import budget
from bot.core.events import SlashCommand
from bot.core.handoff import parse_thread_ref
from bot.core.store import Store
from bot.core.store_readonly import UsageRow
from bot.log import get_logger

log = get_logger("slackbus.usage")

PERIODS = {"today": None, "7d": 7 * 86400.0, "30d": 30 * 86400.0}
DEFAULT_PERIOD = "7d"
USAGE_HELP = "`/claude usage [@someone|#channel] [today|7d|30d]`"
BUDGET_HELP = "`/claude budget`, `/claude budget lift <thread link>` or `/claude budget restore <thread link>`"


def since_of(period: str, now: float) -> float:
    """The start of `today` (UTC midnight), or `now` less 7 or 30 days."""
    span = PERIODS[period]
    return budget.window(budget.DAY, now)[0] if span is None else now - span


@dataclass
class Tally:
    runs: int = 0
    turns: int = 0
    cost: float = 0.0
    duration_ms: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0

    def add(self, row: UsageRow) -> None:
        self.runs += 1
        self.turns += row.num_turns
        self.cost += row.cost_usd
        self.duration_ms += row.duration_ms
        self.input_tokens += row.input_tokens
        self.output_tokens += row.output_tokens
        self.cache_read_tokens += row.cache_read_tokens
        self.cache_creation_tokens += row.cache_creation_tokens

    def line(self) -> str:
        seconds = round(self.duration_ms / 1000)
        took = f"{seconds}s" if seconds < 60 else f"{seconds // 60}m {seconds % 60:02d}s" if seconds < 3600 \
            else f"{seconds // 3600}h {seconds // 60 % 60:02d}m"
        return (f"{self.runs} run{'s' if self.runs != 1 else ''}, {self.turns} turn{'s' if self.turns != 1 else ''}, "
                f"${self.cost:.4f}, {took}, tokens {self.input_tokens:,} in / {self.output_tokens:,} out / "
                f"{self.cache_read_tokens:,} cache reads / {self.cache_creation_tokens:,} cache writes")


def tally(rows: Iterable[UsageRow], key: Callable[[UsageRow], str]) -> dict[str, Tally]:
    out: dict[str, Tally] = {}
    for row in rows:
        out.setdefault(key(row), Tally()).add(row)
    return out


_USER = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")
_CHANNEL = re.compile(r"<#([CGD][A-Z0-9]+)(?:\|[^>]*)?>")


@dataclass(frozen=True)
class Query:
    user: str | None = None
    channel: str | None = None
    period: str = DEFAULT_PERIOD


def parse_query(text: str) -> Query | str:
    """`[@user|#channel] [today|7d|30d]` → a Query, or the sentence saying what could not be read."""
    user = channel = None
    period = DEFAULT_PERIOD
    for word in text.split():
        if (m := _USER.fullmatch(word)) or re.fullmatch(r"[UW][A-Z0-9]{2,}", word):
            user = m.group(1) if m else word
        elif (m := _CHANNEL.fullmatch(word)) or re.fullmatch(r"[CGD][A-Z0-9]{2,}", word):
            channel = m.group(1) if m else word
        elif word.lower() in PERIODS:
            period = word.lower()
        else:
            return f"I could not read `{word}`: write {USAGE_HELP} (the person or channel as a mention)."
    if user and channel:
        return f"Give a person or a channel, not both: {USAGE_HELP}."
    return Query(user, channel, period)


class UsageCommands:
    """`/claude usage` and `/claude budget`, for Commands' `more` (name → answer)."""

    def __init__(self, settings: Settings, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._store = store
        self._clock = clock

    def handlers(self) -> dict[str, Callable[[SlashCommand], Awaitable[str]]]:
        return {"usage": self.usage, "budget": self.budget}

    def _visible(self, rows: list[UsageRow], user: str, channel: str) -> tuple[list[UsageRow], int]:
        """The rows `user` may see from `channel` (as `/claude status`), and how many were left out."""
        if self._settings.is_admin(user):
            return rows, 0
        kept = [r for r in rows if r.channel == channel or r.user == user]
        return kept, len(rows) - len(kept)

    async def usage(self, command: SlashCommand) -> str:
        query = parse_query(command.text.partition(" ")[2])
        if isinstance(query, str):
            return query
        now = self._clock()
        since = since_of(query.period, now)
        rows, hidden = self._visible(self._store.usage_rows(since), command.user, command.channel)
        if query.user:
            rows = [r for r in rows if r.user == query.user]
        if query.channel:
            rows = [r for r in rows if r.channel == query.channel]
        log.info("usage.shown", user=command.user, channel=command.channel, period=query.period, runs=len(rows))
        return render(rows, query, since, hidden=hidden)

    async def budget(self, command: SlashCommand) -> str:
        word, _, rest = command.text.partition(" ")[2].strip().partition(" ")
        word = word.lower()
        if not word:
            return self._standing(command.user, command.channel)
        if word not in {"lift", "restore"}:
            return f"I could not read `{word}`: write {BUDGET_HELP}."
        if not self._settings.is_admin(command.user):
            return "Only an admin (SLACKBUS_ADMIN_USERS) can lift or restore the spending limits for a thread."
        ref = parse_thread_ref(rest) if rest.strip() else (None, command.thread_ts) if command.thread_ts else None
        if ref is None:
            return f"Which thread? Give its link (⋮ → Copy link): {BUDGET_HELP}."
        channel, thread_ts = ref[0] or command.channel, ref[1]
        if word == "lift":
            self._store.lift_budget(channel, thread_ts, command.user)
            log.info("budget.lifted", by=command.user, channel=channel, thread_ts=thread_ts)
            return ("The spending limits are lifted for that thread: its requests run whatever has been spent (their "
                    "cost still counts for everyone else). `/claude budget restore <thread link>` puts them back.")
        restored = self._store.restore_budget(channel, thread_ts)
        log.info("budget.restored", by=command.user, channel=channel, thread_ts=thread_ts, was_lifted=restored)
        return ("The spending limits apply to that thread again." if restored
                else "The spending limits were not lifted for that thread, so nothing changed.")

    def _standing(self, user: str, channel: str) -> str:
        limits = self._settings.budget
        if not limits:
            return ("No spending limits are set (SLACKBUS_BUDGET_USER_DAY, _USER_MONTH, _CHANNEL_DAY, _CHANNEL_MONTH, "
                    "_DAY, _MONTH in USD, or SLACKBUS_CONFIG's [budget]).")
        now = self._clock()
        lines = ["*Spending limits* (UTC days and months; the cost Claude Code reports for each run):"]
        for scope, who in (("user", f"you (<@{user}>)"), ("channel", f"<#{channel}>"), ("all", "everyone")):
            for period in (budget.DAY, budget.MONTH):
                limit = limits.of(scope, period)
                if limit is None:
                    continue
                start, _ = budget.window(period, now)
                used = self._store.spent(start, user=user if scope == "user" else None,
                                         channel=channel if scope == "channel" else None)
                lines.append(f"• {who}, per {period}: {budget.money(used)} of {budget.money(limit)}")
        return "\n".join(lines)


def render(rows: list[UsageRow], query: Query, since: float, *, hidden: int = 0) -> str:
    what = {"today": "today (UTC)", "7d": "the last 7 days", "30d": "the last 30 days"}[query.period]
    whose = f" of <@{query.user}>" if query.user else f" in <#{query.channel}>" if query.channel else ""
    start = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%d %H:%M UTC")
    total = Tally()
    for row in rows:
        total.add(row)
    lines = [f"*Usage{whose}, {what}* (since {start}): {total.line()}"]
    if rows:
        lines.append("*By person*:")
        lines += [f"• {f'<@{k}>' if k else 'nobody'}: {t.line()}" for k, t in
                  sorted(tally(rows, lambda r: r.user or "").items(), key=lambda kv: -kv[1].cost)]
        lines.append("*By channel*:")
        lines += [f"• <#{k}>: {t.line()}" for k, t in
                  sorted(tally(rows, lambda r: r.channel).items(), key=lambda kv: -kv[1].cost)]
    if hidden:
        lines.append(f"({hidden} other run{'s' if hidden != 1 else ''}, not yours and not in this channel, "
                     f"{'are' if hidden != 1 else 'is'} left out; admins see every run.)")
    return "\n".join(lines)
