"""commands: `/claude …`, the 🛑 reaction and the buttons, driven by the typed events (bot.core.events) in
milliseconds — with a real Store, JobQueue, Dispatcher, Signs and TaskPipeline, and a Poster that records what it
was asked to post. What e2e tests check through the fake Slack and the real CLI, checked here at the seam."""

from __future__ import annotations

import dataclasses
import pickle
import stat
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import Settings, load_settings
from bot.core.approvals import Approvals
from bot.core.commands import HELP, Answer, Commands
from bot.core.context_builder import ContextBuilder
from bot.core.dispatcher import Dispatcher, Job, JobQueue, too_long
from bot.core.events import (
    APPROVE_ONCE,
    ATTACH_ACTION,
    PUSH_ACTION,
    STOP_ACTION,
    ButtonClick,
    IncomingMessage,
    Reaction,
    SlashCommand,
)
from bot.core.pipeline import RunHandle, TaskPipeline
from bot.core.poster import Poster
from bot.core.renderer import SlackMessage, plain_text
from bot.core.sessions import SessionManager
from bot.core.signs import STOPPED, WORKING, Signs
from bot.core.store import Store, ThreadSession
from bot.errors import PostRefusedError
from bot.slack.events_in import click, reaction, slash_command
from bot.slack.poster import SlackPoster

BOT = "UBOT"
ADMIN = "U3"
T1, T2, T3 = "1700000001.000100", "1700000002.000100", "1700000003.000100"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- fakes at the edge --------------------------------------------------------------------------------------------
class RecordingPoster:
    """The Poster protocol, recording each call in `trail` (in order); `refuse` makes `post` raise what a
    transport raises for a post it will not take."""

    def __init__(self, trail: list[tuple[Any, ...]]) -> None:
        self.trail = trail
        self.refuse: str | None = None
        self._next = 0

    def posts(self) -> list[tuple[str, str | None, str]]:
        return [call[1:] for call in self.trail if call[0] == "post"]

    def ephemerals(self) -> list[tuple[str, str, str, str | None]]:
        return [call[1:] for call in self.trail if call[0] == "ephemeral"]

    async def post(self, channel: str, thread_ts: str | None, message: SlackMessage) -> str:
        if self.refuse:
            raise PostRefusedError("refused", reason=self.refuse)
        self._next += 1
        self.trail.append(("post", channel, thread_ts, plain_text(message)))
        return f"1700000100.{self._next:06d}"

    async def update(self, channel: str, ts: str, message: SlackMessage) -> None:
        self.trail.append(("update", channel, ts, plain_text(message)))

    async def deliver(self, channel: str, thread_ts: str, messages: list[SlackMessage], *,
                      replace_ts: str | None = None, attachment: str | None = None, filename: str = "answer.md",
                      title: str = "The whole answer") -> bool:
        self.trail.append(("deliver", channel, thread_ts, [plain_text(m) for m in messages]))
        return True

    async def upload(self, channel: str, thread_ts: str, filename: str, content: bytes, *, title: str,
                     comment: str | None = None) -> None:
        self.trail.append(("upload", channel, thread_ts, filename))

    async def post_ephemeral(self, channel: str, user: str, text: str, thread_ts: str | None = None) -> None:
        self.trail.append(("ephemeral", channel, user, text, thread_ts))

    async def react(self, channel: str, ts: str, name: str) -> bool:
        self.trail.append(("react", channel, ts, name))
        return True

    async def unreact(self, channel: str, ts: str, name: str) -> None:
        self.trail.append(("unreact", channel, ts, name))

    async def run_outbox(self, interval: float = 15.0) -> None:  # pragma: no cover - never started here
        return None


class NoDirectory:
    def label(self, channel: str, is_dm: bool) -> str:
        return f"#{channel}"

    def name_of(self, user_id: str) -> str:
        return user_id

    async def ensure(self, channel: str) -> None:
        return None

    async def resolve(self, user_ids: Any, within: float = 2.0) -> None:
        return None

    async def fetch_thread(self, channel: str, thread_ts: str) -> None:
        return None


