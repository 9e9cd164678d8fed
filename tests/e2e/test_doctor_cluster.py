"""`slackbus doctor` with SLACKBUS_NATS_URL: the cluster as one host sees it, through a real nats-server with
JetStream and the fake Slack — the server that answered, JetStream, each stream and bucket with its counts, the
nodes' heartbeats; one sentence with the fix when no server answers, the password is wrong or JetStream is off;
the password in the address never shown."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import nats
import pytest

from bot.cluster.jetstream import NODES
from tests.e2e.test_doctor import doctor
from tests.fakes.fake_slack import FakeSlack
from tests.nats_server import NatsServer, _info
from tests.support import BotProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

PASSWORD = "pw-Zq81-secret"


def test_without_nats_doctor_says_one_host(bot_env, fake_slack):
    out = doctor(bot_env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok    one host (SLACKBUS_NATS_URL not set)" in out.stdout


async def _stale_heartbeat(url: str, node: str, age_s: float) -> None:
    """A node that stopped beating `age_s` ago, as its last put left it."""
    nc = await nats.connect(url, connect_timeout=3, allow_reconnect=False)
    try:
        kv = await nc.jetstream().key_value(NODES)
        await kv.put(node, json.dumps({"node": node, "host": "old-host", "pid": 4242, "at": time.time() - age_s,
                                       "running": 1, "queued": 0, "max_concurrent": 4}).encode())
    finally:
        await nc.close()


def test_doctor_checks_the_cluster_and_never_shows_the_password(tmp_path: Path, bot_env: dict[str, str],
                                                                fake_slack: FakeSlack) -> None:
    with NatsServer(tmp_path / "nats" / "store", extra_args=("--user", "alice", "--pass", PASSWORD)) as server:
        url = f"nats://alice:{PASSWORD}@127.0.0.1:{server.port}"
        masked = f"nats://[redacted]@127.0.0.1:{server.port}"  # the user and the password
        env = {**bot_env, "SLACKBUS_NATS_URL": url, "SLACKBUS_NODE_ID": "n1", "SLACKBUS_WARM_POOL": "0"}

        # a new server: JetStream on, nothing made yet, and that is not an error
        out = doctor(env)
        shown = out.stdout + out.stderr
        assert out.returncode == 0, shown
        assert PASSWORD not in shown
        assert re.search(rf"ok    NATS: {re.escape(masked)} answered \(nats-server \d+\.\d+\.\d+\); this host's "
                         "node id: n1", out.stdout), out.stdout
        assert "ok    JetStream: on, 0 streams in the account" in out.stdout
        for name in ("stream SLACKBUS_EVENTS", "stream SLACKBUS_WORK", "bucket slackbus_threads",
                     "bucket slackbus_nodes", "object store slackbus_sessions", "bucket slackbus_outbox"):
            assert f"note  {name}: not there yet; the first node to start creates it" in out.stdout
        assert "all good" in out.stdout

        # a node ran (it made the streams and buckets and beats), the channel has a message, one node stopped
        node = BotProcess(env, tmp_path / "n1.log").wait_ready(timeout=60)
        try:
            fake_slack.user_says("C1", "U2", "the build is green again")
            node.wait_event("cluster.connected")
            asyncio.run(_stale_heartbeat(url, "n0", 300))
            time.sleep(1.5)  # the record has the message; n1 has beaten since
            out = doctor(env)
        finally:
            node.stop()
            node.close_log()
        shown = out.stdout + out.stderr
        assert out.returncode == 0, shown
        assert PASSWORD not in shown
        assert "ok    JetStream: on, " in out.stdout
        assert "ok    stream SLACKBUS_EVENTS: 1 event in 1 channel," in out.stdout
        assert "ok    stream SLACKBUS_WORK: 0 tasks waiting" in out.stdout
        assert "ok    bucket slackbus_threads: 0 threads" in out.stdout
        assert "ok    bucket slackbus_nodes: 2 nodes" in out.stdout
        assert "ok    object store slackbus_sessions: 0 transcripts" in out.stdout
        assert "ok    bucket slackbus_outbox: 0 answers not posted yet" in out.stdout
        assert "ok    node n1 on " in out.stdout and ": alive (beat " in out.stdout
        assert "running 0 of 4, queued 0" in out.stdout and "(this host's node id)" in out.stdout
        assert "note  node n0 on old-host (pid 4242): stopped 5 min ago" in out.stdout

        # the wrong password: refused, said so, neither password shown
        wrong = f"nats://alice:not-{PASSWORD}@127.0.0.1:{server.port}"
        out = doctor({**env, "SLACKBUS_NATS_URL": wrong})
        shown = out.stdout + out.stderr
        assert out.returncode == 1, shown
        assert PASSWORD not in shown
        assert f"FAIL  NATS: the server at {masked} refused the user and password" in out.stdout
        assert "SLACKBUS_NATS_URL (nats://USER:PASSWORD@HOST:4222)" in out.stdout

        # the server stopped: one sentence with the fix, a non-zero exit, quickly
        server.stop()
        started = time.monotonic()
        out = doctor(env)
        took = time.monotonic() - started
        shown = out.stdout + out.stderr
        assert out.returncode == 1, shown
        assert PASSWORD not in shown
        assert (f"FAIL  NATS: no server answered at {masked}\n      → start nats-server with JetStream "
                "(nats-server -js") in out.stdout
        assert "Traceback" not in shown
        assert "1 to fix" in out.stdout
        assert took < 30, took


class _NoJetStream(NatsServer):
    """A nats-server started without -js."""

    def command(self) -> list[str]:
        return [a for a in super().command() if a not in ("-js",)]

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while _info(self.port, timeout=1.0) is None:
            assert time.monotonic() < deadline, self.log_tail()
            time.sleep(0.02)


def test_doctor_says_jetstream_is_off(tmp_path: Path, bot_env: dict[str, str], fake_slack: FakeSlack) -> None:
    with _NoJetStream(tmp_path / "nats" / "store") as server:
        out = doctor({**bot_env, "SLACKBUS_NATS_URL": server.url})
        assert out.returncode == 1, out.stdout + out.stderr
        assert f"FAIL  JetStream: off at {server.url}" in out.stdout
        assert "start nats-server with -js" in out.stdout
