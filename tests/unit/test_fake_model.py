"""The fake Anthropic API, checked over raw HTTP and through the REAL claude CLI bundled with the SDK."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import claude_agent_sdk
import pytest

from tests.fakes.fake_model import FakeModel, Reply, default_reply_text, last_user_text

CLI = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"


@pytest.fixture
def installed_cli() -> Path:
    """The CLI bundled with the SDK, which scripts/install puts in place: missing, it is a failure that says how to
    fix it, never a quiet skip."""
    if not (CLI.is_file() and os.access(CLI, os.X_OK)):
        pytest.fail(f"the claude CLI bundled with claude-agent-sdk is not at {CLI}: run scripts/install")
    return CLI


needs_cli = pytest.mark.usefixtures("installed_cli")


# ---- helpers -------------------------------------------------------------------------------------


def run_cli(
    fm: FakeModel, prompt: str, root: Path, timeout: float = 30.0
) -> tuple[int, list[dict[str, Any]]]:
    """Run `claude -p PROMPT` offline against the fake; return (exit code, stream-json lines)."""
    home, cwd = root / "home", root / "cwd"
    home.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **fm.cli_env(home)}
    proc = subprocess.run(
        [str(CLI), "-p", prompt, "--output-format", "stream-json", "--verbose"],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip().startswith("{")]
    return proc.returncode, lines


def result_of(lines: list[dict[str, Any]]) -> dict[str, Any]:
    results = [line for line in lines if line.get("type") == "result"]
    assert len(results) == 1, lines
    return results[0]


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), e.read()


def sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for chunk in raw.decode().split("\n\n"):
        if not chunk.strip():
            continue
        name_line, data_line = chunk.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: "), chunk
        events.append((name_line[len("event: ") :], json.loads(data_line[len("data: ") :])))
    return events


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


# ---- pure helpers --------------------------------------------------------------------------------


def test_default_reply_text_picks_last_user_text_and_marker() -> None:
    body = {
        "messages": [
            user("old [[id:old]]"),
            {"role": "assistant", "content": [{"type": "text", "text": "x"}]},
            user(
                [
                    {"type": "text", "text": "<system-reminder>\nnoise [[id:no]]\n</system-reminder>"},
                    {"type": "text", "text": "new question [[id:Q-1]]"},
                ]
            ),
            {"role": "system", "content": "# Environment [[id:env]]"},
        ]
    }
    assert last_user_text(body) == "new question [[id:Q-1]]"
    assert default_reply_text(body) == "answer for Q-1"
    # a user turn holding only tool results falls back to the previous user text
    body["messages"].append(user([{"type": "tool_result", "tool_use_id": "t", "content": "hi"}]))
    assert default_reply_text(body) == "answer for Q-1"
    assert default_reply_text({"messages": [user("plain")]}) == "echo: plain"
    long_reply = default_reply_text({"messages": [user("x" * 5000)]})
    assert long_reply.startswith("echo: xxx") and len(long_reply) < 220


# ---- raw HTTP ------------------------------------------------------------------------------------


def test_http_routes_stream_and_scripting() -> None:
    with FakeModel() as fm:
        with urllib.request.urlopen(urllib.request.Request(fm.url + "/", method="HEAD"), timeout=5) as r:
            assert r.status == 200
        status, _, raw = post(fm.url + "/v1/messages/count_tokens", {"messages": []})
        assert (status, json.loads(raw)) == (200, {"input_tokens": 10})
        status, _, raw = post(fm.url + "/v1/nope", {})
        assert status == 404 and json.loads(raw)["type"] == "error"

        # streaming text, split into several deltas, model echoed
        body = {"model": "m-1", "stream": True, "system": "SYS", "messages": [user("hi [[id:z]]")]}
        status, headers, raw = post(fm.url + "/v1/messages?beta=true", body)
        assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
        events = sse_events(raw)
        names = [name for name, _ in events]
        assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
        assert events[0][1]["message"]["model"] == "m-1"
        deltas = [d["delta"]["text"] for n, d in events if n == "content_block_delta"]
        assert len(deltas) >= 2 and "".join(deltas) == "answer for z"
        assert events[-2][1]["delta"]["stop_reason"] == "end_turn"

        # scripted: tool_use, then error, then non-streaming text, then responder, then hang
        fm.enqueue_tool_use("Bash", {"command": "echo hi"})
        fm.enqueue_error(500, "api_error", "boom")
        fm.enqueue_text("scripted")
        _, _, raw = post(fm.url + "/v1/messages", body)
        events = sse_events(raw)
        start = next(d for n, d in events if n == "content_block_start")["content_block"]
        assert start["type"] == "tool_use" and start["name"] == "Bash"
        partial = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta")
        assert json.loads(partial) == {"command": "echo hi"}
        assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
        status, headers, raw = post(fm.url + "/v1/messages", body)
        assert status == 500 and headers["x-should-retry"] == "false"
        assert json.loads(raw) == {"type": "error", "error": {"type": "api_error", "message": "boom"}}
        status, _, raw = post(fm.url + "/v1/messages", dict(body, stream=False))
        assert status == 200 and json.loads(raw)["content"] == [{"type": "text", "text": "scripted"}]

        fm.set_responder(lambda b: Reply(text="from responder") if "SYS" in b.get("system", "") else None)
        _, _, raw = post(fm.url + "/v1/messages", dict(body, stream=False))
        assert json.loads(raw)["content"][0]["text"] == "from responder"
        fm.set_responder(None)

        fm.enqueue_hang(0.5)
        t0 = time.monotonic()
        _, _, raw = post(fm.url + "/v1/messages", body)
        assert time.monotonic() - t0 >= 0.45 and sse_events(raw)[-1][0] == "message_stop"

        assert len(fm.wait_for_requests(6, timeout=1)) == 6
        assert "SYS" in fm.user_texts(0) and "hi [[id:z]]" in fm.user_texts(0)
        deadline = time.monotonic() + 2
        while fm.active and time.monotonic() < deadline:  # the server counts down just after the last byte
            time.sleep(0.01)
        assert fm.active == 0 and fm.max_active == 1


def test_stop_is_prompt_even_with_a_hanging_response() -> None:
    fm = FakeModel().start()
    fm.enqueue_hang(60)
    results: list[int] = []
    t = threading.Thread(target=lambda: results.append(post(fm.url + "/v1/messages", {"stream": True})[0]))
    t.start()
    fm.wait_for_requests(1, timeout=5)
    t0 = time.monotonic()
    fm.stop()
    assert time.monotonic() - t0 < 3
    t.join(5)
    assert results == [200]


# ---- through the real claude CLI -----------------------------------------------------------------


@needs_cli
def test_cli_text_answer_with_marker(tmp_path: Path) -> None:
    with FakeModel() as fm:
        rc, lines = run_cli(fm, "hello [[id:abc]]", tmp_path)
        result = result_of(lines)
        assert rc == 0 and result["is_error"] is False
        assert result["result"] == "answer for abc"
        assert len(fm.requests) == 1 and fm.requests[0]["stream"] is True
        assert "hello [[id:abc]]" in fm.user_texts(0)
        assert ("POST", "/v1/messages?beta=true") in fm.log


@needs_cli
def test_cli_bash_tool_round_trip(tmp_path: Path) -> None:
    with FakeModel() as fm:
        fm.enqueue_tool_use("Bash", {"command": "echo hi", "description": "say hi"})
        fm.enqueue_text("all done")
        rc, lines = run_cli(fm, "run it", tmp_path)
        assert rc == 0 and result_of(lines)["result"] == "all done"
        assert len(fm.requests) == 2
        last = fm.requests[1]["messages"][-1]
        assert last["role"] == "user"
        tool_results = [b for b in last["content"] if b.get("type") == "tool_result"]
        assert len(tool_results) == 1 and tool_results[0]["content"] == "hi"
        assert tool_results[0]["is_error"] is False
        assert "hi" in fm.user_texts(1)


@needs_cli
def test_cli_api_error_gives_is_error(tmp_path: Path) -> None:
    with FakeModel() as fm:
        fm.enqueue_error(500, "api_error", "boom")
        rc, lines = run_cli(fm, "fail please", tmp_path)
        result = result_of(lines)
        assert rc == 1 and result["is_error"] is True
        assert result["api_error_status"] == 500 and "boom" in result["result"]
        assert len(fm.requests) == 1  # x-should-retry: false + CLAUDE_CODE_MAX_RETRIES=1


@needs_cli
def test_cli_parallel_processes_each_get_their_answer(tmp_path: Path) -> None:
    with FakeModel() as fm:
        fm.set_responder(lambda body: Reply(delay=2.0))  # keep the requests overlapping, even on a loaded machine
        results: dict[str, str] = {}

        def one(key: str) -> None:
            _, lines = run_cli(fm, f"question [[id:{key}]]", tmp_path / key)
            results[key] = result_of(lines)["result"]

        threads = [threading.Thread(target=one, args=(f"t{i}",)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == {f"t{i}": f"answer for t{i}" for i in range(3)}
        assert fm.max_active >= 2 and fm.active == 0