class Spawned:
    """The bot's `spawn`: side tasks are kept, to be run (in order) when the test says."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]] = []

    def __call__(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        self.calls.append((fn, args))

    async def run(self) -> None:
        while self.calls:
            fn, args = self.calls.pop(0)
            await fn(*args)


async def _never_runs(jobs: list[Job]) -> None:  # pragma: no cover - the queue is never attached
    raise AssertionError("no job should run here")


def _no_spec(*_: Any) -> Any:  # pragma: no cover - no process is started here
    raise AssertionError("no claude process should start here")


class Bench:
    """Commands with everything they talk to; jobs only queue (the queue is not attached)."""

    def __init__(self, settings: Settings, store: Store, poster: Poster | None = None) -> None:
        self.settings = settings
        self.store = store
        self.trail: list[tuple[Any, ...]] = []
        self.poster = RecordingPoster(self.trail)
        self.spawned = Spawned()
        poster = poster or self.poster
        self.signs = Signs(poster, self.spawned, max_concurrent=settings.max_concurrent)
        self.queue = JobQueue(_never_runs, settings.max_concurrent)
        self.dispatcher = Dispatcher(
            store, self.queue, bot_user_id=BOT, is_allowed=settings.is_allowed,
            on_accepted=lambda _job, _position: None, on_refused=lambda _msg, _why: None,
            workdir_for=self.workdir_for, is_channel_allowed=settings.is_channel_allowed, on_seen=self.signs.seen,
        )
        sessions = SessionManager(_no_spec, max_processes=settings.max_processes, warm_pool=0, idle_seconds=60.0,
                                  default_cwd=settings.workdir)
        contexts = ContextBuilder(store, bot_user_id=BOT, max_messages=10, max_chars=10_000, name_of=str)
        self.pipeline = TaskPipeline(settings, store, poster, contexts, NoDirectory(), sessions, self.signs)
        self.approvals = Approvals(poster, is_admin=settings.is_admin, timeout=30.0)
        self.commands = Commands(
            settings, store, self.queue, self.pipeline, poster, self.dispatcher, self.signs,
            workspace_url="", spawn=self.spawned, workdir_for=self.workdir_for, approvals=self.approvals,
        )

    def workdir_for(self, channel: str) -> str:
        return str(self.settings.workdir)

    async def slash(self, text: str, user: str = "U1", channel: str = "C1", thread_ts: str | None = None) -> list[str]:
        """`/claude <text>`; returns what the command answered through its Reply."""
        replies: list[str] = []

        async def reply(answer: str) -> None:
            replies.append(answer)
            self.trail.append(("reply", answer))

        await self.commands.slash(SlashCommand(user=user, channel=channel, text=text, thread_ts=thread_ts), reply)
        return replies

    def running(self, user: str = "U1", channel: str = "C1", thread_ts: str = T1, run_id: str = "run1") -> RunHandle:
        """A run in progress, as the pipeline holds it while it runs."""
        handle = RunHandle(run_id=run_id, channel=channel, thread_ts=thread_ts, requester=user, trigger_ts=(thread_ts,))
        self.pipeline.active[handle.key] = handle
        return handle

    def queued(self, user: str = "U1", channel: str = "C1", thread_ts: str = T2) -> Job:
        """A request waiting in the queue (claimed in the store, as the dispatcher does)."""
        assert self.store.claim_request(channel, thread_ts, thread_ts, user, "mention")
        job = Job(channel=channel, thread_ts=thread_ts, trigger_ts=thread_ts, user=user, new_session=True,
                  received=0.0)
        self.queue.submit(job)
        return job


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    cli = tmp_path / "claude"
    cli.write_text(f"#!{sys.executable}\n")
    cli.chmod(cli.stat().st_mode | stat.S_IXUSR)
    return load_settings({
        "SLACK_BOT_TOKEN": "xoxb-1111-2222-commandsbot",
        "SLACK_APP_TOKEN": "xapp-1-A111-2222-commandsapp",
        "CLAUDE_CLI_PATH": str(cli),
        "SLACKBUS_ALLOWED_USERS": "U1,U2",
        "SLACKBUS_ADMIN_USERS": ADMIN,
        "SLACKBUS_ALLOWED_CHANNELS": "C1,C2",
        "SLACKBUS_MAX_CONCURRENT": "2",
        "SLACKBUS_HOME": str(tmp_path / "state"),
        "SLACKBUS_WORKDIR": str(tmp_path / "work"),
    }, env_file=str(tmp_path / "no.env"))


@pytest.fixture
def bench(settings: Settings, tmp_path: Path) -> Iterator[Bench]:
    store = Store.open(tmp_path / "state.db")
    yield Bench(settings, store)
    store.close()


# --- the events themselves ----------------------------------------------------------------------------------------
def test_the_events_are_frozen_plain_data_that_survive_a_queue():
    events: list[IncomingMessage | SlashCommand | Reaction | ButtonClick] = [
        IncomingMessage("C1", T1, "hello", "U1", thread_ts=T1, mentions_bot=True, received=1.5),
        SlashCommand(user="U1", channel="C1", text="status", thread_ts=T1),
        Reaction(user="U1", channel="C1", ts=T1, name=STOPPED, added=False),
        ButtonClick(action_id=STOP_ACTION, value=f"C1|{T1}", user="U1", channel="C1", message_ts=T2, thread_ts=T1),
    ]
    for event in events:
        assert pickle.loads(pickle.dumps(event)) == event
        assert all(not callable(getattr(event, f.name)) for f in dataclasses.fields(event))
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(event, "channel", "C9")  # noqa: B010 - a frozen field


def test_slack_payloads_become_the_same_types():
    assert slash_command({"command": "/claude", "text": "status ", "user_id": "U1", "channel_id": "C1"}) == \
        SlashCommand(user="U1", channel="C1", text="status ", thread_ts=None)
    assert slash_command({"text": None, "user_id": None}) == SlashCommand(user="", channel="", text="")
    assert reaction({"user": "U1", "reaction": STOPPED, "item": {"channel": "C1", "ts": T1}}) == \
        Reaction(user="U1", channel="C1", ts=T1, name=STOPPED, added=True)
    body = {"user": {"id": "U2"}, "channel": {"id": "C1"}, "container": {"channel_id": "C1", "message_ts": T2},
            "message": {"ts": T2, "thread_ts": T1}, "actions": [{"action_id": PUSH_ACTION, "value": f"C1|{T1}"}]}
    assert click(body) == ButtonClick(action_id=PUSH_ACTION, value=f"C1|{T1}", user="U2", channel="C1",
                                      message_ts=T2, thread_ts=T1)
    assert click({"container": {"channel_id": "C2", "message_ts": T3}}) == \
        ButtonClick(action_id="", value="", user="", channel="C2", message_ts=T3, thread_ts=None)


# --- /claude: who may, help, mistakes --------------------------------------------------------------------------------
@pytest.mark.anyio
@pytest.mark.parametrize("text", ["", "help", "HELP", "?", "--help"])
async def test_help_is_the_answer_to_nothing_or_help(bench, text):
    assert await bench.slash(text) == [HELP]
    assert HELP.startswith("*slackbus* runs Claude Code on tasks from this channel.")
    assert "`/claude cancel [thread link]`" in HELP
    assert bench.poster.posts() == [] and bench.queue.waiting() == []


@pytest.mark.anyio
async def test_one_unknown_word_is_taken_for_a_mistyped_subcommand_not_a_task(bench):
    answer = await bench.slash("stauts")
    assert answer == ["`stauts` is not a subcommand I know. To run a task, describe it: "
                      f"`/claude stauts the flaky login test`.\n\n{HELP}"]
    assert bench.poster.posts() == [] and bench.queue.waiting() == []


@pytest.mark.anyio
async def test_a_user_not_allowed_is_told_their_member_id_and_nothing_runs(bench):
    answer = await bench.slash("fix the login test", user="U9")
    assert answer == ["Sorry, you are not on this bot's allow list, so nothing was run: ask its operator to add "
                      "your member id (U9) to SLACKBUS_ALLOWED_USERS."]
    assert bench.poster.posts() == [] and bench.queue.waiting() == []


@pytest.mark.anyio
async def test_a_channel_not_allowed_is_named_and_nothing_runs(bench):
    answer = await bench.slash("fix the login test", channel="C9")
    assert answer == ["I am not enabled in this channel, so nothing was run: ask the person who runs slackbus to "
                      "add it (C9) to SLACKBUS_ALLOWED_CHANNELS."]
    assert bench.poster.posts() == [] and bench.queue.waiting() == []


@pytest.mark.anyio
async def test_a_task_over_the_limit_is_refused_with_its_size(settings, tmp_path):
    bench = Bench(dataclasses.replace(settings, max_input_chars=20), Store.open(tmp_path / "limit.db"))
    text = "fix the flaky login test please, it fails every other run"
    assert await bench.slash(text) == [too_long(len(text), 20)]
    assert bench.poster.posts() == [] and bench.queue.waiting() == []
    bench.store.close()


# --- /claude <task> ---------------------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_a_task_is_answered_first_then_posted_recorded_and_queued(bench):
    answer = await bench.slash("fix the flaky login test")
    assert answer == ["Got it: starting in a thread here."]
    # the answer (Slack: the ack, within its 3 s) goes before the slower post
    assert [call[0] for call in bench.trail] == ["reply", "post"]
    [(channel, thread_ts, text)] = bench.poster.posts()
    assert (channel, thread_ts, text) == ("C1", None, "<@U1> asked: fix the flaky login test")
    [job] = bench.queue.waiting()
    parent = "1700000100.000001"
    assert (job.channel, job.thread_ts, job.trigger_ts, job.user, job.new_session) == ("C1", parent, parent, "U1",
                                                                                       True)
    stored = bench.store.get_message("C1", parent)
    assert stored is not None and (stored.user, stored.text) == ("U1", "fix the flaky login test")
    thread = bench.store.get_thread("C1", parent)
    assert thread is not None and (thread.requester, thread.workdir) == ("U1", str(bench.settings.workdir))
    await bench.spawned.run()
    assert bench.trail[2:] == [("react", "C1", parent, WORKING)]  # 👀 on the request, as for a mention


@pytest.mark.anyio
async def test_a_task_where_the_bot_may_not_post_says_to_invite_it(bench):
    bench.poster.refuse = "not_in_channel"
    assert await bench.slash("fix the flaky login test") == ["Got it: starting in a thread here."]
    assert bench.poster.ephemerals() == [("C1", "U1", "I could not post in this channel (not_in_channel): invite me "
                                          "with `/invite @slackbus` first.", None)]
    assert bench.queue.waiting() == []


class RefusingWebClient:
    """Slack's Web API as far as a post the bot may not make: chat.postMessage refused, ephemerals recorded."""

    def __init__(self) -> None:
        self.ephemerals: list[dict[str, Any]] = []

    async def chat_postMessage(self, **kwargs: Any) -> Any:
        raise SlackApiError("The request to the Slack API failed.", {"ok": False, "error": "not_in_channel"})

    async def chat_postEphemeral(self, **kwargs: Any) -> Any:
        self.ephemerals.append(kwargs)
        return {"ok": True}


