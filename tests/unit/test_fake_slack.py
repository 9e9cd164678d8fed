"""The fake Slack, checked with the REAL slack_bolt AsyncApp + AsyncSocketModeHandler and AsyncWebClient."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakes.fake_slack import FakeSlack, NotConnectedError

BOT_TOKEN = "xoxb-test"
APP_TOKEN = "xapp-test"


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack() as f:
        yield f


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def api(fake: FakeSlack, method: str, token: str = BOT_TOKEN, **kwargs: Any) -> Any:
    """One Web API call through a fresh real AsyncWebClient."""

    async def go() -> Any:
        client = AsyncWebClient(token=token, base_url=fake.api_url)
        return await getattr(client, method)(**kwargs)

    return asyncio.run(go())


class BoltInThread:
    """The real Bolt app + aiohttp Socket Mode handler on their own loop in a thread (like a bot process)."""

    def __init__(self, fake: FakeSlack, register: Callable[[AsyncApp], None], ping_interval: float = 10) -> None:
        self.fake = fake
        self.register = register
        self.ping_interval = ping_interval
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="bolt", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as e:
            self._error = e
            self._ready.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = AsyncApp(client=AsyncWebClient(token=BOT_TOKEN, base_url=self.fake.api_url))
        self.register(app)
        handler = AsyncSocketModeHandler(app, APP_TOKEN, ping_interval=self.ping_interval)
        try:
            await handler.connect_async()
            self._ready.set()
            await self._stop.wait()
        finally:
            await handler.close_async()

    def __enter__(self) -> BoltInThread:
        self._thread.start()
        assert self._ready.wait(10), "Bolt did not start"
        if self._error is not None:
            raise self._error
        self.fake.wait_connected(5)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        assert not self._thread.is_alive(), "Bolt thread did not stop"
        if self._error is not None:
            raise self._error


def mention_replier(seen: list[dict[str, Any]]) -> Callable[[AsyncApp], None]:
    """app_mention -> "hi" in the thread; `message` listener registered so message events are acked."""

    def register(app: AsyncApp) -> None:
        @app.event("app_mention")
        async def on_mention(event: dict[str, Any], say: Any, request: Any) -> None:
            seen.append({"type": "app_mention", "event": event, "headers": dict(request.headers)})
            await say(text="hi", thread_ts=event.get("thread_ts") or event["ts"])

        @app.event("message")
        async def on_message(event: dict[str, Any], request: Any) -> None:
            seen.append({"type": "message", "event": event, "headers": dict(request.headers)})

    return register


# ---- Socket Mode with the real Bolt stack -----------------------------------------------------------


def test_mention_gets_threaded_reply_and_both_envelopes_are_acked(fake: FakeSlack) -> None:
    seen: list[dict[str, Any]] = []
    with BoltInThread(fake, mention_replier(seen)):
        # Bolt's start-up: only apps.connections.open (app token); auth.test waits for the first event
        assert [c.method for c in fake.calls] == ["apps.connections.open"]
        assert fake.calls[0].token_kind == "app"
        assert "xapp-test" not in repr(fake.calls[0])

        ts = fake.user_says("C1", "U1", "hello", mention=True)
        envelopes = fake.envelopes_for(ts)
        assert [e.payload["event"]["type"] for e in envelopes] == ["message", "app_mention"]
        assert envelopes[0].payload["event_id"] != envelopes[1].payload["event_id"]
        for env in envelopes:
            _t, payload = fake.wait_ack(env.envelope_id)
            assert payload is None  # Bolt acks events with {"envelope_id": ...} only
        reply = fake.wait_for(lambda: fake.bot_messages("C1", thread_ts=ts))
        assert [m["text"] for m in reply] == ["hi"]
        assert reply[0]["thread_ts"] == ts
        assert fake.thread("C1", ts)[0]["text"] == "<@UBOT> hello"
        assert fake.thread("C1", ts)[0]["reply_count"] == 1
        fake.wait_for(lambda: len(seen) == 2)
        # first deliveries carry retry_attempt 0, so Bolt sets x-slack-retry-num "0" on EVERY event
        assert all(s["headers"].get("x-slack-retry-num") == ["0"] for s in seen)
        methods = [c.method for c in fake.calls]
        assert methods[0] == "apps.connections.open" and methods[-1] == "chat.postMessage"
        # auth.test once per envelope in flight before the first answer is cached (here 1 or 2)
        assert set(methods[1:-1]) == {"auth.test"}
        assert fake.calls_of("chat.postMessage")[0].token_kind == "bot"
        auth_tests = fake.count("auth.test")
        ts = fake.user_says("C1", "U1", "again", mention=True)
        fake.wait_for(lambda: fake.bot_messages("C1", thread_ts=ts))
        assert fake.count("auth.test") == auth_tests  # cached from then on


def test_failed_auth_test_drops_the_event_but_acks_it(fake: FakeSlack) -> None:
    seen: list[dict[str, Any]] = []
    with BoltInThread(fake, mention_replier(seen)):
        fake.fail_next("auth.test", status=429, retry_after=1, count=2)
        ts = fake.user_says("C1", "U1", "hello", mention=True)
        acks = [fake.wait_ack(e.envelope_id)[1] for e in fake.envelopes_for(ts)]
        print(f"\nack payloads when auth.test fails: {acks}")
        time.sleep(0.2)
        assert seen == [] and fake.bot_messages("C1") == []
        ts = fake.user_says("C1", "U1", "hello again", mention=True)
        fake.wait_for(lambda: fake.bot_messages("C1", thread_ts=ts))


def test_thread_reply_event_and_retry_headers(fake: FakeSlack) -> None:
    seen: list[dict[str, Any]] = []
    with BoltInThread(fake, mention_replier(seen)):
        parent = fake.user_says("C1", "U1", "start", mention=True)
        fake.wait_for(lambda: fake.bot_messages("C1", thread_ts=parent))
        reply_ts = fake.user_says("C1", "U2", "more", thread_ts=parent)
        env = fake.envelopes_for(reply_ts)[0]
        fake.wait_ack(env.envelope_id)
        event = env.payload["event"]
        assert event["thread_ts"] == parent and event["ts"] == reply_ts and event["parent_user_id"] == "U1"
        assert [m["ts"] for m in fake.thread("C1", parent)][-1] == reply_ts

        again = fake.redeliver(env.envelope_id)
        fake.wait_ack(again)
        retried = fake.wait_for(lambda: [s for s in seen if s["headers"].get("x-slack-retry-num") == ["1"]])
        assert retried[0]["headers"]["x-slack-retry-reason"] == ["timeout"]
        assert fake.envelopes[-1].payload["event_id"] == env.payload["event_id"]


def test_event_without_listener_is_never_acked(fake: FakeSlack) -> None:
    def register(app: AsyncApp) -> None:
        @app.event("app_mention")
        async def on_mention(event: dict[str, Any]) -> None:
            pass

    with BoltInThread(fake, register):
        ts = fake.user_says("C1", "U1", "hello", mention=True)
        message_env, mention_env = fake.envelopes_for(ts)
        fake.wait_ack(mention_env.envelope_id)
        with pytest.raises(AssertionError, match="not acked"):
            fake.wait_ack(message_env.envelope_id, timeout=0.5)


def test_slash_command_block_action_reaction(fake: FakeSlack) -> None:
    reactions: list[dict[str, Any]] = []

    def register(app: AsyncApp) -> None:
        @app.command("/claude")
        async def on_command(ack: Any, respond: Any, command: dict[str, Any]) -> None:
            await ack(f"got {command['text']}")
            await respond(text="later", response_type="in_channel")

        @app.action("approve")
        async def on_action(ack: Any, respond: Any, body: dict[str, Any]) -> None:
            await ack()
            await respond(text="approved", replace_original=True)

        @app.event("reaction_added")
        async def on_reaction(event: dict[str, Any]) -> None:
            reactions.append(event)

    with BoltInThread(fake, register):
        eid = fake.slash_command(text="do it", user="U1", channel="C1")
        _t, payload = fake.wait_ack(eid)
        assert payload == {"text": "got do it"}
        fake.wait_for(lambda: fake.responses)
        assert [m["text"] for m in fake.bot_messages("C1")] == ["later"]

        posted = api(fake, "chat_postMessage", channel="C1", text="approve?")
        eid = fake.block_action("U1", "C1", posted["ts"], "approve", value="yes")
        fake.wait_ack(eid)
        fake.wait_for(lambda: fake.messages("C1")[-1]["text"] == "approved")

        eid = fake.reaction_added("U1", "C1", posted["ts"], "eyes")
        fake.wait_ack(eid)
        assert fake.reactions("C1", posted["ts"]) == {"eyes"}
        fake.wait_for(lambda: reactions)
        assert reactions[0]["item"] == {"type": "message", "channel": "C1", "ts": posted["ts"]}


def test_bot_messages_echo_back_when_enabled_and_bolt_drops_them() -> None:
    seen: list[dict[str, Any]] = []
    with FakeSlack(echo_bot_messages=True) as fake, BoltInThread(fake, mention_replier(seen)):
        ts = fake.user_says("C1", "U1", "hello", mention=True)
        (reply,) = fake.wait_for(lambda: fake.bot_messages("C1", thread_ts=ts))
        echo = fake.wait_for(lambda: fake.envelopes_for(reply["ts"]))[0]
        assert echo.payload["event"]["bot_id"] == "BBOT" and echo.payload["event"]["user"] == "UBOT"
        fake.wait_ack(echo.envelope_id)
        time.sleep(0.1)
        # Bolt's IgnoringSelfEvents middleware (on by default) acks the bot's own message and drops it
        assert [s["type"] for s in seen] == ["message", "app_mention"] or [s["type"] for s in seen] == [
            "app_mention",
            "message",
        ]


@pytest.mark.parametrize("how", ["close_frame", "disconnect_message", "abort", "freeze"])
def test_handler_reconnects(fake: FakeSlack, how: str) -> None:
    seen: list[dict[str, Any]] = []
    # abort and freeze are noticed only by the client's session monitor / heartbeat, paced by ping_interval
    with BoltInThread(fake, mention_replier(seen), ping_interval=1):
        t0 = time.monotonic()
        if how == "close_frame":
            assert fake.drop_connections() == 1
        elif how == "abort":
            assert fake.drop_connections(close_frame=False) == 1
        elif how == "freeze":
            assert fake.freeze_connections() == 1
            assert fake.connections == 0
        else:
            assert fake.send_disconnect() == 1
        fake.wait_connected(10, total=2)
        elapsed = time.monotonic() - t0
        print(f"\nreconnect after {how}: {elapsed * 1000:.1f} ms")
        assert fake.count("apps.connections.open") == 2
        fake.wait_for(lambda: fake.connections == 1, what="old socket gone")
        ts = fake.user_says("C1", "U1", "still there?", mention=True)
        fake.wait_for(lambda: fake.bot_messages("C1", thread_ts=ts))


def test_no_connection_means_no_delivery(fake: FakeSlack) -> None:
    with pytest.raises(NotConnectedError):
        fake.user_says("C1", "U1", "anyone?", wait=0.05)
    assert fake.messages("C1")[0]["text"] == "anyone?"  # the post exists; the event went nowhere


BOT_SCRIPT = """
import asyncio, os
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

