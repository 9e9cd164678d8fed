"""The bot's record, read-only: what the processes around the bot (hooks, `slackbus read`, `slackbus attach`)
read of it, without writing and without the bot running.

The store's half that other processes use, so the SQL against the schema stays in the store: bot.core.store's
Store (the writer) runs the same queries below for what both read, and re-exports ReadOnlyStore.

Stdlib only and light to import (sqlite3 and bot.errors; no dataclasses, no pathlib): a hook is a fresh process
per event. Every failure is a StoreError whose message says why (no record, locked, a schema too old to read, …);
StoreMissingError when there is simply no record at that path.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from bot.errors import StoreError

READ_SCHEMA = 1  # the oldest schema version with every table and column read here (messages, channels, users, threads)
MESSAGE_COLUMNS = "channel, ts, thread_ts, user, bot_id, text, from_self, subtype"
THREAD_COLUMNS = "channel, thread_ts, session_id, workdir, started, last_ts, requester"

T = TypeVar("T")


class StoreMissingError(StoreError):
    """There is no record at that path: no bot has run with this SLACKBUS_HOME (on this host)."""


class MessageRow(NamedTuple):
    channel: str
    ts: str
    thread_ts: str | None
    user: str | None
    bot_id: str | None
    text: str
    from_self: bool
    subtype: str | None


class ThreadRow(NamedTuple):
    channel: str
    thread_ts: str
    session_id: str
    workdir: str
    started: bool
    last_ts: str
    requester: str | None


USAGE_SCHEMA = 9  # the runs table's tokens and model (migration _m9_usage)


class UsageRow(NamedTuple):
    """One run as `/claude usage` and `slackbus usage --csv` count it."""

    run_id: str
    started_at: float
    user: str | None
    channel: str
    thread_ts: str
    status: str
    num_turns: int
    cost_usd: float
    duration_ms: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int
    model: str | None


# --- the queries both the writer and the read-only view run ----------------------------------------------------
def message_row(row: tuple[Any, ...]) -> MessageRow:
    channel, ts, thread_ts, user, bot_id, text, from_self, subtype = row
    return MessageRow(
        channel=str(channel),
        ts=str(ts),
        thread_ts=None if thread_ts is None else str(thread_ts),
        user=None if user is None else str(user),
        bot_id=None if bot_id is None else str(bot_id),
        text=str(text),
        from_self=bool(from_self),
        subtype=None if subtype is None else str(subtype),
    )


def messages_after(
    db: sqlite3.Connection, channel: str, after_ts: str, limit: int, *, thread_ts: str | None = None
) -> list[MessageRow]:
    """The newest `limit` top-level messages (or that thread's) after `after_ts`, oldest first."""
    args: tuple[str, ...] = ()
    if thread_ts:
        where, args = "(thread_ts=? OR ts=?)", (thread_ts, thread_ts)
    else:
        where = "(thread_ts IS NULL OR thread_ts=ts)"
    rows = db.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM messages"
        f" WHERE channel=? AND {where} AND ts > ? ORDER BY ts DESC LIMIT ?",
        (channel, *args, after_ts, limit),
    ).fetchall()
    return [message_row(r) for r in reversed(rows)]


def user_names(db: sqlite3.Connection) -> dict[str, str]:
    return dict(db.execute("SELECT user_id, name FROM users").fetchall())


def thread(db: sqlite3.Connection, channel: str, thread_ts: str) -> ThreadRow | None:
    row = db.execute(
        f"SELECT {THREAD_COLUMNS} FROM threads WHERE channel=? AND thread_ts=?", (channel, thread_ts)
    ).fetchone()
    if row is None:
        return None
    return ThreadRow(row[0], row[1], row[2], row[3], bool(row[4]), row[5], row[6])


def usage_rows(db: sqlite3.Connection, since: float, until: float | None = None) -> list[UsageRow]:
    """The runs started in [since, until), oldest first; what a run did not report counts as 0."""
    rows = db.execute(
        "SELECT run_id, started_at, user, channel, thread_ts, status, coalesce(num_turns, 0), coalesce(cost_usd, 0),"
        " coalesce(duration_ms, 0), coalesce(input_tokens, 0), coalesce(output_tokens, 0),"
        " coalesce(cache_read_tokens, 0), coalesce(cache_creation_tokens, 0), model FROM runs"
        " WHERE started_at >= ? AND (? IS NULL OR started_at < ?) ORDER BY started_at, run_id",
        (since, until, until),
    ).fetchall()
    return [UsageRow(str(r[0]), float(r[1]), None if r[2] is None else str(r[2]), str(r[3]), str(r[4]), str(r[5]),
                     int(r[6]), float(r[7]), int(r[8]), int(r[9]), int(r[10]), int(r[11]), int(r[12]),
                     None if r[13] is None else str(r[13])) for r in rows]


