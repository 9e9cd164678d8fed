"""The fake Slack with several Socket Mode connections, as real Slack serves an app that runs on several hosts:
each envelope goes to one open socket at random, one event can reach several sockets, an envelope is acked on
the socket it went out on, and (opt-in) an envelope nobody acked is retried on another socket."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.fake_slack import FakeSlack, NotConnectedError
from tests.unit.test_fake_slack import BoltInThread, api, mention_replier

APP_TOKEN = "xapp-test"


class RawSocket:
    """A bare Socket Mode client on its own loop in a thread: opens a socket through apps.connections.open,
    records every envelope it receives and acks it (unless ack=False)."""

    def __init__(self, fake: FakeSlack, *, ack: bool = True) -> None:
        self.fake = fake
        self.ack = ack
        self.number = 0  # the fake's number for this socket, known once connected
        self.received: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="raw-socket", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as e:
            self._error = e
            self._ready.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with aiohttp.ClientSession() as session:
            opened = await session.post(
                self.fake.api_url + "apps.connections.open", headers={"Authorization": f"Bearer {APP_TOKEN}"}
            )
            url = (await opened.json())["url"]
            async with session.ws_connect(url) as ws:
                self._ws = ws
                hello = await ws.receive_json(timeout=5)
                assert hello["type"] == "hello"
                reader = asyncio.create_task(self._read(ws))
                self._ready.set()
                await self._stop.wait()
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            with self._cond:
                self.received.append(data)
                self._cond.notify_all()
            if self.ack and "envelope_id" in data:
                await ws.send_str(json.dumps({"envelope_id": data["envelope_id"]}))

    def send_ack(self, envelope_id: str) -> None:
        """Ack an envelope on this socket, whichever socket it went to."""
        assert self._loop is not None and self._ws is not None
        ws = self._ws
        fut = asyncio.run_coroutine_threadsafe(ws.send_str(json.dumps({"envelope_id": envelope_id})), self._loop)
        fut.result(5)

    def envelope_ids(self) -> list[str]:
        with self._cond:
            return [m["envelope_id"] for m in self.received if "envelope_id" in m]

    def __enter__(self) -> RawSocket:
        before = set(self.fake.connections_open())
        self._thread.start()
        assert self._ready.wait(10), "raw socket did not connect"
        if self._error is not None:
            raise self._error
        # the fake numbers sockets in the order it accepts them; this one is the one that was not open before
        new = self.fake.wait_for(lambda: set(self.fake.connections_open()) - before, timeout=5, what="the new socket")
        (self.number,) = new
        return self

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        assert not self._thread.is_alive(), "raw socket thread did not stop"

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack(seed=7) as f:
        yield f


def connected(fake: FakeSlack, n: int, **kwargs: Any) -> list[RawSocket]:
    """Open `n` more raw sockets (one after the other, so their numbers ascend)."""
    before = fake.connections
    socks = [RawSocket(fake, **kwargs).__enter__() for _ in range(n)]
    assert fake.wait_connected(n=before + n, timeout=5) == before + n
    return socks


def close_all(socks: list[RawSocket]) -> None:
    for s in socks:
        s.close()


def event_id_of(fake: FakeSlack, envelope_id: str) -> str:
    (env,) = [e for e in fake.envelopes if e.envelope_id == envelope_id]
    return str(env.payload["event_id"])


def test_one_socket_gets_every_envelope(fake: FakeSlack) -> None:
    (sock,) = connected(fake, 1)
    try:
        ids = [fake.send_event({"type": "reaction_added", "reaction": "eyes", "item": {}}) for _ in range(10)]
        for envelope_id in ids:
            fake.wait_ack(envelope_id)
        assert [e.connection for e in fake.envelopes] == [sock.number] * 10
        assert sock.envelope_ids() == ids
        assert fake.connections_open() == [sock.number]
    finally:
        sock.close()


def test_each_envelope_goes_to_one_socket_at_random_and_is_acked_there(fake: FakeSlack) -> None:
    socks = connected(fake, 3)
    try:
        assert fake.connections_open() == [1, 2, 3]
        ids = [fake.send_event({"type": "reaction_added", "reaction": "eyes", "item": {}}) for _ in range(60)]
        for envelope_id in ids:
            fake.wait_ack(envelope_id)
        by_socket = {s.number: s.envelope_ids() for s in socks}
        # every envelope reached exactly one socket, the one the fake recorded
        assert sorted(i for got in by_socket.values() for i in got) == sorted(ids)
        for env in fake.envelopes:
            assert env.envelope_id in by_socket[env.connection]
        assert all(len(got) >= 5 for got in by_socket.values()), {n: len(got) for n, got in by_socket.items()}
        assert {n: len(fake.envelopes_on(n)) for n in by_socket} == {n: len(got) for n, got in by_socket.items()}
        assert fake.misdirected_acks == []
    finally:
        close_all(socks)


def test_the_seed_makes_the_choice_repeatable() -> None:
    def sequence(seed: int) -> list[int]:
        with FakeSlack(seed=seed) as fake:
            socks = connected(fake, 3)
            try:
                for _ in range(20):
                    fake.send_event({"type": "reaction_added", "reaction": "eyes", "item": {}})
                return [e.connection for e in fake.envelopes]
            finally:
                close_all(socks)

    assert sequence(1) == sequence(1)
    assert sequence(1) != sequence(2)


def test_to_sends_to_one_socket_or_to_all(fake: FakeSlack) -> None:
    a, b = connected(fake, 2)
    try:
        only_b = fake.send_event({"type": "reaction_added", "reaction": "eyes", "item": {}}, to=b.number)
        fake.wait_ack(only_b)
        assert b.envelope_ids() == [only_b] and a.envelope_ids() == []

        ts = fake.user_says("C1", "U1", "hello", mention=True, to="all")
        envs = fake.envelopes_for(ts)
        assert len(envs) == 4  # the message and the app_mention, each on both sockets
        for env in envs:
            fake.wait_ack(env.envelope_id)
        for kind in ("message", "app_mention"):
            copies = [e for e in envs if e.payload["event"]["type"] == kind]
            assert sorted(e.connection for e in copies) == [a.number, b.number]
            assert len({e.payload["event_id"] for e in copies}) == 1  # one event...
            assert len({e.envelope_id for e in copies}) == 2  # ...in two envelopes
            assert {e.retry_attempt for e in copies} == {0}
        assert fake.messages("C1")[-1]["text"].endswith("hello")  # stored once
        assert len(fake.messages("C1")) == 1
    finally:
        close_all([a, b])


def test_a_closed_socket_cannot_be_chosen(fake: FakeSlack) -> None:
    a, b = connected(fake, 2)
    try:
        a.close()
        fake.wait_for(lambda: fake.connections_open() == [b.number], timeout=5, what="socket a gone")
        with pytest.raises(NotConnectedError):
            fake.send_event({"type": "reaction_added", "reaction": "eyes", "item": {}}, to=a.number, wait=0.05)
        ids = [fake.send_event({"type": "reaction_added", "reaction": "eyes", "item": {}}) for _ in range(5)]
        fake.wait_for(lambda: len(b.envelope_ids()) == len(ids), timeout=5, what="5 envelopes on socket b")
        assert b.envelope_ids() == ids
    finally:
        close_all([a, b])


def test_duplicate_to_all_and_redeliver_to_another_socket(fake: FakeSlack) -> None:
    a, b, c = connected(fake, 3)
    try:
        first = fake.send_event({"type": "reaction_added", "reaction": "eyes", "item": {}}, to=a.number)
        fake.wait_ack(first)
        event_id = event_id_of(fake, first)

        copies = fake.duplicate_to_all(first)
        assert len(copies) == 3 and first not in copies
        for envelope_id in copies:
            fake.wait_ack(envelope_id)
        dup = [e for e in fake.envelopes if e.envelope_id in copies]
        assert sorted(e.connection for e in dup) == [a.number, b.number, c.number]
        assert {e.payload["event_id"] for e in dup} == {event_id} and {e.retry_attempt for e in dup} == {0}

        retries = fake.duplicate_to_all(first, as_retry=True)
        assert {e.retry_attempt for e in fake.envelopes if e.envelope_id in retries} == {1}
        assert {e.retry_reason for e in fake.envelopes if e.envelope_id in retries} == {"timeout"}

        again = fake.redeliver(first, to="other")
        fake.wait_ack(again)
        (env,) = [e for e in fake.envelopes if e.envelope_id == again]
        assert env.connection != a.number and env.payload["event_id"] == event_id and env.retry_attempt == 2
        assert len(fake.envelopes_for_event(event_id)) == 1 + 3 + 3 + 1
    finally:
        close_all([a, b, c])


def test_an_ack_on_another_socket_is_listed_and_with_strict_acks_ignored() -> None:
    with FakeSlack(strict_acks=True) as fake:
        a, b = connected(fake, 2, ack=False)
        try:
            envelope_id = fake.send_event({"type": "reaction_added", "reaction": "eyes", "item": {}}, to=a.number)
            b.send_ack(envelope_id)
            fake.wait_for(lambda: fake.misdirected_acks, timeout=5, what="the ack on the wrong socket")
            assert fake.misdirected_acks == [(envelope_id, b.number)] and envelope_id not in fake.acks
            a.send_ack(envelope_id)
            fake.wait_ack(envelope_id)
            assert [e.envelope_id for e in fake.acked_envelopes()] == [envelope_id]
        finally:
            close_all([a, b])


def test_by_default_an_ack_on_another_socket_counts(fake: FakeSlack) -> None:
    a, b = connected(fake, 2, ack=False)
    try:
        envelope_id = fake.send_event({"type": "reaction_added", "reaction": "eyes", "item": {}}, to=a.number)
        b.send_ack(envelope_id)  # slack_sdk acks on its current socket, which may be newer than the envelope's
        fake.wait_ack(envelope_id)
        assert fake.misdirected_acks == [(envelope_id, b.number)]
    finally:
        close_all([a, b])


def test_an_unacked_event_is_retried_on_another_socket() -> None:
    with FakeSlack(seed=3, retry_unacked_after=0.2) as fake:
        silent = RawSocket(fake, ack=False).__enter__()
        (live,) = connected(fake, 1)
        try:
            first = fake.send_event({"type": "reaction_added", "reaction": "eyes", "item": {}}, to=silent.number)
            event_id = event_id_of(fake, first)
            retry = fake.wait_for(lambda: fake.envelopes_for_event(event_id)[1:], timeout=5, what="the retry")[0]
            assert retry.connection == live.number and retry.retry_attempt == 1 and retry.retry_reason == "timeout"
            assert retry.envelope_id != first
            fake.wait_ack(retry.envelope_id)
            assert first not in fake.acks

            # a socket that goes away with an envelope unacked: the retry goes to the socket still open
            second = fake.send_event({"type": "reaction_added", "reaction": "eyes", "item": {}}, to=silent.number)
            silent.close()
            second_id = event_id_of(fake, second)
            retry = fake.wait_for(lambda: fake.envelopes_for_event(second_id)[1:], timeout=5, what="the retry")[0]
            assert retry.connection == live.number and retry.retry_attempt == 1
            fake.wait_ack(retry.envelope_id)
        finally:
            close_all([silent, live])


def test_unacked_events_are_retried_three_times_at_most() -> None:
    with FakeSlack(retry_unacked_after=0.05) as fake:
        (silent,) = connected(fake, 1, ack=False)
        try:
            first = fake.send_event({"type": "reaction_added", "reaction": "eyes", "item": {}})
            event_id = event_id_of(fake, first)
            envs = fake.wait_for(lambda: [e for e in fake.envelopes_for_event(event_id) if e.retry_attempt == 3],
                                 timeout=5, what="the third retry")
            assert len(envs) == 1
            # a later event, sent after the last retry's deadline passed, comes after no fourth retry
            fake.wait_for(lambda: fake.envelopes_for_event(event_id)[-1].t + 0.2 < time.monotonic(), timeout=5)
            marker = fake.send_event({"type": "reaction_added", "reaction": "ok", "item": {}})
            fake.wait_for(lambda: marker in silent.envelope_ids(), timeout=5)
            assert [e.retry_attempt for e in fake.envelopes_for_event(event_id)] == [0, 1, 2, 3]
        finally:
            silent.close()


def test_a_socket_told_to_disconnect_gets_nothing_new_while_another_is_open(fake: FakeSlack) -> None:
    old = connected(fake, 2)
    try:
        assert fake.send_disconnect() == 2
        new = RawSocket(fake).__enter__()
        ids = [fake.send_event({"type": "reaction_added", "reaction": "eyes", "item": {}}) for _ in range(10)]
        assert {e.connection for e in fake.envelopes if e.envelope_id in ids} == {new.number}
        new.close()
        fake.wait_for(lambda: new.number not in fake.connections_open(), timeout=5, what="the new socket gone")
        later = fake.send_event({"type": "reaction_added", "reaction": "eyes", "item": {}})
        (env,) = [e for e in fake.envelopes if e.envelope_id == later]
        assert env.connection in {s.number for s in old}  # only draining sockets left: one of them gets it
    finally:
        close_all(old)


def test_the_bots_own_posts_are_echoed_to_a_random_socket() -> None:
    with FakeSlack(seed=5, echo_bot_messages=True) as fake:
        socks = connected(fake, 3)
        try:
            posted = [api(fake, "chat_postMessage", channel="C1", text=f"note {i}")["ts"] for i in range(20)]
            fake.wait_for(lambda: len(fake.envelopes) == 20, timeout=5, what="20 echoes")
            echoes = fake.envelopes
            assert sorted(e.payload["event"]["ts"] for e in echoes) == sorted(posted)
            assert len({e.connection for e in echoes}) > 1
        finally:
            close_all(socks)


def test_two_bolt_apps_share_the_events_and_each_mention_is_answered_once(fake: FakeSlack) -> None:
    seen: list[dict[str, Any]] = []
    with BoltInThread(fake, mention_replier(seen)), BoltInThread(fake, mention_replier(seen)):
        fake.wait_connected(n=2, timeout=5)
        threads = [fake.user_says("C1", "U1", f"question {i}", mention=True) for i in range(10)]
        for ts in threads:
            fake.wait_for(functools.partial(fake.bot_messages, "C1", thread_ts=ts), timeout=10, what=f"answer in {ts}")
        for env in fake.envelopes:
            fake.wait_ack(env.envelope_id)
        assert all(len(fake.bot_messages("C1", thread_ts=ts)) == 1 for ts in threads)
        assert len({e.connection for e in fake.envelopes}) == 2  # both apps got events
