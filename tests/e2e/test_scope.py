"""Scope: who sees which runs and who may take a thread's session to a terminal; how long a task may be."""

from __future__ import annotations

import pytest

from tests.e2e.test_job_control import ack_text, start_slow_run
from tests.e2e.test_reactive import answer_in
from tests.e2e.test_safety import ALLOWED_TOOLS, show_env_script  # noqa: F401 - fixture

pytestmark = pytest.mark.e2e


def link(ts: str, channel: str = "C1") -> str:
    return f"https://fake.slack.com/archives/{channel}/p{ts.replace('.', '')}"


def test_only_the_requester_or_an_admin_takes_a_thread_to_a_terminal(start_bot, fake_slack, fake_model):
    bot = start_bot(SLACKBUS_ADMIN_USERS="U3", SLACKBUS_WARM_POOL="0")
    ts = fake_slack.user_says("C1", "U1", "remember the word fig [[id:at1]]", mention=True)
    answer = answer_in(fake_slack, "C1", ts, "answer for at1")

    # another allowed user, in another channel, with a link: refused, and the thread keeps its warm process
    refused = ack_text(fake_slack, fake_slack.slash_command(text=f"attach {link(ts)}", user="U2", channel="C2"))
    assert "Only <@U1>" in refused and "resume" not in refused
    button = answer["blocks"][-1]["elements"][0]
    assert button["action_id"] == "slackbus_attach"
    fake_slack.block_action("U2", "C1", answer["ts"], "slackbus_attach", value=button["value"])
    said = fake_slack.wait_for(lambda: [e for e in fake_slack.ephemerals if e.get("user") == "U2"],
                               what="the answer to the click")
    assert "Only <@U1>" in said[0]["text"] and "resume" not in said[0]["text"]
    fake_slack.user_says("C1", "U1", "which word? [[id:at2]]", thread_ts=ts)
    answer_in(fake_slack, "C1", ts, "answer for at2")
    assert bot.events("run.reusing")[-1]["origin"] == "warm"  # nothing was dropped

    # the requester and an admin get the command
    assert "claude --resume=" in ack_text(fake_slack, fake_slack.slash_command(text=f"attach {link(ts)}",
                                                                               user="U1", channel="C1"))
    assert "claude --resume=" in ack_text(fake_slack, fake_slack.slash_command(text=f"attach {link(ts)}",
                                                                               user="U3", channel="C2"))


def test_status_shows_other_channels_runs_to_admins_only(start_bot, fake_slack, fake_model, tmp_path):
    start_bot(SLACKBUS_MAX_CONCURRENT="1", SLACKBUS_ADMIN_USERS="U3", **ALLOWED_TOOLS)
    start_slow_run(fake_slack, fake_model, tmp_path, channel="C2", user="U1", marker="run")  # running, C2
    dm = fake_slack.user_says("D1", "U1", "in private [[id:dm]]", channel_type="im")  # queued, U1's DM
    mine = fake_slack.user_says("C1", "U2", "mine [[id:mine]]", mention=True)  # queued, U2 in C1
    answer_in(fake_slack, "D1", dm, "Queued, position 1")
    answer_in(fake_slack, "C1", mine, "Queued, position 2")

    elsewhere = ack_text(fake_slack, fake_slack.slash_command(text="status", user="U2", channel="C4"))
    assert "*Running* (1 of 1)" in elsewhere and "*Queued* (2)" in elsewhere  # counts stay
    assert "<@U1>" not in elsewhere and "C2" not in elsewhere and "D1" not in elsewhere
    assert "2. <@U2> in <#C1>" in elsewhere  # their own, anywhere
    assert "• and 1 elsewhere" in elsewhere and "\nand 1 elsewhere" in elsewhere

    here = ack_text(fake_slack, fake_slack.slash_command(text="status", user="U2", channel="C2"))
    assert "<@U1> in <#C2>" in here  # this channel's run
    assert "D1" not in here and "\nand 1 elsewhere" in here and "• and" not in here

    admin = ack_text(fake_slack, fake_slack.slash_command(text="status", user="U3", channel="C4"))
    assert "<@U1> in <#C2>" in admin and "1. <@U1> in <#D1>" in admin and "2. <@U2> in <#C1>" in admin
    assert "elsewhere" not in admin

    assert "Cancelling" in ack_text(fake_slack, fake_slack.slash_command(text="cancel", user="U1", channel="C2"))
    answer_in(fake_slack, "C1", mine, "answer for mine")


def test_a_task_over_the_input_limit_is_refused_and_runs_nothing(start_bot, fake_slack, fake_model):
    bot = start_bot(SLACKBUS_MAX_INPUT_CHARS="1000")
    long = "please read this: " + "x" * 1500 + " [[id:long]]"

    def refusals(user: str) -> list[dict]:
        return [e for e in fake_slack.ephemerals if e.get("user") == user and "SLACKBUS_MAX_INPUT_CHARS" in e["text"]]

    # a mention (it arrives twice: one refusal), and a DM
    mention = fake_slack.user_says("C1", "U1", long, mention=True)
    fake_slack.user_says("D1", "U2", long, channel_type="im")
    fake_slack.wait_for(lambda: refusals("U1") and refusals("U2"), what="the refusals")
    text = refusals("U1")[0]["text"]
    assert "more than the 1,000" in text and f"{len(long) + len('<@UBOT> '):,} characters" in text
    assert "as a file" in text
    # the refusal is sent once the dispatcher has decided: no job was made for either
    assert not [e for e in bot.events("dispatch.accepted") if e.get("ts") == mention]
    assert len(bot.events("dispatch.too_long")) == 2

    # /claude <task>: refused in the ack, nothing posted
    refused = ack_text(fake_slack, fake_slack.slash_command(text="x" * 300_000, user="U1", channel="C1"))
    assert "300,000 characters" in refused and "as a file" in refused

    # a reply in a session's thread
    ts = fake_slack.user_says("C1", "U1", "short one [[id:ok1]]", mention=True)
    answer_in(fake_slack, "C1", ts, "answer for ok1")
    fake_slack.user_says("C1", "U1", long, thread_ts=ts)
    fake_slack.wait_for(lambda: len(refusals("U1")) == 2, what="the refusal of the reply")
    fake_slack.user_says("C1", "U1", "short again [[id:ok2]]", thread_ts=ts)
    answer_in(fake_slack, "C1", ts, "answer for ok2")
    prompt = fake_model.last_user_text(len(fake_model.requests) - 1)  # the refused reply is context, as data
    assert prompt.index("[[id:long]]") < prompt.index("</slack_context") and prompt.endswith("short again [[id:ok2]]")

    # within the limit, /claude's echo in the channel is cut, and the run gets the whole text
    task = "summarise " + "y" * 900 + " END [[id:sl]]"
    fake_slack.slash_command(text=task, user="U2", channel="C1")
    parent = fake_slack.wait_for(
        lambda: next((m for m in fake_slack.bot_messages("C1") if "<@U2> asked:" in m["text"]), None),
        what="the echo",
    )
    assert "more characters]" in parent["text"] and len(parent["text"]) < 400 and "END" not in parent["text"]
    answer_in(fake_slack, "C1", parent["ts"], "answer for sl")
    assert task in "\n".join(fake_model.user_texts(len(fake_model.requests) - 1))
    assert len(fake_model.requests) == 3  # ok1, ok2, sl: nothing else ran
    assert fake_slack.bot_messages("D1") == []
    assert not [m for m in fake_slack.bot_messages("C1") if "x" * 500 in m["text"]]
