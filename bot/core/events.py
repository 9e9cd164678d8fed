"""What comes in, typed: every transport turns its payloads into these, and the core reads nothing else.

    IncomingMessage  a message in a channel, DM or thread          → dispatcher (with the FileRefs of its files);
                     also the request a message shortcut ("Ask Claude" on a message) makes, `about_ts` naming
                     the message it is about
    SlashCommand     `/claude …`, answered through a `Reply`         → commands
    Reaction         a reaction added to (or removed from) a message → commands (🛑 cancels)
    ButtonClick      a button on one of the bot's messages           → commands, approvals

They are frozen and hold plain data only (no callables, no transport objects), so they can be logged, compared
and sent over a queue. A transport fills what it does not have with "" (None where the field allows it): it never
passes on a value of the wrong type. The action ids name the buttons the core draws (renderer, progress,
approvals); the transports route clicks by them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

# --- the buttons' action ids ---------------------------------------------------------------------------------
STOP_ACTION = "slackbus_stop"  # a run's status message: Stop
ATTACH_ACTION = "slackbus_attach"  # an answer: Continue in a terminal
DIFF_ACTION = "slackbus_diff"  # an answer in a thread with its own worktree: Show diff, Push, Pull request
PUSH_ACTION = "slackbus_push"
PR_ACTION = "slackbus_pr"
CHANGE_ACTIONS = (DIFF_ACTION, PUSH_ACTION, PR_ACTION)
APPROVE_ONCE = "slackbus_approve_once"  # a tool request: Approve once, Approve for this session, Deny
APPROVE_SESSION = "slackbus_approve_session"
DENY = "slackbus_deny"
APPROVAL_ACTIONS = (APPROVE_ONCE, APPROVE_SESSION, DENY)

Reply = Callable[[str], Awaitable[None]]
"""How a transport answers the person who gave a command, privately (Slack: in the command's ack, within its 3 s;
the local channel: a private answer). Passed beside a SlashCommand, never inside it."""


@dataclass(frozen=True)
class FileRef:
    """What an event says about one attached file. `source` is where the transport fetches it from (Slack's
    url_private_download, or a local path); `mode` is Slack's: hosted, snippet, external, tombstone."""

    id: str
    name: str
    mimetype: str = "application/octet-stream"
    size: int = 0
    source: str = ""
    mode: str = "hosted"

    def data(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "mimetype": self.mimetype, "size": self.size,
                "source": self.source, "mode": self.mode}

    @classmethod
    def from_data(cls, d: dict[str, object]) -> FileRef:
        size = d.get("size")
        return cls(str(d.get("id") or ""), str(d.get("name") or "file"),
                   str(d.get("mimetype") or "application/octet-stream"), size if isinstance(size, int) else 0,
                   str(d.get("source") or ""), str(d.get("mode") or "hosted"))


@dataclass(frozen=True)
class IncomingMessage:
    """A message event, typed (a transport's events-in builds it; nobody else reads Slack's dicts)."""

    channel: str
    ts: str
    text: str
    user: str | None
    thread_ts: str | None = None
    channel_type: str | None = None
    bot_id: str | None = None
    subtype: str | None = None
    mentions_bot: bool = False
    event_id: str | None = None
    received: float = 0.0  # time.monotonic() when the event reached the bot
    files: tuple[FileRef, ...] = ()  # attached files (fetched by the run that answers the message)
    about_ts: str | None = None  # a request about another message (a message shortcut's target): its ts
    app_id: str | None = None  # the app that posted it (another bot's post), when Slack says

    @property
    def reply_target(self) -> str:
        return self.thread_ts or self.ts

    @property
    def is_dm(self) -> bool:
        return self.channel_type == "im" or self.channel.startswith("D")


@dataclass(frozen=True)
class SlashCommand:
    """`/claude <text>`: who typed it, where; `text` is what follows `/claude`."""

    user: str
    channel: str
    text: str
    thread_ts: str | None = None  # the thread it was typed in, when the transport says (the local channel does)


@dataclass(frozen=True)
class Reaction:
    """A reaction on a message: `ts` is the message's, `name` the emoji's (e.g. octagonal_sign)."""

    user: str
    channel: str
    ts: str
    name: str
    added: bool = True  # False: it was removed


@dataclass(frozen=True)
class ButtonClick:
    """A click on a button of one of the bot's messages."""

    action_id: str
    value: str  # what the button carries (e.g. "channel|thread_ts", an approval's request id)
    user: str
    channel: str
    message_ts: str | None = None  # the message holding the button
    thread_ts: str | None = None  # that message's thread
