"""Files Claude hands back arrive in the thread as files (issue 17): through the MCP upload tool and through the
session's outbox ($SLACKBUS_OUTBOX), with their names and bytes; text is masked on the way out, and a file too big
gets one sentence instead."""

from __future__ import annotations

import pytest

from tests.e2e.test_reactive import answer_in

pytestmark = pytest.mark.e2e

BASH = {"SLACKBUS_ALLOWED_TOOLS": "Bash"}


def test_the_upload_tool_and_the_outbox_both_put_files_in_the_thread(start_bot, fake_slack, fake_model):
    start_bot(**BASH)
    fake_model.enqueue_tool_use("Bash", {
        "command": "printf 'a,b\\n1,2\\ntoken xoxb-test-bot-token-123\\n' > \"$SLACKBUS_OUTBOX/data.csv\" && "
                   "printf 'the report' > report.txt",
        "description": "write two files"})
    fake_model.enqueue_tool_use("mcp__slackbus__upload", {"path": "report.txt", "title": "The report",
                                                          "comment": "here it is"})
    ts = fake_slack.user_says("C1", "U1", "make me a report and a csv [[id:f1]]", mention=True)
    answer_in(fake_slack, "C1", ts, "answer for f1")
    fake_slack.wait_for(lambda: len(fake_slack.files) >= 2, what="two files in the thread")
    by_name = {f["name"]: f for f in fake_slack.files}
    assert set(by_name) == {"report.txt", "data.csv"}
    assert by_name["report.txt"]["content"] == b"the report"
    assert by_name["report.txt"]["title"] == "The report" and by_name["report.txt"]["initial_comment"] == "here it is"
    assert by_name["data.csv"]["content"].startswith(b"a,b\n1,2\ntoken ")
    assert b"xoxb-test-bot-token-123" not in by_name["data.csv"]["content"]  # masked on the way out
    assert {f["thread_ts"] for f in by_name.values()} == {ts} and {f["channel"] for f in by_name.values()} == {"C1"}
    # the tool told Claude it worked
    assert any("Uploaded report.txt to the thread." in t for i in range(len(fake_model.requests))
               for t in fake_model.user_texts(i))


def test_a_file_outside_the_thread_or_too_big_is_refused_with_a_sentence(start_bot, fake_slack, fake_model, tmp_path):
    start_bot(SLACKBUS_MAX_ATTACHMENT_MB="1", **BASH)
    secret = tmp_path / "state" / "slackbus.db"
    fake_model.enqueue_tool_use("mcp__slackbus__upload", {"path": str(secret)})
    fake_model.enqueue_tool_use("Bash", {"command": "head -c 1100000 /dev/zero > \"$SLACKBUS_OUTBOX/big.bin\"",
                                         "description": "a big file"})
    ts = fake_slack.user_says("C1", "U1", "hand me the database [[id:f2]]", mention=True)
    answer_in(fake_slack, "C1", ts, "answer for f2")
    note = answer_in(fake_slack, "C1", ts, "big.bin was not uploaded")
    assert "over the limit of 1 MB (SLACKBUS_MAX_ATTACHMENT_MB)" in note["text"]
    told = [t for i in range(len(fake_model.requests)) for t in fake_model.user_texts(i)]
    assert any("was not uploaded: only files in this thread's folder" in t for t in told)
    assert fake_slack.files == []
