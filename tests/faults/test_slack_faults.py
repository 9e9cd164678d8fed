"""Slack misbehaving under a working bot: the Socket Mode link drops mid-run, the Web API answers 429 and 5xx.

Whatever Slack does, every answer reaches its thread exactly once, and the bot keeps serving.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.test_reactive import answer_in
from tests.fakes.fake_model import MARKER_RE, Reply, last_user_text
from tests.fakes.fake_slack import FakeSlack

pytestmark = pytest.mark.e2e

# slack_bolt's handler pings every 10 s by default and aiohttp's heartbeat then waits 5 s for the pong: a dead
# link went unnoticed for ~18 s, and a connection reset until slack_sdk's next ping (up to 10 s). The bot pings
# every 5 s and reconnects as soon as the socket is closed (bot/app.py SOCKET_PING_S, _watch_socket): about
# 0.5 s after a close or a reset, about 7 s after a link goes dead. The bounds leave room for a loaded machine.
DEAD_LINK_RECONNECT_S = 15.0
CLOSED_LINK_RECONNECT_S = 5.0


def answers(fake_slack: FakeSlack, channel: str, needle: str) -> list[dict]:
    """Every bot message in the channel (any thread) whose text holds `needle`."""
    return [m for m in fake_slack.bot_messages(channel) if needle in (m.get("text") or "")]


def drop(fake_slack: FakeSlack, how: str) -> int:
    if how == "dead_link":
        return fake_slack.freeze_connections()
    return fake_slack.drop_connections(close_frame=how == "close_frame")


@pytest.mark.parametrize("how", ["close_frame", "tcp_reset", "dead_link"])
def test_the_socket_dropped_mid_run_reconnects_and_every_answer_arrives_once(start_bot, fake_slack, fake_model, how):
    bot = start_bot()
    assert fake_slack.connection_count == 1
    fake_model.enqueue(Reply(text="answer for during-drop", delay=3))
    ts = fake_slack.user_says("C1", "U1", "take your time [[id:during-drop]]", mention=True)
    fake_model.wait_for_requests(1, timeout=30)  # the run is in flight: the model answers in 3 s

    dropped_at = time.monotonic()
    assert drop(fake_slack, how) == 1
    assert not answers(fake_slack, "C1", "answer for during-drop")  # the drop came mid-run
    bound = DEAD_LINK_RECONNECT_S if how == "dead_link" else CLOSED_LINK_RECONNECT_S
    fake_slack.wait_connected(total=2, timeout=bound)
    reconnect_s = time.monotonic() - dropped_at
    print(f"{how}: reconnected {reconnect_s:.1f} s after the drop")

    # the run was not disturbed by the socket: its answer arrives in its thread
    answer = answer_in(fake_slack, "C1", ts, "answer for during-drop", timeout=30)
    assert answer["thread_ts"] == ts
    fake_slack.wait_for(lambda: "white_check_mark" in fake_slack.reactions("C1", ts), timeout=10,
                        what="the ✅ on the first request")

    # the new socket carries events: a mention made after the reconnect is answered too
    after = fake_slack.user_says("C1", "U2", "and this one? [[id:after-drop]]", mention=True)
    answer_in(fake_slack, "C1", after, "answer for after-drop", timeout=30)

    bot.wait_quiet(fake_slack)  # a duplicate (a re-run, a second delivery) would show up by now
    assert len(answers(fake_slack, "C1", "answer for during-drop")) == 1, fake_slack.describe()
    assert len(answers(fake_slack, "C1", "answer for after-drop")) == 1, fake_slack.describe()
    assert len(fake_model.requests) == 2  # nothing ran twice
    assert fake_slack.connections == 1  # one live socket, not one per reconnect attempt
    assert bot.events("slack.reconnected")
    assert bot.proc.poll() is None
    assert bot.stop() == 0


def test_bursts_of_429_and_5xx_while_six_mentions_are_answered(start_bot, fake_slack, fake_model):
    bot = start_bot()
    # half the runs are quick (the answer is a new message); half are slow: they show a status message, whose
    # clock is edited after 10 s, and which the answer then replaces (chat.update). With 4 slots, two mentions
    # queue and get a "Queued" notice first.
    slow = {"b1", "b3", "b5"}

    def respond(body: dict) -> Reply:
        marker = _marker(body)
        return Reply(text=f"answer for {marker}", delay=14.0 if marker in slow else 0.0)

    fake_model.set_responder(respond)
    # the first posts (notices, quick answers, status messages) and the 👀 reactions meet the first bursts ...
    bursts = {
        "chat.postMessage": [(429, 3), (503, 3)],
        "reactions.add": [(429, 3), (500, 3)],
        "chat.update": [(429, 3), (502, 3)],
    }
    for method in ("chat.postMessage", "reactions.add"):
        for status, count in bursts[method]:
            fake_slack.fail_next(method, status=status, retry_after=1, count=count)

    ids = [f"b{i}" for i in range(6)]
    threads = {i: fake_slack.user_says("C1", f"U{1 + n % 3}", f"question {i} [[id:{i}]]", mention=True)
               for n, i in enumerate(ids)}
    # ... and the status edits of the slow runs meet the next one
    fake_slack.wait_for(
        lambda: all(any("Working on it" in (m.get("text") or "") for m in fake_slack.bot_messages("C1", threads[i]))
                    for i in slow),
        timeout=40, what="the status messages of the slow runs",
    )
    for status, count in bursts["chat.update"]:
        fake_slack.fail_next("chat.update", status=status, retry_after=1, count=count)

    fake_slack.wait_for(
        lambda: all(answers(fake_slack, "C1", f"answer for {i}") for i in ids), timeout=60, what="all six answers"
    )
    fake_slack.wait_for(lambda: all("white_check_mark" in fake_slack.reactions("C1", ts) for ts in threads.values()),
                        timeout=15, what="a ✅ on every mention")
    bot.wait_quiet(fake_slack)  # let late retries (the outbox, the client's own) show any duplicate
    for i, ts in threads.items():
        found = answers(fake_slack, "C1", f"answer for {i}")
        assert len(found) == 1, (i, [m["text"] for m in found], fake_slack.describe(40))
        assert found[0]["thread_ts"] == ts
    texts = [m.get("text") or "" for m in fake_slack.bot_messages("C1")]
    assert not [t for t in texts if "internal error" in t or t.startswith(":x:")], texts
    assert len(fake_model.requests) == 6  # nothing ran twice
    assert not fake_model.errors

    # every failure was really served to the bot (the test exercised what it claims to)
    for method, failures in bursts.items():
        statuses = [c.status for c in fake_slack.calls_of(method)]
        for status, count in failures:
            assert statuses.count(status) == count, (method, statuses)
    assert bot.events("run.answered") and not bot.events("run.crashed")
    assert bot.proc.poll() is None
    assert bot.stop() == 0


def _marker(body: dict) -> str:
    found = MARKER_RE.findall(last_user_text(body))
    return found[-1] if found else ""
