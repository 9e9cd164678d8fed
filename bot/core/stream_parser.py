"""Turns what the CLI streams (as claude-agent-sdk messages) into slackbus's own frozen events.

Nobody past this module looks at SDK types or raw dicts. Unknown message kinds become nothing: new CLI
versions add types, and a run must never crash on one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from claude_agent_sdk import (
    AssistantMessage,
    ResultMessage,
    SystemMessage,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
)


@dataclass(frozen=True)
class SessionStarted:
    session_id: str
    model: str | None
    cwd: str | None


@dataclass(frozen=True)
class AssistantText:
    text: str


@dataclass(frozen=True)
class ToolCall:
    tool_use_id: str
    name: str
    input: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class ToolOutput:
    tool_use_id: str
    text: str
    is_error: bool


@dataclass(frozen=True)
class ApiRetry:
    attempt: int
    max_retries: int
    status: int | None
    error: str


@dataclass(frozen=True)
class Usage:
    """What a turn used, as the result line reports it: tokens in and out (summed over the turn's model calls),
    cache reads and writes, and the model that answered (the one that cost most, when several did)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    model: str | None = None


@dataclass(frozen=True)
class Finished:
    """The CLI's result line. `is_error` is the truth; `subtype` alone is not (API errors say success)."""

    is_error: bool
    subtype: str
    text: str
    session_id: str
    num_turns: int
    duration_ms: int
    cost_usd: float | None
    api_error_status: int | None
    terminal_reason: str | None
    permission_denials: tuple[str, ...]
    errors: tuple[str, ...]
    usage: Usage = field(default_factory=Usage)


RunEvent = SessionStarted | AssistantText | ToolCall | ToolOutput | ApiRetry | Finished


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for item in content:
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                parts.append(item["text"])
        return "\n".join(parts)
    return str(content)


def _denied_tool(denial: Any) -> str:
    if isinstance(denial, dict):
        return str(denial.get("tool_name") or denial.get("name") or "a tool")
    return str(getattr(denial, "tool_name", None) or denial)


def _count(data: Any, key: str) -> int:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _usage(usage: Any, model_usage: Any) -> Usage:
    model = None
    if isinstance(model_usage, dict) and model_usage:
        def cost(item: tuple[Any, Any]) -> float:
            value = item[1].get("costUSD") if isinstance(item[1], dict) else None
            return float(value) if isinstance(value, int | float) else 0.0

        model = str(max(model_usage.items(), key=cost)[0])
    return Usage(_count(usage, "input_tokens"), _count(usage, "output_tokens"),
                 _count(usage, "cache_read_input_tokens"), _count(usage, "cache_creation_input_tokens"), model)


def parse(message: Any) -> list[RunEvent]:
    """One SDK message → zero or more events."""
    if isinstance(message, AssistantMessage):
        events: list[RunEvent] = []
        for block in message.content:
            if isinstance(block, TextBlock) and block.text:
                events.append(AssistantText(block.text))
            elif isinstance(block, ToolUseBlock):
                events.append(ToolCall(block.id, block.name, dict(block.input or {})))
        return events
    if isinstance(message, UserMessage):
        if isinstance(message.content, str):
            return []
        return [
            ToolOutput(block.tool_use_id, _text_of(block.content), bool(block.is_error))
            for block in message.content
            if isinstance(block, ToolResultBlock)
        ]
    if isinstance(message, SystemMessage):
        data = message.data if isinstance(message.data, dict) else {}
        if message.subtype == "init":
            return [SessionStarted(str(data.get("session_id", "")), data.get("model"), data.get("cwd"))]
        if message.subtype == "api_retry":
            status = data.get("error_status")
            return [
                ApiRetry(
                    int(data.get("attempt") or 0),
                    int(data.get("max_retries") or 0),
                    int(status) if isinstance(status, int) else None,
                    str(data.get("error") or ""),
                )
            ]
        return []
    if isinstance(message, ResultMessage):
        return [
            Finished(
                is_error=bool(message.is_error),
                subtype=str(message.subtype),
                text=message.result or "",
                session_id=message.session_id,
                num_turns=int(message.num_turns or 0),
                duration_ms=int(message.duration_ms or 0),
                cost_usd=message.total_cost_usd,
                api_error_status=getattr(message, "api_error_status", None),
                terminal_reason=getattr(message, "terminal_reason", None),
                permission_denials=tuple(_denied_tool(d) for d in (message.permission_denials or [])),
                errors=tuple(str(e) for e in (getattr(message, "errors", None) or [])),
                usage=_usage(message.usage, getattr(message, "model_usage", None)),
            )
        ]
    return []
