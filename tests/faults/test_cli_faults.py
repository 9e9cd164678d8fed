"""A misbehaving `claude` CLI fails one run with one clear sentence, leaves no process, and the bot goes on.

The CLI is the real one behind tests/faults/fault_cli.py, which injects one fault (SLACKBUS_FAULT) into the
first run only: a line that is not JSON, a 3 MB line, no result line, a crash with stderr, or a hang.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import claude_cli, processes_in, wait_no_processes
from tests.e2e.test_reactive import answer_in
from tests.faults.fault_cli import FAKE_TOKEN, FAULTS, arm, install, journal

pytestmark = pytest.mark.e2e

STALL_S = 3
RUN_TIMEOUT_S = 20

# what the thread must say for each fault: what happened (and, below, what to do next)
SAYS = {
    "malformed": "could not read (a line that is not valid JSON), so the run was stopped.",
    "huge": "sent one message larger than 1 MB, more than slackbus reads, so the run was stopped.",
    "noresult": "The Claude Code CLI exited with code 0 before giving an answer.",
    "crash": "The Claude Code CLI exited with code 3 before giving an answer.",
    "hang": f"Claude Code produced no output for {STALL_S} s (SLACKBUS_STALL_SECONDS), so the run was stopped.",
}
NEXT_STEP = {
    "malformed": "Reply here to retry",
    "huge": "Reply here to retry, asking for less at a time",
    "noresult": "Reply here to retry",
    "crash": "Reply here to retry",
    "hang": "Reply here to continue",
}
# never in front of a user: our fake token, a traceback, an exception repr, the raw or the padded JSON line
NEVER = ("xoxb-1234", FAKE_TOKEN, "Traceback", "Error(", "Exception", "Failed to decode", '{"type"', "oops",
         "AAAAAAAA", "Check stderr output")


def test_every_fault_has_an_expected_message():
    assert set(SAYS) == set(FAULTS) == set(NEXT_STEP)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("fault", FAULTS)
def test_a_misbehaving_cli_fails_one_run_clearly_and_the_bot_keeps_working(
    fault, start_bot, fake_slack, fake_model, bot_env, tmp_path
):
    state = tmp_path / "fault"
    wrapper = install(state, claude_cli())
    arm(state)
    workdir = Path(bot_env["SLACKBUS_WORKDIR"])
    overrides = {
        "CLAUDE_CLI_PATH": str(wrapper),
        "SLACKBUS_FAULT": fault,
        "SLACKBUS_WARM_POOL": "0",
        "SLACKBUS_IDLE_SECONDS": "0",  # no warm session: every process must be gone after its run
    }
    if fault == "hang":
        overrides |= {"SLACKBUS_STALL_SECONDS": str(STALL_S), "SLACKBUS_RUN_TIMEOUT": str(RUN_TIMEOUT_S)}
    bot = start_bot(**overrides)  # `claude --version` went through the wrapper untouched

    ts = fake_slack.user_says("C1", "U1", f"please answer [[id:first-{fault}]]", mention=True)
    fake_slack.wait_for(lambda: "x" in fake_slack.reactions("C1", ts), timeout=60,
                        what=f"the ❌ reaction on the request ({fault})")
    msg = answer_in(fake_slack, "C1", ts, SAYS[fault], timeout=15)
    assert f"inject {fault}" in " ".join(journal(state)), journal(state)  # the fault really happened
    assert not (state / "armed").exists()

    # one message, led by one sentence saying what happened and what to do next
    messages = fake_slack.bot_messages("C1", ts)
    assert len(messages) == 1, messages
    everything = msg["text"] + str(msg.get("blocks"))
    headline = msg["text"].split("\n```", 1)[0]
    assert "\n" not in headline.strip() and len(headline) < 400, headline
    assert headline.startswith((":x:", ":hourglass:")), headline
    assert NEXT_STEP[fault] in headline, headline
    for bad in NEVER:
        assert bad not in everything, f"{bad!r} shown to the user: {everything}"
    assert "Stop" not in str(msg.get("blocks")), "the status message's Stop button outlived the run"
    assert "white_check_mark" not in fake_slack.reactions("C1", ts)
    if fault == "crash":  # the CLI's last words are shown, redacted
        assert "fault_cli: request failed (auth [redacted])" in msg["text"]

    # nothing is left: not the wrapper, not the real CLI behind it
    wait_no_processes(workdir, timeout=30)
    assert bot.proc.poll() is None, bot.tail()

    # the bot keeps working: a reply in the failed thread (as the message suggests) and a new mention
    fake_slack.user_says("C1", "U1", f"again [[id:retry-{fault}]]", thread_ts=ts)
    answer_in(fake_slack, "C1", ts, f"answer for retry-{fault}", timeout=60)
    ts2 = fake_slack.user_says("C1", "U2", f"and now [[id:after-{fault}]]", mention=True)
    answer_in(fake_slack, "C1", ts2, f"answer for after-{fault}", timeout=60)
    fake_slack.wait_for(lambda: "white_check_mark" in fake_slack.reactions("C1", ts2), timeout=15,
                        what="the ✅ reaction on the next request")
    assert "x" not in fake_slack.reactions("C1", ts2)
    # The fault run and the two normal ones. Whether the CLI saved the faulty run's session before it died is a
    # race: when it did not, the retry's `--resume` finds nothing and the bot starts once more, with the whole
    # thread (logged as run.session_missing) - one process more, never a lost or doubled answer.
    restarts = len(bot.events("run.session_missing"))
    assert restarts <= 1, bot.tail()
    assert sum(1 for line in journal(state) if " start " in line) == 3 + restarts, (journal(state), bot.tail())
    assert sum(1 for line in journal(state) if "fault=none" in line) == 2 + restarts
    assert len(fake_slack.bot_messages("C1", ts2)) == 1
    wait_no_processes(workdir, timeout=30)
    assert not processes_in(workdir)


@pytest.mark.timeout(120)
def test_a_cancel_stays_a_cancel_when_the_cli_ignores_the_interrupt(start_bot, fake_slack, bot_env, tmp_path):
    """A cancel whose interrupt request goes unanswered still says who cancelled, not that the CLI exited.

    The CLI hangs, as on a machine too loaded to answer the interrupt in time, so the bot ends it with SIGINT.
    """
    state = tmp_path / "fault"
    wrapper = install(state, claude_cli())
    arm(state)
    workdir = Path(bot_env["SLACKBUS_WORKDIR"])
    start_bot(CLAUDE_CLI_PATH=str(wrapper), SLACKBUS_FAULT="hang", SLACKBUS_WARM_POOL="0",
              SLACKBUS_IDLE_SECONDS="0")
    ts = fake_slack.user_says("C1", "U1", "please answer [[id:first-cancel]]", mention=True)
    fake_slack.wait_for(lambda: "inject hang" in " ".join(journal(state)), timeout=60, what="the CLI to hang")
    envelope = fake_slack.slash_command(text="cancel", user="U1", channel="C1")
    _t, payload = fake_slack.wait_ack(envelope)
    assert "Cancelling" in (payload or {}).get("text", "")
    notice = answer_in(fake_slack, "C1", ts, "cancelled by <@U1>", timeout=30)
    assert "exited" not in notice["text"], notice["text"]
    assert "white_check_mark" not in fake_slack.reactions("C1", ts)
    wait_no_processes(workdir, timeout=30)
