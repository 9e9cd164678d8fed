"""Several hosts (issue 18): what the cluster path adds over one host, and completed tasks per minute with 1-3 nodes.

- latency: the same bot and settings, alone (no SLACKBUS_NATS_URL) and as 3 nodes on a real nats-server with the
  fake Slack handing each event to one socket at random. Both rigs are up at once and measured in turns, one
  sample at a time (the side that goes first alternates), so the machine's noise falls on both. A sample is a
  mention in a new thread (its 👀 and the Slack call that carried its answer) and then a follow-up in that thread
  (its warm process answers); every time runs from the first envelope of the message leaving the fake Slack. The
  rigs are made again every ROUND samples, so no node reaches its process cap. Reported per row: each side's
  distribution and the difference of the p50s (and p95s); the cluster's own log says where its time went.
- burst: BURST mentions in new threads sent at once, to 1, 2 and 3 nodes (and to one host without NATS, for
  reference), with the same SLACKBUS_MAX_CONCURRENT / SLACKBUS_MAX_PROCESSES per node: the time from the first
  envelope to the last answer, tasks per minute, and the CPU time the nodes (with their `claude` processes) and
  nats-server used. All nodes share this machine's CPUs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import answered_at, bot_share_ms, rig, sent_at, summary, wait_done, write_results
from tests.cluster_support import cluster
from tests.fakes.fake_slack import FakeSlack
from tests.support import BotProcess

TICKS = os.sysconf("SC_CLK_TCK")
# per node, equal on both sides: room for a round's threads, their warm processes and the pool without an eviction
SETTINGS = {"SLACKBUS_MAX_CONCURRENT": "4", "SLACKBUS_MAX_PROCESSES": "10", "SLACKBUS_WARM_POOL": "1",
            "SLACKBUS_RUN_TIMEOUT": "120"}
ROUND = 5  # latency samples per side before both rigs are made again
BURST = 30
ROWS = ("first_sign", "answer", "answer_bot_share", "follow_up", "follow_up_bot_share")


class Side:
    """One rig being measured: its fake Slack and its bot processes (one node, or the cluster's nodes)."""

    def __init__(self, name: str, slack: FakeSlack, bots: list[BotProcess], nats_pid: int | None = None) -> None:
        self.name = name
        self.slack = slack
        self.bots = bots
        self.nats_pid = nats_pid

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for bot in self.bots for e in bot.events(name)]

    def wait_pools(self, timeout: float = 60.0) -> None:
        """Every node has a pre-started process ready: a process was pooled after the last run that took one (a
        run may take one while it is still starting, which then is never logged as pooled)."""

        def full(bot: BotProcess) -> bool:
            ready = False
            for e in bot.events():
                if e.get("event") == "sessions.pooled":
                    ready = True
                elif e.get("event") == "run.reusing" and e.get("origin") == "pool":
                    ready = False
            return ready

        self.slack.wait_for(lambda: all(full(b) for b in self.bots), timeout=timeout, what=f"{self.name}'s pools")

    def wait_quiet(self) -> None:
        for bot in self.bots:
            bot.wait_quiet(self.slack, quiet=0.3, timeout=30)


def single_host(stack: ExitStack) -> Side:
    """One bot without SLACKBUS_NATS_URL, closed with `stack`."""
    slack, _model, bot, _root = stack.enter_context(rig(**SETTINGS))
    slack.echo_bot_messages = True  # as in the cluster rig (and on Slack): the bot's own posts come back as events
    return Side("single host", slack, [bot])


def nodes(stack: ExitStack, n: int, seed: int) -> Side:
    """`n` nodes on a nats-server (tests/cluster_support.py), closed with `stack`."""
    root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="slackbus-bench-cluster-")))
    c = stack.enter_context(cluster(root, nodes=n, seed=seed, **SETTINGS))
    return Side(f"{n} node{'s' if n > 1 else ''}", c.slack, list(c.nodes.values()), c.nats.pid)


# --- latency ---------------------------------------------------------------------------------------------------
def eyes_at(slack: FakeSlack, channel: str, ts: str) -> float:
    """When the fake Slack received the 👀 on message `ts`."""
    def found() -> float | None:
        return next((c.t for c in slack.calls if c.method == "reactions.add" and c.params.get("name") == "eyes"
                     and c.params.get("channel") == channel and c.params.get("timestamp") == ts), None)

    return slack.wait_for(found, timeout=30, what=f"👀 on {ts}")


