"""Decides what an incoming message means and when its work runs.

who may   — only allowed users start or continue work; everyone else's messages are still recorded
how much  — a task longer than SLACKBUS_MAX_INPUT_CHARS is refused (the message is still recorded)
dedupe    — a message becomes at most one job (a mention arrives as app_mention AND message; Slack retries)
queue     — a global cap on concurrent runs with a FIFO queue
order     — one run per thread at a time; follow-ups wait their turn and are answered together
triggers  — a message nobody addressed to the bot may still start a run, by a rule (bot.core.triggers)
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup

from bot.core.events import IncomingMessage
from bot.core.store import Store, StoredMessage, ThreadSession
from bot.core.triggers import Triggers
from bot.errors import StoreError
from bot.log import get_logger

log = get_logger("slackbus.dispatcher")

IGNORED_SUBTYPES = frozenset(
    {
        "channel_join", "channel_leave", "group_join", "group_leave", "channel_topic", "channel_purpose",
        "channel_name", "channel_archive", "channel_unarchive", "pinned_item", "unpinned_item", "ekm_access_denied",
        "bot_add", "bot_remove", "reminder_add", "tombstone", "assistant_app_thread", "huddle_thread",
    }
)


@dataclass(frozen=True)
class Job:
    channel: str
    thread_ts: str
    trigger_ts: str
    user: str
    new_session: bool
    received: float  # monotonic; for queue-wait and latency figures
    is_dm: bool = False
    about_ts: str | None = None  # the message a shortcut's request is about (its signs go there)
    rule: str = ""  # the trigger rule that started it (its request is the rule's prompt); "": someone asked

    @property
    def sign_ts(self) -> str:
        """The message that shows the request's reactions: the request itself, or the message it is about."""
        return self.about_ts or self.trigger_ts

    @property
    def key(self) -> tuple[str, str]:
        return (self.channel, self.thread_ts)


Handler = Callable[[list[Job]], Awaitable[None]]


class JobQueue:
    """FIFO under a global cap, one running batch per thread. Runs on the event loop; no locks needed."""

    def __init__(self, handler: Handler, max_concurrent: int, on_done: Handler | None = None) -> None:
        self._handler = handler
        self.on_done = on_done  # after each batch, and for jobs removed before they ran (the cluster acks them)
        self.max_concurrent = max_concurrent
        self._pending: deque[Job] = deque()
        self._busy: set[tuple[str, str]] = set()
        self._tg: TaskGroup | None = None
        self.running = 0
        self.peak_running = 0
        self._idle = anyio.Event()
        self._idle.set()
        self._closed = False

    def close(self) -> None:
        """Start nothing more (shutdown): what is queued stays queued, in the store, for the next start."""
        self._closed = True

    def attach(self, tg: TaskGroup) -> None:
        self._tg = tg
        self._pump()

    def submit(self, job: Job) -> int:
        """Queue a job; returns 0 if it starts now, else its position among the waiting jobs."""
        self._pending.append(job)
        self._idle = anyio.Event() if self._idle.is_set() else self._idle
        self._pump()
        for position, waiting in enumerate(self._pending, start=1):
            if waiting is job:
                return position
        return 0

    def position(self, job_key: tuple[str, str]) -> int:
        for position, waiting in enumerate(self._pending, start=1):
            if waiting.key == job_key:
                return position
        return 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def waiting(self) -> list[Job]:
        """The queued jobs, first to run first."""
        return list(self._pending)

    def thread_busy(self, key: tuple[str, str]) -> bool:
        """A run for this thread is going (so a new job for it waits for that run, not for the cap)."""
        return key in self._busy

    def is_waiting(self, channel: str, trigger_ts: str) -> bool:
        return any(j.channel == channel and j.trigger_ts == trigger_ts for j in self._pending)

    def remove(self, key: tuple[str, str]) -> list[Job]:
        """Take a thread's queued jobs out of the queue (cancelled before they started)."""
        removed = [j for j in self._pending if j.key == key]
        for job in removed:
            self._pending.remove(job)
        if removed and self.on_done is not None and self._tg is not None:
            self._tg.start_soon(self._removed_done, removed)
        self._pump()
        return removed

    async def _removed_done(self, removed: list[Job]) -> None:
        if self.on_done is not None:
            await self.on_done(removed)

    def _take_batch(self) -> list[Job] | None:
        for index, job in enumerate(self._pending):
            if job.key in self._busy:
                continue
            del self._pending[index]
            batch = [job]
            if not job.new_session:
                # follow-ups of one thread that queued up are answered together, in order
                rest = [j for j in self._pending if j.key == job.key]
                for j in rest:
                    self._pending.remove(j)
                batch.extend(rest)
                batch.sort(key=lambda j: _ts_order(j.trigger_ts))  # arrived from several hosts: Slack's order
            return batch
        return None

    def _pump(self) -> None:
        if self._tg is None or self._closed:
            return
        while self.running < self.max_concurrent:
            batch = self._take_batch()
            if batch is None:
                break
            self._busy.add(batch[0].key)
            self.running += 1
            self.peak_running = max(self.peak_running, self.running)
            self._tg.start_soon(self._run, batch)
        if not self._pending and self.running == 0:
            self._idle.set()

    async def _run(self, batch: list[Job]) -> None:
        try:
            await self._handler(batch)
        except StoreError as exc:  # the record could not be written (disk full): a known failure, logged as such
            log.error("store.write_failed", what="run", channel=batch[0].channel, thread_ts=batch[0].thread_ts,
                      error=str(exc))
        except Exception:  # the handler reports its own errors; this only keeps the queue alive
            log.exception("dispatch.handler_crashed", channel=batch[0].channel, thread_ts=batch[0].thread_ts)
        finally:
            self._busy.discard(batch[0].key)
            self.running -= 1
            if self.on_done is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5.0):
                    try:
                        await self.on_done(batch)
                    except Exception:
                        log.exception("dispatch.on_done_failed", channel=batch[0].channel)
            self._pump()

    async def wait_idle(self) -> None:
        await self._idle.wait()