@pytest.mark.anyio
async def test_slacks_refusal_reaches_the_commands_as_the_cores_error(settings, tmp_path):
    store = Store.open(tmp_path / "slack.db")
    client = RefusingWebClient()
    poster = SlackPoster(cast(AsyncWebClient, client), store, bot_user_id=BOT, bot_id=None)
    with pytest.raises(PostRefusedError) as refused:
        await poster.post("C1", None, SlackMessage(text="hello"))
    assert refused.value.reason == "not_in_channel"
    assert isinstance(refused.value.__cause__, SlackApiError)
    assert "not_in_channel" in str(refused.value)  # the sentence a `slackbus post` caller is shown, as before
    bench = Bench(settings, store, poster)
    assert await bench.slash("fix the flaky login test") == ["Got it: starting in a thread here."]
    assert bench.queue.waiting() == []
    assert client.ephemerals == [{"channel": "C1", "user": "U1", "text": "I could not post in this channel "
                                  "(not_in_channel): invite me with `/invite @slackbus` first."}]
    store.close()


# --- /claude status, sessions, cwd, approve ---------------------------------------------------------------------------
@pytest.mark.anyio
async def test_status_shows_what_runs_and_waits_here_and_hides_the_rest(bench):
    bench.running(user="U1", channel="C1", thread_ts=T1, run_id="runhere")
    bench.running(user="U2", channel="C2", thread_ts=T3, run_id="runthere")
    bench.queued(user="U2", channel="C1", thread_ts=T2)
    [answer] = await bench.slash("status", user="U1")
    lines = answer.split("\n")
    assert lines[0] == "*Running* (2 of 2):"
    assert lines[1].startswith(f"• <@U1> in <#C1>, `{T1}`: for 0s") and lines[1].endswith("(run `runhere`)")
    assert lines[2] == "• and 1 elsewhere"
    assert lines[3] == "*Queued* (1):"
    assert lines[4].startswith(f"1. <@U2> in <#C1>, `{T2}`: waiting ")
    assert lines[5].startswith(f"*Claude processes*: 0 of {bench.settings.max_processes} (SLACKBUS_MAX_PROCESSES")
    assert "runthere" not in answer
    [admins] = await bench.slash("status", user=ADMIN)
    assert "(run `runthere`)" in admins and "elsewhere" not in admins


