""""Ask Claude" on a message (the message shortcut, issue 17): the message's text and files reach Claude as data,
like a mention's, and the answer lands in that message's thread; access control and dedupe hold as for a mention."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest

from tests.e2e.test_attachments import PNG, image_blocks, request_for
from tests.e2e.test_reactive import answer_in
from tests.fakes.fake_model import FakeModel
from tests.fakes.fake_slack import FakeSlack

pytestmark = pytest.mark.e2e


def message_of(fake_slack: FakeSlack, channel: str, ts: str) -> dict[str, Any]:
    return next(m for m in fake_slack.messages(channel) if m["ts"] == ts)


def shortcut_payload(fake_slack: FakeSlack, user: str, channel: str, ts: str) -> dict[str, Any]:
    """The interactive payload Slack sends when `user` picks "Ask Claude" on the message `ts` (type
    message_action, as Slack documents it)."""
    message = {k: v for k, v in message_of(fake_slack, channel, ts).items() if v is not None and k != "channel"}
    action = float(max(m["ts"] for m in fake_slack.messages(channel))) + 0.5  # after every message so far
    return {
        "type": "message_action",
        "token": "fake-verification-token",
        "action_ts": f"{action:.6f}",
        "team": {"id": fake_slack.team_id, "domain": "fake-team"},
        "user": {"id": user, "username": user.lower(), "team_id": fake_slack.team_id, "name": user.lower()},
        "channel": {"id": channel, "name": channel.lower()},
        "is_enterprise_install": False,
        "enterprise": None,
        "callback_id": "claude_message",
        "trigger_id": f"{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:16]}",
        "response_url": f"{fake_slack.base_url}/response/none",
        "message_ts": ts,
        "message": message,
    }


def use_shortcut(fake_slack: FakeSlack, payload: dict[str, Any]) -> None:
    envelope = fake_slack.send_envelope("interactive", payload)
    fake_slack.wait_ack(envelope)


def prompt_of(fake_model: FakeModel, needle: str) -> str:
    return "\n".join(fake_model.user_texts(fake_model.requests.index(request_for(fake_model, needle))))


def test_ask_claude_on_a_message_brings_its_png_and_log_and_answers_in_its_thread(start_bot, fake_slack, fake_model):
    bot = start_bot()
    png = fake_slack.add_file("screen.png", PNG, "image/png")
    crash = b"Traceback (most recent call last):\n  boom: the queue is full\n"
    log = fake_slack.add_file("worker.log", crash, "text/plain")
    # U2 posts without mentioning the bot: channel talk, no run
    ts = fake_slack.user_says("C1", "U2", "the worker died again, see attached [[id:s1]]", files=[png, log])
    bot.wait_quiet(fake_slack)
    assert fake_model.requests == [] and fake_slack.downloads == []

    payload = shortcut_payload(fake_slack, "U1", "C1", ts)
    use_shortcut(fake_slack, payload)
    answer_in(fake_slack, "C1", ts, "answer for s1")

    body = request_for(fake_model, "[[id:s1]]")
    assert [(i["source"]["media_type"], base64.b64decode(i["source"]["data"])) for i in image_blocks(body)] == [
        ("image/png", PNG)]
    prompt = prompt_of(fake_model, "[[id:s1]]")
    assert "boom: the queue is full" in prompt and "worker.log (text/plain" in prompt
    turn = fake_model.last_user_text(fake_model.requests.index(body))
    data, _, request = turn.rpartition("Request (id ")
    assert "the worker died again" in data and "<slack_context" in data  # the message, as data
    assert "[[id:s1]]" not in request and "(U1)" in request.splitlines()[0]  # the request is U1's, about it
    assert sorted(fake_slack.downloads) == sorted([(png["id"], True), (log["id"], True)])
    fake_slack.wait_for(lambda: "white_check_mark" in fake_slack.reactions("C1", ts), what="✅ on the message")

    # Slack delivers the same shortcut again: one shortcut is one task
    use_shortcut(fake_slack, payload)
    bot.wait_quiet(fake_slack)
    assert len([b for b in fake_model.requests if b is body or "[[id:s1]]" in "\n".join(
        fake_model.user_texts(fake_model.requests.index(b)))]) == 1
    assert len([m for m in fake_slack.bot_messages("C1", ts) if "answer for s1" in (m.get("text") or "")]) == 1


def test_ask_claude_on_a_reply_answers_in_that_thread(start_bot, fake_slack, fake_model):
    start_bot()
    root = fake_slack.user_says("C1", "U1", "look at the deploy [[id:r1]]", mention=True)
    answer_in(fake_slack, "C1", root, "answer for r1")
    reply = fake_slack.user_says("C1", "U3", "the staging box says: disk full on /var [[id:r2]]", thread_ts=root)
    use_shortcut(fake_slack, shortcut_payload(fake_slack, "U2", "C1", reply))
    answer_in(fake_slack, "C1", root, "answer for r2")
    assert "disk full on /var" in prompt_of(fake_model, "[[id:r2]]")


def test_ask_claude_by_someone_not_allowed_is_refused_and_runs_nothing(start_bot, fake_slack, fake_model):
    bot = start_bot()
    log = fake_slack.add_file("worker.log", b"nothing to see\n", "text/plain")
    ts = fake_slack.user_says("C1", "U2", "the worker died [[id:n1]]", files=[log])
    use_shortcut(fake_slack, shortcut_payload(fake_slack, "U9", "C1", ts))
    refusal = fake_slack.wait_for(lambda: next((e for e in fake_slack.ephemerals if e["user"] == "U9"), None),
                                  what="the refusal for U9")
    assert "not on this bot's allow list" in refusal["text"]
    bot.wait_quiet(fake_slack)
    assert fake_model.requests == [] and fake_slack.downloads == []
    assert fake_slack.bot_messages("C1", ts) == [] and not fake_slack.reactions("C1", ts)