def bot_share(side: Side, trigger_ts: str, total_ms: float) -> float:
    """`total_ms` less the time the run of `trigger_ts` waited for the `claude` CLI (bench.common.bot_share_ms, on
    the node that ran it)."""
    bot = next(b for b in side.bots if any(e.get("trigger_ts") == trigger_ts for e in b.events("run.start")))
    return bot_share_ms(bot, trigger_ts, total_ms)


def sample(side: Side, marker: str) -> dict[str, Any]:
    """A mention in a new thread, then a follow-up in it: ms from each message's first envelope."""
    slack = side.slack
    side.wait_pools()
    ts = slack.user_says("C1", "U1", f"question [[id:{marker}q]]", mention=True)
    sent = sent_at(slack, ts)
    answer = (answered_at(slack, "C1", ts, f"answer for {marker}q") - sent) * 1000
    first = eyes_at(slack, "C1", ts)
    wait_done(slack, "C1", ts)
    side.wait_quiet()
    reply = slack.user_says("C1", "U1", f"and then? [[id:{marker}f]]", thread_ts=ts)
    follow = (answered_at(slack, "C1", ts, f"answer for {marker}f") - sent_at(slack, reply)) * 1000
    wait_done(slack, "C1", reply)
    side.wait_quiet()
    return {"first_sign": (first - sent) * 1000, "answer": answer, "answer_bot_share": bot_share(side, ts, answer),
            "follow_up": follow, "follow_up_bot_share": bot_share(side, reply, follow), "ts": ts, "reply": reply}


def warm_up(side: Side, sockets: Sequence[int | None]) -> None:
    """First contact with the channel on every node (its backfill, the names) is not what is measured."""
    for i, socket in enumerate(sockets):
        ts = side.slack.user_says("C1", "U1", f"warm-up [[id:w{i}]]", mention=True, to=socket)
        answered_at(side.slack, "C1", ts, f"answer for w{i}")
        wait_done(side.slack, "C1", ts)
    side.wait_quiet()