@pytest.mark.anyio
async def test_status_with_nothing_going_says_none(bench):
    [answer] = await bench.slash("status")
    assert answer.split("\n")[:2] == ["*Running*: none", "*Queued*: none"]


@pytest.mark.anyio
async def test_sessions_lists_this_channels_threads_with_their_state(bench):
    assert await bench.slash("sessions") == [
        "No Claude sessions in this channel yet: mention me with a task to start one."]
    bench.store.save_thread(ThreadSession("C1", T1, "abcdef0123456789", "/w", True, T1, "U1"))
    bench.running(thread_ts=T1)
    [answer] = await bench.slash("sessions")
    assert answer.startswith("*Recent sessions in this channel* (reply in a thread to continue it):\n")
    assert f"• `{T1}`: started by <@U1>, session `abcdef01`, last active " in answer
    assert answer.endswith(", running")


@pytest.mark.anyio
async def test_cwd_is_shown_to_anyone_but_changed_only_by_an_admin(bench, tmp_path):
    [shown] = await bench.slash("cwd", user="U1")
    assert shown.startswith(f"Claude works in `{bench.settings.workdir}` in this channel (allowed roots: ")
    assert await bench.slash(f"cwd {tmp_path}", user="U1") == [
        "Only an admin (SLACKBUS_ADMIN_USERS) can change this channel's directory."]
    assert bench.store.channel_workdir("C1") is None


