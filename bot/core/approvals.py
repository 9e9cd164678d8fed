"""Tool approvals: when Claude wants a tool that is not pre-allowed, a person decides in the thread.

Order: SLACKBUS_DISALLOWED_TOOLS and SLACKBUS_ALLOWED_TOOLS (the CLI applies them) → approvals remembered for
this session → ask in the thread with Approve once / Approve for this session / Deny buttons (on Slack), or
`/claude approve [session]` / `/claude deny` (both transports; the only way on the local channel). Only the
requester or an admin can answer; no answer within SLACKBUS_APPROVAL_SECONDS means denied, and the thread is told.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from claude_agent_sdk import PermissionResultAllow, PermissionResultDeny

from bot.core.events import APPROVE_ONCE, APPROVE_SESSION, DENY
from bot.core.poster import Poster
from bot.core.renderer import SlackMessage
from bot.log import get_logger
from bot.redact import redact

log = get_logger("slackbus.approvals")

COMMAND_HINT = "Answer with `/claude approve`, `/claude approve session` or `/claude deny`."


def describe_request(tool: str, args: dict[str, Any]) -> str:
    """The tool call in a few lines of mrkdwn: the command, the file, a preview of the change."""
    if tool == "Bash":
        return f"*Run a command*\n```\n{redact(str(args.get('command', '')))[:1500]}\n```"
    path = args.get("file_path") or args.get("notebook_path") or ""
    if tool == "Write":
        return f"*Write* `{path}`\n```\n{redact(str(args.get('content', '')))[:1200]}\n```"
    if tool in {"Edit", "MultiEdit"}:
        single = {"old_string": args.get("old_string", ""), "new_string": args.get("new_string", "")}
        edits = args.get("edits") or [single]
        diff = []
        for edit in edits[:5]:
            diff += [f"- {line}" for line in str(edit.get("old_string", "")).splitlines()[:15]]
            diff += [f"+ {line}" for line in str(edit.get("new_string", "")).splitlines()[:15]]
        return f"*Edit* `{path}`\n```\n{redact(chr(10).join(diff))[:1500]}\n```"
    return f"*{tool}*\n```\n{redact(json.dumps(args, indent=1, default=str))[:1500]}\n```"


def _key(tool: str, args: dict[str, Any]) -> str:
    return tool + ":" + json.dumps(args, sort_keys=True, default=str)


@dataclass
class Pending:
    request_id: str
    channel: str
    thread_ts: str
    requester: str
    tool: str
    args: dict[str, Any]
    decided: anyio.Event = field(default_factory=anyio.Event)
    decision: str | None = None
    by: str | None = None
    message_ts: str | None = None
    asked_at: float = field(default_factory=time.monotonic)


class Approvals:
    """The `can_use_tool` callbacks for sessions, and the buttons' handler."""

    def __init__(
        self,
        poster: Poster,
        *,
        is_admin: Callable[[str], bool],
        timeout: float,
        buttons: bool = True,
    ) -> None:
        self._buttons = buttons  # False on the local channel: the question says which command answers it
        self._poster = poster
        self._is_admin = is_admin
        self.timeout = timeout
        self._pending: dict[str, Pending] = {}
        self._approved: dict[str, set[str]] = {}  # session id → tool calls approved for the session
        self.round_trips: list[float] = []

    def callback_for(self, session_id: str, where: Callable[[], tuple[str, str, str] | None]) -> Any:
        """A can_use_tool for one session; `where` gives (channel, thread_ts, requester) of its current turn."""

        async def can_use_tool(tool: str, args: dict[str, Any], _context: Any) -> Any:
            key = _key(tool, args)
            if key in self._approved.get(session_id, set()) or f"{tool}:*" in self._approved.get(session_id, set()):
                return PermissionResultAllow()
            place = where()
            if place is None:
                return PermissionResultDeny(message="No one in Slack can approve this now.")
            decision, by = await self.ask(session_id, *place, tool, args)
            if decision == APPROVE_SESSION:
                self._approved.setdefault(session_id, set()).add(key)
            if decision in (APPROVE_ONCE, APPROVE_SESSION):
                return PermissionResultAllow()
            reason = f"denied by <@{by}> in Slack" if by else f"no answer in Slack within {self.timeout:g} s"
            return PermissionResultDeny(message=f"The user did not allow this ({reason}).")

        return can_use_tool

    async def ask(
        self, session_id: str, channel: str, thread_ts: str, requester: str, tool: str, args: dict[str, Any]
    ) -> tuple[str, str | None]:
        pending = Pending(uuid.uuid4().hex[:12], channel, thread_ts, requester, tool, args)
        self._pending[pending.request_id] = pending
        try:
            pending.message_ts = await self._poster.post(channel, thread_ts, self._question(pending))
            log.info("approval.asked", channel=channel, thread_ts=thread_ts, tool=tool, request=pending.request_id)
            with anyio.move_on_after(self.timeout):
                await pending.decided.wait()
            if pending.decision is None:
                pending.decision = DENY
                pending.decided.set()  # before the edit below: a click while it is on its way is "already answered"
                await self._poster.update(channel, pending.message_ts, self._answered(
                    pending, f":no_entry: No answer within {self.timeout:g} s (SLACKBUS_APPROVAL_SECONDS): denied."))
            return pending.decision, pending.by
        finally:
            self._pending.pop(pending.request_id, None)

    async def on_click(self, action_id: str, request_id: str, user: str) -> str | None:
        """A button was clicked; returns a refusal to show the clicker, or None."""
        pending = self._pending.get(request_id)
        if pending is None or pending.decided.is_set():
            return "That request was already answered."
        if user != pending.requester and not self._is_admin(user):
            return f"Only <@{pending.requester}>, who asked, or an admin (SLACKBUS_ADMIN_USERS) can answer this."
        pending.decision, pending.by = action_id, user
        self.round_trips.append(time.monotonic() - pending.asked_at)
        verdict = {
            APPROVE_ONCE: f":white_check_mark: Approved once by <@{user}>.",
            APPROVE_SESSION: f":white_check_mark: Approved for this session by <@{user}>.",
            DENY: f":no_entry: Denied by <@{user}>.",
        }[action_id]
        pending.decided.set()
        if pending.message_ts:
            await self._poster.update(pending.channel, pending.message_ts, self._answered(pending, verdict))
        log.info("approval.answered", request=request_id, decision=action_id, by=user)
        return None

    async def answer_command(self, user: str, channel: str, thread_ts: str | None, decision: str) -> str:
        """`/claude approve [session]` or `/claude deny`: answers the latest request waiting in the channel (in
        the thread, when the command was given in one) that `user` may answer."""
        waiting = [p for p in self._pending.values() if p.channel == channel and not p.decided.is_set()
                   and (thread_ts is None or p.thread_ts == thread_ts)]
        if not waiting:
            return "Nothing here is waiting for an approval."
        mine = [p for p in waiting if p.requester == user or self._is_admin(user)]
        target = max(mine or waiting, key=lambda p: p.asked_at)
        refusal = await self.on_click(decision, target.request_id, user)
        if refusal:
            return refusal
        return {APPROVE_ONCE: f"Approved once: {target.tool}.", APPROVE_SESSION:
                f"Approved for this session: {target.tool}.", DENY: f"Denied: {target.tool}."}[decision]

    def _question(self, p: Pending) -> SlackMessage:
        text = (f":raised_hand: Claude wants to use *{p.tool}*. <@{p.requester}>, allow it?\n"
                f"{describe_request(p.tool, p.args)}")
        if not self._buttons:
            return SlackMessage(text=f"{text}\n{COMMAND_HINT}")
        buttons = [
            ("Approve once", APPROVE_ONCE, "primary"),
            ("Approve for this session", APPROVE_SESSION, None),
            ("Deny", DENY, "danger"),
        ]
        elements = []
        for label, action, style in buttons:
            element: dict[str, Any] = {"type": "button", "action_id": action, "value": p.request_id,
                                       "text": {"type": "plain_text", "text": label}}
            if style:
                element["style"] = style
            elements.append(element)
        return SlackMessage(
            text=f"Claude wants to use {p.tool}: allow it?",
            blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}},
                    {"type": "actions", "block_id": "slackbus_approval", "elements": elements}],
        )

    def _answered(self, p: Pending, verdict: str) -> SlackMessage:
        text = f"Claude asked to use *{p.tool}*.\n{describe_request(p.tool, p.args)}\n{verdict}"
        if not self._buttons:
            return SlackMessage(text=text)
        return SlackMessage(text=verdict, blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}])
