"""Several slackbus nodes on one machine, for the cluster tests and bench: a real nats-server with JetStream, the
fake Slack (each event to one socket at random, as Slack does), the fake model, and N `python -m bot run` nodes,
each with its own SLACKBUS_HOME and HOME (so a node has only the sessions it made or restored) and the same work
folder (paths equal across nodes, as the README asks of real hosts)."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from tests.fakes.fake_model import FakeModel
from tests.fakes.fake_slack import FakeSlack
from tests.nats_server import NatsServer
from tests.support import BotProcess, fake_environment


class Cluster:
    def __init__(self, root: Path, nats: NatsServer, slack: FakeSlack, model: FakeModel, **env: str) -> None:
        self.root = root
        self.nats = nats
        self.slack = slack
        self.model = model
        self.env = env
        self.nodes: dict[str, BotProcess] = {}
        self.socket_of: dict[str, int] = {}  # node → the fake Slack's number of its socket
        (root / "work").mkdir(exist_ok=True)

    def node_env(self, name: str) -> dict[str, str]:
        home = self.root / name
        home.mkdir(exist_ok=True)
        return {
            **fake_environment(home, self.slack, self.model),
            "SLACKBUS_WORKDIR": str(self.root / "work"),
            "SLACKBUS_NATS_URL": self.nats.url,
            "SLACKBUS_NODE_ID": name,
            "SLACKBUS_MAX_CONCURRENT": "4",
            "SLACKBUS_MAX_PROCESSES": "6",
            "SLACKBUS_WARM_POOL": "0",
            "SLACKBUS_RUN_TIMEOUT": "120",
            **self.env,
        }

    def start(self, name: str) -> BotProcess:
        before = set(self.slack.connections_open())
        bot = BotProcess(self.node_env(name), self.root / f"{name}.{len(self.nodes)}.log")
        self.nodes[name] = bot.wait_ready(timeout=60)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            new = set(self.slack.connections_open()) - before
            if new:
                self.socket_of[name] = max(new)
                break
            time.sleep(0.02)
        return bot

    def kill(self, name: str) -> None:
        """kill -9 of the node and everything it started (a host that dies takes its processes with it)."""
        bot = self.nodes[name]
        with suppress(ProcessLookupError):
            os.killpg(bot.proc.pid, signal.SIGKILL)
        bot.proc.wait(timeout=10)
        self.socket_of.pop(name, None)

    def alive(self) -> list[str]:
        return [n for n, b in self.nodes.items() if b.proc.poll() is None]

    def events(self, name: str) -> list[dict[str, Any]]:
        """Every node's log events of that name, each with the name of the node that logged it ("at")."""
        return [{**e, "at": node} for node, bot in self.nodes.items() for e in bot.events(name)]

    def runner_of(self, channel: str, ts: str, timeout: float = 30.0) -> str:
        """The node that took the task of message `ts`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node, bot in self.nodes.items():
                if any(e.get("channel") == channel and e.get("ts") == ts for e in bot.events("cluster.taken")):
                    return node
            time.sleep(0.02)
        raise AssertionError(f"no node took {ts} within {timeout} s")

    def stop(self) -> None:
        for bot in self.nodes.values():
            if bot.proc.poll() is None:
                bot.stop()
            bot.close_log()

    def work_left(self) -> dict[str, tuple[int, int]]:
        """Each work consumer's (waiting, taken but not acked) tasks: all (0, 0) once every task is done."""
        import asyncio

        import nats

        async def read() -> dict[str, tuple[int, int]]:
            nc = await nats.connect(self.nats.url)
            try:
                js = nc.jetstream()
                out = {}
                for info in await js.consumers_info("SLACKBUS_WORK"):
                    out[info.name] = (info.num_pending or 0, info.num_ack_pending or 0)
                return out
            finally:
                await nc.close()

        return asyncio.run(read())

    def wait_work_done(self, timeout: float = 15.0) -> dict[str, tuple[int, int]]:
        """Until every work consumer has nothing waiting and nothing unacked (a task is acked just after its
        answer is posted), at most `timeout`; the last reading."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.work_left()
            if set(left.values()) <= {(0, 0)} or time.monotonic() > deadline:
                return left
            time.sleep(0.2)

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{b.tail()}" for n, b in self.nodes.items())


@contextmanager
def cluster(root: Path, nodes: int = 3, *, seed: int = 7, **env: str) -> Iterator[Cluster]:
    with NatsServer(root / "nats" / "store") as nats, FakeModel() as model, \
            FakeSlack(seed=seed, retry_unacked_after=10.0) as slack:  # Slack retries an event nobody acked
        slack.echo_bot_messages = True  # Slack sends the bot's own posts as events: every node's record has them
        c = Cluster(root, nats, slack, model, **env)
        try:
            for i in range(nodes):
                c.start(f"n{i + 1}")
            slack.wait_connected(n=nodes)
            yield c
        finally:
            c.stop()


def marker_answers(slack: FakeSlack, channel: str, thread_ts: str, marker: str) -> list[dict[str, Any]]:
    """The bot's messages in the thread that carry `marker` as a whole word (answers echo their request)."""
    pattern = re.compile(rf"(?<![\w-]){re.escape(marker)}(?![\w-])")
    return [m for m in slack.bot_messages(channel, thread_ts=thread_ts) if pattern.search(str(m.get("text") or ""))]