@pytest.mark.anyio
async def test_approve_with_nothing_waiting_and_with_an_unknown_word(bench):
    assert await bench.slash("approve") == ["Nothing here is waiting for an approval."]
    assert await bench.slash("deny", thread_ts=T1) == ["Nothing here is waiting for an approval."]
    assert await bench.slash("approve sometimes") == [
        "Use `/claude approve` (this once), `/claude approve session` (for the rest of the session) or "
        "`/claude deny`."]


# --- /claude cancel ---------------------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_the_asker_cancels_their_queued_task(bench):
    job = bench.queued(user="U1", thread_ts=T2)
    assert await bench.slash("cancel", user="U1") == ["Cancelled the queued task."]
    assert bench.queue.waiting() == []
    assert bench.store.unfinished_requests() == []  # recorded as cancelled, so a restart does not run it
    await bench.spawned.run()
    assert ("unreact", "C1", job.trigger_ts, WORKING) in bench.trail
    assert ("react", "C1", job.trigger_ts, STOPPED) in bench.trail
    assert bench.poster.posts() == [("C1", T2, ":octagonal_sign: Cancelled by <@U1> before it started.")]


@pytest.mark.anyio
async def test_someone_else_cannot_cancel_a_queued_task_but_an_admin_can(bench):
    bench.queued(user="U1", thread_ts=T2)
    assert await bench.slash(f"cancel {T2}", user="U2") == [
        "Only the person who asked, or an admin (SLACKBUS_ADMIN_USERS), can cancel that task."]
    assert [j.thread_ts for j in bench.queue.waiting()] == [T2]
    assert [r.ts for r in bench.store.unfinished_requests()] == [T2]
    assert await bench.slash("cancel", user="U2") == ["Nothing of yours is running or queued."]
    assert await bench.slash(f"cancel {T2}", user=ADMIN) == ["Cancelled the queued task."]
    assert bench.queue.waiting() == []
    await bench.spawned.run()
    assert bench.poster.posts() == [("C1", T2, f":octagonal_sign: Cancelled by <@{ADMIN}> before it started.")]


