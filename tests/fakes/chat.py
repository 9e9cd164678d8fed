"""One small interface over both transports, so a reactive-path scenario can run against Slack (the fake Slack
server) and against the local channel (the real JSON-lines files) unchanged.

The local side is not a fake: it writes records exactly as `slackbus console` and other writers do."""

from __future__ import annotations

import pwd
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from bot.local.channel import BOT_NAME, LocalChannel, Record, me, parse_line
from tests.fakes.fake_slack import FakeSlack

T = TypeVar("T")


def wait_for(predicate: Callable[[], T | None], timeout: float = 30.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


class Chat(ABC):
    channel: str
    name: str

    @abstractmethod
    def say(self, user: str, text: str, thread_ts: str | None = None) -> str: ...
    @abstractmethod
    def mention(self, user: str, text: str, thread_ts: str | None = None) -> str: ...
    @abstractmethod
    def command(self, user: str, text: str) -> None: ...
    @abstractmethod
    def answers(self, thread_ts: str) -> list[str]: ...
    @abstractmethod
    def reactions(self, ts: str) -> set[str]: ...
    @abstractmethod
    def private_to(self, user: str) -> list[str]: ...

    def who(self, user: str) -> str:
        """The name the bot knows `user` by on this transport (in its answers: <@name>)."""
        return user

    def wait_answer(self, thread_ts: str, needle: str, timeout: float = 30.0) -> str:
        return wait_for(lambda: next((a for a in self.answers(thread_ts) if needle in a), None), timeout,
                        f"an answer containing {needle!r} in thread {thread_ts}")


class SlackChat(Chat):
    name = "slack"

    def __init__(self, slack: FakeSlack, channel: str = "C1") -> None:
        self.slack = slack
        self.channel = channel
        self._commands: list[tuple[str, str]] = []  # (user, envelope id)

    def say(self, user: str, text: str, thread_ts: str | None = None) -> str:
        return self.slack.user_says(self.channel, user, text, thread_ts=thread_ts)

    def mention(self, user: str, text: str, thread_ts: str | None = None) -> str:
        return self.slack.user_says(self.channel, user, f"<@{self.slack.bot_user_id}> {text}", thread_ts=thread_ts,
                                    mention=True)

    def command(self, user: str, text: str) -> None:
        self._commands.append((user, self.slack.slash_command(text=text, user=user, channel=self.channel)))

    def answers(self, thread_ts: str) -> list[str]:
        return [str(m.get("text") or "") for m in self.slack.bot_messages(self.channel, thread_ts)]

    def reactions(self, ts: str) -> set[str]:
        return set(self.slack.reactions(self.channel, ts))

    def private_to(self, user: str) -> list[str]:
        """Slash-command acks, ephemeral messages and response_url answers meant for `user`."""
        acks = self.slack.acks
        out = [str((acks[e][1] or {}).get("text") or "") for u, e in self._commands if u == user and e in acks]
        out += [str(e.get("text") or "") for e in self.slack.ephemerals if e.get("user") == user]
        return out + [str(r.get("text") or "") for r in self.slack.responses]


# Test ids as OS users: on a local channel the author is the owner of the file written to, so each test user
# is a real account of this machine (writing as them needs root; see LocalChat).
LOCAL_USERS = {"U1": "daemon", "U2": "bin", "U3": "sys"}


class LocalChat(Chat):
    """Writes as the OS users in `users` (test id → user name; root only, as each person would from their own
    account), or as this process's user for a name not in it that is not an OS account either."""

    name = "local"

    def __init__(self, directory: Path, channel: str = "general", users: dict[str, str] | None = None) -> None:
        self.directory = str(directory)
        self.channel = channel
        self.users = dict(LOCAL_USERS if users is None else users)
        self.ch = LocalChannel(self.directory, channel)

    def who(self, user: str) -> str:
        """The OS user `user` writes as: its mapping, itself if an OS account, else this process's user."""
        name = self.users.get(user, user)
        try:
            pwd.getpwnam(name)
        except KeyError:
            return me()
        return name

    def writer(self, user: str) -> LocalChannel:
        name = self.who(user)
        if name == me():
            return self.ch
        return LocalChannel(self.directory, self.channel, as_user=name)

    def say(self, user: str, text: str, thread_ts: str | None = None) -> str:
        return self.writer(user).append({"kind": "message", "thread_ts": thread_ts, "text": text}).ts

    def mention(self, user: str, text: str, thread_ts: str | None = None) -> str:
        return self.say(user, f"@claude {text}", thread_ts)

    def command(self, user: str, text: str) -> None:
        self.say(user, f"/claude {text}")

    def records(self) -> list[Record]:
        return self.ch.records()

    def messages(self) -> list[tuple[Record, str]]:
        """Messages with the bot's edits applied (a status message becomes its answer)."""
        msgs: dict[str, tuple[Record, str]] = {}
        for r in self.records():
            if r.kind == "message":
                msgs[r.ts] = (r, r.text)
            elif r.kind == "edit" and r.target in msgs:
                msgs[r.target] = (msgs[r.target][0], r.text)
        return list(msgs.values())

    def answers(self, thread_ts: str) -> list[str]:
        return [text for r, text in self.messages() if r.bot and r.thread_ts == thread_ts]

    def reactions(self, ts: str) -> set[str]:
        on: set[str] = set()
        for r in self.records():
            if r.kind == "reaction" and r.bot and r.target == ts:
                (on.add if r.op == "add" else on.discard)(r.name)
        return on

    def private_file(self, user: str) -> Path:
        return Path(self.ch.private_file(self.who(user)))

    def private_to(self, user: str) -> list[str]:
        """What the bot told `user` privately: their private file (read as root, or as that user)."""
        path = self.private_file(user)
        if not path.exists():
            return []
        out = []
        for line in path.read_bytes().splitlines():
            rec = parse_line(line, author=BOT_NAME, bot=True, private_to=self.who(user))
            if not isinstance(rec, str) and rec.kind == "ephemeral":
                out.append(rec.text)
        return out