class Dispatcher:
    """Message in → recorded, and maybe a job. Refusals and the first visible sign go through callbacks."""

    def __init__(
        self,
        store: Store,
        queue: JobQueue,
        *,
        bot_user_id: str,
        is_allowed: Callable[[str], bool],
        on_accepted: Callable[[Job, int], None],
        on_refused: Callable[[IncomingMessage, str], None],
        workdir_for: Callable[[str], str],
        is_channel_allowed: Callable[[str], bool] = lambda _c: True,
        on_seen: Callable[[Job], None] | None = None,
        on_unrecorded: Callable[[IncomingMessage, StoreError], None] | None = None,
        max_input_chars: int | None = None,
        place: Callable[[Job], None] | None = None,
    ) -> None:
        self.triggers: Triggers | None = None  # rules that start runs on messages nobody addressed to the bot
        self.place = place  # set (the cluster): a job goes there, and comes back through `submit_here` on a node
        self._on_seen = on_seen
        self._on_unrecorded = on_unrecorded
        self._unrecorded: set[tuple[str, str]] = set()  # (channel, ts) already told "could not record"
        self._workdir_for = workdir_for
        self._is_channel_allowed = is_channel_allowed
        self._store = store
        self._queue = queue
        self._bot = bot_user_id
        self._is_allowed = is_allowed
        self._on_accepted = on_accepted
        self._on_refused = on_refused
        self._refused_in_thread: set[tuple[str, str, str]] = set()
        self._max_input_chars = max_input_chars  # a longer task runs nothing; on_refused(msg, "too_long") once
        self._too_long: set[tuple[str, str]] = set()  # (channel, ts) already told (a mention arrives twice)

    def record(self, msg: IncomingMessage) -> None:
        """Keep a message (and what it says about its files) in the record, as context: never a task."""
        try:
            self._store.record_message(
                StoredMessage(
                    channel=msg.channel,
                    ts=msg.ts,
                    thread_ts=msg.thread_ts,
                    user=msg.user,
                    bot_id=msg.bot_id,
                    text=msg.text,
                    from_self=msg.user == self._bot,
                    subtype=msg.subtype,
                )
            )
            if msg.files:
                self._store.record_files(msg.channel, msg.ts, [f.data() for f in msg.files])
        except StoreError as exc:  # context is lost, the bot is not: a request still gets its answer or a sentence
            log.error("store.write_failed", what="message", channel=msg.channel, ts=msg.ts, error=str(exc))

    def on_message(self, msg: IncomingMessage) -> Job | None:
        if msg.subtype in IGNORED_SUBTYPES:
            return None
        self.record(msg)
        if msg.bot_id or msg.user is None or msg.user == self._bot or msg.subtype not in (None, "file_share",
                                                                                              "thread_broadcast"):
            return self._triggered(msg)  # another bot's post (or our own: never) may match a rule
        thread = self._store.get_thread(msg.channel, msg.reply_target)
        in_session_thread = thread is not None and msg.thread_ts is not None
        if not (msg.mentions_bot or msg.is_dm or in_session_thread):
            return self._triggered(msg)  # ordinary channel talk: context only, unless a rule matches it

        if not self._is_channel_allowed(msg.channel):
            if msg.mentions_bot:
                log.info("dispatch.channel_not_allowed", channel=msg.channel, user=msg.user)
                self._on_refused(msg, "channel")
            return None
        if not self._is_allowed(msg.user):
            # once per message (a mention arrives twice), and once per thread for plain replies
            thread_key = (msg.channel, msg.reply_target, msg.user)
            message_key = (msg.channel, msg.ts, msg.user)
            explicit = msg.mentions_bot or msg.is_dm
            if message_key in self._refused_in_thread:
                return None
            if explicit or thread_key not in self._refused_in_thread:
                self._refused_in_thread.update({thread_key, message_key})
                log.info("dispatch.refused", channel=msg.channel, thread_ts=msg.reply_target, user=msg.user)
                self._on_refused(msg, "user")
            return None
        if self._max_input_chars is not None and len(msg.text) > self._max_input_chars:
            if (msg.channel, msg.ts) not in self._too_long:
                self._too_long.add((msg.channel, msg.ts))
                log.info("dispatch.too_long", channel=msg.channel, ts=msg.ts, user=msg.user, chars=len(msg.text),
                         limit=self._max_input_chars)
                self._on_refused(msg, "too_long")
            return None  # recorded as context (cut there), never a task

        try:
            if not self._store.claim_request(msg.channel, msg.ts, msg.reply_target, msg.user, "message"):
                log.info("dispatch.duplicate", channel=msg.channel, ts=msg.ts, event_id=msg.event_id)
                return None
            if thread is None:
                self._store.save_thread(
                    ThreadSession(
                        channel=msg.channel,
                        thread_ts=msg.reply_target,
                        session_id="",
                        workdir=self._workdir_for(msg.channel),
                        started=False,
                        last_ts="0",
                        requester=msg.user,
                    )
                )
        except StoreError as exc:
            self._unrecordable(msg, exc)
            return None
        job = Job(
            channel=msg.channel,
            thread_ts=msg.reply_target,
            trigger_ts=msg.ts,
            user=msg.user,
            new_session=thread is None,  # a later message in a known thread is a follow-up
            received=msg.received or time.monotonic(),
            is_dm=msg.is_dm,
            about_ts=msg.about_ts,
        )
        return self.submit(job)

    def _triggered(self, msg: IncomingMessage) -> Job | None:
        """A job for a message a trigger rule matches, as the rule's owner's request in the message's thread (only
        here, on the node that took the event in; the cluster dedupes jobs by (channel, message ts))."""
        triggers = self.triggers
        rule = triggers.match(msg) if triggers is not None else None
        if triggers is None or rule is None or not self._is_channel_allowed(msg.channel):
            return None
        try:
            if not triggers.admit(rule, msg):
                return None
            thread = self._store.get_thread(msg.channel, msg.reply_target)
            if not self._store.claim_request(msg.channel, msg.ts, msg.reply_target, rule.owner, "trigger"):
                return None
            if thread is None:
                self._store.save_thread(ThreadSession(msg.channel, msg.reply_target, "",
                                                      self._workdir_for(msg.channel), False, "0", rule.owner))
        except StoreError as exc:
            log.error("store.write_failed", what="trigger", channel=msg.channel, ts=msg.ts, error=str(exc))
            return None
        log.info("dispatch.triggered", rule=rule.name, owner=rule.owner, channel=msg.channel, ts=msg.ts,
                 thread_ts=msg.reply_target, poster=msg.user or msg.bot_id)
        return self.submit(Job(channel=msg.channel, thread_ts=msg.reply_target, trigger_ts=msg.ts, user=rule.owner,
                               new_session=thread is None, received=msg.received or time.monotonic(), rule=rule.name))

    def _unrecordable(self, msg: IncomingMessage, exc: StoreError) -> None:
        """A request the store cannot take is not run (its run could record nothing, and a restart would not know
        it): the requester is told once (a mention arrives twice), the error is logged."""
        key = (msg.channel, msg.ts)
        if key in self._unrecorded:
            return
        self._unrecorded.add(key)
        log.error("store.write_failed", what="request", channel=msg.channel, ts=msg.ts, user=msg.user,
                  error=str(exc))
        with contextlib.suppress(StoreError):  # if only the thread row failed, do not leave it queued for a restart
            self._store.set_request_status(msg.channel, [msg.ts], "failed")
        if self._on_unrecorded is not None:
            self._on_unrecorded(msg, exc)

    def submit(self, job: Job) -> Job:
        if self.place is not None:
            if self._on_seen is not None:
                self._on_seen(job)  # 👀 from the node that took the request in, before the hop to the one that runs it
            self.place(job)
            log.info("dispatch.placed", channel=job.channel, thread_ts=job.thread_ts, ts=job.trigger_ts, user=job.user)
            return job
        return self.submit_here(job)

    def submit_here(self, job: Job, *, seen: bool = False) -> Job:
        """Into this node's own queue: the first sign (unless the node that took it in gave it), then the queue."""
        if self._on_seen is not None and not seen:
            self._on_seen(job)  # the first visible sign is scheduled before any of the job's own work
        position = self._queue.submit(job)
        log.info(
            "dispatch.accepted",
            channel=job.channel,
            thread_ts=job.thread_ts,
            ts=job.trigger_ts,
            user=job.user,
            queue_position=position,
            running=self._queue.running,
        )
        self._on_accepted(job, position)
        return job


def _ts_order(ts: str) -> float:
    try:
        return float(ts)
    except ValueError:
        return 0.0


def too_long(size: int, limit: int) -> str:
    """The one sentence for a task over SLACKBUS_MAX_INPUT_CHARS."""
    return (f"That task is {size:,} characters long, more than the {limit:,} I take (SLACKBUS_MAX_INPUT_CHARS), so "
            "nothing was run: attach the long part as a file and ask again in a few sentences.")