# --- the read-only view ----------------------------------------------------------------------------------------
class ReadOnlyStore:
    """The record opened read-only (SQLite's mode=ro): `with ReadOnlyStore.open(path) as record: …`."""

    def __init__(self, db: sqlite3.Connection, path: str) -> None:
        self._db = db
        self.path = path

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, timeout: float = 1.0) -> ReadOnlyStore:
        """Open the record and check that its schema can be read; StoreError (a sentence) when it cannot.

        `timeout`: how long a read waits for another connection's lock."""
        where = os.fspath(path)
        if not os.path.isfile(where):
            raise StoreMissingError(f"There is no slackbus record at {where} (no bot has run with this SLACKBUS_HOME "
                                    "here).")
        try:
            db = sqlite3.connect(f"file:{_uri_path(where)}?mode=ro", uri=True, timeout=timeout)
        except sqlite3.Error as exc:
            raise StoreError(_why(where, exc)) from exc
        record = cls(db, where)
        try:
            version = record.schema_version
        except StoreError:
            db.close()
            raise
        if version < READ_SCHEMA:
            db.close()
            raise StoreError(f"The slackbus record {where} has schema version {version}; reading it needs version "
                             f"{READ_SCHEMA} or later: start the bot once (`slackbus run`) to bring it up to date.")
        return record

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ReadOnlyStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        """The newest migration applied (0: none recorded, e.g. no migrations table)."""
        try:
            row = self._db.execute("SELECT max(version) FROM migrations").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc).lower():
                return 0
            raise StoreError(_why(self.path, exc)) from exc
        except sqlite3.Error as exc:
            raise StoreError(_why(self.path, exc)) from exc
        return int(row[0] or 0)

    def channel_id(self, name: str) -> str | None:
        """The id of the channel called `name` (without #), if the bot has seen it."""
        row = self._read(lambda db: db.execute("SELECT channel FROM channels WHERE name=?", (name,)).fetchone())
        return str(row[0]) if row else None

    def knows_channel(self, channel: str) -> bool:
        """The bot has recorded the channel, or at least one of its messages."""
        return bool(self._read(lambda db: db.execute(
            "SELECT 1 FROM channels WHERE channel=? UNION ALL SELECT 1 FROM messages WHERE channel=? LIMIT 1",
            (channel, channel),
        ).fetchone()))

    def messages_after(
        self, channel: str, after_ts: str, limit: int, *, thread_ts: str | None = None
    ) -> list[MessageRow]:
        """The newest `limit` top-level messages (or that thread's) after `after_ts`, oldest first."""
        return self._read(lambda db: messages_after(db, channel, after_ts, limit, thread_ts=thread_ts))

    def user_names(self) -> dict[str, str]:
        return self._read(user_names)

    def thread(self, channel: str, thread_ts: str) -> ThreadRow | None:
        return self._read(lambda db: thread(db, channel, thread_ts))

    def usage_rows(self, since: float, until: float | None = None) -> list[UsageRow]:
        """The runs started in [since, until) with what they cost; StoreError when the record predates usage."""
        if self.schema_version < USAGE_SCHEMA:
            raise StoreError(f"The slackbus record {self.path} has no usage columns yet (schema version "
                             f"{self.schema_version}, usage needs {USAGE_SCHEMA}): start the bot once (`slackbus run`) "
                             "to bring it up to date.")
        return self._read(lambda db: usage_rows(db, since, until))

    def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return query(self._db)
        except sqlite3.Error as exc:
            raise StoreError(_why(self.path, exc)) from exc


def _uri_path(path: str) -> str:
    """A path as SQLite's file: URI takes it: `%`, `?` and `#` escaped (a folder may be called anything)."""
    return path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def _why(path: str, exc: BaseException) -> str:
    """One sentence for a failed read of the record."""
    text = str(exc)
    lowered = text.lower()
    if "locked" in lowered or "busy" in lowered:
        return (f"The slackbus record {path} is locked by another process ({text}): the bot holds it for a "
                "moment, or something else has the file open; try again.")
    if "not a database" in lowered or "malformed" in lowered:
        return f"The slackbus record {path} is damaged or not a slackbus record ({text})."
    return f"The slackbus record {path} cannot be read ({text}): check that this user may read SLACKBUS_HOME."
