"""The bot's own record (SQLite, WAL): every message it receives, thread → session map, requests and runs.

One connection, used only from the event-loop thread: the single writer path. Statements are small and
indexed, so they take microseconds; nothing here awaits. Slack ts strings ("1700000000.000100") have a
fixed shape, so they order correctly as text. Schema changes are an append-only list of
migrations recorded in the `migrations` table.

Other processes (hooks, `slackbus read`, `slackbus attach`) read the record through ReadOnlyStore
(bot.core.store_readonly, light to import); the queries both run live there once.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bot.core import store_readonly as reads
from bot.core.store_readonly import ReadOnlyStore as ReadOnlyStore  # the read-only view other processes open
from bot.errors import StoreError

if TYPE_CHECKING:
    from bot.core.stream_parser import Usage
    from bot.core.worktrees import Worktree


@dataclass(frozen=True)
class StoredMessage:
    channel: str
    ts: str
    thread_ts: str | None  # None for a top-level message; the parent's ts for a reply
    user: str | None
    bot_id: str | None
    text: str
    from_self: bool = False  # posted by this bot
    subtype: str | None = None

    @property
    def is_reply(self) -> bool:
        return self.thread_ts is not None and self.thread_ts != self.ts


@dataclass(frozen=True)
class ThreadSession:
    channel: str
    thread_ts: str
    session_id: str
    workdir: str
    started: bool  # the CLI confirmed the session exists (a result came back)
    last_ts: str  # newest message already given to the session
    requester: str | None


@dataclass(frozen=True)
class ThreadOptions:
    """What a thread works with, chosen when it started: the repository's name, the base branch, the model."""

    repo: str | None = None
    branch: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class Schedule:
    """A routine: `prompt` run in `channel` at the times `cron` names in zone `tz`, as `owner`'s request."""

    id: str
    channel: str
    cron: str
    tz: str
    prompt: str
    owner: str
    created_by: str | None
    created_at: float
    source: str  # "command" (/claude schedule) or "config" (SLACKBUS_CONFIG's [[schedules]])
    last_due_at: float | None = None  # the last due time taken (run, or skipped as too late)
    last_run_at: float | None = None
    last_thread_ts: str | None = None
    runs: int = 0


_SCHEDULE_COLUMNS = ("id, channel, cron, tz, prompt, owner, created_by, created_at, source, last_due_at, last_run_at,"
                     " last_thread_ts, runs")


@dataclass(frozen=True)
class Request:
    channel: str
    ts: str
    thread_ts: str
    user: str
    kind: str
    status: str
    received_at: float


def _m1(db: sqlite3.Connection) -> None:
    _script(
        db,
        """
        CREATE TABLE messages (
            channel TEXT NOT NULL, ts TEXT NOT NULL, thread_ts TEXT, user TEXT, bot_id TEXT,
            text TEXT NOT NULL, subtype TEXT, from_self INTEGER NOT NULL DEFAULT 0,
            received_at REAL NOT NULL, PRIMARY KEY (channel, ts)
        ) WITHOUT ROWID;
        CREATE INDEX messages_thread ON messages(channel, thread_ts, ts);
        CREATE TABLE threads (
            channel TEXT NOT NULL, thread_ts TEXT NOT NULL, session_id TEXT NOT NULL, workdir TEXT NOT NULL,
            started INTEGER NOT NULL DEFAULT 0, last_ts TEXT NOT NULL, requester TEXT,
            created_at REAL NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (channel, thread_ts)
        ) WITHOUT ROWID;
        CREATE TABLE requests (
            channel TEXT NOT NULL, ts TEXT NOT NULL, thread_ts TEXT NOT NULL, user TEXT NOT NULL,
            kind TEXT NOT NULL, status TEXT NOT NULL, received_at REAL NOT NULL, finished_at REAL,
            PRIMARY KEY (channel, ts)
        ) WITHOUT ROWID;
        CREATE INDEX requests_status ON requests(status);
        CREATE TABLE events_seen (event_id TEXT PRIMARY KEY, seen_at REAL NOT NULL) WITHOUT ROWID;
        CREATE TABLE channels (channel TEXT PRIMARY KEY, name TEXT, backfilled_at REAL) WITHOUT ROWID;
        CREATE TABLE users (user_id TEXT PRIMARY KEY, name TEXT NOT NULL, fetched_at REAL NOT NULL) WITHOUT ROWID;
        CREATE TABLE runs (
            run_id TEXT PRIMARY KEY, channel TEXT NOT NULL, thread_ts TEXT NOT NULL, session_id TEXT,
            user TEXT, status TEXT NOT NULL, started_at REAL NOT NULL, finished_at REAL, error TEXT,
            num_turns INTEGER, cost_usd REAL, duration_ms INTEGER
        ) WITHOUT ROWID;
        """
    )