async def main():
    client = AsyncWebClient(token=os.environ["SLACK_BOT_TOKEN"], base_url=os.environ["SLACK_API_URL"])
    app = AsyncApp(client=client)

    @app.event("app_mention")
    async def on_mention(event, say):
        await say(text="hi", thread_ts=event.get("thread_ts") or event["ts"])

    @app.event("message")
    async def on_message(event):
        pass

    await AsyncSocketModeHandler(app, os.environ["SLACK_APP_TOKEN"]).start_async()

asyncio.run(main())
"""


@contextlib.contextmanager
def bolt_process(fake: FakeSlack, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The same kind of bot in a separate process, reaching the fake only over the network."""
    script = tmp_path / "bot.py"
    script.write_text(BOT_SCRIPT)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **fake.env()}
    with (tmp_path / "bot.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(script)], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    try:
        fake.wait_connected(30)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("where", ["thread", "process"])
def test_envelope_latency_on_loopback(fake: FakeSlack, tmp_path: Path, where: str) -> None:
    seen: list[dict[str, Any]] = []
    runner = BoltInThread(fake, mention_replier(seen)) if where == "thread" else bolt_process(fake, tmp_path)
    with runner:
        ack_ms, post_ms = [], []
        for i in range(51):
            ts = fake.user_says("C1", "U1", f"ping {i}", mention=True)
            mention_env = fake.envelopes_for(ts)[1]
            t_ack, _ = fake.wait_ack(mention_env.envelope_id)
            fake.wait_for(functools.partial(fake.bot_messages, "C1", thread_ts=ts))
            post = next(c for c in fake.calls_of("chat.postMessage") if c.params.get("thread_ts") == ts)
            ack_ms.append((t_ack - mention_env.t) * 1000)
            post_ms.append((post.t - mention_env.t) * 1000)
        first_ack, first_post = ack_ms.pop(0), post_ms.pop(0)  # the first one includes auth.test
        ack_med, post_med = statistics.median(ack_ms), statistics.median(post_ms)
        print(
            f"\nloopback, Bolt in a {where}: first event ack {first_ack:.2f} ms, post {first_post:.2f} ms; "
            f"next 50: envelope->ack median {ack_med:.2f} ms (max {max(ack_ms):.2f}), "
            f"envelope->chat.postMessage median {post_med:.2f} ms (max {max(post_ms):.2f})"
        )
        assert ack_med < 50 and post_med < 100


def test_fake_stops_promptly_while_a_bot_process_is_connected(fake: FakeSlack, tmp_path: Path) -> None:
    with bolt_process(fake, tmp_path):
        t0 = time.monotonic()
        fake.stop()
        assert time.monotonic() - t0 < 5


@pytest.mark.anyio
async def test_same_loop_with_async_waits(fake: FakeSlack) -> None:
    """Bolt on the test's own loop: the blocking waits would starve it, so use the async_ variants."""
    seen: list[dict[str, Any]] = []
    app = AsyncApp(client=AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url))
    mention_replier(seen)(app)
    handler = AsyncSocketModeHandler(app, APP_TOKEN)
    try:
        await handler.connect_async()
        await fake.async_wait_connected(5)
        ts = fake.user_says("C1", "U1", "hello", mention=True)
        for env in fake.envelopes_for(ts):
            await fake.async_wait_ack(env.envelope_id)
        await fake.async_wait_for(lambda: fake.bot_messages("C1", thread_ts=ts))
    finally:
        await handler.close_async()