def _wall(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def steps(side: Side, ts: str, thread_ts: str, needle: str) -> dict[str, float]:
    """Where the time to the answer of message `ts` went, in ms, from the nodes' log times (wall clock; the fake
    Slack's times are moved onto it): the envelope → the dispatcher has the job (in the cluster: after the event
    was stored in JetStream), → the task stored in the work queue (the thread's KV entry read or made, the task
    published), → a node took it (the pull), → the job in that node's queue → its run starts → asks for a process →
    has one → the CLI's result → the call that carried the answer. And the 👀 call, after the job reached the
    dispatcher (the cluster: the node that took the event in) or its queue (one host)."""
    offset = time.time() - time.monotonic()
    at: dict[str, float] = {}
    logged = sorted((e for b in side.bots for e in b.events()), key=lambda e: str(e.get("timestamp")))
    run = next(e["run_id"] for e in logged if e.get("event") == "run.start" and e.get("trigger_ts") == ts)
    for e in logged:
        if e.get("ts") == ts or str(e.get("run_id", "")).split("-")[0] == run:
            at.setdefault(str(e.get("event")), _wall(str(e["timestamp"])))
    marks = [("sent", sent_at(side.slack, ts) + offset)]
    if "cluster.placed" in at:
        marks += [("dispatched", at["dispatch.placed"]), ("queued", at["cluster.placed"]),
                  ("taken", at["cluster.taken"])]
    marks += [("accepted", at["dispatch.accepted"]), ("run_start", at["run.start"]),
              ("acquiring", at["run.acquiring"]), ("process", at.get("run.reusing", at.get("run.spawning", 0.0))),
              ("result", at["run.result"]), ("answer_call", answered_at(side.slack, "C1", thread_ts, needle) + offset)]
    out = {f"{a}_to_{b}_ms": round((tb - ta) * 1000, 2) for (a, ta), (b, tb) in itertools.pairwise(marks)}
    first = "dispatched" if "cluster.placed" in at else "accepted"
    out[f"{first}_to_first_sign_ms"] = round((eyes_at(side.slack, "C1", ts) + offset - dict(marks)[first]) * 1000, 2)
    return out


def nest(steps: dict[str, dict[str, float]]) -> dict[str, dict[str, dict[str, float]]]:
    """{side: {"new.x_ms": v}} → {side: {"new": {"x_ms": v}}}: a path the README code can follow."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for side, values in steps.items():
        for key, value in values.items():
            kind, _, step = key.partition(".")
            out.setdefault(side, {}).setdefault(kind, {})[step] = value
    return out


def added(single: Sequence[float], clustered: Sequence[float]) -> dict[str, Any]:
    """One row: both sides' distributions and what the cluster adds, p50 less p50 and p95 less p95."""
    a, b = summary(single), summary(clustered)
    out: dict[str, Any] = {"single_host_ms": a, "cluster_ms": b}
    if a.get("n") and b.get("n"):
        out["added_p50_ms"] = round(b["p50"] - a["p50"], 2)
        out["added_p95_ms"] = round(b["p95"] - a["p95"], 2)
    return out


def latency(samples: int = 25, seed: int = 7) -> dict[str, Any]:
    times: dict[str, dict[str, list[float]]] = {s: {r: [] for r in ROWS} for s in ("single", "cluster")}
    parts: dict[str, dict[str, list[float]]] = {"single": {}, "cluster": {}}
    warm = {"single": 0, "cluster": 0}
    done, rnd = 0, 0
    while done < samples:
        with ExitStack() as stack:
            sides = {"single": single_host(stack), "cluster": nodes(stack, 3, seed + rnd)}
            warm_up(sides["single"], [None])
            warm_up(sides["cluster"], sides["cluster"].slack.connections_open())  # one on each node
            for k in range(min(ROUND, samples - done)):
                for name in ("single", "cluster") if (done + k) % 2 == 0 else ("cluster", "single"):
                    side = sides[name]
                    got = sample(side, f"r{rnd}s{k}")
                    for row in ROWS:
                        times[name][row].append(got[row])
                    for kind, key, needle in (("new", got["ts"], f"answer for r{rnd}s{k}q"),
                                              ("follow_up", got["reply"], f"answer for r{rnd}s{k}f")):
                        for step, ms in steps(side, key, got["ts"], needle).items():
                            parts[name].setdefault(f"{kind}.{step}", []).append(ms)
                    runs = {e["run_id"] for e in side.events("run.start") if e.get("trigger_ts") == got["reply"]}
                    warm[name] += any(e.get("origin") == "warm" and str(e.get("run_id", "")).split("-")[0] in runs
                                      for e in side.events("run.reusing"))
            done += min(ROUND, samples - done)
            rnd += 1
    return {
        "samples": samples, "rounds": rnd, "nodes": 3, "settings": SETTINGS,
        **{row: added(times["single"][row], times["cluster"][row]) for row in ROWS},
        "follow_ups_warm": warm,
        "steps_ms_p50": nest({name: {k: summary(v)["p50"] for k, v in p.items()} for name, p in parts.items()}),
    }


# --- burst -----------------------------------------------------------------------------------------------------
def _proc_table() -> dict[int, tuple[int, float]]:
    """pid → (parent pid, CPU seconds of the process and of its children it has reaped)."""
    out: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]) / TICKS)
    return out


