"""The record read-only (bot.core.store_readonly): what hooks, `slackbus read` and `slackbus attach` read of the
bot's SQLite record, and how a read that cannot be done says why."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot import cli
from bot.bridge import bus, cache, protocol
from bot.core.store import Store, StoredMessage, ThreadSession
from bot.core.store_readonly import ReadOnlyStore, StoreMissingError
from bot.errors import StoreError

TS = "1700000000.000100"


def settings(home: Path, **env: str) -> protocol.BusSettings:
    return protocol.load({"SLACKBUS_HOME": str(home), "SLACKBUS_ENV_FILE": str(home / "no.env"), **env})


@pytest.fixture
def written(tmp_path: Path) -> Iterator[Store]:
    """A record as the bot writes it: a channel with a name, a user, a thread with a session, a few messages."""
    store = Store.open(tmp_path / protocol.DB_NAME)
    store.mark_backfilled("C1", "general")
    store.save_user("U1", "alice")
    store.record_messages([
        StoredMessage("C1", TS, None, "U1", None, "the build is red"),
        StoredMessage("C1", "1700000001.000100", TS, None, "B1", "on it", from_self=True),
        StoredMessage("C1", "1700000002.000100", None, "U2", None, "lunch?"),
        StoredMessage("C2", "1700000003.000100", None, "U1", None, "elsewhere"),
    ])
    store.save_thread(ThreadSession("C1", TS, "3f2a9c1e-0000", "/work/api", True, TS, "U1"))
    yield store
    store.close()


def test_a_read_returns_what_the_writer_wrote(written: Store) -> None:
    with ReadOnlyStore.open(written.path) as record:
        assert record.schema_version == written.schema_version
        assert record.channel_id("general") == "C1" and record.channel_id("random") is None
        assert record.knows_channel("C1") and record.knows_channel("C2") and not record.knows_channel("C3")
        assert record.user_names() == written.user_names() == {"U1": "alice"}
        for thread_ts in (None, TS):
            mine = record.messages_after("C1", "", 10, thread_ts=thread_ts)
            assert [tuple(m) for m in mine] == [
                tuple(vars(m).values()) for m in written.messages_after("C1", "", 10, thread_ts=thread_ts)]
        assert [m.text for m in record.messages_after("C1", "", 10)] == ["the build is red", "lunch?"]
        assert [m.text for m in record.messages_after("C1", TS, 10, thread_ts=TS)] == ["on it"]
        thread = record.thread("C1", TS)
        assert thread is not None and ThreadSession(*thread) == written.get_thread("C1", TS)
        assert record.thread("C1", "1700000002.000100") is None


def test_the_bus_reads_the_record_with_authors_and_channel_names(written: Store) -> None:
    s = settings(written.path.parent)
    messages, source = bus.read(s, "#general")
    assert source == "record"
    assert [(m.author, m.text) for m in messages] == [("alice", "the build is red"), ("U2", "lunch?")]
    thread, _ = bus.read(s, "C1", thread_ts=TS)
    assert [(m.author, m.text) for m in thread] == [("alice", "the build is red"), ("slackbus", "on it")]


def test_the_record_is_opened_read_only(written: Store) -> None:
    with ReadOnlyStore.open(written.path) as record, pytest.raises(sqlite3.OperationalError, match="readonly"):
        record._db.execute("DELETE FROM messages")
    assert len(written.messages_after("C1", "", 10)) == 2


def test_a_folder_named_like_a_uri_is_still_a_path(tmp_path: Path) -> None:
    home = tmp_path / "odd?mode=rw#%41"
    home.mkdir()
    Store.open(home / protocol.DB_NAME).close()
    with ReadOnlyStore.open(home / protocol.DB_NAME) as record:
        assert record.schema_version >= 1


# --- a read that cannot be done says why -------------------------------------------------------------------------
def test_a_missing_record_says_so_and_the_bus_falls_back_as_before(tmp_path: Path) -> None:
    with pytest.raises(StoreMissingError, match=f"no slackbus record at {tmp_path}"):
        ReadOnlyStore.open(tmp_path / protocol.DB_NAME)
    assert not (tmp_path / protocol.DB_NAME).exists()  # reading never creates it
    s = settings(tmp_path, SLACKBUS_CHANNEL="C1")
    assert bus.read_record(s, "C1") is None
    with pytest.raises(protocol.BusError) as raised:
        bus.read(s)
    assert str(raised.value).startswith("Reading the channel needs the slackbus bot's record on this host")
    with pytest.raises(protocol.BusError, match=r"^Channel #general is unknown here: use its id \(like C0123ABCD\)\.$"):
        bus.read(s, "#general")


@pytest.fixture
def locked(written: Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Another process holds the record's lock (an exclusive-mode writer: readers are shut out, WAL or not).
    Readers wait 50 ms for it here, not their usual second or two."""
    real_open = ReadOnlyStore.open
    monkeypatch.setattr(ReadOnlyStore, "open", staticmethod(lambda path, timeout=1.0: real_open(path, timeout=0.05)))
    written.close()  # the bot's own connection gone, another takes the file for itself
    holder = sqlite3.connect(written.path, isolation_level=None, timeout=1)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO users VALUES ('U9', 'mallory', 0)")
    holder.execute("COMMIT")
    yield written.path
    holder.close()


