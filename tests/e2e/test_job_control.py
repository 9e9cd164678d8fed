"""Job control end to end: subcommands, queue positions, follow-ups, cancel, limits, warm sessions and pool."""

from __future__ import annotations

import time

import pytest

from tests.conftest import processes_in, wait_no_processes
from tests.e2e.test_reactive import answer_in
from tests.e2e.test_safety import ALLOWED_TOOLS, show_env_script  # noqa: F401 - fixture
from tests.fakes.fake_model import Reply

pytestmark = pytest.mark.e2e


def ack_text(fake_slack, envelope_id: str) -> str:
    _t, payload = fake_slack.wait_ack(envelope_id)
    return (payload or {}).get("text", "")


def claude_pids(workdir) -> set[int]:
    return {pid for pid, cmd in processes_in(workdir) if "claude" in cmd and "--input-format" in cmd}


def start_slow_run(fake_slack, fake_model, tmp_path, channel: str = "C1", user: str = "U1", marker: str = "s1"):
    fake_model.enqueue_tool_use("Bash", {"command": "./slow.sh", "description": "wait a long time"})
    ts = fake_slack.user_says(channel, user, f"a long job [[id:{marker}]]", mention=True)
    fake_slack.wait_for(lambda: any("sleep 47" in cmd for _pid, cmd in processes_in(tmp_path / "work")),
                        timeout=20, what="the tool's sleep to start")
    return ts


def test_subcommands_answer_in_the_ack(start_bot, fake_slack, fake_model):
    start_bot()
    assert "/claude status" in ack_text(fake_slack, fake_slack.slash_command(text="", user="U1"))
    assert "/claude cancel" in ack_text(fake_slack, fake_slack.slash_command(text="help", user="U1"))
    unknown = ack_text(fake_slack, fake_slack.slash_command(text="stauts", user="U1"))
    assert "`stauts` is not a subcommand" in unknown
    assert "*Running*: none" in ack_text(fake_slack, fake_slack.slash_command(text="status", user="U1"))
    assert "No Claude sessions" in ack_text(fake_slack, fake_slack.slash_command(text="sessions", channel="C1"))
    assert "Nothing of yours" in ack_text(fake_slack, fake_slack.slash_command(text="cancel", user="U1"))
    refused = ack_text(fake_slack, fake_slack.slash_command(text="status", user="U9"))
    assert "not on this bot's allow list" in refused

    ts = fake_slack.user_says("C1", "U1", "start a session [[id:ss]]", mention=True)
    answer_in(fake_slack, "C1", ts, "answer for ss")
    sessions = ack_text(fake_slack, fake_slack.slash_command(text="sessions", channel="C1", user="U2"))
    assert f"p{ts.replace('.', '')}" in sessions and "started by <@U1>" in sessions
    assert fake_model.requests and len(fake_model.requests) == 1  # no subcommand ran Claude


def test_slash_command_ack_is_fast_and_the_task_runs(start_bot, fake_slack, fake_model):
    start_bot()
    envelope = fake_slack.slash_command(text="count the files [[id:sc]]", user="U2", channel="C1")
    acked_at, payload = fake_slack.wait_ack(envelope)
    sent_at = next(e.t for e in fake_slack.envelopes if e.envelope_id == envelope)
    assert acked_at - sent_at < 1.0
    assert "starting in a thread" in payload["text"]
    parent = fake_slack.wait_for(
        lambda: next((m for m in fake_slack.bot_messages("C1") if "asked:" in m["text"]), None), what="the parent"
    )
    answer_in(fake_slack, "C1", parent["ts"], "answer for sc")


def test_queue_positions_with_a_cap_of_one(start_bot, fake_slack, fake_model, tmp_path):
    start_bot(SLACKBUS_MAX_CONCURRENT="1", SLACKBUS_ADMIN_USERS="U3", **ALLOWED_TOOLS)
    first = start_slow_run(fake_slack, fake_model, tmp_path)
    second = fake_slack.user_says("C2", "U2", "second [[id:p2]]", mention=True)
    third = fake_slack.user_says("C3", "U3", "third [[id:p3]]", mention=True)
    answer_in(fake_slack, "C2", second, "Queued, position 1")
    answer_in(fake_slack, "C3", third, "Queued, position 2")
    status = ack_text(fake_slack, fake_slack.slash_command(text="status", user="U3"))  # an admin sees every channel
    assert "*Running* (1 of 1)" in status and "*Queued* (2)" in status
    assert status.index("<@U2>") < status.index("<@U3>")

    # cancel the long run: the queue moves on, each queued task answered once, in its own thread
    assert "Cancelling" in ack_text(fake_slack, fake_slack.slash_command(text="cancel", user="U1", channel="C1"))
    answer_in(fake_slack, "C1", first, "cancelled by <@U1>")
    answer_in(fake_slack, "C2", second, "answer for p2")
    answer_in(fake_slack, "C3", third, "answer for p3")
    # the queued notice became the answer: one bot message in each queued thread
    assert len(fake_slack.bot_messages("C2", second)) == 1
    assert len(fake_slack.bot_messages("C3", third)) == 1