def _script(db: sqlite3.Connection, sql: str) -> None:
    """Run several statements inside the caller's transaction (executescript would commit it)."""
    for statement in sql.split(";"):
        if statement.strip():
            db.execute(statement)


def _m2_outbox(db: sqlite3.Connection) -> None:
    """Answers not yet accepted by Slack: kept until they are, across restarts."""
    _script(
        db,
        """
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, thread_ts TEXT NOT NULL,
            payload TEXT NOT NULL, created_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT
        )
        """,
    )


def _m3_channel_workdir(db: sqlite3.Connection) -> None:
    """A channel's working directory as set by an admin with `/claude cwd` (over the configured one)."""
    db.execute("ALTER TABLE channels ADD COLUMN workdir TEXT")


def _m4_run_lookups(db: sqlite3.Connection) -> None:
    """The blackboard asks which thread a session serves, and which sessions ran in a channel lately."""
    db.execute("CREATE INDEX runs_session ON runs(session_id, started_at)")
    db.execute("CREATE INDEX runs_channel ON runs(channel, started_at)")


def _m5_handoffs(db: sqlite3.Connection) -> None:
    """Hand-offs between a terminal and a thread: who, when, which way, and the HOME `--resume` needs."""
    db.execute(
        "CREATE TABLE handoffs (id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, thread_ts TEXT NOT NULL,"
        " session_id TEXT NOT NULL, workdir TEXT NOT NULL, home TEXT NOT NULL, by TEXT, direction TEXT NOT NULL,"
        " at REAL NOT NULL)"
    )
    db.execute("CREATE INDEX handoffs_thread ON handoffs(channel, thread_ts, id)")


def _m6_worktrees(db: sqlite3.Connection) -> None:
    """The git worktree (and branch) each thread works in, when its channel's folder is a repository."""
    db.execute(
        "CREATE TABLE worktrees (channel TEXT NOT NULL, thread_ts TEXT NOT NULL, repo TEXT NOT NULL,"
        " path TEXT NOT NULL, branch TEXT NOT NULL, base TEXT NOT NULL, base_commit TEXT NOT NULL,"
        " created_at REAL NOT NULL, PRIMARY KEY (channel, thread_ts)) WITHOUT ROWID"
    )


def _m7_thread_options(db: sqlite3.Connection) -> None:
    """What a thread's request chose (`[repo=… branch=… model=…]`, or the channel's defaults), kept for its
    follow-ups: the repository's name, the base branch, the model."""
    db.execute(
        "CREATE TABLE thread_options (channel TEXT NOT NULL, thread_ts TEXT NOT NULL, repo TEXT, branch TEXT,"
        " model TEXT, PRIMARY KEY (channel, thread_ts)) WITHOUT ROWID"
    )


def _m8_message_files(db: sqlite3.Connection) -> None:
    """The files attached to a message (a JSON list of bot.core.events.FileRef data), for the run that answers it,
    also after a restart."""
    db.execute("CREATE TABLE message_files (channel TEXT NOT NULL, ts TEXT NOT NULL, files TEXT NOT NULL,"
               " PRIMARY KEY (channel, ts)) WITHOUT ROWID")


def _m9_usage(db: sqlite3.Connection) -> None:
    """What each run cost (tokens in and out, cache reads, model) and spending limits lifted (issue 19)."""
    for column in ("input_tokens INTEGER", "output_tokens INTEGER", "cache_read_tokens INTEGER",
                   "cache_creation_tokens INTEGER", "model TEXT"):
        db.execute(f"ALTER TABLE runs ADD COLUMN {column}")
    db.execute("CREATE INDEX runs_user ON runs(user, started_at)")
    db.execute("CREATE INDEX runs_started ON runs(started_at)")
    db.execute("CREATE TABLE budget_lifts (channel TEXT NOT NULL, thread_ts TEXT NOT NULL, by TEXT NOT NULL,"
               " at REAL NOT NULL, PRIMARY KEY (channel, thread_ts)) WITHOUT ROWID")


