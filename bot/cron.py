"""Cron expressions and time zones for schedules: read, checked, and the times they name.

Parsing is cronsim's (the library Healthchecks uses): five fields (minute hour day month weekday, Debian cron's
rules, names like MON and JAN, L and #), or six with seconds first. Times are epoch seconds; each schedule's
fields are read in its own IANA time zone (zoneinfo), so "0 9 * * 1-5" is 09:00 there, summer and winter.
Foundation: bot.config checks SLACKBUS_CONFIG's [[schedules]] with it, bot.core.schedules runs them.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

CRON_HELP = "five fields, minute hour day-of-month month day-of-week, like `0 9 * * 1-5` (09:00 on weekdays)"


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule as SLACKBUS_CONFIG's [[schedules]] writes it (checked by bot.config)."""

    channel: str
    cron: str
    tz: str
    prompt: str
    owner: str


def cron_problem(expr: str) -> str | None:
    """Why `expr` is not a cron expression cronsim reads (a short phrase), or None when it is."""
    fields = expr.split()
    if len(fields) not in (5, 6):
        return f"it has {len(fields)} field{'s' if len(fields) != 1 else ''}, not 5 (or 6 with seconds first)"
    try:
        CronSim(expr, datetime(2000, 1, 1))
    except CronSimError as exc:
        return str(exc).lower() or "cronsim cannot read it"
    except (ValueError, IndexError) as exc:  # cronsim raises these on a few malformed terms
        return str(exc) or type(exc).__name__
    return None


def zone_problem(name: str) -> str | None:
    """Why `name` is not an IANA time zone this host knows (a short phrase), or None when it is."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return "not a time zone name this host knows (an IANA name like Europe/Berlin, America/New_York or UTC)"
    return None


def host_zone() -> str:
    """The host's time zone by its IANA name: $TZ, else what /etc/localtime points to, else /etc/timezone, else UTC."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    with contextlib.suppress(OSError, RuntimeError):
        target = str(Path("/etc/localtime").resolve())
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    with contextlib.suppress(OSError, UnicodeDecodeError):
        candidates.append(Path("/etc/timezone").read_text().strip())
    for name in candidates:
        if name and zone_problem(name) is None:
            return name
    return "UTC"


def next_after(expr: str, tz: str, t: float) -> float:
    """The first time `expr` names strictly after `t` (epoch seconds), read in zone `tz`."""
    start = datetime.fromtimestamp(t, ZoneInfo(tz)).replace(microsecond=0)
    return next(CronSim(expr, start)).timestamp()


def latest_at_or_before(expr: str, tz: str, t: float) -> float:
    """The last time `expr` names at or before `t` (epoch seconds, to the second), read in zone `tz`."""
    start = datetime.fromtimestamp(t, ZoneInfo(tz)).replace(microsecond=0) + timedelta(seconds=1)
    return next(CronSim(expr, start, reverse=True)).timestamp()
