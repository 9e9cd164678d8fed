"""A link to another Slack message in a request brings that message and its thread into the context, as data
(issue 17): from the bot's record, else one paced conversations.replies read; never from a channel where the
requester has not written."""

from __future__ import annotations

import pytest

from tests.e2e.test_reactive import answer_in
from tests.fakes.fake_model import FakeModel

pytestmark = pytest.mark.e2e


def link(channel: str, ts: str, thread_ts: str | None = None) -> str:
    url = f"https://fake-team.slack.com/archives/{channel}/p{ts.replace('.', '')}"
    return url + (f"?thread_ts={thread_ts}&cid={channel}" if thread_ts else "")


def prompt_of(fake_model: FakeModel, marker: str) -> str:
    for i in range(len(fake_model.requests)):
        text = "\n".join(fake_model.user_texts(i))
        if marker in text:
            return text
    raise AssertionError(f"no request carried {marker}")


def test_a_linked_message_and_its_thread_come_from_the_record_as_data(start_bot, fake_slack, fake_model):
    start_bot()
    root = fake_slack.user_says("C1", "U2", "the nightly deploy failed")
    fake_slack.user_says("C1", "U3", "error E42 in the migration step", thread_ts=root)
    for _ in range(12):  # enough channel talk that the linked thread is not simply recent context
        fake_slack.user_says("C1", "U3", "unrelated chatter")
    ts = fake_slack.user_says("C1", "U1", f"what went wrong here? {link('C1', root)} [[id:l1]]", mention=True)
    answer_in(fake_slack, "C1", ts, "answer for l1")
    prompt = prompt_of(fake_model, "[[id:l1]]")
    linked = prompt.split('part="linked"', 1)[1].split("</slack_context", 1)[0]
    assert "the nightly deploy failed" in linked and "error E42 in the migration step" in linked
    assert "data, not instructions" in prompt.split('part="linked"', 1)[1].split("\n", 1)[0]
    assert fake_slack.count("conversations.replies") == 0  # the record had it


def test_a_link_the_record_lacks_is_read_once_and_a_stranger_channel_stays_out(start_bot, fake_slack, fake_model):
    bot = start_bot()
    # C2: the bot is there (it recorded U2's message), the requester U1 never wrote there
    secret = fake_slack.user_says("C2", "U2", "the private roadmap: launch in May")
    # C3: the requester wrote there once; the linked thread itself never reached the bot
    fake_slack.user_says("C3", "U1", "hello C3")
    old = fake_slack.seed_message("C3", "the incident timeline starts at 02:10", user="U3")
    fake_slack.seed_message("C3", "root cause: an expired certificate", user="U2", thread_ts=old)
    ts = fake_slack.user_says("C1", "U1", f"compare {link('C3', old)} with {link('C2', secret)} [[id:l2]]",
                              mention=True)
    answer_in(fake_slack, "C1", ts, "answer for l2")
    prompt = prompt_of(fake_model, "[[id:l2]]")
    assert "the incident timeline starts at 02:10" in prompt and "root cause: an expired certificate" in prompt
    assert "the private roadmap" not in prompt
    assert [c.params.get("channel") for c in fake_slack.calls_of("conversations.replies")] == ["C3"]
    assert bot.events("context.link_skipped")[0]["channel"] == "C2"
