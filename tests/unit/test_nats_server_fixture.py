"""The nats-server test fixture (tests/nats_server.py): a real server with JetStream whose store survives a
restart on the same port, and whose process is always reaped."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from tests.nats_server import NatsServer, find_nats_server


def test_the_binary_is_installed() -> None:
    out = subprocess.run([find_nats_server(), "--version"], capture_output=True, text=True, timeout=10, check=True)
    assert out.stdout.startswith("nats-server: v")


async def publish(url: str, subject: str, payloads: list[bytes]) -> None:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="T", subjects=["t.>"]))
        for i, data in enumerate(payloads):
            ack = await js.publish(subject, data, headers={"Nats-Msg-Id": f"m{i}"}, timeout=5)
            assert ack.stream == "T" and ack.seq == i + 1
    finally:
        await nc.close()


async def read_back(url: str, subject: str, n: int) -> list[bytes]:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(subject, durable="reader")
        msgs = await sub.fetch(n, timeout=5)
        for msg in msgs:
            await msg.ack()
        return [m.data for m in msgs]
    finally:
        await nc.close()


@pytest.mark.parametrize("how", ["restart", "kill"])
def test_jetstream_state_survives_a_restart_on_the_same_port(tmp_path: Path, how: str) -> None:
    with NatsServer(tmp_path / "nats", name="fixture-test") as server:
        url, pid = server.url, server.pid
        assert url.startswith("nats://127.0.0.1:")
        asyncio.run(publish(url, "t.one", [b"first", b"second"]))
        old = server.proc
        assert old is not None

        if how == "kill":
            assert server.kill() == -9
            assert not server.running and server.proc is None and old.returncode == -9  # reaped
            server.start()
        else:
            server.restart()
        assert old.returncode is not None  # the old server was reaped
        assert server.running and server.pid != pid and server.url == url and server.starts == 2

        assert asyncio.run(read_back(url, "t.one", 2)) == [b"first", b"second"]
    assert server.proc is None and old.poll() is not None
    assert (tmp_path / "nats" / "jetstream").is_dir()  # the store was where we said


def test_a_client_reconnects_across_a_restart_and_a_publish_id_is_not_stored_twice() -> None:
    async def go(server: NatsServer) -> None:
        nc = await nats.connect(server.url, reconnect_time_wait=0.1, max_reconnect_attempts=-1, connect_timeout=5)
        try:
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name="W", subjects=["w.>"]))
            await js.publish("w.a", b"1", headers={"Nats-Msg-Id": "e1"}, timeout=5)
            await asyncio.to_thread(server.restart)
            # the same message id again, on the reconnected client: JetStream drops it as a duplicate
            deadline = asyncio.get_running_loop().time() + 15
            while True:
                try:
                    ack = await js.publish("w.a", b"1", headers={"Nats-Msg-Id": "e1"}, timeout=2)
                    break
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError):
                    if asyncio.get_running_loop().time() >= deadline:
                        raise
                    await asyncio.sleep(0.05)
            assert ack.duplicate and ack.seq == 1
            info = await js.stream_info("W")
            assert info.state.messages == 1
        finally:
            await nc.close()

    with NatsServer() as server:
        store = server.store_dir
        asyncio.run(go(server))
    assert not store.exists()  # its own temporary dir is removed on exit
