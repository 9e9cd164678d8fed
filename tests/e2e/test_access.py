"""Who may do what, on every entry path; directories stay under the roots; secrets never shown."""

from __future__ import annotations

import pytest

from tests.e2e.test_job_control import ack_text, start_slow_run
from tests.e2e.test_reactive import answer_in
from tests.e2e.test_safety import ALLOWED_TOOLS, show_env_script  # noqa: F401 - fixture

pytestmark = pytest.mark.e2e


def test_a_user_not_allowed_is_refused_on_every_path(start_bot, fake_slack, fake_model, tmp_path):
    bot = start_bot(**ALLOWED_TOOLS)
    # a thread with a session, started by an allowed user
    ts = fake_slack.user_says("C1", "U1", "start [[id:own]]", mention=True)
    answer_in(fake_slack, "C1", ts, "answer for own")
    requests = len(fake_model.requests)

    # thread reply, DM, subcommands and a task by slash command
    fake_slack.user_says("C1", "U9", "let me in", thread_ts=ts)
    fake_slack.user_says("D9", "U9", "hello bot", channel_type="im")
    for text in ("status", "sessions", "cancel", "cwd", "help", "do a task for me"):
        assert "not on this bot's allow list" in ack_text(fake_slack, fake_slack.slash_command(text=text, user="U9"))
    fake_slack.wait_for(lambda: len([e for e in fake_slack.ephemerals if e["user"] == "U9"]) >= 2,
                        what="refusals for the reply and the DM")

    # reaction and Stop button on a running run
    running = start_slow_run(fake_slack, fake_model, tmp_path, marker="run")
    fake_slack.reaction_added("U9", "C1", running, "octagonal_sign")
    fake_slack.block_action("U9", "C1", running, "slackbus_stop", value=f"C1|{running}")
    fake_slack.wait_for(lambda: len([e for e in fake_slack.ephemerals if e["user"] == "U9"]) >= 4,
                        what="refusals for the reaction and the button")
    bot.wait_quiet(fake_slack)
    assert len(fake_model.requests) == requests + 1  # only the slow run: nothing ran for U9
    assert not any("cancelled" in (m.get("text") or "") for m in fake_slack.bot_messages("C1", running))


def test_a_channel_not_allowed_runs_nothing(start_bot, fake_slack, fake_model):
    bot = start_bot(SLACKBUS_ALLOWED_CHANNELS="C1")
    ts = fake_slack.user_says("C2", "U1", "work here please", mention=True)
    fake_slack.wait_for(lambda: any("not enabled in this channel" in e["text"] for e in fake_slack.ephemerals),
                        what="the channel refusal")
    assert "not enabled in this channel" in ack_text(fake_slack, fake_slack.slash_command(text="x y", channel="C2"))
    bot.wait_quiet(fake_slack)
    assert fake_model.requests == [] and fake_slack.bot_messages("C2") == []
    assert "eyes" not in fake_slack.reactions("C2", ts)
    ok = fake_slack.user_says("C1", "U1", "and here? [[id:here]]", mention=True)
    answer_in(fake_slack, "C1", ok, "answer for here")


def test_channel_directories_and_cwd_stay_under_the_roots(start_bot, fake_slack, fake_model, tmp_path):
    root = tmp_path / "srv"
    (root / "repo-a").mkdir(parents=True)
    (root / "repo-b").mkdir()
    outside = tmp_path / "secret"
    outside.mkdir()
    (root / "sneaky").symlink_to(outside)
    (tmp_path / "work").mkdir(exist_ok=True)
    env = {"SLACKBUS_ROOTS": f"{root},{tmp_path / 'work'}", "SLACKBUS_CHANNEL_DIRS": f"C7={root / 'repo-a'}",
           "SLACKBUS_ADMIN_USERS": "U3"}
    start_bot(**env)
    assert str(root / "repo-a") in ack_text(fake_slack, fake_slack.slash_command(text="cwd", channel="C7"))
    ts = fake_slack.user_says("C7", "U1", "where are you? [[id:cwd]]", mention=True)
    answer_in(fake_slack, "C7", ts, "answer for cwd")
    assert str(root / "repo-a") in "\n".join(fake_model.user_texts(0))  # the CLI's environment names its cwd

    # only an admin changes it, and never outside the roots (.., a symlink)
    assert "Only an admin" in ack_text(fake_slack, fake_slack.slash_command(text=f"cwd {root / 'repo-b'}",
                                                                             channel="C7", user="U1"))
    for escape in (f"{root}/repo-a/../../secret", str(root / "sneaky")):
        refused = ack_text(fake_slack, fake_slack.slash_command(text=f"cwd {escape}", channel="C7", user="U3"))
        assert "outside the allowed roots" in refused
    changed = ack_text(fake_slack, fake_slack.slash_command(text=f"cwd {root / 'repo-b'}", channel="C7", user="U3"))
    assert "now work in" in changed
    ts2 = fake_slack.user_says("C7", "U1", "and now? [[id:cwd2]]", mention=True)
    answer_in(fake_slack, "C7", ts2, "answer for cwd2")
    assert str(root / "repo-b") in "\n".join(fake_model.user_texts(len(fake_model.requests) - 1))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"SLACKBUS_PERMISSION_MODE": "bypassPermissions"}, "more than one user is allowed"),
        ({"SLACKBUS_PERMISSION_MODE": "bypassPermissions", "SLACKBUS_ALLOWED_USERS": "U1"}, "IS_SANDBOX=1"),
        ({"SLACKBUS_CHANNEL_DIRS": "C7=/"}, "outside SLACKBUS_ROOTS"),
    ],
)
def test_unsafe_set_ups_are_refused_at_start(start_bot, overrides, expected):
    import os

    if "IS_SANDBOX" in expected and os.geteuid() != 0:
        pytest.skip("the root rule applies to root only")
    bot = start_bot(wait=False, **overrides)
    assert bot.proc.wait(30) == 2
    output = bot.log_path.read_text()
    assert expected in output and "Traceback" not in output


def test_a_token_in_an_answer_is_posted_redacted(start_bot, fake_slack, fake_model):
    start_bot(MY_SERVICE_API_KEY="service-secret-value-42")
    fake_model.enqueue_text("here: xoxb-1234-5678-abcdefgh and sk-ant-api03-zzzzzzzzzz and service-secret-value-42")
    ts = fake_slack.user_says("C1", "U1", "leak something", mention=True)
    answer = answer_in(fake_slack, "C1", ts, "here:")
    assert "xoxb-1234" not in str(answer) and "sk-ant-api03" not in str(answer)
    assert "service-secret-value-42" not in str(answer)
    assert answer["text"].count("[redacted]") == 3