def tree_cpu_s(roots: Sequence[int]) -> float:
    """CPU seconds used so far by `roots` and every process under them (the live ones, and those they reaped)."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _cpu) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0.0, [r for r in roots if r in table], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += table[pid][1]
        todo.extend(children.get(pid, []))
    return total


def answer_times(slack: FakeSlack, channel: str, needles: Sequence[str]) -> list[float] | None:
    """The time of the call that first carried each answer, or None while one is missing."""
    patterns = [re.compile(re.escape(n) + r"(?!\w)") for n in needles]
    found: list[float | None] = [None] * len(needles)
    for call in slack.calls:
        if call.method not in ("chat.postMessage", "chat.update") or call.params.get("channel") != channel:
            continue
        text = str(call.params.get("text") or "")
        for i, p in enumerate(patterns):
            if found[i] is None and p.search(text):
                found[i] = call.t
    return None if any(t is None for t in found) else [t for t in found if t is not None]


def burst_once(n_nodes: int | None, tasks: int, seed: int) -> dict[str, Any]:
    """`tasks` mentions in new threads sent at once; n_nodes None: one host without NATS."""
    with ExitStack() as stack:
        side = single_host(stack) if n_nodes is None else nodes(stack, n_nodes, seed)
        side.wait_pools()
        side.wait_quiet()
        roots = [b.proc.pid for b in side.bots]
        cpu_before = tree_cpu_s(roots)
        nats_before = tree_cpu_s([side.nats_pid]) if side.nats_pid else 0.0
        tss = [side.slack.user_says("C1", f"U{1 + i % 3}", f"task {i} [[id:b{i}]]", mention=True)
               for i in range(tasks)]
        started = min(sent_at(side.slack, ts) for ts in tss)
        times = side.slack.wait_for(lambda: answer_times(side.slack, "C1", [f"answer for b{i}" for i in range(tasks)]),
                                    timeout=600, what="every answer")
        cpu = tree_cpu_s(roots) - cpu_before
        nats = tree_cpu_s([side.nats_pid]) - nats_before if side.nats_pid else 0.0
        elapsed = max(times) - started
        asked = set(tss)
        runs = [sum(1 for e in b.events("run.start") if e.get("trigger_ts") in asked) for b in side.bots]
        evictions = len(side.events("sessions.evict"))
        for ts in tss:
            wait_done(side.slack, "C1", ts, timeout=60)
        return {"s": round(elapsed, 2), "tasks_per_min": round(tasks / elapsed * 60, 1),
                "cpu_s_nodes": round(cpu, 1), "cpu_s_nats": round(nats, 2), "runs_per_node": runs,
                "evictions": evictions}


def burst(tasks: int = BURST, rounds: int = 3, seed: int = 11) -> dict[str, Any]:
    configs: list[int | None] = [1, 2, 3, None]
    got: dict[str, list[dict[str, Any]]] = {}
    for r in range(rounds):
        for n in configs if r % 2 == 0 else list(reversed(configs)):
            key = "single_host" if n is None else f"nodes_{n}"
            got.setdefault(key, []).append(burst_once(n, tasks, seed + r))
    out: dict[str, Any] = {"tasks": tasks, "rounds": rounds, "settings_per_node": SETTINGS}
    for key, runs in got.items():
        best = sorted(runs, key=lambda x: x["s"])[len(runs) // 2]  # the median round
        out[key] = {**best, "rounds_s": [x["s"] for x in runs],
                    "cpu_s_per_task": round(best["cpu_s_nodes"] / tasks, 2)}
    return out


# ---------------------------------------------------------------------------------------------------------------
def run(samples: int = 25) -> dict[str, Any]:
    return {"latency": latency(samples), "burst": burst()}


def print_table(f: dict[str, Any]) -> None:
    lat = f.get("latency")
    if lat:
        print(f"cluster latency: {lat['samples']} samples each, single host vs {lat['nodes']} nodes (ms: p50 / p95)")
        for row in ROWS:
            r = lat[row]
            a, b = r["single_host_ms"], r["cluster_ms"]
            print(f"  {row:<11} single {a['p50']:>8} / {a['p95']:>8}   cluster {b['p50']:>8} / {b['p95']:>8}   "
                  f"added p50 {r.get('added_p50_ms')}  p95 {r.get('added_p95_ms')}")
        print(f"  warm follow-ups: {lat['follow_ups_warm']}")
        for name, kinds in lat["steps_ms_p50"].items():
            for kind, p in kinds.items():
                print(f"  {name}, {kind}: where the time went (p50 ms)")
                for k, v in p.items():
                    print(f"    {k:<40} {v:>8}")
    b = f.get("burst")
    if b:
        print(f"cluster burst: {b['tasks']} mentions in new threads at once")
        for key in ("single_host", "nodes_1", "nodes_2", "nodes_3"):
            if key in b:
                x = b[key]
                print(f"  {key:<12} {x['s']:>6} s  {x['tasks_per_min']:>6} tasks/min  CPU {x['cpu_s_nodes']} s nodes, "
                      f"{x['cpu_s_nats']} s nats  runs/node {x['runs_per_node']}  evictions {x['evictions']}  "
                      f"rounds {x['rounds_s']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=25, help="latency samples per side")
    parser.add_argument("--only", choices=("latency", "burst"), help="measure one part, keep the other")
    args = parser.parse_args()
    from bench.common import RESULTS

    earlier = json.loads(RESULTS.read_text()).get("cluster", {}) if RESULTS.exists() else {}
    if args.only == "latency":
        figures = {**earlier, "latency": latency(args.n)}
    elif args.only == "burst":
        figures = {**earlier, "burst": burst()}
    else:
        figures = run(args.n)
    write_results("cluster", figures, measured=[args.only] if args.only else None)
    print_table(figures)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
