"""Files Claude hands back arrive in the thread as files (issue 17): through the MCP upload tool and through the
session's outbox ($SLACKBUS_OUTBOX), with their names and bytes; text is masked on the way out, and a file too big
gets one sentence instead."""

from __future__ import annotations

import base64
import mimetypes

import pytest

from tests.e2e.test_attachments import PNG
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


def test_an_image_claude_makes_goes_up_as_a_png_so_slack_shows_it_inline(start_bot, fake_slack, fake_model):
    """Slack shows an uploaded image inline when it is one: a .png name, the PNG's own bytes (not masked as text)
    and no snippet type (a snippet is shown as text)."""
    start_bot(**BASH)
    b64 = base64.b64encode(PNG).decode()
    fake_model.enqueue_tool_use("Bash", {
        "command": f"echo {b64} | base64 -d > \"$SLACKBUS_OUTBOX/plot.png\" && echo {b64} | base64 -d > chart.png",
        "description": "draw two plots"})
    fake_model.enqueue_tool_use("mcp__slackbus__upload", {"path": "chart.png", "title": "Latency by day"})
    ts = fake_slack.user_says("C1", "U1", "plot the latency [[id:f3]]", mention=True)
    answer_in(fake_slack, "C1", ts, "answer for f3")
    # an upload is three calls (its URL, its bytes, its completion): wait until both have all three
    fake_slack.wait_for(lambda: len([f for f in fake_slack.files if f["completed"]]) >= 2,
                        what="two images in the thread")
    by_name = {f["name"]: f for f in fake_slack.files}
    assert set(by_name) == {"plot.png", "chart.png"}
    for f in by_name.values():
        assert mimetypes.guess_type(f["name"])[0] == "image/png"
        assert f["content"] == PNG and f["snippet_type"] is None and f["completed"]
        assert (f["channel"], f["thread_ts"]) == ("C1", ts)
    assert by_name["chart.png"]["title"] == "Latency by day" and by_name["plot.png"]["title"] == "plot.png"
    shared = [m for m in fake_slack.bot_messages("C1", ts) if m.get("files")]
    assert sorted(f["name"] for m in shared for f in m["files"]) == ["chart.png", "plot.png"]