@pytest.mark.anyio
async def test_cancel_of_a_running_run_by_the_asker_another_user_and_an_admin(bench):
    handle = bench.running(user="U1", thread_ts=T1, run_id="abc123")
    assert await bench.slash("cancel abc123", user="U2") == [
        "Only <@U1>, who asked, or an admin (SLACKBUS_ADMIN_USERS) can cancel that run."]
    await bench.spawned.run()
    assert handle.cancelled_by is None
    assert await bench.slash("cancel", user="U1") == [f"Cancelling the run in `{T1}`."]
    await bench.spawned.run()
    assert handle.cancelled_by == "U1"
    assert handle.scope.cancel_called
    other = bench.running(user="U2", thread_ts=T3, run_id="def456")
    assert await bench.slash(f"cancel {T3}", user=ADMIN) == [f"Cancelling the run in `{T3}`."]
    await bench.spawned.run()
    assert other.cancelled_by == ADMIN


@pytest.mark.anyio
async def test_cancel_with_something_unreadable_or_nothing_there(bench):
    assert await bench.slash("cancel not-a-link") == [
        "I could not read that: give a thread link (⋮ → Copy link), a run id from `/claude status`, or nothing, to "
        "cancel your own run."]
    assert await bench.slash(f"cancel {T3}") == ["No run or queued task in that thread."]


@pytest.mark.anyio
async def test_cancel_run_says_whether_it_acted(bench):
    """The typed result the 🛑 and Stop paths branch on (not the sentence's first word)."""
    handle = bench.running(user="U1")
    assert await bench.commands.cancel_run(handle, "U2") == Answer(
        "Only <@U1>, who asked, or an admin (SLACKBUS_ADMIN_USERS) can cancel that run.", acted=False)
    assert await bench.commands.cancel_run(handle, ADMIN) == Answer(f"Cancelling the run in `{T1}`.", acted=True)


# --- 🛑 ---------------------------------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_the_stop_reaction_by_the_asker_cancels_their_run_quietly(bench):
    handle = bench.running(user="U1", thread_ts=T1)
    await bench.commands.on_reaction(Reaction(user="U1", channel="C1", ts=T1, name=STOPPED))
    await bench.spawned.run()
    assert handle.cancelled_by == "U1"
    assert bench.poster.ephemerals() == []


@pytest.mark.anyio
async def test_the_stop_reaction_by_someone_else_is_refused_privately(bench):
    handle = bench.running(user="U1", thread_ts=T1)
    await bench.commands.on_reaction(Reaction(user="U2", channel="C1", ts=T1, name=STOPPED))
    await bench.spawned.run()
    assert handle.cancelled_by is None
    assert bench.poster.ephemerals() == [
        ("C1", "U2", "Only <@U1>, who asked, or an admin (SLACKBUS_ADMIN_USERS) can cancel that run.", T1)]


@pytest.mark.anyio
async def test_the_stop_reaction_by_a_user_not_allowed_is_refused_privately(bench):
    handle = bench.running(user="U1", thread_ts=T1)
    await bench.commands.on_reaction(Reaction(user="U9", channel="C1", ts=T1, name=STOPPED))
    assert handle.cancelled_by is None
    assert bench.poster.ephemerals() == [
        ("C1", "U9", "You are not on this bot's allow list, so you cannot stop runs.", T1)]


