"""MCP tools for the sessions the bot spawns (claude-agent-sdk's in-process server "slackbus"): the blackboard live,
mid-run: `post` to the channel, `read` it since a time, `sessions` active in it, `upload` a file to the thread.
"""

from __future__ import annotations

from typing import Any

from claude_agent_sdk import create_sdk_mcp_server, tool
from claude_agent_sdk.types import McpSdkServerConfig

from bot.bridge.blackboard import Blackboard
from bot.bridge.protocol import BusError, parse_since

MCP_SERVER = "slackbus"
MCP_TOOLS = f"mcp__{MCP_SERVER}"  # allow rule for every tool of the server


def mcp_server(board: Blackboard, session_id: str) -> McpSdkServerConfig:
    """The in-process MCP server \"slackbus\" of one session: post, read, sessions and upload."""

    def result(text: str, error: bool = False) -> dict[str, Any]:
        return {"content": [{"type": "text", "text": text}], "is_error": error}

    def here() -> tuple[str, str] | None:
        return board.where(session_id)

    @tool(
        "post",
        "Post a message to this session's shared Slack channel (the blackboard other sessions and people "
        "read). Use it for findings others should know now. in_thread=true posts in your own thread instead.",
        {
            "type": "object",
            "properties": {"text": {"type": "string"}, "in_thread": {"type": "boolean"}},
            "required": ["text"],
        },
    )
    async def post(args: dict[str, Any]) -> dict[str, Any]:
        where = here()
        if where is None:
            return result("This session has no channel yet.", True)
        try:
            _, ts = await board.post(
                board.identity(session_id).tag(str(args.get("text") or "")),
                channel=where[0],
                thread_ts=where[1] if args.get("in_thread") else None,
                session_id=session_id,
            )
        except BusError as exc:
            return result(str(exc), True)
        except Exception as exc:
            return result(f"The post failed: {exc}", True)
        return result(f"Posted to the channel (ts {ts}).")

    @tool(
        "read",
        "Read the shared Slack channel's messages, oldest first: what people and other sessions posted. "
        "since: 10m, 2h, 1d or a Slack ts (default: the last 30 messages).",
        {
            "type": "object",
            "properties": {"since": {"type": "string"}, "limit": {"type": "integer"}},
        },
    )
    async def read(args: dict[str, Any]) -> dict[str, Any]:
        where = here()
        if where is None:
            return result("This session has no channel yet.", True)
        try:
            since = parse_since(str(args.get("since") or "") or None)
        except BusError as exc:
            return result(str(exc), True)
        limit = max(1, min(int(args.get("limit") or 30), 200))
        lines = [m.data_line() for m in board.read(where[0], since=since, limit=limit)]  # data, escaped
        return result("\n".join(lines) if lines else "No messages in that range.")

    @tool("sessions", "List the Claude Code sessions active in the shared channel in the last hour.",
          {"type": "object", "properties": {}})
    async def sessions(args: dict[str, Any]) -> dict[str, Any]:
        where = here()
        if where is None:
            return result("This session has no channel yet.", True)
        lines = board.sessions(where[0])
        return result("\n".join(lines) if lines else "No other sessions seen in the last hour.")

    @tool(
        "upload",
        "Hand a file back to this session's Slack thread (a chart, a CSV, a patch, a log): it appears there as a "
        "file. path: a file in your working folder or in $SLACKBUS_OUTBOX; title and comment are optional.",
        {
            "type": "object",
            "properties": {"path": {"type": "string"}, "title": {"type": "string"}, "comment": {"type": "string"}},
            "required": ["path"],
        },
    )
    async def upload(args: dict[str, Any]) -> dict[str, Any]:
        try:
            return result(await board.upload(session_id, str(args.get("path") or ""),
                                             _text(args.get("title")), _text(args.get("comment"))))
        except BusError as exc:
            return result(str(exc), True)
        except Exception as exc:
            return result(f"The upload failed: {exc}", True)

    return create_sdk_mcp_server(MCP_SERVER, tools=[post, read, sessions, upload])


def _text(value: Any) -> str | None:
    return str(value)[:500] if isinstance(value, str) and value.strip() else None
