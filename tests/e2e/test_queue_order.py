"""The run queue's order end to end: with a cap of one run, work that waits behind a busy run starts in the order it
arrived, each answer lands in its own thread, once (the real bot process, the real `claude` CLI, the fakes).

The busy run is held by a pre-allowed tool (`./hold.sh`) that waits for a file: the test releases it by creating
the file, so nothing depends on how long a delay is."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BotProcess
from tests.e2e.test_reactive import answer_in
from tests.fakes.fake_model import MARKER_RE, FakeModel, last_user_text
from tests.fakes.fake_slack import FakeSlack

pytestmark = pytest.mark.e2e

HOLD = {"SLACKBUS_ALLOWED_TOOLS": "Bash(./hold.sh)", "SLACKBUS_MAX_CONCURRENT": "1"}


@pytest.fixture
def release(tmp_path: Path) -> Iterator[Path]:
    """`./hold.sh` in the bot's work folder waits until the returned file exists (made at teardown at the latest,
    so a failed test leaves no tool waiting)."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    gate = tmp_path / "release"
    script = work / "hold.sh"
    script.write_text(f"#!/bin/sh\nwhile [ ! -e '{gate}' ]; do sleep 0.05; done\necho released\n")
    script.chmod(0o755)
    yield gate
    gate.touch()


def hold_a_run(bot: BotProcess, fake_slack: FakeSlack, fake_model: FakeModel, channel: str, marker: str) -> str:
    """A mention whose run stays busy (in `./hold.sh`) until the release file exists; returns its ts."""
    fake_model.enqueue_tool_use("Bash", {"command": "./hold.sh", "description": "wait for the test"})
    ts = fake_slack.user_says(channel, "U1", f"hold the queue [[id:{marker}]]", mention=True)
    fake_model.wait_for_requests(1, timeout=30)  # the run has started and asked the model: it holds the only slot
    assert [(e["channel"], e["thread_ts"]) for e in bot.events("run.start")] == [(channel, ts)]
    return ts


def accepted(bot: BotProcess, count: int) -> list[dict]:
    """Wait for the `count`-th job the dispatcher accepted; return them all, in log order."""
    return bot.wait_event("dispatch.accepted", count=count)


def model_markers(fake_model: FakeModel) -> list[str]:
    """The `[[id:…]]` marker of each model request (the last one in its last user text), in arrival order."""
    return [(MARKER_RE.findall(last_user_text(body)) or ["?"])[-1] for body in fake_model.requests]


def test_queued_mentions_start_in_arrival_order_and_each_is_answered_once_in_its_thread(
    start_bot, fake_slack, fake_model, release
):
    bot = start_bot(SLACKBUS_WARM_POOL="0", **HOLD)
    first = hold_a_run(bot, fake_slack, fake_model, "C1", "q0")

    # five mentions while the only slot is busy: other channels, the busy channel, and two threads of one channel.
    # Each is sent once the previous one is accepted, so the order of arrival at the bot is the order of sending.
    sent = [("C2", "q1"), ("C3", "q2"), ("C1", "q3"), ("C2", "q4"), ("C3", "q5")]
    threads: dict[str, tuple[str, str]] = {"q0": ("C1", first)}
    for n, (channel, marker) in enumerate(sent, start=1):
        threads[marker] = (channel, fake_slack.user_says(channel, "U2", f"task {marker} [[id:{marker}]]", mention=True))
        accepted(bot, 1 + n)
    queued = accepted(bot, 1 + len(sent))[1:]
    assert [(e["channel"], e["ts"]) for e in queued] == [threads[m] for _c, m in sent]
    assert [e["queue_position"] for e in queued] == [1, 2, 3, 4, 5]  # all waited: nothing went past the busy run
    assert [(e["channel"], e["thread_ts"]) for e in bot.events("run.start")] == [threads["q0"]]

    release.touch()
    order = ["q0", *(m for _c, m in sent)]
    for marker in order:
        channel, ts = threads[marker]
        answer_in(fake_slack, channel, ts, f"answer for {marker}", timeout=60)
    bot.wait_event("run.end", count=len(order), timeout=30)
    bot.wait_quiet(fake_slack)  # give a late duplicate or a misrouted post every chance to show up

    # the runs started in the order the mentions arrived, and the model was asked in that order
    starts = bot.events("run.start")
    assert [(e["channel"], e["thread_ts"]) for e in starts] == [threads[m] for m in order]
    assert [e["jobs"] for e in starts] == [1] * len(order)
    # two model requests for q0 (the tool call, then its result), one for each of the others
    assert model_markers(fake_model) == ["q0", *order]
    # never more than one run at once
    assert max(e["running"] for e in bot.events("dispatch.accepted")) == 1
    assert fake_model.max_active == 1

    # every thread holds exactly one bot message, its own answer; nothing else was posted anywhere
    for marker, (channel, ts) in threads.items():
        replies = fake_slack.bot_messages(channel, ts)
        assert len(replies) == 1, (marker, [m["text"] for m in replies])
        assert replies[0]["thread_ts"] == ts
        assert replies[0]["text"].startswith(f"answer for {marker}"), (marker, replies[0]["text"])
    everything = [m for c in ("C1", "C2", "C3") for m in fake_slack.bot_messages(c)]
    assert len(everything) == len(threads)
    assert all(m["thread_ts"] for m in everything)  # nothing at a channel's top level