@pytest.mark.anyio
@pytest.mark.parametrize("event", [
    Reaction(user="U1", channel="C1", ts=T1, name=WORKING),  # another emoji
    Reaction(user="U1", channel="C1", ts=T1, name=STOPPED, added=False),  # 🛑 taken off
    Reaction(user="", channel="C1", ts=T1, name=STOPPED),  # nobody
    Reaction(user="U1", channel="C1", ts=T3, name=STOPPED),  # not a running request
    Reaction(user="U1", channel="C2", ts=T1, name=STOPPED),  # the same ts in another channel
], ids=["other-emoji", "removed", "no-user", "not-running", "other-channel"])
async def test_other_reactions_do_nothing(bench, event):
    handle = bench.running(user="U1", thread_ts=T1)
    await bench.commands.on_reaction(event)
    await bench.spawned.run()
    assert handle.cancelled_by is None
    assert bench.trail == []


# --- buttons ----------------------------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_the_stop_button_cancels_or_says_the_run_is_over(bench):
    handle = bench.running(user="U1", thread_ts=T1)
    await bench.commands.on_stop_button(ButtonClick(STOP_ACTION, f"C1|{T1}", "U1", "C1"))
    await bench.spawned.run()
    assert handle.cancelled_by == "U1"
    await bench.commands.on_stop_button(ButtonClick(STOP_ACTION, f"C1|{T3}", "U1", "C1"))
    assert bench.poster.ephemerals() == [("C1", "U1", "That run has already finished.", T3)]


@pytest.mark.anyio
@pytest.mark.parametrize("value", ["", "|" + T1])
async def test_a_stop_click_with_a_bad_value_is_ignored(bench, value):
    handle = bench.running(user="U1", thread_ts=T1)
    await bench.commands.on_stop_button(ButtonClick(STOP_ACTION, value, "U1", "C1"))
    await bench.commands.on_stop_button(ButtonClick(STOP_ACTION, f"C1|{T1}", "", "C1"))  # nobody clicked
    await bench.spawned.run()
    assert handle.cancelled_by is None
    assert bench.trail == []


@pytest.mark.anyio
async def test_a_change_click_with_an_unknown_action_or_value_is_ignored(bench):
    await bench.commands.on_change_button(ButtonClick("slackbus_merge", f"C1|{T1}", "U1", "C1"))
    await bench.commands.on_change_button(ButtonClick(PUSH_ACTION, "", "U1", "C1"))
    await bench.commands.on_attach_button(ButtonClick(ATTACH_ACTION, "", "U1", "C1"))
    assert bench.trail == [] and bench.spawned.calls == []


@pytest.mark.anyio
async def test_a_push_click_on_a_thread_without_a_worktree_is_answered_privately(bench):
    bench.store.save_thread(ThreadSession("C1", T1, "abcdef0123456789", "/w", True, T1, "U1"))
    await bench.commands.on_change_button(ButtonClick(PUSH_ACTION, f"C1|{T1}", "U1", "C1", thread_ts=T1))
    [(channel, user, text, thread_ts)] = bench.poster.ephemerals()
    assert (channel, user, thread_ts) == ("C1", "U1", T1)
    assert text.startswith("That thread has no worktree of its own")
    assert bench.spawned.calls == []  # nothing was started


@pytest.mark.anyio
async def test_an_attach_click_by_a_user_not_allowed_or_on_a_thread_with_no_session(bench):
    await bench.commands.on_attach_button(ButtonClick(ATTACH_ACTION, f"C1|{T1}", "U9", "C1"))
    await bench.commands.on_attach_button(ButtonClick(ATTACH_ACTION, f"C1|{T1}", "U1", "C1"))
    assert bench.poster.ephemerals() == [
        ("C1", "U9", "You are not on this bot's allow list.", T1),
        ("C1", "U1", "That thread has no Claude session yet (or I have not seen one of yours here): start one "
                     "first.", T1),
    ]


@pytest.mark.anyio
async def test_an_approval_click_for_a_request_no_longer_waiting_is_refused_privately(bench):
    await bench.commands.on_approval_button(ButtonClick(APPROVE_ONCE, "no-such-request", "U1", "C1", thread_ts=T1))
    await bench.commands.on_approval_button(ButtonClick(APPROVE_ONCE, "no-such-request", "", "C1"))  # ignored
    assert bench.poster.ephemerals() == [("C1", "U1", "That request was already answered.", T1)]