# ---- Web API ------------------------------------------------------------------------------------------


def test_rate_limit_429_reaches_the_client(fake: FakeSlack) -> None:
    fake.fail_next("chat.postMessage", status=429, retry_after=7)
    with pytest.raises(SlackApiError) as info:
        api(fake, "chat_postMessage", channel="C1", text="x")
    assert info.value.response.status_code == 429
    assert info.value.response["error"] == "ratelimited"
    assert info.value.response.headers["Retry-After"] == "7"
    assert fake.messages("C1") == []
    assert api(fake, "chat_postMessage", channel="C1", text="x")["ok"]  # only the next call failed
    assert [c.status for c in fake.calls_of("chat.postMessage")] == [429, 200]


def test_rate_limit_retry_handler_retries(fake: FakeSlack) -> None:
    fake.fail_next("chat.postMessage", status=429, retry_after=0, count=2)

    async def go() -> Any:
        client = AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url)
        client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=2))
        return await client.chat_postMessage(channel="C1", text="x")

    assert asyncio.run(go())["ok"]
    assert fake.count("chat.postMessage") == 3


def test_server_error_error_string_and_latency(fake: FakeSlack) -> None:
    fake.fail_next("chat.update", status=503)
    with pytest.raises(SlackApiError) as info:
        api(fake, "chat_update", channel="C1", ts="1.2", text="x")
    assert info.value.response.status_code == 503
    fake.fail_next("reactions.add", error="channel_not_found")
    with pytest.raises(SlackApiError) as info:
        api(fake, "reactions_add", channel="C1", timestamp="1.2", name="eyes")
    assert info.value.response.status_code == 200 and info.value.response["error"] == "channel_not_found"

    fake.set_latency("auth.test", 0.2)
    t0 = time.monotonic()
    api(fake, "auth_test")
    assert time.monotonic() - t0 >= 0.2
    fake.set_latency("auth.test", 0)