def is_queued_notice(message: dict) -> bool:
    return message["text"].startswith(":hourglass_flowing_sand: Queued")


def is_notice(message: dict) -> bool:
    """A queue notice, or one a run took over ("Started, together with …"): not an answer."""
    return is_queued_notice(message) or message["text"].startswith(":arrow_forward: Started")


def queue_two_follow_ups(
    bot: BotProcess, fake_slack: FakeSlack, fake_model: FakeModel, release: Path
) -> dict[str, str]:
    """A thread with an answered session (C1); a run held busy in C2; then, while it holds the only slot, two replies
    in the C1 thread and a new mention in C3. Releases the hold and waits until all four runs ended and the bot went
    quiet. Returns the ts of the three threads."""
    thread = fake_slack.user_says("C1", "U1", "remember the colour teal [[id:a0]]", mention=True)
    answer_in(fake_slack, "C1", thread, "answer for a0")
    bot.wait_event("run.end", count=1)

    fake_model.enqueue_tool_use("Bash", {"command": "./hold.sh", "description": "wait for the test"})
    busy = fake_slack.user_says("C2", "U1", "hold the queue [[id:b0]]", mention=True)
    fake_model.wait_for_requests(2, timeout=30)
    assert [e["thread_ts"] for e in bot.events("run.start")] == [thread, busy]

    # two replies in the idle thread, then a new mention elsewhere: all three wait for the busy run
    fake_slack.user_says("C1", "U2", "first reply: make it darker [[id:a1]]", thread_ts=thread)
    accepted(bot, 3)
    fake_slack.user_says("C1", "U1", "second reply: and call it petrol [[id:a2]]", thread_ts=thread)
    accepted(bot, 4)
    later = fake_slack.user_says("C3", "U2", "something else [[id:c1]]", mention=True)
    assert [e["queue_position"] for e in accepted(bot, 5)[2:]] == [1, 2, 3]
    fake_slack.wait_for(
        lambda: len([m for c in ("C1", "C3") for m in fake_slack.bot_messages(c) if is_queued_notice(m)]) == 3,
        what="a 'Queued' notice for each of the three waiting tasks",
    )

    release.touch()
    answer_in(fake_slack, "C2", busy, "answer for b0", timeout=60)
    answer_in(fake_slack, "C1", thread, "answer for a2", timeout=60)
    answer_in(fake_slack, "C3", later, "answer for c1", timeout=60)
    bot.wait_event("run.end", count=4, timeout=30)
    bot.wait_quiet(fake_slack)
    return {"thread": thread, "busy": busy, "later": later}


def test_follow_ups_queued_behind_a_busy_run_keep_their_order(start_bot, fake_slack, fake_model, release):
    bot = start_bot(**HOLD)
    ts = queue_two_follow_ups(bot, fake_slack, fake_model, release)
    thread, busy, later = ts["thread"], ts["busy"], ts["later"]

    # the two replies ran as one turn of the thread's session, in the order they were written, before the mention
    # that arrived after them
    starts = bot.events("run.start")
    assert [(e["channel"], e["thread_ts"], e["jobs"]) for e in starts] == [
        ("C1", thread, 1), ("C2", busy, 1), ("C1", thread, 2), ("C3", later, 1)
    ]
    assert model_markers(fake_model) == ["a0", "b0", "b0", "a2", "c1"]
    follow_up = fake_model.last_user_text(3)
    assert follow_up.index("make it darker [[id:a1]]") < follow_up.index("and call it petrol [[id:a2]]")
    assert "remember the colour teal" not in follow_up  # only what is new: the session carries the rest
    session = [h.get("x-claude-code-session-id", "") for h in fake_model.request_headers]
    assert session[3] == session[0] != ""  # the same session as the thread's first turn
    # the thread got its two answers (the first turn's, then the follow-ups'), the others one each, nothing crossed
    answers = {
        key: [m["text"].split("\n")[0] for m in fake_slack.bot_messages(channel, ts[key]) if not is_notice(m)]
        for key, channel in (("thread", "C1"), ("busy", "C2"), ("later", "C3"))
    }
    assert answers == {"thread": ["answer for a0", "answer for a2"], "busy": ["answer for b0"],
                       "later": ["answer for c1"]}


def test_no_queued_notice_is_left_behind_when_follow_ups_run_as_one_batch(start_bot, fake_slack, fake_model, release):
    bot = start_bot(**HOLD)
    ts = queue_two_follow_ups(bot, fake_slack, fake_model, release)
    left = [m["text"] for c, key in (("C1", "thread"), ("C3", "later")) for m in fake_slack.bot_messages(c, ts[key])
            if is_queued_notice(m)]
    assert left == []
    taken = [m["text"] for m in fake_slack.bot_messages("C1", ts["thread"]) if is_notice(m)]
    assert taken == [":arrow_forward: Started, together with the messages before it in this thread."]
