"""The console shows a running task's status as one line that is printed again only when it changes, and the
answer that replaces it in full; the local poster marks status messages so the console can tell them apart."""

from __future__ import annotations

import io
import json

import anyio
from rich.console import Console

from bot.console import ConsoleView
from bot.core.progress import render_status
from bot.core.renderer import SlackMessage
from bot.core.store import Store
from bot.local.channel import LocalChannel, Record
from bot.local.poster import LocalPoster


def view(tmp_path) -> tuple[ConsoleView, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=False, color_system=None)
    return ConsoleView(LocalChannel(str(tmp_path), "dev"), "alice", console), out


def test_a_status_is_one_line_shown_once_per_change_and_the_answer_replaces_it(tmp_path):
    v, out = view(tmp_path)
    v.show(Record(kind="message", ts="1.000000", user="alice", text="@claude list the files"))
    v.show(Record(kind="message", ts="2.000000", thread_ts="1.000000", user="claude", bot=True, status=True,
                  text="Working on it…"))
    for _ in range(3):  # the elapsed time ticks, the step does not: nothing new to show
        v.show(Record(kind="edit", ts="3.000000", target="2.000000", user="claude", bot=True, status=True,
                      text="Running `ls`…"))
    v.show(Record(kind="edit", ts="4.000000", target="2.000000", user="claude", bot=True,
                  text="Here are **the files**."))
    v.show(Record(kind="edit", ts="5.000000", target="2.000000", user="claude", bot=True,
                  text="Here are the files, edited."))
    lines = [line.rstrip() for line in out.getvalue().splitlines() if line.strip()]
    assert lines[0] == "[1] you: @claude list the files"
    assert lines[1] == "    ↳ [1] claude · Working on it…"
    assert lines[2] == "    ↳ [1] claude · Running `ls`…"
    assert lines[3] == "    ↳ [1] claude:"  # the answer, in place of the status: not "(updated)"
    assert "Here are the files." in lines[4]
    assert lines[5] == "    ↳ [1] claude (updated):"  # an answer edited afterwards says so
    assert sum("Running `ls`" in line for line in lines) == 1


def test_the_local_poster_marks_status_messages_and_not_answers(tmp_path):
    store = Store.open(tmp_path / "state.db")
    poster = LocalPoster(str(tmp_path / "channels"), store, bot_user_id="claude")

    async def main() -> None:
        ts = await poster.post("dev", "1.000000", render_status("dev", "1.000000", "", 0.0, 0))
        await poster.update("dev", ts, render_status("dev", "1.000000", "Running `ls`", 1.0, 1))
        await poster.update("dev", ts, SlackMessage(text="the answer"))

    anyio.run(main)
    path = tmp_path / "channels" / "dev" / ".slackbus-bot.jsonl"  # the bot's own file
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r.get("status", False) for r in records] == [True, True, False]
    assert [r["text"] for r in records] == ["Working on it…", "Running `ls`…", "the answer"]
