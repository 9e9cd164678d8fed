"""After a restart: runs the last bot process was running are recorded as interrupted and their threads told;
requests it had accepted but not started run now (the store keeps every accepted request until it is answered)."""

from __future__ import annotations

import time

from bot.core.dispatcher import Dispatcher, Job
from bot.core.signs import Signs
from bot.core.store import Store
from bot.log import get_logger

log = get_logger("slackbus.app")


def recover(store: Store, dispatcher: Dispatcher, signs: Signs) -> None:
    told: set[tuple[str, str]] = set()
    for run_id, channel, thread_ts in store.interrupted_runs():
        store.finish_run(run_id, "interrupted", error="the bot stopped during the run")
        if (channel, thread_ts) not in told:
            told.add((channel, thread_ts))
            signs.restarted(channel, thread_ts)
    for req in store.unfinished_requests():
        if req.status == "running":
            store.set_request_status(req.channel, [req.ts], "interrupted")
            signs.interrupted(req.channel, req.ts)
            continue
        thread = store.get_thread(req.channel, req.thread_ts)
        log.info("bot.requeue", channel=req.channel, ts=req.ts)
        dispatcher.submit(
            Job(
                channel=req.channel,
                thread_ts=req.thread_ts,
                trigger_ts=req.ts,
                user=req.user,
                new_session=thread is None or not thread.started,
                received=time.monotonic(),
                is_dm=req.channel.startswith("D"),
                rule=store.trigger_of(req.channel, req.ts) or "",  # a trigger's: asked its rule's prompt again
            )
        )