def test_a_locked_record_says_it_is_locked(locked: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StoreError, match="is locked by another process"):
        ReadOnlyStore.open(locked)
    s = settings(locked.parent, SLACKBUS_CHANNEL="C1")
    with pytest.raises(protocol.BusError, match=r"is locked by another process.*Reading the channel needs"):
        bus.read(s)
    with pytest.raises(protocol.BusError, match=r"^Channel #general is unknown here.* is locked by another"):
        bus.read(s, "#general")
    # with a token the read goes on from Slack, and says why on stderr
    monkeypatch.setattr(cache, "read", lambda *a, **k: [])
    assert bus.read(s._replace(bot_token="xoxb-test")) == ([], "api")
    err = capsys.readouterr().err
    assert "is locked by another process" in err and "Reading from Slack instead." in err


def test_a_record_too_old_or_not_a_record_says_so(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    db = sqlite3.connect(old)
    db.execute("CREATE TABLE migrations (version INTEGER PRIMARY KEY, name TEXT, applied_at REAL)")
    db.close()
    with pytest.raises(StoreError, match=r"has schema version 0; reading it needs version 1 or later: start the bot"):
        ReadOnlyStore.open(old)
    bare = tmp_path / "bare.db"
    sqlite3.connect(bare).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(StoreError, match="schema version 0"):
        ReadOnlyStore.open(bare)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all, just some bytes " * 40)
    with pytest.raises(StoreError, match="is damaged or not a slackbus record"):
        ReadOnlyStore.open(junk)


# --- `slackbus attach` with no bot running: the record answers -------------------------------------------------
def attach(home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    monkeypatch.setenv("SLACKBUS_HOME", str(home))
    monkeypatch.setenv("SLACKBUS_ENV_FILE", str(home / "no.env"))
    code = cli.main(["attach", f"https://team.slack.com/archives/C1/p{TS.replace('.', '')}"])
    out, err = capsys.readouterr()
    return code, out, err


def test_attach_reads_the_thread_from_the_record(written: Store, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = attach(written.path.parent, monkeypatch, capsys)
    assert code == 0 and out == "cd /work/api && claude --resume=3f2a9c1e-0000\n"


def test_attach_says_why_the_record_cannot_tell(tmp_path: Path, locked: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = attach(tmp_path / "elsewhere", monkeypatch, capsys)
    assert code == 1 and err == ("slackbus: this host's slackbus record does not know that thread: run this where the "
                                 "bot runs.\n")
    code, _, err = attach(locked.parent, monkeypatch, capsys)
    assert code == 1 and "is locked by another process" in err


def test_reading_the_record_loads_nothing_heavy() -> None:
    """A hook reads through this module: no dataclasses (inspect), no pathlib, no bot.core.store."""
    code = ("import sys; import bot.core.store_readonly; "
            "print(sorted(m for m in ('dataclasses', 'pathlib', 'bot.core.store', 'anyio', 'structlog') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
