"""Wires the pieces together and runs the bot: one root task group, Socket Mode in, Web API out."""

from __future__ import annotations

import signal
import time
from typing import Any

import anyio
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.errors import SlackApiError

from bot import renderer, slack_events
from bot.backfill import Backfill
from bot.config import Settings
from bot.context_builder import ContextBuilder
from bot.dispatcher import Dispatcher, IncomingMessage, Job, JobQueue
from bot.errors import ConfigError
from bot.log import get_logger
from bot.pipeline import WORKING, TaskPipeline
from bot.slack_poster import SlackPoster, make_client
from bot.store import Store, StoredMessage, ThreadSession

log = get_logger("slackbus.app")

QUEUED = "hourglass_flowing_sand"
CONNECT_TIMEOUT_S = 30.0


class Bot:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store.open(settings.db_path)
        self.client = make_client(settings.slack_bot_token, settings.slack_api_url)
        self._tg: Any = None
        self._queued: dict[tuple[str, str], bool] = {}  # jobs showing the "queued" reaction

    async def _identify(self) -> tuple[str, str | None]:
        try:
            with anyio.fail_after(CONNECT_TIMEOUT_S):
                auth = await self.client.auth_test()
        except SlackApiError as exc:
            error = exc.response.get("error")
            if error in {"invalid_auth", "not_authed", "token_revoked", "account_inactive"}:
                raise ConfigError(
                    f"Slack refused SLACK_BOT_TOKEN ({error}): copy the Bot User OAuth Token (xoxb-…) again from "
                    "the app's OAuth & Permissions page, and reinstall the app if it was revoked."
                ) from None
            raise ConfigError(f"Slack's auth.test failed ({error}); check SLACK_API_URL and the token.") from None
        except (TimeoutError, OSError) as exc:
            raise ConfigError(
                f"Slack's Web API at {self.settings.slack_api_url} cannot be reached ({type(exc).__name__}): "
                "check the network or SLACK_API_URL."
            ) from None
        return str(auth["user_id"]), auth.get("bot_id")

    async def serve(self, *, ready: anyio.Event | None = None) -> None:
        s = self.settings
        bot_user_id, bot_id = await self._identify()
        poster = SlackPoster(self.client, self.store, bot_user_id=bot_user_id, bot_id=bot_id)
        backfill = Backfill(self.client, self.store, bot_user_id=bot_user_id, limit=s.context_messages or 1)
        contexts = ContextBuilder(
            self.store,
            bot_user_id=bot_user_id,
            max_messages=s.context_messages,
            max_chars=s.context_chars,
            name_of=backfill.name_of,
            is_allowed=s.is_allowed,
        )
        pipeline = TaskPipeline(s, self.store, poster, contexts, backfill)
        queue = JobQueue(self._started(pipeline, poster), s.max_concurrent)

        def on_accepted(job: Job, position: int) -> None:
            if position > 0:
                self._queued[(job.channel, job.trigger_ts)] = True
            self._tg.start_soon(self._first_sign, poster, job, position)
            self._tg.start_soon(backfill.ensure, job.channel)

        def on_refused(msg: IncomingMessage) -> None:
            self._tg.start_soon(
                poster.post_ephemeral,
                msg.channel,
                msg.user or "",
                f"Sorry <@{msg.user}>, you are not on this bot's allow list, so nothing was run. Ask the person who "
                f"runs slackbus to add your member id ({msg.user}) to SLACKBUS_ALLOWED_USERS.",
                msg.thread_ts,
            )

        dispatcher = Dispatcher(
            self.store,
            queue,
            bot_user_id=bot_user_id,
            is_allowed=s.is_allowed,
            on_accepted=on_accepted,
            on_refused=on_refused,
            workdir=str(s.workdir),
        )
        app = AsyncApp(client=self.client, process_before_response=False, ignoring_self_events_enabled=True)
        slack_events.register(
            app,
            dispatcher=dispatcher,
            store=self.store,
            bot_user_id=bot_user_id,
            on_slash=lambda command, ack: self._slash(command, ack, dispatcher, poster),
        )
        handler = AsyncSocketModeHandler(app, s.slack_app_token)

        async with anyio.create_task_group() as tg:
            self._tg = tg
            queue.attach(tg)
            tg.start_soon(self._watch_signals, tg.cancel_scope, handler)
            self._requeue(dispatcher, poster)
            try:
                with anyio.fail_after(CONNECT_TIMEOUT_S):
                    await handler.connect_async()  # type: ignore[no-untyped-call]
            except SlackApiError as exc:
                error = exc.response.get("error")
                raise ConfigError(
                    f"Slack refused SLACK_APP_TOKEN for Socket Mode ({error}): create an app-level token with the "
                    "connections:write scope (Basic Information → App-Level Tokens) and enable Socket Mode."
                ) from None
            log.info(
                "bot.ready",
                bot_user_id=bot_user_id,
                max_concurrent=s.max_concurrent,
                workdir=str(s.workdir),
                cli=s.claude_cli_path,
                db=str(s.db_path),
            )
            if ready is not None:
                ready.set()
            self.store.forget_old_events()
            await anyio.sleep_forever()

    def _started(self, pipeline: TaskPipeline, poster: SlackPoster) -> Any:
        async def handle(jobs: list[Job]) -> None:
            for job in jobs:
                if self._queued.pop((job.channel, job.trigger_ts), False):
                    self._tg.start_soon(poster.unreact, job.channel, job.trigger_ts, QUEUED)
            await pipeline(jobs)

        return handle

    async def _first_sign(self, poster: SlackPoster, job: Job, position: int) -> None:
        await poster.react(job.channel, job.trigger_ts, WORKING)
        log.info(
            "run.first_sign",
            channel=job.channel,
            ts=job.trigger_ts,
            ms=round((time.monotonic() - job.received) * 1000, 2),
        )
        if position > 0:
            await poster.react(job.channel, job.trigger_ts, QUEUED)
            if (job.channel, job.trigger_ts) not in self._queued:  # it started meanwhile
                await poster.unreact(job.channel, job.trigger_ts, QUEUED)

    def _requeue(self, dispatcher: Dispatcher, poster: SlackPoster) -> None:
        """Requests a previous process accepted but did not finish run again, in their order."""
        interrupted = {(c, t) for _run, c, t in self.store.interrupted_runs()}
        for run_id, _c, _t in self.store.interrupted_runs():
            self.store.finish_run(run_id, "interrupted", error="the bot stopped during the run")
        told: set[tuple[str, str]] = set()
        for req in self.store.unfinished_requests():
            thread = self.store.get_thread(req.channel, req.thread_ts)
            job = Job(
                channel=req.channel,
                thread_ts=req.thread_ts,
                trigger_ts=req.ts,
                user=req.user,
                new_session=thread is None,
                received=time.monotonic(),
                is_dm=req.channel.startswith("D"),
            )
            key = (req.channel, req.thread_ts)
            if key in interrupted and key not in told:
                told.add(key)
                self._tg.start_soon(
                    poster.post,
                    req.channel,
                    req.thread_ts,
                    renderer.render_notice(":arrows_counterclockwise: slackbus restarted while working on this; "
                                           "starting it again."),
                )
            log.info("bot.requeue", channel=req.channel, ts=req.ts, status=req.status)
            dispatcher.submit(job)

    async def _slash(self, command: dict[str, Any], ack: AsyncAck, dispatcher: Dispatcher, poster: SlackPoster) -> None:
        text = str(command.get("text") or "").strip()
        user = str(command.get("user_id") or "")
        channel = str(command.get("channel_id") or "")
        if not text or text.lower() in {"help", "?"}:
            await ack(text=slack_events.HELP)
            return
        if not self.settings.is_allowed(user):
            await ack(text=f"Sorry, you are not on this bot's allow list: ask its operator to add {user} to "
                           "SLACKBUS_ALLOWED_USERS.")
            return
        await ack(text="Got it: starting in a thread.")
        try:
            parent_ts = await poster.post(channel, None, renderer.render_notice(f"<@{user}> asked: {text}"))
        except SlackApiError as exc:
            await poster.post_ephemeral(
                channel, user, f"I could not post in this channel ({exc.response.get('error')}): invite me first."
            )
            return
        # The parent stands for the user's request: record it as theirs so context and follow-ups work.
        self.store.record_message(StoredMessage(channel, parent_ts, None, user, None, text))
        if not self.store.claim_request(channel, parent_ts, parent_ts, user, "command"):
            return
        self.store.save_thread(ThreadSession(channel, parent_ts, "", str(self.settings.workdir), False, "0", user))
        dispatcher.submit(
            Job(channel=channel, thread_ts=parent_ts, trigger_ts=parent_ts, user=user, new_session=True,
                received=time.monotonic(), is_dm=channel.startswith("D"))
        )

    async def _watch_signals(self, scope: anyio.CancelScope, handler: AsyncSocketModeHandler) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("bot.stopping", signal=signal.Signals(signum).name)
                with anyio.move_on_after(3.0):
                    await handler.close_async()  # type: ignore[no-untyped-call]
                scope.cancel()
                return

    def close(self) -> None:
        self.store.close()