def _m10_triggers(db: sqlite3.Connection) -> None:
    """Triggers: each rule's matches and pauses (issue 19)."""
    _script(db, """
        CREATE TABLE trigger_matches (rule TEXT NOT NULL, channel TEXT NOT NULL, ts TEXT NOT NULL,
            thread_ts TEXT NOT NULL, at REAL NOT NULL, outcome TEXT NOT NULL, PRIMARY KEY (rule, channel, ts));
        CREATE INDEX trigger_matches_thread ON trigger_matches (channel, thread_ts, at);
        CREATE INDEX trigger_matches_rule ON trigger_matches (rule, at);
        CREATE TABLE trigger_paused (rule TEXT PRIMARY KEY, by TEXT NOT NULL, at REAL NOT NULL);
    """)


def _m11_schedules(db: sqlite3.Connection) -> None:
    """Schedules: cron routines and their last runs (issue 19). last_due_at is the time last taken (run or skipped):
    a due time is taken once (claim_schedule), which is what keeps a restart from running it twice."""
    db.execute(
        "CREATE TABLE schedules (id TEXT PRIMARY KEY, channel TEXT NOT NULL, cron TEXT NOT NULL, tz TEXT NOT NULL,"
        " prompt TEXT NOT NULL, owner TEXT NOT NULL, created_by TEXT, created_at REAL NOT NULL, source TEXT NOT NULL,"
        " last_due_at REAL, last_run_at REAL, last_thread_ts TEXT, runs INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID"
    )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _m1, _m2_outbox, _m3_channel_workdir, _m4_run_lookups, _m5_handoffs, _m6_worktrees, _m7_thread_options,
    _m8_message_files, _m9_usage, _m10_triggers, _m11_schedules,
]

FINISHED = frozenset({"done", "failed", "refused", "cancelled"})  # a request's statuses that end it
BUSY_TIMEOUT_S = 5.0  # how long a write waits for another connection's lock before it fails


def _sentence(path: Path, exc: BaseException, what: str) -> str:
    """One sentence a person can act on, for a failure to open or write the state database."""
    text = str(exc)
    lowered = text.lower()
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in lowered or "busy" in lowered):
        return (
            f"The state database {path} is locked by another process ({text}): is another slackbus running with "
            "the same SLACKBUS_HOME? Stop it (or close whatever holds the file), or give this one its own "
            "SLACKBUS_HOME."
        )
    if "disk is full" in lowered or "disk i/o error" in lowered or "file too large" in lowered:
        return (
            f"The state database {path} {what} ({text}): the disk holding SLACKBUS_HOME is full or failing; "
            "free space there."
        )
    return (
        f"The state database {path} {what} ({text}): check SLACKBUS_HOME is writable and not on a full disk."
    )


