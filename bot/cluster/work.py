"""Tasks across nodes: the node that took an event in places the task, a node with room runs it.

place   — a new thread's task goes to slackbus.work.any, where any node with room (its SLACKBUS_MAX_CONCURRENT)
          pulls it; a task of a thread a living node holds goes to that node's own subject, so its warm process
          keeps working. The message id is the request's, so the same task placed twice (two nodes got the mention
          and the message event) is stored once.
take    — a node that pulls a task claims the thread (compare-and-set; from nobody, or from a dead owner), or hands
          the task to the owner; a later task of a thread whose first task nobody took yet waits for it, so a
          thread's tasks run in order. Taking over from a dead owner restores its session's transcript and tells
          the thread.
running — the task is acked when its run ends; until then the node reports progress (in-progress acks), so a
          long run is not redelivered. A node that dies stops reporting: its tasks go to another node after
          ACK_WAIT_S, and the tasks waiting on its own subject are moved to slackbus.work.any by a living node.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import anyio
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout

from bot.cluster.jetstream import (
    ACK_WAIT_S,
    WORK,
    WORK_ANY,
    Link,
    dumps,
    ensure_consumer,
    node_durable,
    work_subject,
)
from bot.cluster.nodes import Nodes
from bot.cluster.threads import ThreadEntry, Threads
from bot.core.dispatcher import Job
from bot.log import get_logger

log = get_logger("slackbus.cluster")

PROGRESS_S = ACK_WAIT_S / 3
FIRST_WAIT_S = 0.1  # a later task of a thread whose first task is not taken yet comes back after this
PUBLISH_TRIES_S = 20.0  # a placement retries this long through a NATS restart (same message id: no duplicate)
AFTER_TURN_S = 30.0  # saving a thread's session and transcript after its run


@dataclass(frozen=True)
class Task:
    """A job as it travels: the job's fields (received is this node's clock, so it is set again on arrival)."""

    channel: str
    thread_ts: str
    trigger_ts: str
    user: str
    new_session: bool
    is_dm: bool
    placed_by: str
    placed_at: float  # wall clock, for the figures
    about_ts: str | None = None  # a shortcut's request: the message it is about
    handed_from: str = ""  # the node that gave it back when it shut down (the next node says so in the thread)
    rule: str = ""  # the trigger rule that started it (bot.core.triggers)
    message: dict[str, Any] | None = None  # the request as the placing node recorded it (a /claude task's or a
    # schedule's request is recorded only there: the channel shows the bot's heading at that ts)

    @property
    def msg_id(self) -> str:
        return f"task:{self.channel}:{self.trigger_ts}"


def task_of(data: bytes) -> Task:
    """A stored task; fields a newer node added are left out (a rolling upgrade mixes versions). Raises ValueError
    or TypeError for what is not a task."""
    raw = json.loads(data)
    if not isinstance(raw, dict):
        raise TypeError("not an object")
    return Task(**{k: v for k, v in raw.items() if k in Task.__dataclass_fields__})


Accept = Callable[[Job, bool], Awaitable[None]]  # (the job, taken over from a dead node)


class Work:
    def __init__(self, link: Link, nodes: Nodes, threads: Threads, me: str, *, capacity: Callable[[], int],
                 accept: Accept, workdir_for: Callable[[str], str]) -> None:
        self._workdir_for = workdir_for
        self._link = link
        self._nodes = nodes
        self._threads = threads
        self.me = me
        self._capacity = capacity  # how many more tasks this node takes from the shared queue now
        self._accept = accept  # hand a job to this node's own queue (the dispatcher's submit)
        self._held: dict[tuple[str, str], Msg] = {}  # (channel, trigger ts) → the task message, acked at the end
        # tasks this node placed on itself and started at once, until their message comes back on its subject:
        # "placing", "running", or "done" (finished before the message came: acked on arrival)
        self._local: dict[tuple[str, str], str] = {}
        self._order = anyio.create_memory_object_stream[Task](10_000)
        self._room = anyio.Event()
        self._placed = 0
        self._failed = 0  # placements that could not be stored
        self.stopping = False  # this node is shutting down: what it was running goes back to the queue
        self._placed_here = 0  # new threads this node placed on itself, not taken yet (they count against its room)
        self._stored = 0
        self._stored_changed = anyio.Event()

    # --- placing ---------------------------------------------------------------------------------------------
    def place(self, job: Job) -> None:
        """Called by the dispatcher instead of its own queue: stored in order, by one sender."""
        task = Task(job.channel, job.thread_ts, job.trigger_ts, job.user, job.new_session, job.is_dm, self.me,
                    time.time(), job.about_ts, rule=job.rule,
                    message=self._threads.message_data(job.channel, job.trigger_ts))
        self._placed += 1
        self._order[0].send_nowait(task)

    async def flush(self) -> bool:
        """Wait until every task placed so far is stored (the event's ack waits for this). False when one could
        not be stored: the event is then not acked, and Slack sends it again."""
        target, failed = self._placed, self._failed
        with anyio.move_on_after(PUBLISH_TRIES_S + 5.0):
            while self._stored < target:
                changed = self._stored_changed
                await changed.wait()
        return self._stored >= target and self._failed == failed

    async def _placer(self) -> None:
        async for task in self._order[1]:
            try:
                await self._place_retrying(task)
            except Exception as exc:
                self._failed += 1
                self._local.pop((task.channel, task.trigger_ts), None)
                log.error("cluster.place_failed", channel=task.channel, ts=task.trigger_ts,
                          error=f"{type(exc).__name__}: {exc}")
            finally:
                self._stored += 1
                self._stored_changed.set()
                self._stored_changed = anyio.Event()

    async def _place_retrying(self, task: Task) -> None:
        """Placing reads and writes the thread map and the queue: through a server restart it is tried again
        (each step is safe to repeat), for PUBLISH_TRIES_S."""
        deadline = time.monotonic() + PUBLISH_TRIES_S
        while True:
            try:
                await self._place(task)
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("cluster.place_retry", channel=task.channel, ts=task.trigger_ts, error=type(exc).__name__)
                await anyio.sleep(0.25)

    async def _place(self, task: Task) -> None:
        entry: ThreadEntry | None = None
        if task.new_session:
            # a new thread: this node takes it when it has room (no hop through the shared queue), else it waits
            # there for a node with room, and the thread's later tasks wait behind it
            mine = self._capacity() - self._placed_here > 0
            new = ThreadEntry(owner=self.me if mine else "", first="" if mine else task.trigger_ts,
                              requester=task.user, workdir=self._workdir_for(task.channel))
            if await self._threads.create(task.channel, task.thread_ts, new):
                entry = new
                if mine:
                    self._placed_here += 1
                    self._threads.mine.add((task.channel, task.thread_ts))
        if entry is None and (task.channel, task.thread_ts) in self._threads.mine:
            entry = self._own_entry(task)  # a follow-up in a thread this node holds: no read of the map
        if entry is None:  # a follow-up, or a thread another node made a moment ago
            entry, _ = await self._threads.get(task.channel, task.thread_ts)
        owner = entry.owner if entry is not None and entry.owner and self._nodes.alive(entry.owner) else None
        key = (task.channel, task.trigger_ts)
        if owner == self.me:
            self._local.setdefault(key, "placing")  # its message, when this node's consumer brings it, is held
        stored = await self._publish(work_subject(owner), task, task.msg_id)
        log.info("cluster.placed", channel=task.channel, thread_ts=task.thread_ts, ts=task.trigger_ts,
                 to=owner or "any")
        state = self._local.get(key)
        if owner != self.me or entry is None or state is None:
            return
        if stored.duplicate and state == "placing":  # placed by another node first: its message comes as usual
            del self._local[key]
            return
        # this node holds the thread: it runs the task now, not when its own consumer brings the message back;
        # the stored message is what another node runs if this one dies first
        if state == "arrived":
            del self._local[key]  # the message is in hand already
        else:
            self._local[key] = "running"
        try:
            await self._begin(task, entry, takeover=False)
        except Exception as exc:  # not started here: its stored message is run when it comes (or by another node)
            log.error("cluster.start_failed", channel=task.channel, ts=task.trigger_ts,
                      error=f"{type(exc).__name__}: {exc}")
            self._local.pop(key, None)
            held = self._held.pop(key, None)
            if held is not None:
                with contextlib.suppress(Exception):
                    await held.nak(delay=0.5)

    def _own_entry(self, task: Task) -> ThreadEntry | None:
        """A thread this node holds, as its own store has it (None if the store does not know it)."""
        row = self._threads.local(task.channel, task.thread_ts)
        if row is None:
            return None
        return ThreadEntry(owner=self.me, session_id=row.session_id, started=row.started, workdir=row.workdir,
                           requester=row.requester or "")

    async def _publish(self, subject: str, task: Task, msg_id: str) -> Any:
        deadline = time.monotonic() + PUBLISH_TRIES_S
        while True:
            try:
                return await self._link.js.publish(subject, dumps(asdict(task)), headers={"Nats-Msg-Id": msg_id},
                                                   timeout=2.0)
            except Exception as exc:  # the server restarting: the client reconnects; the same id cannot duplicate
                if time.monotonic() > deadline:
                    raise
                log.warning("cluster.publish_retry", subject=subject, error=type(exc).__name__)
                await anyio.sleep(0.2)

    # --- taking ----------------------------------------------------------------------------------------------
    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await ensure_consumer(self._link.js, node_durable(self.me), work_subject(self.me))
        shared = await self._link.js.pull_subscribe_bind(durable="any", stream=WORK)
        own = await self._link.js.pull_subscribe_bind(durable=node_durable(self.me), stream=WORK)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._placer)
            tg.start_soon(self._pull, own, lambda: 64)
            tg.start_soon(functools.partial(self._pull, shared, self._capacity, shared=True))
            tg.start_soon(self._progress)
            tg.start_soon(self._rescue)
            task_status.started()

    def room(self) -> None:
        """A run ended: the shared queue may be pulled again."""
        self._room.set()

    async def _pull(self, sub: Any, room: Callable[[], int], *, shared: bool = False) -> None:
        while True:
            free = room()
            if self.stopping:  # shutting down: takes nothing more
                await anyio.sleep(0.5)
                continue
            if free <= 0:
                self._room = anyio.Event()
                with anyio.move_on_after(1.0):
                    await self._room.wait()
                continue
            try:
                msgs = await sub.fetch(batch=min(free, 8), timeout=1.0)
            except (NatsTimeout, TimeoutError):
                continue
            except Exception as exc:  # reconnecting
                log.warning("cluster.fetch_failed", error=f"{type(exc).__name__}: {exc}")
                await anyio.sleep(0.2)
                continue
            for msg in msgs:
                try:
                    if self.stopping or (shared and room() <= 0):
                        # shutting down, or fetched while this node had room (a fetch waits up to a second):
                        # another node takes it, now
                        await msg.nak()
                        continue
                    await self._take(msg)
                except Exception as exc:  # the task comes back (nak, or the ack wait); this loop goes on
                    log.error("cluster.take_failed", error=f"{type(exc).__name__}: {exc}")
                    self._forget(msg)
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=0.5)

    def _forget(self, msg: Msg) -> None:
        """A task this node failed to start: no trace of it stays, so its next delivery starts afresh."""
        try:
            task = task_of(msg.data)
        except (ValueError, TypeError):
            return
        key = (task.channel, task.trigger_ts)
        if self._held.get(key) is msg:
            del self._held[key]
        self._local.pop(key, None)

    async def _readable(self, msg: Msg) -> Task | None:
        """The task a message holds; None for one that is not a task (logged and dropped for good)."""
        try:
            return task_of(msg.data)
        except (ValueError, TypeError):
            log.warning("cluster.bad_task", data=msg.data[:200])
            with contextlib.suppress(Exception):
                await msg.term()
            return None

    async def _take(self, msg: Msg) -> None:
        task = await self._readable(msg)
        if task is None:
            return
        key = (task.channel, task.trigger_ts)
        if key not in self._held and key not in self._local and self._threads.finished(*key):
            await msg.ack()  # this node answered it; the ack was lost on the way
            log.info("cluster.already_done", channel=task.channel, ts=task.trigger_ts)
            return
        for _ in range(8):
            entry, revision = await self._threads.get(task.channel, task.thread_ts)
            entry = entry or ThreadEntry(first=task.trigger_ts if task.new_session else "", requester=task.user)
            if entry.owner == self.me:  # its own thread (a redelivery after a nak or a lost ack is no takeover)
                await self._start(msg, task, entry, takeover=False)
                return
            if entry.owner and self._nodes.alive(entry.owner):
                await self._publish(work_subject(entry.owner), task, f"{task.msg_id}:to:{entry.owner}")
                await msg.ack()
                log.info("cluster.handed", channel=task.channel, ts=task.trigger_ts, to=entry.owner)
                return
            if entry.first and entry.first != task.trigger_ts and not entry.owner:
                await msg.nak(delay=FIRST_WAIT_S)  # the thread's first task is still waiting for a node
                return
            # another node held it (it is dead) or gave it back: the thread is told; a first task that came back
            # (a nak while the server restarted) is not a takeover
            takeover = bool(entry.owner) or bool(task.handed_from)
            if await self._threads.swap(task.channel, task.thread_ts, replace(entry, owner=self.me, first=""),
                                        revision):
                self._threads.mine.add((task.channel, task.thread_ts))
                if takeover:
                    log.info("cluster.took_over", channel=task.channel, thread_ts=task.thread_ts,
                             from_node=entry.owner or None)
                await self._start(msg, task, replace(entry, owner=self.me, first=""), takeover=takeover)
                return
        await msg.nak(delay=FIRST_WAIT_S)

    async def _start(self, msg: Msg | None, task: Task, entry: ThreadEntry, *, takeover: bool) -> None:
        """Hand the task to this node's queue (msg None: placed here, its message is held when it comes)."""
        key = (task.channel, task.trigger_ts)
        local = self._local.get(key)
        if msg is not None and local in ("placing", "running"):  # placed here: its message, to ack at the end
            self._held[key] = msg
            if local == "placing":
                self._local[key] = "arrived"  # the placer starts it
            else:
                del self._local[key]
            return
        if msg is not None and local == "done":  # placed here and finished before its message came
            del self._local[key]
            await msg.ack()
            return
        if key in self._held:  # this node has it already (redelivered while queued here)
            if msg is not None:
                await msg.in_progress()
            return
        if msg is not None:
            self._held[key] = msg
        await self._begin(task, entry, takeover=takeover)

    async def _begin(self, task: Task, entry: ThreadEntry, *, takeover: bool) -> None:
        """The job into this node's queue, with the thread's session restored if it was made elsewhere."""
        if task.placed_by == self.me and task.new_session and self._placed_here > 0:
            self._placed_here -= 1
        if task.placed_by != self.me:
            self._threads.own_message(task.message)
        if entry.session_id:
            self._threads.to_store(task.channel, task.thread_ts, entry)
            await self._threads.restore(entry)
        job = Job(channel=task.channel, thread_ts=task.thread_ts, trigger_ts=task.trigger_ts, user=task.user,
                  new_session=task.new_session and not entry.started, received=time.monotonic(), is_dm=task.is_dm,
                  about_ts=task.about_ts, rule=task.rule)
        log.info("cluster.taken", channel=task.channel, thread_ts=task.thread_ts, ts=task.trigger_ts,
                 placed_by=task.placed_by, wait_ms=round((time.time() - task.placed_at) * 1000, 1))
        await self._accept(job, takeover)

    async def done(self, jobs: list[Job]) -> None:
        """A run ended: its tasks are acked — or, if this node's shutdown interrupted it, given back for another
        node — then the thread's session is saved (bounded: the acks never wait for a large transcript); a node
        shutting down leaves the thread free for the next one."""
        first = jobs[0]
        for job in jobs:
            key = (job.channel, job.trigger_ts)
            msg = self._held.pop(key, None)
            if msg is None and key in self._local:
                self._local[key] = "done"  # its message has not come yet: acked when it does
            if msg is None:
                continue
            try:
                if self.stopping and not self._threads.finished(job.channel, job.trigger_ts):
                    await self._give_back(msg)  # interrupted by this node's shutdown: another node goes on
                else:
                    await msg.ack()
            except Exception as exc:  # NATS away: it comes back, and is acked then (the store says it is done)
                log.warning("cluster.ack_failed", ts=job.trigger_ts, error=type(exc).__name__)
        self.room()
        with anyio.move_on_after(AFTER_TURN_S):
            try:
                await self._threads.after_turn(first.channel, first.thread_ts, hold=not self.stopping)
            except Exception as exc:
                log.warning("cluster.after_turn_failed", channel=first.channel, error=f"{type(exc).__name__}: {exc}")

    async def hand_back(self) -> None:
        """Shutdown: the tasks this node took and did not finish (queued here, never started) go back to the
        queue at once, for another node, instead of after ACK_WAIT_S."""
        self.stopping = True
        for key, msg in list(self._held.items()):
            self._held.pop(key, None)
            with contextlib.suppress(Exception):
                await self._give_back(msg)

    async def _give_back(self, msg: Msg) -> None:
        """To the shared queue (a task from this node's own subject too, which no other node reads), then acked
        here: a message id per give-back, so doing it twice stores it once."""
        task = replace(task_of(msg.data), handed_from=self.me)
        await self._threads.release(task.channel, task.thread_ts)  # whoever takes it holds the thread
        await self._publish(WORK_ANY, task, f"{task.msg_id}:back:{self.me}:{msg.metadata.sequence.stream}")
        await msg.ack()
        log.info("cluster.handed_back", channel=task.channel, ts=task.trigger_ts)

    async def _progress(self) -> None:
        """Every PROGRESS_S: the tasks this node holds are still being worked on."""
        while True:
            await anyio.sleep(PROGRESS_S)
            for msg in list(self._held.values()):
                try:
                    await msg.in_progress()
                except Exception as exc:
                    log.warning("cluster.progress_failed", error=type(exc).__name__)

    # --- a dead node's own tasks ---------------------------------------------------------------------------
    async def _rescue(self) -> None:
        """Tasks waiting on a dead node's subject (follow-ups of its threads) go back to the shared queue, where the
        node that takes one takes over its thread. A message id per move: moving twice stores it once."""
        subs: dict[str, Any] = {}
        while True:
            await anyio.sleep(1.0)
            for node in self._nodes.dead():
                try:
                    info = await self._link.js.consumer_info(WORK, node_durable(node))
                    if not info.num_pending and not info.num_ack_pending:
                        continue  # nothing waits there
                    sub = subs.get(node) or await self._link.js.pull_subscribe_bind(durable=node_durable(node),
                                                                                     stream=WORK)
                    subs[node] = sub
                    msgs = await sub.fetch(batch=16, timeout=0.5)
                except (NatsTimeout, TimeoutError):
                    continue
                except Exception as exc:
                    log.warning("cluster.rescue_failed", node=node, error=f"{type(exc).__name__}: {exc}")
                    subs.pop(node, None)
                    continue
                for msg in msgs:
                    task = await self._readable(msg)
                    if task is None:
                        continue
                    try:
                        await self._publish(WORK_ANY, task, f"{task.msg_id}:from:{node}:{msg.metadata.sequence.stream}")
                        await msg.ack()
                        log.info("cluster.moved", from_node=node, channel=task.channel, ts=task.trigger_ts)
                    except Exception as exc:  # still there: moved on a later pass
                        log.warning("cluster.rescue_failed", node=node, error=f"{type(exc).__name__}: {exc}")
                        with contextlib.suppress(Exception):
                            await msg.nak()
            for node in [n for n in subs if self._nodes.alive(n)]:
                sub = subs.pop(node)
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
