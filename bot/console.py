"""`slackbus console [CHANNEL]`: a terminal chat on a local channel, with the bot in it.

Starts a local bot in this process (its log goes to SLACKBUS_HOME/console.log) unless one already serves the
same channel folder. You are your OS user: what you type goes to your own file in the channel's folder, and
your private answers are read from the file only you can read (bot.local.channel).
Then: type a message; `@claude …` asks the bot; `>N text` replies in thread N (a reply in a bot thread needs no
mention); `/claude status|sessions|cancel|cwd|help` work as on Slack; Ctrl-C
cancels your running task (twice, or with nothing running, quits); Ctrl-D quits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from functools import partial
from typing import Any

import anyio
from rich.console import Console
from rich.emoji import Emoji
from rich.markdown import Markdown
from rich.text import Text

from bot.bridge import protocol
from bot.config import Settings
from bot.local.channel import Follower, LocalChannel, Record
from bot.local.channel import me as os_user
from bot.local.events_in import LOCAL_BOT

POLL_S = 0.02
HISTORY = 20
STOP = "octagonal_sign"
WORKING = "eyes"
DONE = {"white_check_mark", "x", STOP}


class ConsoleView:
    """What the terminal shows: numbered threads, answers as Markdown, your private notices."""

    def __init__(self, channel: LocalChannel, me: str, out: Console) -> None:
        self.ch = channel
        self.me = me
        self.out = out
        # the channel's files and my private answers (.private/<me>.jsonl, when it is mine)
        self.follower = Follower(channel, on_skip=self._skipped, private_for=me)
        self.threads: dict[str, int] = {}  # top-level ts → its number
        self.by_number: dict[int, str] = {}
        self.working: dict[str, float] = {}  # my requests the bot is working on: ts → since
        self.reply_thread: dict[str, int] = {}  # a reply's ts → its thread's number (for the bot's edits)
        self.status_line: dict[str, str] = {}  # a status message's ts → the line last shown for it

    def number(self, ts: str) -> int:
        n = self.threads.get(ts)
        if n is None:
            n = self.threads[ts] = len(self.threads) + 1
            self.by_number[n] = ts
        return n

    def _skipped(self, file: str, line: int | None, why: str) -> None:
        where = f"{file}:{line}" if line else file
        self.out.print(Text(f"  (skipped {where}: {why})", style="dim"))

    def catch_up(self, history: int = HISTORY) -> None:
        records = self.follower.poll()
        messages = [r for r in records if r.kind == "message"]
        for r in messages:
            if not r.thread_ts or r.thread_ts == r.ts:
                self.number(r.ts)
        shown = {r.ts for r in messages[-history:]}
        if len(messages) > history:
            self.out.print(Text(f"… {len(messages) - history} earlier messages", style="dim"))
        for r in records:
            if r.kind != "message" or r.ts in shown:
                self.show(r)

    def poll(self) -> None:
        for r in self.follower.poll():
            self.show(r)

    def show(self, r: Record) -> None:
        user = r.user
        if r.kind == "reaction":
            target = str(r.target)
            if r.name == WORKING and r.op == "add":
                self.working[target] = time.monotonic()
            elif r.name in DONE or (r.name == WORKING and r.op == "remove"):
                self.working.pop(target, None)
            return
        if r.kind == "ephemeral":  # only from my own private file
            if r.to == self.me:
                self.out.print(Text(f"  (only you) {r.text}", style="dim"))
            return
        text = r.text
        thread = r.thread_ts
        if r.kind == "edit":  # only the bot's (the follower drops anyone else's)
            target = str(r.target)
            n = self.reply_thread.get(target, 0)
            if r.status:
                self._print_status(target, n, text)
            else:  # an answer in place of the status line, or an answer edited
                self._print_reply(n, "claude", text, updated=self.status_line.pop(target, None) is None)
            return
        if r.bot and r.status and thread and thread != r.ts:
            self.reply_thread[r.ts] = self.threads.get(thread, 0)
            self._print_status(r.ts, self.reply_thread[r.ts], text)
            return
        who = "claude" if r.bot else ("you" if user == self.me else user)
        if not thread or thread == r.ts:
            n = self.number(r.ts)
            self.out.print(Text.assemble((f"[{n}] ", "bold cyan"), (f"{who}: ", "bold"), text))
        else:
            n = self.reply_thread[r.ts] = self.threads.get(thread, 0)
            self._print_reply(n, who, text)

    def _print_status(self, target: str, n: int, text: str) -> None:
        """A running task's status, as one dim line; a line-based terminal cannot edit it in place, so an
        unchanged status is not printed again."""
        line = " ".join(Emoji.replace(text).split())
        if self.status_line.get(target) == line:
            return
        self.status_line[target] = line
        self.out.print(Text.assemble(("    ↳ ", "dim"), (f"[{n}] " if n else "", "cyan"), (f"claude · {line}", "dim")))

    def _print_reply(self, n: int, who: str, text: str, updated: bool = False) -> None:
        head = Text.assemble(("    ↳ ", "dim"), (f"[{n}] " if n else "", "cyan"), (f"{who}", "bold"),
                             (" (updated)" if updated else "", "dim"), (":", "bold"))
        self.out.print(head)
        if who == "claude":
            text = Emoji.replace(text.replace(f"<@{self.me}>", f"@{self.me}"))  # Slack's :shortcodes: too
            self.out.print(Markdown(text), width=min(self.out.width, 110))
        else:
            self.out.print(Text(f"      {text}"))

    def mine_running(self) -> str | None:
        mine = [ts for ts in self.working]
        return max(mine) if mine else None


def attached_paths(text: str, cwd: str | None = None) -> tuple[str, ...]:
    """Relative paths in a typed message that name existing files (./crash.log, ../a.png, ~/notes.md), made
    absolute here, where they mean something: they travel with the message as its attachments. An absolute path
    in prose is only text (use `/attach PATH` for one)."""
    found: list[str] = []
    for word in text.split():
        word = word.strip("`'\"(),;")
        if not word.startswith(("./", "../", "~/")):
            continue
        path = os.path.abspath(os.path.join(cwd or os.getcwd(), os.path.expanduser(word)))
        if os.path.isfile(path) and path not in found:
            found.append(path)
    return tuple(found[:20])


def attach_path(given: str) -> str | None:
    """`/attach PATH`: the file's absolute path, or None when there is no such file."""
    path = os.path.abspath(os.path.expanduser(given.strip()))
    return path if os.path.isfile(path) else None