def test_tokens(fake: FakeSlack) -> None:
    auth = api(fake, "auth_test")
    assert (auth["user_id"], auth["bot_id"], auth["team_id"], auth["user"]) == ("UBOT", "BBOT", "T1", "slackbus")
    with pytest.raises(SlackApiError, match="not_allowed_token_type"):
        api(fake, "apps_connections_open", app_token="xoxb-not-an-app-token")
    with pytest.raises(SlackApiError, match="not_allowed_token_type"):
        api(fake, "auth_test", token="xapp-test")
    with pytest.raises(SlackApiError, match="invalid_auth"):
        api(fake, "auth_test", token="bogus")
    url = api(fake, "apps_connections_open", app_token="xapp-1")["url"]
    assert url.startswith(f"ws://127.0.0.1:{fake.port}/socket?")
    with pytest.raises(SlackApiError, match="unknown_method"):
        api(fake, "api_call", api_method="nope.nothing")
    assert fake.calls[-1].method == "nope.nothing"
    assert all("xapp" not in repr(c) and "xoxb" not in repr(c) for c in fake.calls)


def test_messages_update_delete_reactions(fake: FakeSlack) -> None:
    first = api(fake, "chat_postMessage", channel="C1", text="one")
    second = api(fake, "chat_postMessage", channel="C1", text="two", blocks=[{"type": "markdown", "text": "**two**"}])
    assert first["ts"] == "1700000000.000200" and float(second["ts"]) > float(first["ts"])
    assert second["message"]["blocks"][0]["type"] == "markdown"
    assert api(fake, "chat_update", channel="C1", ts=first["ts"], text="uno")["text"] == "uno"
    with pytest.raises(SlackApiError, match="message_not_found"):
        api(fake, "chat_update", channel="C1", ts="123.456", text="x")
    api(fake, "chat_delete", channel="C1", ts=second["ts"])
    assert [m["text"] for m in fake.messages("C1")] == ["uno"]

    api(fake, "reactions_add", channel="C1", timestamp=first["ts"], name="eyes")
    with pytest.raises(SlackApiError, match="already_reacted"):
        api(fake, "reactions_add", channel="C1", timestamp=first["ts"], name="eyes")
    api(fake, "reactions_add", channel="C1", timestamp=first["ts"], name="white_check_mark")
    api(fake, "reactions_remove", channel="C1", timestamp=first["ts"], name="eyes")
    assert fake.reactions("C1", first["ts"]) == {"white_check_mark"}

    eph = api(fake, "chat_postEphemeral", channel="C1", user="U1", text="psst")
    assert fake.ephemerals[0]["text"] == "psst" and fake.ephemerals[0]["ts"] == eph["message_ts"]

    with pytest.raises(SlackApiError, match="invalid_blocks"):
        api(fake, "chat_postMessage", channel="C1", text="x", blocks=[{"type": "divider"}] * 51)
    big = api(fake, "chat_postMessage", channel="C1", text="y" * 50_000)
    assert len(big["message"]["text"]) == 40_000