class Store:
    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open (and migrate) the record. Another process holding its write lock stops the start after the busy
        timeout, with a sentence saying so: a bot that can read but not write would fail its first request."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(_sentence(path, exc, "cannot be opened")) from exc
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            db.execute("PRAGMA foreign_keys=ON")
            store = cls(db, path)
            store._migrate()
            db.execute("BEGIN IMMEDIATE")  # can we write? (waits up to the busy timeout for another writer)
            db.execute("COMMIT")
        except (sqlite3.Error, OSError, StoreError) as exc:
            db.close()
            cause = exc.__cause__ if isinstance(exc, StoreError) and exc.__cause__ is not None else exc
            raise StoreError(_sentence(path, cause, "cannot be opened")) from exc
        return store

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # also when COMMIT itself failed (disk full): a transaction left open would make every later
                # write fail with "cannot start a transaction within a transaction", even once there is room
                if self._db.in_transaction:
                    with suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(_sentence(self.path, exc, "could not be written")) from exc

    def _migrate(self) -> None:
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS migrations (version INTEGER PRIMARY KEY, name TEXT, applied_at REAL)"
        )
        done = {row[0] for row in self._db.execute("SELECT version FROM migrations")}
        for version, migration in enumerate(MIGRATIONS, start=1):
            if version in done:
                continue
            with self._tx() as db:
                migration(db)
                db.execute(
                    "INSERT INTO migrations VALUES (?, ?, ?)", (version, migration.__name__, time.time())
                )

    @property
    def schema_version(self) -> int:
        row = self._db.execute("SELECT max(version) FROM migrations").fetchone()
        return int(row[0] or 0)

    # --- messages -------------------------------------------------------------------------------
    def record_message(self, m: StoredMessage) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO messages (channel, ts, thread_ts, user, bot_id, text, subtype, from_self, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(channel, ts) DO UPDATE SET text=excluded.text, thread_ts=excluded.thread_ts",
                (m.channel, m.ts, m.thread_ts, m.user, m.bot_id, m.text, m.subtype, int(m.from_self), time.time()),
            )

    def record_messages(self, messages: list[StoredMessage]) -> None:
        """Backfill: insert what is missing, never overwrite what events already told us."""
        with self._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO messages"
                " (channel, ts, thread_ts, user, bot_id, text, subtype, from_self, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (m.channel, m.ts, m.thread_ts, m.user, m.bot_id, m.text, m.subtype, int(m.from_self), time.time())
                    for m in messages
                ],
            )

    def record_files(self, channel: str, ts: str, files: list[dict[str, object]]) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO message_files (channel, ts, files) VALUES (?, ?, ?)"
                       " ON CONFLICT(channel, ts) DO UPDATE SET files=excluded.files",
                       (channel, ts, json.dumps(files)))

    def files_of(self, channel: str, ts: str) -> list[dict[str, object]]:
        """The files recorded for a message (data of bot.core.events.FileRef); [] when none, or unreadable."""
        row = self._db.execute("SELECT files FROM message_files WHERE channel=? AND ts=?", (channel, ts)).fetchone()
        try:
            files = json.loads(row[0]) if row else []
        except ValueError:
            from bot.log import get_logger

            get_logger("slackbus.store").warning("store.unreadable_files", channel=channel, ts=ts)
            return []
        return [f for f in files if isinstance(f, dict)] if isinstance(files, list) else []

    def delete_message(self, channel: str, ts: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM messages WHERE channel=? AND ts=?", (channel, ts))

    def channel_messages(self, channel: str, before_ts: str, limit: int) -> list[StoredMessage]:
        """The newest `limit` top-level messages strictly before `before_ts`, oldest first."""
        rows = self._db.execute(
            f"SELECT {reads.MESSAGE_COLUMNS} FROM messages"
            " WHERE channel=? AND (thread_ts IS NULL OR thread_ts=ts) AND ts < ?"
            " ORDER BY ts DESC LIMIT ?",
            (channel, before_ts, limit),
        ).fetchall()
        return [_message(r) for r in reversed(rows)]

    def thread_messages(
        self, channel: str, thread_ts: str, *, after_ts: str | None = None, upto_ts: str | None = None
    ) -> list[StoredMessage]:
        """The parent and replies of a thread, oldest first, in (after_ts, upto_ts]."""
        rows = self._db.execute(
            f"SELECT {reads.MESSAGE_COLUMNS} FROM messages"
            " WHERE channel=? AND (thread_ts=? OR ts=?)"
            " AND (? IS NULL OR ts > ?)"
            " AND (? IS NULL OR ts <= ?)"
            " ORDER BY ts",
            (channel, thread_ts, thread_ts, after_ts, after_ts, upto_ts, upto_ts),
        ).fetchall()
        return [_message(r) for r in rows]

    def messages_after(
        self, channel: str, after_ts: str, limit: int, *, thread_ts: str | None = None
    ) -> list[StoredMessage]:
        """The newest `limit` top-level messages (or that thread's) after `after_ts`, oldest first."""
        rows = reads.messages_after(self._db, channel, after_ts, limit, thread_ts=thread_ts)
        return [StoredMessage(*r) for r in rows]

    def has_posted(self, channel: str, user: str) -> bool:
        """Whether the record holds a message of `user` in `channel`."""
        return self._db.execute("SELECT 1 FROM messages WHERE channel=? AND user=? LIMIT 1",
                                (channel, user)).fetchone() is not None

    def get_message(self, channel: str, ts: str) -> StoredMessage | None:
        row = self._db.execute(
            f"SELECT {reads.MESSAGE_COLUMNS} FROM messages"
            " WHERE channel=? AND ts=?",
            (channel, ts),
        ).fetchone()
        return _message(row) if row else None

    # --- dedupe -----------------------------------------------------------------------------------
    def first_sight(self, event_id: str) -> bool:
        """True the first time an event id is seen (survives restarts: Slack retries across them)."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO events_seen (event_id, seen_at) VALUES (?, ?)", (event_id, time.time())
            )
            return cur.rowcount == 1

    def forget_old_events(self, older_than_s: float = 86400.0) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM events_seen WHERE seen_at < ?", (time.time() - older_than_s,))

    # --- triggers (bot.core.triggers) --------------------------------------------------------------
    def record_trigger(self, rule: str, channel: str, ts: str, thread_ts: str, at: float, outcome: str) -> bool:
        """A rule's match, once per message (False: already recorded); outcome: started, paused, cooldown, capped."""
        with self._tx() as db:
            cur = db.execute("INSERT OR IGNORE INTO trigger_matches (rule, channel, ts, thread_ts, at, outcome)"
                             " VALUES (?, ?, ?, ?, ?, ?)", (rule, channel, ts, thread_ts, at, outcome))
            return cur.rowcount == 1

    def thread_triggered_since(self, channel: str, thread_ts: str, since: float) -> bool:
        return self._db.execute("SELECT 1 FROM trigger_matches WHERE channel=? AND thread_ts=? AND at>=?"
                                " AND outcome='started' LIMIT 1", (channel, thread_ts, since)).fetchone() is not None

    def trigger_runs_since(self, rule: str, since: float) -> int:
        row = self._db.execute("SELECT count(*) FROM trigger_matches WHERE rule=? AND at>=? AND outcome='started'",
                               (rule, since)).fetchone()
        return int(row[0])

    def oldest_trigger_run_since(self, rule: str, since: float) -> float | None:
        row = self._db.execute("SELECT min(at) FROM trigger_matches WHERE rule=? AND at>=? AND outcome='started'",
                               (rule, since)).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def trigger_of(self, channel: str, ts: str) -> str | None:
        """The rule a message started a run by, if it did."""
        row = self._db.execute("SELECT rule FROM trigger_matches WHERE channel=? AND ts=? AND outcome='started'",
                               (channel, ts)).fetchone()
        return str(row[0]) if row else None

    def trigger_stats(self) -> dict[str, tuple[int, float | None]]:
        """rule → (runs it started, when it last matched)."""
        rows = self._db.execute("SELECT rule, sum(outcome='started'), max(at) FROM trigger_matches GROUP BY rule")
        return {str(r[0]): (int(r[1] or 0), float(r[2]) if r[2] is not None else None) for r in rows}

    def paused_triggers(self) -> set[str]:
        return {str(r[0]) for r in self._db.execute("SELECT rule FROM trigger_paused")}

    def set_trigger_paused(self, rule: str, by: str | None, at: float) -> None:
        """Pause a rule (`by` the admin), or resume it (None)."""
        with self._tx() as db:
            if by is None:
                db.execute("DELETE FROM trigger_paused WHERE rule=?", (rule,))
            else:
                db.execute("INSERT OR REPLACE INTO trigger_paused (rule, by, at) VALUES (?, ?, ?)", (rule, by, at))

    # --- requests ----------------------------------------------------------------------------------
    def claim_request(self, channel: str, ts: str, thread_ts: str, user: str, kind: str) -> bool:
        """Record a request once per message: a mention arrives as app_mention AND message."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO requests (channel, ts, thread_ts, user, kind, status, received_at)"
                " VALUES (?, ?, ?, ?, ?, 'queued', ?)",
                (channel, ts, thread_ts, user, kind, time.time()),
            )
            return cur.rowcount == 1

    def set_request_status(self, channel: str, ts_list: list[str], status: str) -> None:
        finished = time.time() if status in FINISHED else None
        with self._tx() as db:
            db.executemany(
                "UPDATE requests SET status=?, finished_at=? WHERE channel=? AND ts=?",
                [(status, finished, channel, ts) for ts in ts_list],
            )

    def session_cost(self, session_id: str) -> float | None:
        """What a session's runs cost so far, as recorded here (None: none recorded)."""
        row = self._db.execute("SELECT SUM(cost_usd) FROM runs WHERE session_id=?", (session_id,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def request_finished(self, channel: str, ts: str) -> bool:
        """The request was answered, failed, refused or cancelled (not queued, running or interrupted)."""
        row = self._db.execute("SELECT status FROM requests WHERE channel=? AND ts=?", (channel, ts)).fetchone()
        return row is not None and row[0] in FINISHED

    def unfinished_requests(self) -> list[Request]:
        rows = self._db.execute(
            "SELECT channel, ts, thread_ts, user, kind, status, received_at FROM requests"
            " WHERE status IN ('queued', 'running') ORDER BY received_at"
        ).fetchall()
        return [Request(*r) for r in rows]

    # --- threads / sessions ------------------------------------------------------------------------
    def get_thread(self, channel: str, thread_ts: str) -> ThreadSession | None:
        row = reads.thread(self._db, channel, thread_ts)
        return None if row is None else ThreadSession(*row)

    def save_thread(self, t: ThreadSession) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO threads (channel, thread_ts, session_id, workdir, started, last_ts, requester,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(channel, thread_ts) DO UPDATE SET session_id=excluded.session_id,"
                " workdir=excluded.workdir, started=excluded.started, last_ts=excluded.last_ts,"
                " updated_at=excluded.updated_at",
                (t.channel, t.thread_ts, t.session_id, t.workdir, int(t.started), t.last_ts, t.requester, now, now),
            )

    def recent_threads(self, channel: str, limit: int = 10) -> list[tuple[ThreadSession, float]]:
        """This channel's threads with a session, most recently active first, with their last activity time."""
        rows = self._db.execute(
            "SELECT channel, thread_ts, session_id, workdir, started, last_ts, requester, updated_at FROM threads"
            " WHERE channel=? AND session_id != '' ORDER BY updated_at DESC LIMIT ?",
            (channel, limit),
        ).fetchall()
        return [(ThreadSession(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6]), float(r[7])) for r in rows]

    # --- outbox -------------------------------------------------------------------------------------------
    def outbox_add(self, channel: str, thread_ts: str, payload: str) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO outbox (channel, thread_ts, payload, created_at) VALUES (?, ?, ?, ?)",
                (channel, thread_ts, payload, time.time()),
            )
            return int(cur.lastrowid or 0)

    def outbox_update(self, item_id: int, payload: str | None, error: str | None) -> None:
        with self._tx() as db:
            if payload is None:
                db.execute("DELETE FROM outbox WHERE id=?", (item_id,))
            else:
                db.execute(
                    "UPDATE outbox SET payload=?, attempts=attempts+1, last_error=? WHERE id=?",
                    (payload, error, item_id),
                )

    def outbox_pending(self) -> list[tuple[int, str, str, str]]:
        return [
            (int(r[0]), str(r[1]), str(r[2]), str(r[3]))
            for r in self._db.execute("SELECT id, channel, thread_ts, payload FROM outbox ORDER BY id").fetchall()
        ]

    # --- channels and users ------------------------------------------------------------------------
    def is_backfilled(self, channel: str) -> bool:
        row = self._db.execute("SELECT backfilled_at FROM channels WHERE channel=?", (channel,)).fetchone()
        return bool(row and row[0])

    def mark_backfilled(self, channel: str, name: str | None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO channels (channel, name, backfilled_at) VALUES (?, ?, ?)"
                " ON CONFLICT(channel) DO UPDATE SET backfilled_at=excluded.backfilled_at,"
                " name=coalesce(excluded.name, channels.name)",
                (channel, name, time.time()),
            )

    def channel_workdir(self, channel: str) -> str | None:
        row = self._db.execute("SELECT workdir FROM channels WHERE channel=?", (channel,)).fetchone()
        return str(row[0]) if row and row[0] else None

    def set_channel_workdir(self, channel: str, workdir: str | None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO channels (channel, workdir) VALUES (?, ?)"
                " ON CONFLICT(channel) DO UPDATE SET workdir=excluded.workdir",
                (channel, workdir),
            )

    def channel_name(self, channel: str) -> str | None:
        row = self._db.execute("SELECT name FROM channels WHERE channel=?", (channel,)).fetchone()
        return str(row[0]) if row and row[0] else None

    def user_names(self) -> dict[str, str]:
        return reads.user_names(self._db)

    def save_user(self, user_id: str, name: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO users (user_id, name, fetched_at) VALUES (?, ?, ?)"
                " ON CONFLICT(user_id) DO UPDATE SET name=excluded.name, fetched_at=excluded.fetched_at",
                (user_id, name, time.time()),
            )

    # --- runs ---------------------------------------------------------------------------------------
    def start_run(self, run_id: str, channel: str, thread_ts: str, session_id: str, user: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO runs (run_id, channel, thread_ts, session_id, user, status, started_at)"
                " VALUES (?, ?, ?, ?, ?, 'running', ?)",
                (run_id, channel, thread_ts, session_id, user, time.time()),
            )

    def finish_run(
        self,
        run_id: str,
        status: str,
        *,
        error: str | None = None,
        num_turns: int | None = None,
        cost_usd: float | None = None,
        duration_ms: int | None = None,
        usage: Usage | None = None,
    ) -> None:
        counts = (None, None, None, None) if usage is None else (
            usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_creation_tokens)
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET status=?, finished_at=?, error=?, num_turns=?, cost_usd=?, duration_ms=?,"
                " input_tokens=?, output_tokens=?, cache_read_tokens=?, cache_creation_tokens=?, model=?"
                " WHERE run_id=?",
                (status, time.time(), error, num_turns, cost_usd, duration_ms, *counts,
                 usage.model if usage is not None else None, run_id),
            )

    # --- spending (bot.core.budget, bot.core.usage) -----------------------------------------------------------
    def spent(self, since: float, *, user: str | None = None, channel: str | None = None) -> float:
        """The cost (USD, as the CLI reported it) of the runs started since `since`: a user's, a channel's, or all."""
        row = self._db.execute(
            "SELECT coalesce(sum(cost_usd), 0) FROM runs WHERE started_at >= :since"
            " AND (:user IS NULL OR user=:user) AND (:channel IS NULL OR channel=:channel)",
            {"since": since, "user": user, "channel": channel}).fetchone()
        return float(row[0])

    def usage_rows(self, since: float, until: float | None = None) -> list[reads.UsageRow]:
        return reads.usage_rows(self._db, since, until)

    def lift_budget(self, channel: str, thread_ts: str, by: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO budget_lifts (channel, thread_ts, by, at) VALUES (?, ?, ?, ?)"
                       " ON CONFLICT(channel, thread_ts) DO UPDATE SET by=excluded.by, at=excluded.at",
                       (channel, thread_ts, by, time.time()))

    def restore_budget(self, channel: str, thread_ts: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM budget_lifts WHERE channel=? AND thread_ts=?",
                              (channel, thread_ts)).rowcount > 0

    def budget_lifted(self, channel: str, thread_ts: str) -> str | None:
        """Who lifted the spending limits for this thread, if someone did."""
        row = self._db.execute("SELECT by FROM budget_lifts WHERE channel=? AND thread_ts=?",
                               (channel, thread_ts)).fetchone()
        return str(row[0]) if row else None

    def thread_of_session(self, session_id: str) -> tuple[str, str] | None:
        """The thread a session the bot runs (or ran last) serves."""
        row = self._db.execute(
            "SELECT channel, thread_ts FROM runs WHERE session_id=? ORDER BY started_at DESC LIMIT 1", (session_id,)
        ).fetchone()
        return (str(row[0]), str(row[1])) if row else None

    def record_handoff(
        self, channel: str, thread_ts: str, session_id: str, workdir: str, home: str, *, by: str | None, direction: str
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO handoffs (channel, thread_ts, session_id, workdir, home, by, direction, at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (channel, thread_ts, session_id, workdir, home, by, direction, time.time()),
            )

    def handoff_home(self, channel: str, thread_ts: str) -> str | None:
        """The HOME a handed-off session lives under (its files are there), if the thread came from a terminal."""
        row = self._db.execute(
            "SELECT home FROM handoffs WHERE channel=? AND thread_ts=? AND direction='to_slack' ORDER BY id DESC"
            " LIMIT 1",
            (channel, thread_ts),
        ).fetchone()
        return str(row[0]) if row else None

    def recent_runs(self, channel: str, since: float) -> list[tuple[str, str, str, float]]:
        """(session_id, thread_ts, status, started_at) of the channel's runs since `since`, newest first."""
        rows = self._db.execute(
            "SELECT session_id, thread_ts, status, started_at FROM runs WHERE channel=? AND started_at >= ?"
            " AND session_id IS NOT NULL ORDER BY started_at DESC LIMIT 200",
            (channel, since),
        ).fetchall()
        return [(str(a), str(b), str(c), float(d)) for a, b, c, d in rows]

    # --- worktrees ------------------------------------------------------------------------------------
    def save_worktree(self, channel: str, thread_ts: str, wt: Worktree) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO worktrees (channel, thread_ts, repo, path, branch, base, base_commit, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(channel, thread_ts) DO UPDATE SET repo=excluded.repo,"
                " path=excluded.path, branch=excluded.branch, base=excluded.base, base_commit=excluded.base_commit",
                (channel, thread_ts, str(wt.repo), str(wt.path), wt.branch, wt.base, wt.base_commit, time.time()),
            )

    def worktree_of(self, channel: str, thread_ts: str) -> Worktree | None:
        row = self._db.execute(
            "SELECT repo, path, branch, base, base_commit FROM worktrees WHERE channel=? AND thread_ts=?",
            (channel, thread_ts),
        ).fetchone()
        return _worktree(row) if row else None

    def worktrees(self) -> list[tuple[str, str, Worktree]]:
        """(channel, thread_ts, worktree) of every thread that has one, oldest first."""
        rows = self._db.execute(
            "SELECT channel, thread_ts, repo, path, branch, base, base_commit FROM worktrees ORDER BY created_at"
        ).fetchall()
        return [(str(r[0]), str(r[1]), _worktree(r[2:])) for r in rows]

    def save_thread_options(self, channel: str, thread_ts: str, options: ThreadOptions) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO thread_options (channel, thread_ts, repo, branch, model) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(channel, thread_ts) DO UPDATE SET repo=excluded.repo, branch=excluded.branch,"
                " model=excluded.model",
                (channel, thread_ts, options.repo, options.branch, options.model),
            )

    def thread_options(self, channel: str, thread_ts: str) -> ThreadOptions | None:
        row = self._db.execute(
            "SELECT repo, branch, model FROM thread_options WHERE channel=? AND thread_ts=?", (channel, thread_ts)
        ).fetchone()
        return ThreadOptions(*row) if row else None

    def thread_updated_at(self, channel: str, thread_ts: str) -> float | None:
        row = self._db.execute(
            "SELECT updated_at FROM threads WHERE channel=? AND thread_ts=?", (channel, thread_ts)
        ).fetchone()
        return float(row[0]) if row else None

    def forget_worktree(self, channel: str, thread_ts: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM worktrees WHERE channel=? AND thread_ts=?", (channel, thread_ts))

    # --- schedules (bot.core.schedules) -----------------------------------------------------------------------
    def add_schedule(self, schedule: Schedule) -> None:
        with self._tx() as db:
            db.execute(f"INSERT INTO schedules ({_SCHEDULE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       tuple(getattr(schedule, c.strip()) for c in _SCHEDULE_COLUMNS.split(",")))

    def schedules(self) -> list[Schedule]:
        rows = self._db.execute(f"SELECT {_SCHEDULE_COLUMNS} FROM schedules ORDER BY created_at, id").fetchall()
        return [Schedule(*r) for r in rows]

    def remove_schedule(self, schedule_id: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM schedules WHERE id=?", (schedule_id,)).rowcount > 0

    def sync_config_schedules(self, schedules: list[Schedule]) -> None:
        """The config file's schedules: new ones added (their history kept when unchanged), gone ones removed."""
        with self._tx() as db:
            db.executemany(
                f"INSERT OR IGNORE INTO schedules ({_SCHEDULE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [tuple(getattr(s, c.strip()) for c in _SCHEDULE_COLUMNS.split(",")) for s in schedules])
            keep = [s.id for s in schedules]
            db.execute(f"DELETE FROM schedules WHERE source='config' AND id NOT IN ({','.join('?' * len(keep))})",
                       keep)

    def claim_schedule(self, schedule_id: str, due: float) -> bool:
        """Take the due time `due` of a schedule: True once, for a time after its creation and after the last one
        taken; False for every later try (another pass, a restart)."""
        with self._tx() as db:
            return db.execute(
                "UPDATE schedules SET last_due_at=? WHERE id=? AND coalesce(last_due_at, created_at) < ?",
                (due, schedule_id, due)).rowcount == 1

    def schedule_ran(self, schedule_id: str, thread_ts: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE schedules SET last_run_at=?, last_thread_ts=?, runs=runs+1 WHERE id=?",
                       (time.time(), thread_ts, schedule_id))

    def interrupted_runs(self) -> list[tuple[str, str, str]]:
        """(run_id, channel, thread_ts) of runs a previous process left 'running'."""
        return [tuple(r) for r in self._db.execute(
            "SELECT run_id, channel, thread_ts FROM runs WHERE status='running'"
        ).fetchall()]


def _worktree(row: tuple[object, ...]) -> Worktree:
    from bot.core.worktrees import Worktree  # the dataclass only: store runs no git

    repo, path, branch, base, base_commit = row
    return Worktree(Path(str(repo)), Path(str(path)), str(branch), str(base), str(base_commit))


def _message(row: tuple[object, ...]) -> StoredMessage:
    return StoredMessage(*reads.message_row(row))