def parse_input(line: str, view: ConsoleView) -> tuple[str | None, str] | None:
    """(thread ts or None, text) for a line typed; None for nothing to send."""
    line = line.rstrip("\n")
    if not line.strip():
        return None
    if line.startswith(">"):
        number, _, text = line[1:].partition(" ")
        if number.isdigit() and int(number) in view.by_number and text.strip():
            return view.by_number[int(number)], text.strip()
        raise ValueError(f"no thread {number}: use >N text with a number shown in [brackets]")
    return None, line.strip()


def _bot_serving(settings: Settings) -> bool:
    """A bot already serves this SLACKBUS_HOME's socket, on the same local channels."""
    answer = protocol.ping(str(settings.home / protocol.SOCKET_NAME), timeout=1.0)
    return answer is not None and bool(answer.get("ok")) and answer.get("local_dir") == str(settings.local_dir)


async def run_console(settings: Settings, channel_name: str, me: str, out: Console, log_file: Any) -> int:
    from bot.app import Bot
    from bot.log import configure_logging

    ch = LocalChannel(str(settings.local_dir), channel_name)
    view = ConsoleView(ch, me, out)
    started_bot: Bot | None = None
    async with anyio.create_task_group() as tg:
        if not _bot_serving(settings):
            configure_logging(settings.log_level, "json", stream=log_file)
            started_bot = Bot(settings)
            ready = anyio.Event()
            tg.start_soon(partial(started_bot.serve, ready=ready, signals=False))
            with anyio.fail_after(60):
                await ready.wait()
        out.print(Text(f"slackbus console · #{channel_name} · you are {me}", style="bold"))
        out.print(Text("@claude <task> asks · >N text replies in thread N · /claude help", style="dim"))
        out.print(Text("Ctrl-C cancels your running task · Ctrl-D quits", style="dim"))
        view.catch_up()

        async def follow() -> None:
            while True:
                view.poll()
                await anyio.sleep(POLL_S)

        async def on_interrupt() -> None:
            last = 0.0
            with anyio.open_signal_receiver(signal.SIGINT) as signals:
                async for _ in signals:
                    target = view.mine_running()
                    if target is None or time.monotonic() - last < 1.0:
                        tg.cancel_scope.cancel()
                        return
                    last = time.monotonic()
                    ch.append({"kind": "reaction", "op": "add", "target": target, "name": STOP})
                    out.print(Text(f"  cancelling thread [{view.threads.get(target, '?')}] … "
                                   "(Ctrl-C again to quit)", style="yellow"))

        pending: list[str] = []  # `/attach PATH`: files for the next message

        async def read_input() -> None:
            while True:
                line = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
                if line == "":  # Ctrl-D
                    tg.cancel_scope.cancel()
                    return
                try:
                    parsed = parse_input(line, view)
                except ValueError as exc:
                    out.print(Text(f"  {exc}", style="red"))
                    continue
                if parsed is not None and parsed[1].startswith("/attach "):
                    path = attach_path(parsed[1][len("/attach "):])
                    if path is not None:
                        pending.append(path)
                        out.print(Text(f"  {path} goes with your next message", style="dim"))
                    else:
                        out.print(Text(f"  no such file: {parsed[1][len('/attach '):].strip()}", style="red"))
                    continue
                if parsed is not None:
                    thread_ts, text = parsed
                    files = [*pending, *(p for p in attached_paths(text) if p not in pending)]
                    record: dict[str, object] = {"kind": "message", "thread_ts": thread_ts, "text": text}
                    if files:
                        record["files"] = files
                    try:
                        ch.append(record)
                        pending.clear()
                    except (OSError, ValueError) as exc:
                        out.print(Text(f"  not sent: {exc}", style="red"))
                        continue
                    view.poll()

        tg.start_soon(follow)
        tg.start_soon(on_interrupt)
        tg.start_soon(read_input)
    if started_bot is not None:
        started_bot.close()
    out.print(Text("bye", style="dim"))
    return 0


def main(settings: Settings, channel: str, user: str | None) -> int:
    me = os_user()  # on a local channel you are your OS user: the owner of the file you write to
    asked = user or os.environ.get("SLACKBUS_USER")
    if asked and asked != me:
        print(f"slackbus: on a local channel you are your OS user, {me}; the name {asked!r} is not used.",
              file=sys.stderr)
    if me == LOCAL_BOT:
        print(f"slackbus: the OS user {me!r} has the bot's name on local channels; chat as another user.",
              file=sys.stderr)
        return 2
    out = Console(highlight=False)
    with open(settings.home / "console.log", "a") as log_file, contextlib.suppress(KeyboardInterrupt):
        return anyio.run(run_console, settings, channel, me, out, log_file)
    return 0
