"""The cluster's pieces that need no NATS server: its settings, the record's apply, what a control payload is about,
the queue's hooks the cluster uses (placing a job elsewhere, acking a finished batch, Slack's order in a batch)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

import anyio
import pytest

from bot.cluster.jetstream import subject_part
from bot.cluster.threads import ThreadEntry, _decode
from bot.cluster.work import Task
from bot.config import _nats_url, _node_id, redact_url
from bot.core.dispatcher import Dispatcher, Job, JobQueue
from bot.core.events import IncomingMessage
from bot.core.store import Store, StoredMessage
from bot.errors import ConfigError
from bot.slack.cluster_intake import SlackIntake, apply


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "s.db")


# --- settings -----------------------------------------------------------------------------------------------------
def test_the_nats_address_is_checked_and_its_password_never_shown() -> None:
    assert _nats_url({}) is None
    assert _nats_url({"SLACKBUS_NATS_URL": "nats://a:4222, nats://b:4222"}) == "nats://a:4222, nats://b:4222"
    with pytest.raises(ConfigError) as err:
        _nats_url({"SLACKBUS_NATS_URL": "http://u:hunter22@host:4222"})
    assert "hunter22" not in str(err.value) and "[redacted]" in str(err.value)
    assert redact_url("nats://bot:pa55word@h:4222") == "nats://[redacted]@h:4222"
    assert redact_url("nats://s3cr3t-token@h:4222,nats://u:p@ss@g:4222") == \
        "nats://[redacted]@h:4222,nats://[redacted]@g:4222"  # a token, a password with @ in it
    assert redact_url("nats://h:4222") == "nats://h:4222"


def test_a_node_has_a_name_two_homes_on_one_host_differ(tmp_path: Path) -> None:
    assert _node_id({"SLACKBUS_NODE_ID": "eu-1"}, tmp_path) == "eu-1"
    assert _node_id({}, tmp_path / "a") != _node_id({}, tmp_path / "b")
    with pytest.raises(ConfigError):
        _node_id({"SLACKBUS_NODE_ID": "a node"}, tmp_path)


def test_a_channel_or_ts_is_one_subject_token() -> None:
    assert subject_part("C012AB") == "C012AB"
    assert subject_part("1700000000.000100") == "1700000000_000100"
    assert subject_part("a.*>b") == "a___b" and subject_part("") == "_"


def test_a_task_is_stored_once_per_request_and_a_broken_thread_entry_is_skipped() -> None:
    a = Task("C1", "1.0", "2.0", "U1", False, False, "n1", time.time())
    b = Task("C1", "1.0", "2.0", "U1", False, False, "n2", time.time())
    assert a.msg_id == b.msg_id == "task:C1:2.0"  # placed by two nodes: one id, JetStream keeps one
    assert _decode(b"{not json") is None and _decode(b"") is None
    assert _decode(b'{"owner": "n1", "unknown": 1}') == ThreadEntry(owner="n1")


# --- the record: an event into this node's store --------------------------------------------------------------------
def body(event: Mapping[str, object]) -> dict[str, object]:
    return {"type": "event_callback", "event_id": "Ev1", "event": event}


def stored(store: Store, ts: str) -> StoredMessage:
    msg = store.get_message("C1", ts)
    assert msg is not None
    return msg


def test_the_record_applies_messages_edits_deletions_and_files(store: Store) -> None:
    apply(store, body({"type": "message", "channel": "C1", "ts": "1.1", "user": "U1", "text": "hi",
                       "files": [{"id": "F1", "name": "a.log", "mimetype": "text/plain", "size": 3}]}),
          bot_user_id="UBOT", bot_id="BBOT")
    assert stored(store, "1.1").text.startswith("hi")
    assert store.files_of("C1", "1.1")[0]["name"] == "a.log"
    apply(store, body({"type": "message", "subtype": "message_changed", "channel": "C1",
                       "message": {"ts": "1.1", "text": "hello"}}), bot_user_id="UBOT", bot_id=None)
    assert stored(store, "1.1").text == "hello"
    apply(store, body({"type": "message", "subtype": "message_deleted", "channel": "C1", "deleted_ts": "1.1"}),
          bot_user_id="UBOT", bot_id=None)
    assert store.get_message("C1", "1.1") is None


def test_the_record_keeps_the_bots_own_answer_and_skips_what_is_not_a_message(store: Store) -> None:
    apply(store, body({"type": "message", "channel": "C1", "ts": "2.1", "user": "UBOT", "bot_id": "BBOT",
                       "text": "the answer"}), bot_user_id="UBOT", bot_id="BBOT")
    assert stored(store, "2.1").from_self
    for junk in ({"type": "reaction_added"}, {"type": "message", "channel": "C1"},
                 {"type": "message", "subtype": "channel_join", "channel": "C1", "ts": "3.1"}):
        apply(store, body(junk), bot_user_id="UBOT", bot_id=None)
    apply(store, {"type": "event_callback", "event": "not a dict"}, bot_user_id="UBOT", bot_id=None)
    assert store.get_message("C1", "3.1") is None


# --- what a control payload is about --------------------------------------------------------------------------------
def test_clicks_reactions_and_thread_commands_name_their_thread(store: Store) -> None:
    intake = SlackIntake.__new__(SlackIntake)
    intake._store = store
    apply(store, body({"type": "message", "channel": "C1", "ts": "5.2", "thread_ts": "5.1", "user": "U1",
                       "text": "in the thread"}), bot_user_id="UBOT", bot_id=None)
    reaction = body({"type": "reaction_added", "item": {"channel": "C1", "ts": "5.2"}})
    assert intake._thread_of(reaction) == ("C1", "5.1")
    click = {"type": "block_actions", "channel": {"id": "C1"}, "message": {"ts": "6.2", "thread_ts": "6.1"},
             "actions": [{"action_id": "slackbus_stop"}], "user": {"id": "U1"}}
    assert intake._thread_of(click) == ("C1", "6.1")
    cancel = {"command": "/claude", "channel_id": "C9", "text": "cancel https://x.slack.com/archives/C2/p1700000000000100"}
    assert intake._thread_of(cancel) == ("C2", "1700000000.000100")
    assert intake._thread_of({"command": "/claude", "channel_id": "C9", "text": "status"}) is None
    assert intake._is_cancel_mine({"command": "/claude", "text": "cancel"})
    assert not intake._is_cancel_mine({"command": "/claude", "text": "cancel now please"})


# --- the queue's hooks -----------------------------------------------------------------------------------------------
async def until(predicate: Callable[[], bool]) -> None:
    """Let the other tasks run until the predicate holds (the caller bounds it)."""
    while not predicate():
        await anyio.wait_all_tasks_blocked()

def job(trigger: str, *, new_session: bool = False) -> Job:
    return Job("C1", "1.0", trigger, "U1", new_session, time.monotonic())


@pytest.mark.anyio
async def test_a_batch_runs_in_slacks_order_and_each_batch_is_reported_done() -> None:
    seen: list[list[str]] = []
    done: list[list[str]] = []
    gate = anyio.Event()

    async def handler(jobs: list[Job]) -> None:
        seen.append([j.trigger_ts for j in jobs])
        await gate.wait()

    async def on_done(jobs: list[Job]) -> None:
        done.append([j.trigger_ts for j in jobs])

    queue = JobQueue(handler, 2, on_done=on_done)
    async with anyio.create_task_group() as tg:
        queue.attach(tg)
        queue.submit(job("1.0", new_session=True))
        queue.submit(job("3.0"))  # two follow-ups that came from two hosts, the later one first
        queue.submit(job("2.0"))
        with anyio.fail_after(5):
            await until(lambda: bool(seen))
            gate.set()
            await until(lambda: len(done) >= 2)
    assert seen == [["1.0"], ["2.0", "3.0"]] and done == seen


@pytest.mark.anyio
async def test_a_job_removed_before_it_ran_is_reported_done() -> None:
    done: list[list[str]] = []
    gate = anyio.Event()

    async def handler(jobs: list[Job]) -> None:
        await gate.wait()

    async def on_done(jobs: list[Job]) -> None:
        done.append([j.trigger_ts for j in jobs])

    queue = JobQueue(handler, 1, on_done=on_done)
    async with anyio.create_task_group() as tg:
        queue.attach(tg)
        queue.submit(Job("C1", "9.0", "9.0", "U1", True, time.monotonic()))
        queue.submit(job("2.0"))
        assert [j.trigger_ts for j in queue.remove(("C1", "1.0"))] == ["2.0"]
        with anyio.fail_after(5):
            await until(lambda: bool(done))
        gate.set()
    assert done[0] == ["2.0"]


def test_with_a_place_a_job_is_seen_here_leaves_the_node_and_comes_back_through_submit_here(store: Store) -> None:
    placed: list[Job] = []
    seen: list[Job] = []

    async def never(jobs: list[Job]) -> None:  # pragma: no cover - the queue is never attached
        raise AssertionError

    queue = JobQueue(never, 1)
    dispatcher = Dispatcher(store, queue, bot_user_id="UBOT", is_allowed=lambda u: True,
                            on_accepted=lambda j, p: None, on_refused=lambda m, w: None,
                            workdir_for=lambda c: "/w", on_seen=seen.append, place=placed.append)
    msg = IncomingMessage(channel="C1", ts="1.0", text="<@UBOT> hi", user="U1", thread_ts=None, channel_type="channel",
                          bot_id=None, subtype=None, mentions_bot=True, event_id="Ev1", received=time.monotonic())
    dispatcher.on_message(msg)
    # 👀 from the node that took it in, at once; the job itself goes to the cluster
    assert [j.trigger_ts for j in placed] == ["1.0"] and len(seen) == 1 and queue.pending == 0
    dispatcher.submit_here(placed[0], seen=True)  # the node that runs it gives no second 👀
    assert len(seen) == 1 and queue.pending == 1


def test_a_task_from_a_newer_node_is_read_without_its_new_fields() -> None:
    from bot.cluster.work import task_of

    task = task_of(b'{"channel": "C1", "thread_ts": "1.0", "trigger_ts": "2.0", "user": "U1", "new_session": false,'
                   b' "is_dm": false, "placed_by": "n9", "placed_at": 1.0, "priority": "high"}')
    assert task.msg_id == "task:C1:2.0" and task.placed_by == "n9"
    for junk in (b"[1, 2]", b"not json", b'{"channel": "C1"}'):
        with pytest.raises((ValueError, TypeError)):
            task_of(junk)


def test_a_warm_process_reports_its_running_total_and_each_turn_costs_what_it_added() -> None:
    from bot.core.claude_runner import ClaudeSession
    from bot.core.stream_parser import Finished

    def result(total: float | None) -> Finished:
        return Finished(is_error=False, subtype="success", text="", session_id="s", num_turns=1, duration_ms=1,
                        cost_usd=total, api_error_status=None, terminal_reason=None, permission_denials=(),
                        errors=())

    session = ClaudeSession.__new__(ClaudeSession)
    session._reported_cost = None
    costs = [session._turn_cost(result(t)).cost_usd for t in (0.0107, 0.0217, None, 0.0330)]
    assert costs == [0.0107, 0.011, None, 0.0113]