def test_a_follow_up_during_a_run_is_answered_after_it(start_bot, fake_slack, fake_model):
    bot = start_bot()
    fake_model.set_responder(lambda body: Reply(delay=2.0) if "[[id:f1]]" in str(body["messages"][-1]) else None)
    ts = fake_slack.user_says("C1", "U1", "first question [[id:f1]]", mention=True)
    fake_model.wait_for_requests(1, timeout=20)
    reply = fake_slack.user_says("C1", "U1", "and a follow-up [[id:f2]]", thread_ts=ts)
    # acknowledged at once: 👀 and ⏳ (waiting for the run in its thread)
    fake_slack.wait_for(lambda: {"eyes", "hourglass_flowing_sand"} <= fake_slack.reactions("C1", reply),
                        timeout=2, what="👀 and ⏳ on the follow-up")
    first = answer_in(fake_slack, "C1", ts, "answer for f1")
    second = answer_in(fake_slack, "C1", ts, "answer for f2")
    assert float(first["ts"]) < float(second["ts"])
    assert len(fake_model.requests) == 2
    assert "and a follow-up" in fake_model.last_user_text(1)
    # the follow-up went to the same, still running claude process
    assert bot.events("run.reusing")[-1]["origin"] == "warm"


@pytest.mark.parametrize("how", ["reaction", "button", "command"])
def test_cancel_stops_the_run_and_leaves_no_process(start_bot, fake_slack, fake_model, tmp_path, how):
    start_bot(SLACKBUS_WARM_POOL="0", **ALLOWED_TOOLS)
    ts = start_slow_run(fake_slack, fake_model, tmp_path)
    if how == "reaction":
        fake_slack.reaction_added("U1", "C1", ts, "octagonal_sign")
    elif how == "button":
        status = answer_in(fake_slack, "C1", ts, "Running `./slow.sh`")
        assert status["blocks"][-1]["elements"][0]["action_id"] == "slackbus_stop"
        fake_slack.block_action("U1", "C1", status["ts"], "slackbus_stop", value=f"C1|{ts}")
    else:
        link = f"https://fake.slack.com/archives/C1/p{ts.replace('.', '')}"
        assert "Cancelling" in ack_text(fake_slack, fake_slack.slash_command(text=f"cancel {link}", user="U1"))
    notice = answer_in(fake_slack, "C1", ts, "cancelled by <@U1>")
    assert "Reply here to continue" in notice["text"]
    wait_no_processes(tmp_path / "work", timeout=10)
    fake_slack.wait_for(lambda: "octagonal_sign" in fake_slack.reactions("C1", ts) and "eyes" not in
                        fake_slack.reactions("C1", ts), what="🛑 instead of 👀")


def test_only_the_requester_or_an_admin_can_cancel(start_bot, fake_slack, fake_model, tmp_path):
    bot = start_bot(SLACKBUS_ADMIN_USERS="U3", **ALLOWED_TOOLS)
    ts = start_slow_run(fake_slack, fake_model, tmp_path)
    link = f"https://fake.slack.com/archives/C1/p{ts.replace('.', '')}"
    refused = ack_text(fake_slack, fake_slack.slash_command(text=f"cancel {link}", user="U2"))
    assert "Only <@U1>" in refused
    fake_slack.reaction_added("U2", "C1", ts, "octagonal_sign")
    fake_slack.wait_for(lambda: any("Only <@U1>" in e["text"] for e in fake_slack.ephemerals), what="refusal")
    assert len(bot.wait_event("commands.cancel_refused", count=2)) == 2  # the command and the 🛑, both refused
    bot.wait_quiet(fake_slack)
    assert not bot.events("run.cancel")
    assert any("sleep 47" in cmd for _pid, cmd in processes_in(tmp_path / "work"))  # still running

    assert "Cancelling" in ack_text(fake_slack, fake_slack.slash_command(text=f"cancel {link}", user="U3"))
    answer_in(fake_slack, "C1", ts, "cancelled by <@U3>")
    # a run is cancelled once, by its first canceller: had either refusal cancelled it, U2 would be named here
    assert [e["by"] for e in bot.events("run.cancel")] == ["U3"]
    assert not [m for m in fake_slack.bot_messages("C1", ts) if "cancelled by <@U2>" in (m.get("text") or "")]


def test_a_silent_cli_is_stopped_as_stalled(start_bot, fake_slack, fake_model, tmp_path):
    start_bot(SLACKBUS_STALL_SECONDS="2", SLACKBUS_WARM_POOL="0")
    fake_model.enqueue_hang(30)
    ts = fake_slack.user_says("C1", "U1", "stall please", mention=True)
    msg = answer_in(fake_slack, "C1", ts, "produced no output for 2 s")
    assert "SLACKBUS_STALL_SECONDS" in msg["text"]
    wait_no_processes(tmp_path / "work", timeout=10)


