"""store.Store on a real SQLite file in tmp_path."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.core.store import MIGRATIONS, Store, StoredMessage, ThreadSession
from bot.errors import StoreError

C = "C0123"


def ts(n: int) -> str:
    """Slack-shaped timestamps that order as text."""
    return f"1700000{n:03d}.000100"


def msg(
    n: int,
    text: str | None = None,
    *,
    thread: int | None = None,
    channel: str = C,
    user: str = "U1",
    bot_id: str | None = None,
    from_self: bool = False,
) -> StoredMessage:
    return StoredMessage(
        channel=channel,
        ts=ts(n),
        thread_ts=None if thread is None else ts(thread),
        user=user,
        bot_id=bot_id,
        text=text if text is not None else f"message {n}",
        from_self=from_self,
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "x.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store.open(db_path)
    yield s
    s.close()


def raw(db_path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db_path) as db:
        rows = db.execute(sql).fetchall()
    db.close()
    return rows


# --- opening and migrations -------------------------------------------------------------------------


def test_open_records_every_migration(store, db_path):
    assert store.schema_version == len(MIGRATIONS) >= 1
    versions = [row[0] for row in raw(db_path, "SELECT version FROM migrations ORDER BY version")]
    assert versions == list(range(1, len(MIGRATIONS) + 1))
    names = [row[0] for row in raw(db_path, "SELECT name FROM migrations ORDER BY version")]
    assert names == [m.__name__ for m in MIGRATIONS]


def test_reopen_is_idempotent_and_keeps_data(db_path):
    first = Store.open(db_path)
    first.record_message(msg(1, "kept"))
    first.close()
    second = Store.open(db_path)
    try:
        assert second.schema_version == len(MIGRATIONS)
        assert raw(db_path, "SELECT count(*) FROM migrations") == [(len(MIGRATIONS),)]
        got = second.get_message(C, ts(1))
        assert got is not None
        assert got.text == "kept"
    finally:
        second.close()


def test_wal_mode_is_on(store, db_path):
    assert raw(db_path, "PRAGMA journal_mode") == [("wal",)]


def test_open_creates_the_parent_folder(tmp_path):
    s = Store.open(tmp_path / "deep" / "er" / "x.db")
    try:
        assert (tmp_path / "deep" / "er" / "x.db").is_file()
        assert s.schema_version == len(MIGRATIONS)
    finally:
        s.close()


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path):
    bad = tmp_path / "x.db"
    bad.write_bytes(b"this is not sqlite at all, just some text" * 200)
    with pytest.raises(StoreError, match="cannot be opened"):
        Store.open(bad)


def test_a_folder_that_cannot_be_created_is_a_store_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StoreError):
        Store.open(blocker / "x.db")


# --- messages ----------------------------------------------------------------------------------------


def test_record_message_round_trip(store):
    original = StoredMessage(C, ts(5), ts(1), "U7", None, "hello <@U8>", from_self=False, subtype="file_share")
    store.record_message(original)
    assert store.get_message(C, ts(5)) == original
    assert store.get_message(C, ts(6)) is None
    assert store.get_message("C9999", ts(5)) is None


def test_record_message_upserts_an_edit(store):
    store.record_message(msg(1, "first version"))
    store.record_message(msg(1, "edited version"))
    got = store.get_message(C, ts(1))
    assert got is not None
    assert got.text == "edited version"
    assert len(store.channel_messages(C, before_ts=ts(999), limit=10)) == 1


def test_from_self_is_kept(store):
    store.record_message(msg(1, "an answer", user="UBOT", bot_id="B1", from_self=True))
    got = store.get_message(C, ts(1))
    assert got is not None
    assert got.from_self is True
    assert got.bot_id == "B1"


def test_delete_message(store):
    store.record_message(msg(1))
    store.delete_message(C, ts(1))
    assert store.get_message(C, ts(1)) is None


def test_channel_messages_are_top_level_before_ts_newest_n_oldest_first(store):
    for n in range(1, 8):
        store.record_message(msg(n))
    store.record_message(msg(3, "parent of a thread", thread=3))  # a parent carries thread_ts == ts
    store.record_message(msg(20, "a reply", thread=3))
    store.record_message(msg(21, "a reply", thread=5))
    store.record_message(msg(2, "other channel", channel="C9999"))

    got = store.channel_messages(C, before_ts=ts(7), limit=3)
    assert [m.ts for m in got] == [ts(4), ts(5), ts(6)]  # strictly before ts(7), newest 3, oldest first

    everything = store.channel_messages(C, before_ts=ts(999), limit=100)
    assert [m.ts for m in everything] == [ts(n) for n in range(1, 8)]  # no replies, no other channel
    assert all(not m.is_reply for m in everything)
    assert store.channel_messages(C, before_ts=ts(1), limit=10) == []
    assert store.channel_messages(C, before_ts=ts(999), limit=0) == []


def test_thread_messages_with_bounds(store):
    store.record_message(msg(10, "parent"))
    for n in (11, 12, 13, 14):
        store.record_message(msg(n, thread=10))
    store.record_message(msg(15, "another thread", thread=9))
    store.record_message(msg(16, "top level later"))

    def tss(**kw: str) -> list[str]:
        return [m.ts for m in store.thread_messages(C, ts(10), **kw)]

    assert tss() == [ts(n) for n in (10, 11, 12, 13, 14)]
    assert tss(after_ts=ts(11)) == [ts(12), ts(13), ts(14)]  # after is exclusive
    assert tss(upto_ts=ts(12)) == [ts(10), ts(11), ts(12)]  # upto is inclusive
    assert tss(after_ts=ts(10), upto_ts=ts(13)) == [ts(11), ts(12), ts(13)]
    assert tss(after_ts=ts(14)) == []
    assert [m.is_reply for m in store.thread_messages(C, ts(10))] == [False, True, True, True, True]


# --- dedupe and requests ------------------------------------------------------------------------------


def test_first_sight_is_true_once_and_survives_reopen(db_path):
    s = Store.open(db_path)
    assert s.first_sight("Ev001") is True
    assert s.first_sight("Ev001") is False
    assert s.first_sight("Ev002") is True
    s.close()
    s = Store.open(db_path)
    try:
        assert s.first_sight("Ev001") is False
    finally:
        s.close()


def test_forget_old_events(store):
    store.first_sight("Ev001")
    store.forget_old_events(older_than_s=-1.0)  # everything is older than "one second in the future"
    assert store.first_sight("Ev001") is True
    store.forget_old_events()  # a day: the fresh one stays
    assert store.first_sight("Ev001") is False


def test_claim_request_once_per_channel_and_ts(store):
    assert store.claim_request(C, ts(1), ts(1), "U1", "message") is True
    assert store.claim_request(C, ts(1), ts(1), "U1", "message") is False
    assert store.claim_request(C, ts(1), ts(1), "U2", "command") is False
    assert store.claim_request("C9999", ts(1), ts(1), "U1", "message") is True
    assert store.claim_request(C, ts(2), ts(1), "U1", "message") is True


def test_unfinished_requests_follow_status(store):
    store.claim_request(C, ts(1), ts(1), "U1", "message")
    store.claim_request(C, ts(2), ts(1), "U2", "message")
    store.claim_request(C, ts(3), ts(3), "U1", "command")
    assert [(r.ts, r.status) for r in store.unfinished_requests()] == [
        (ts(1), "queued"),
        (ts(2), "queued"),
        (ts(3), "queued"),
    ]
    store.set_request_status(C, [ts(1), ts(2)], "running")
    store.set_request_status(C, [ts(3)], "done")
    got = store.unfinished_requests()
    assert [(r.ts, r.thread_ts, r.user, r.kind, r.status) for r in got] == [
        (ts(1), ts(1), "U1", "message", "running"),
        (ts(2), ts(1), "U2", "message", "running"),
    ]
    store.set_request_status(C, [ts(1)], "failed")
    store.set_request_status(C, [ts(2)], "cancelled")
    assert store.unfinished_requests() == []


# --- threads -------------------------------------------------------------------------------------------


def test_threads_save_get_round_trip_and_update(store):
    assert store.get_thread(C, ts(1)) is None
    first = ThreadSession(C, ts(1), "", "/work/a", False, "0", "U1")
    store.save_thread(first)
    assert store.get_thread(C, ts(1)) == first

    later = ThreadSession(C, ts(1), "sess-123", "/work/b", True, ts(9), "U2")
    store.save_thread(later)
    got = store.get_thread(C, ts(1))
    assert got is not None
    assert (got.session_id, got.workdir, got.started, got.last_ts) == ("sess-123", "/work/b", True, ts(9))
    assert got.requester == "U1"  # the requester is whoever started the thread
    assert store.get_thread("C9999", ts(1)) is None


# --- runs ------------------------------------------------------------------------------------------------


def test_runs_start_finish_and_interrupted(store, db_path):
    store.start_run("run-a", C, ts(1), "sess-a", "U1")
    store.start_run("run-b", C, ts(2), "sess-b", "U2")
    assert sorted(store.interrupted_runs()) == [("run-a", C, ts(1)), ("run-b", C, ts(2))]

    store.finish_run("run-a", "done", num_turns=3, cost_usd=0.0123, duration_ms=4567)
    assert store.interrupted_runs() == [("run-b", C, ts(2))]
    store.finish_run("run-b", "failed", error="boom")
    assert store.interrupted_runs() == []

    rows = raw(db_path, "SELECT run_id, status, error, num_turns, cost_usd, duration_ms FROM runs ORDER BY run_id")
    assert rows == [("run-a", "done", None, 3, 0.0123, 4567), ("run-b", "failed", "boom", None, None, None)]


def test_run_ids_are_unique(store):
    store.start_run("run-a", C, ts(1), "sess-a", "U1")
    with pytest.raises(StoreError):
        store.start_run("run-a", C, ts(1), "sess-a", "U1")


# --- backfill ----------------------------------------------------------------------------------------------


def test_record_messages_never_overwrites(store):
    store.record_message(msg(1, "from the live event"))
    store.record_messages([msg(1, "from history (stale)"), msg(2, "only in history"), msg(3, thread=2)])
    one = store.get_message(C, ts(1))
    assert one is not None
    assert one.text == "from the live event"
    two = store.get_message(C, ts(2))
    assert two is not None
    assert two.text == "only in history"
    assert [m.ts for m in store.thread_messages(C, ts(2))] == [ts(2), ts(3)]
    store.record_messages([])  # nothing to do is fine


# --- channels and users -------------------------------------------------------------------------------------


def test_channels_and_users(store):
    assert store.is_backfilled(C) is False
    assert store.channel_name(C) is None
    store.mark_backfilled(C, "general")
    assert store.is_backfilled(C) is True
    store.mark_backfilled(C, None)  # a later pass without a name keeps the known one
    assert store.channel_name(C) == "general"

    store.save_user("U1", "alice")
    store.save_user("U2", "bob")
    store.save_user("U1", "alice2")
    assert store.user_names() == {"U1": "alice2", "U2": "bob"}