def test_history_replies_users_channels(fake: FakeSlack) -> None:
    old = fake.seed_message("C1", "seeded", user="U9", ts="1690000000.000100")
    parent = api(fake, "chat_postMessage", channel="C1", text="parent")["ts"]
    api(fake, "chat_postMessage", channel="C1", text="reply", thread_ts=parent)
    top = api(fake, "chat_postMessage", channel="C1", text="newest")["ts"]

    hist = api(fake, "conversations_history", channel="C1", limit=2)
    assert [m["text"] for m in hist["messages"]] == ["newest", "parent"]
    assert hist["has_more"] and hist["messages"][1]["reply_count"] == 1
    rest = api(fake, "conversations_history", channel="C1", limit=2, cursor=hist["response_metadata"]["next_cursor"])
    assert [m["ts"] for m in rest["messages"]] == [old] and not rest["has_more"]
    assert [m["ts"] for m in api(fake, "conversations_history", channel="C1", oldest=parent)["messages"]] == [top]

    replies = api(fake, "conversations_replies", channel="C1", ts=parent)["messages"]
    assert [m["text"] for m in replies] == ["parent", "reply"]
    with pytest.raises(SlackApiError, match="thread_not_found"):
        api(fake, "conversations_replies", channel="C1", ts="1.000001")

    fake.add_user("U1", "alice", real_name="Alice A", display_name="ali")
    user = api(fake, "users_info", user="U1")["user"]
    assert (user["name"], user["real_name"], user["profile"]["display_name"]) == ("alice", "Alice A", "ali")
    assert api(fake, "users_info", user="U77")["user"]["name"] == "user-u77"
    fake.add_channel("C2", "general")
    assert api(fake, "conversations_info", channel="C2")["channel"]["name"] == "general"
    assert api(fake, "conversations_info", channel="D5")["channel"]["is_im"] is True