def test_max_turns_stops_the_run_and_says_so(start_bot, fake_slack, fake_model):
    start_bot(SLACKBUS_MAX_TURNS="1", **ALLOWED_TOOLS)
    fake_model.enqueue_tool_use("Bash", {"command": "./show_env.sh", "description": "look"})
    fake_model.enqueue_tool_use("Bash", {"command": "./show_env.sh", "description": "look again"})
    ts = fake_slack.user_says("C1", "U1", "loop forever", mention=True)
    msg = answer_in(fake_slack, "C1", ts, "maximum allowed")
    assert "reply here to let it continue" in msg["text"]


def test_warm_thread_pool_and_idle_reaper_under_the_process_cap(start_bot, fake_slack, fake_model, tmp_path):
    bot = start_bot(SLACKBUS_IDLE_SECONDS="3", SLACKBUS_WARM_POOL="1", SLACKBUS_MAX_PROCESSES="2",
                    SLACKBUS_MAX_CONCURRENT="2")
    bot.wait_event("sessions.pooled")
    ts = fake_slack.user_says("C1", "U1", "first [[id:w1]]", mention=True)
    answer_in(fake_slack, "C1", ts, "answer for w1")
    assert bot.events("run.reusing")[0]["origin"] == "pool"
    fake_slack.user_says("C1", "U1", "again [[id:w2]]", thread_ts=ts)
    answer_in(fake_slack, "C1", ts, "answer for w2")
    assert bot.events("run.reusing")[1]["origin"] == "warm"

    # more threads than the cap: never more than 2 claude processes at once
    peak = 0
    for i in range(3):
        t = fake_slack.user_says("C2", "U2", f"thread {i} [[id:x{i}]]", mention=True)
        deadline = time.monotonic() + 30
        while not [m for m in fake_slack.bot_messages("C2", t) if f"answer for x{i}" in m["text"]]:
            peak = max(peak, len(claude_pids(tmp_path / "work")))
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert peak == 2, peak  # up to the cap (a thread's process and the pool's), never past it

    # idle sessions are reaped after SLACKBUS_IDLE_SECONDS; the pool refills to its size (one process)
    bot.wait_event("sessions.reaped_idle", timeout=20)
    fake_slack.wait_for(lambda: len(claude_pids(tmp_path / "work")) == 1, timeout=20, what="idle reaped")


@pytest.mark.parametrize(("pool", "pool_max"), [("1", ""), ("0", "1")])
def test_the_pool_grows_while_new_threads_come_fast_and_shrinks_when_they_stop(
    start_bot, fake_slack, tmp_path, pool, pool_max
):
    """SLACKBUS_WARM_POOL=1 grows to 2 (the default maximum); SLACKBUS_WARM_POOL=0 with a maximum of 1 pre-starts
    a process only during the rush."""
    bot = start_bot(SLACKBUS_IDLE_SECONDS="8", SLACKBUS_WARM_POOL=pool, SLACKBUS_WARM_POOL_MAX=pool_max,
                    SLACKBUS_MAX_CONCURRENT="2")
    if pool == "1":
        bot.wait_event("sessions.pooled")
    # three new threads at once: the second finds no ready process so soon after the first
    threads = [fake_slack.user_says("C1", "U1", f"thread {i} [[id:g{i}]]", mention=True) for i in range(3)]
    for i, ts in enumerate(threads):
        answer_in(fake_slack, "C1", ts, f"answer for g{i}")
    grow = bot.wait_event("sessions.pool_grow", timeout=5)
    # the pool grows by one and no further (on a slow machine the runs outlast SLACKBUS_IDLE_SECONDS, so it may
    # shrink between two misses and grow again)
    assert {e["size"] for e in grow} == {int(pool) + 1}
    # a process pre-started for the rush: pooled, or taken by a task while it was starting
    fake_slack.wait_for(lambda: bot.events("sessions.pooled") or [e for e in bot.events("run.reusing")
                                                                    if e["origin"] == "pool"],
                        timeout=30, what="a pre-started process")

    # quiet for SLACKBUS_IDLE_SECONDS: the pool is back to its size, and the warm threads are reaped
    bot.wait_event("sessions.pool_shrink", count=len(bot.events("sessions.pool_grow")), timeout=20)
    try:
        fake_slack.wait_for(lambda: len(claude_pids(tmp_path / "work")) == int(pool), timeout=20,
                            what=f"{pool} pooled process(es)")
    except AssertionError:
        print("\n".join(line for line in bot.lines() if "sessions." in line or "claude." in line))
        raise
    ts = fake_slack.user_says("C1", "U1", "after the rush [[id:g9]]", mention=True)
    answer_in(fake_slack, "C1", ts, "answer for g9")
    assert bot.events("run.reusing" if pool == "1" else "run.spawning")[-1]["origin"] == ("pool" if pool == "1"
                                                                                           else "cold")
