"""One small interface over both transports, so a reactive-path scenario can run against Slack (the fake Slack
server) and against the local channel (the real JSON-lines files) unchanged.

The local side is not a fake: it writes records exactly as `slackbus console` and other writers do."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bot.local_channel import LocalChannel
from tests.fakes.fake_slack import FakeSlack

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


class Chat:
    channel: str
    name: str

    def say(self, user: str, text: str, thread_ts: str | None = None) -> str: ...
    def mention(self, user: str, text: str, thread_ts: str | None = None) -> str: ...
    def command(self, user: str, text: str) -> None: ...
    def answers(self, thread_ts: str) -> list[str]: ...
    def reactions(self, ts: str) -> set[str]: ...
    def private_to(self, user: str) -> list[str]: ...

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


class LocalChat(Chat):
    name = "local"

    def __init__(self, directory: Path, channel: str = "general") -> None:
        self.ch = LocalChannel(str(directory), channel)
        self.channel = channel

    def say(self, user: str, text: str, thread_ts: str | None = None) -> str:
        return str(self.ch.append({"kind": "message", "user": user, "thread_ts": thread_ts, "text": text})["ts"])

    def mention(self, user: str, text: str, thread_ts: str | None = None) -> str:
        return self.say(user, f"@claude {text}", thread_ts)

    def command(self, user: str, text: str) -> None:
        self.say(user, f"/claude {text}")

    def records(self) -> list[dict[str, Any]]:
        return self.ch.read(0)[0]

    def messages(self) -> list[dict[str, Any]]:
        """Messages with the bot's edits applied (a status message becomes its answer)."""
        msgs: dict[str, dict[str, Any]] = {}
        for r in self.records():
            if r.get("kind", "message") == "message":
                msgs[r["ts"]] = dict(r)
            elif r.get("kind") == "edit" and r.get("target") in msgs:
                msgs[r["target"]]["text"] = r.get("text")
        return list(msgs.values())

    def answers(self, thread_ts: str) -> list[str]:
        return [str(m.get("text") or "") for m in self.messages() if m.get("bot") and m.get("thread_ts") == thread_ts]

    def reactions(self, ts: str) -> set[str]:
        on: set[str] = set()
        for r in self.records():
            if r.get("kind") == "reaction" and r.get("target") == ts:
                (on.add if r.get("op", "add") == "add" else on.discard)(str(r.get("name")))
        return on

    def private_to(self, user: str) -> list[str]:
        mine = [r for r in self.records() if r.get("kind") == "ephemeral" and r.get("to") == user]
        return [str(r.get("text") or "") for r in mine]