def test_assistant_status_cleared_by_reply(fake: FakeSlack) -> None:
    ts = fake.seed_message("C1", "question", user="U1")
    api(fake, "assistant_threads_setStatus", channel_id="C1", thread_ts=ts, status="is thinking...")
    assert fake.status("C1", ts) == "is thinking..."
    api(fake, "chat_postMessage", channel="C1", text="answer", thread_ts=ts)
    assert fake.status("C1", ts) == ""
    assert [h["status"] for h in fake.status_history] == ["is thinking...", ""]


def test_files_upload_v2_round_trip(fake: FakeSlack) -> None:
    ts = fake.seed_message("C1", "question", user="U1")
    done = api(
        fake,
        "files_upload_v2",
        channel="C1",
        thread_ts=ts,
        content="long output\n" * 100,
        filename="out.md",
        title="Output",
        initial_comment="here you go",
    )
    assert done["file"]["title"] == "Output"
    (record,) = fake.files
    assert record["content"] == ("long output\n" * 100).encode()
    assert (record["thread_ts"], record["initial_comment"], record["channel"]) == (ts, "here you go", "C1")
    (msg,) = fake.bot_messages("C1", thread_ts=ts)
    assert msg["text"] == "here you go" and msg["files"][0]["id"] == record["id"]
    assert [c.method for c in fake.calls] == ["files.getUploadURLExternal", "files.completeUploadExternal"]


def test_streaming_methods(fake: FakeSlack) -> None:
    ts = fake.seed_message("C1", "question", user="U1")

    async def go() -> None:
        client = AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url)
        stream = await client.chat_stream(channel="C1", thread_ts=ts, recipient_user_id="U1", recipient_team_id="T1")
        await stream.append(markdown_text="Hello ")
        await stream.append(markdown_text="world")
        await stream.stop()

    asyncio.run(go())
    (msg,) = fake.bot_messages("C1", thread_ts=ts)
    assert msg["text"] == "Hello world" and msg["streaming"] is False


def test_wait_for_timeout_describes_calls(fake: FakeSlack) -> None:
    api(fake, "chat_postMessage", channel="C1", text="something")
    with pytest.raises(AssertionError, match=r"chat\.postMessage .*'text': 'something'"):
        fake.wait_for(lambda: fake.bot_messages("C2"), timeout=0.05, what="a message in C2")
