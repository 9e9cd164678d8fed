"""Spending limits: per user, per channel and overall, per UTC day and per UTC month, in USD, from the cost
Claude Code reports for each run (the runs table).

A request is checked before its run starts: over a limit, it is refused with one sentence (which limit, the
amount used, when it resets) and nothing runs. A run that crosses a limit mid-way finishes its turn; the next
request is refused. An admin can lift the limits for one thread (`/claude budget lift <thread link>`).

Settings: SLACKBUS_BUDGET_USER_DAY, _USER_MONTH, _CHANNEL_DAY, _CHANNEL_MONTH, _DAY, _MONTH (USD), or the same
keys (user_day, …) in SLACKBUS_CONFIG's [budget] table; the environment wins (bot.config reads them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from bot.config import Limits, budget_setting

DAY, MONTH = "day", "month"
SCOPES = ("user", "channel", "all")  # checked in this order, each per day then per month


# --- windows -------------------------------------------------------------------------------------------------
def window(period: str, now: float) -> tuple[float, float]:
    """[start, reset) of the UTC day or month holding `now` (epoch seconds)."""
    at = datetime.fromtimestamp(now, UTC)
    if period == DAY:
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        end = datetime.fromtimestamp(start.timestamp() + 86400, UTC)
    else:
        start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start.timestamp(), end.timestamp()


def _in(seconds: float) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    return f"{round(hours / 24)} days"


def money(usd: float) -> str:
    return f"${usd:,.2f}" if usd >= 1 else f"${usd:.4f}"


@dataclass(frozen=True)
class Over:
    """A limit a request is over: which one, what it allows, what was used, when it resets."""

    scope: str  # user, channel or all
    period: str  # day or month
    limit: float
    used: float
    resets_at: float
    now: float

    @property
    def setting(self) -> str:
        return budget_setting(self.period if self.scope == "all" else f"{self.scope}_{self.period}")

    def sentence(self, user: str, channel: str) -> str:
        whose = {"user": f"<@{user}>'s", "channel": f"<#{channel}>'s", "all": "this bot's overall"}[self.scope]
        when = datetime.fromtimestamp(self.resets_at, UTC)
        reset = when.strftime("%H:%M UTC") if self.period == DAY else when.strftime("%Y-%m-%d 00:00 UTC")
        return (f":no_entry: Not run: {whose} {'daily' if self.period == DAY else 'monthly'} spending limit of "
                f"{money(self.limit)} ({self.setting}) is used up ({money(self.used)} spent this "
                f"{'UTC day' if self.period == DAY else 'UTC month'}); it resets at {reset} (in "
                f"{_in(self.resets_at - self.now)}), or an admin can lift it for this thread with "
                "`/claude budget lift <thread link>`.")


Spent = Callable[..., float]  # spent(since, user=…, channel=…) → USD (Store.spent)


def over(limits: Limits, spent: Spent, user: str, channel: str, now: float) -> Over | None:
    """The first limit (user, channel, overall; day before month) the spending since its window began has reached."""
    for scope in SCOPES:
        for period in (DAY, MONTH):
            limit = limits.of(scope, period)
            if limit is None:
                continue
            start, reset = window(period, now)
            used = spent(start, user=user if scope == "user" else None, channel=channel if scope == "channel" else None)
            if used >= limit:
                return Over(scope, period, limit, used, reset, now)
    return None
