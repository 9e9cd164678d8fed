"""approvals.Approvals: a tool call waits for the requester (or an admin) in the thread; once, for the session, denied,
or no answer in time. Driven through the can_use_tool callback a session gets, over a fake Poster."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from claude_agent_sdk import PermissionResultAllow, PermissionResultDeny

from bot.core.approvals import COMMAND_HINT, Approvals
from tests.fakes.poster import FakePoster, Posted

# the buttons' action ids: messages already posted in Slack carry them, so they never change
APPROVE_ONCE, APPROVE_SESSION, DENY = "slackbus_approve_once", "slackbus_approve_session", "slackbus_deny"
C, THREAD, REQUESTER, ADMIN, OTHER = "C1", "1700000001.000100", "U1", "U9", "U2"
LS = ("Bash", {"command": "ls -la"})


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def approvals(poster: FakePoster, *, timeout: float = 5.0, buttons: bool = True) -> Approvals:
    return Approvals(poster, is_admin=lambda user: user == ADMIN, timeout=timeout, buttons=buttons)


def here() -> tuple[str, str, str]:
    return (C, THREAD, REQUESTER)


def buttons_of(question: Posted) -> dict[str, tuple[str, str]]:
    """label → (action_id, value) of the question's buttons."""
    (actions,) = [b for b in question.versions[0].blocks if b["type"] == "actions"]
    return {e["text"]["text"]: (e["action_id"], e["value"]) for e in actions["elements"]}


def request_of(question: Posted) -> str:
    """The request id every button of the question carries (what a click sends back)."""
    (request,) = {value for _, value in buttons_of(question).values()}
    return request


class Asking:
    """One can_use_tool call running in the background, as the CLI makes it."""

    def __init__(self) -> None:
        self.result: Any = None
        self.done = anyio.Event()

    async def __call__(self, can_use_tool: Any, tool: str, args: dict[str, Any]) -> None:
        self.result = await can_use_tool(tool, args, None)
        self.done.set()


async def ask(tg: Any, poster: FakePoster, can_use_tool: Any, tool: str = LS[0], args: dict[str, Any] = LS[1],
              ) -> tuple[Asking, Posted]:
    """Start a tool call and wait for its question in the thread."""
    before = len(poster.posts)
    asking = Asking()
    tg.start_soon(asking, can_use_tool, tool, args)
    await poster.until(lambda: len(poster.posts) > before)
    return asking, list(poster.posts.values())[-1]


async def answered(asking: Asking) -> Any:
    with anyio.fail_after(2):
        await asking.done.wait()
    return asking.result


@pytest.mark.anyio
async def test_the_question_shows_the_call_and_three_buttons() -> None:
    poster = FakePoster()
    a = approvals(poster)
    async with anyio.create_task_group() as tg:
        asking, question = await ask(tg, poster, a.callback_for("s1", here))
        assert (question.channel, question.thread_ts) == (C, THREAD)
        assert question.message.text == "Claude wants to use Bash: allow it?"
        section = question.message.blocks[0]["text"]["text"]
        assert f"<@{REQUESTER}>, allow it?" in section and "ls -la" in section
        buttons = buttons_of(question)
        assert [action for action, _ in buttons.values()] == [APPROVE_ONCE, APPROVE_SESSION, DENY]
        assert list(buttons) == ["Approve once", "Approve for this session", "Deny"]
        assert request_of(question)  # one request id on all three
        tg.cancel_scope.cancel()
    assert not asking.done.is_set()


@pytest.mark.anyio
async def test_approve_once_allows_this_call_and_asks_again_next_time() -> None:
    poster = FakePoster()
    a = approvals(poster)
    can_use_tool = a.callback_for("s1", here)
    async with anyio.create_task_group() as tg:
        asking, question = await ask(tg, poster, can_use_tool)
        action, request = buttons_of(question)["Approve once"]
        assert await a.on_click(action, request, REQUESTER) is None
        assert isinstance(await answered(asking), PermissionResultAllow)
        assert f"Approved once by <@{REQUESTER}>" in question.message.text  # the question says who answered
        assert question.message.blocks[-1]["type"] == "section"  # and its buttons are gone

        again, second = await ask(tg, poster, can_use_tool)  # the same call again: asked again
        assert second.ts != question.ts
        await a.on_click(DENY, request_of(second), REQUESTER)
        assert isinstance(await answered(again), PermissionResultDeny)
    assert len(a.round_trips) == 2


@pytest.mark.anyio
async def test_approve_for_the_session_allows_the_same_call_without_asking_in_that_session_only() -> None:
    poster = FakePoster()
    a = approvals(poster)
    s1 = a.callback_for("s1", here)
    async with anyio.create_task_group() as tg:
        asking, question = await ask(tg, poster, s1)
        await a.on_click(APPROVE_SESSION, request_of(question), REQUESTER)
        assert isinstance(await answered(asking), PermissionResultAllow)
        assert "Approved for this session" in question.message.text

        with anyio.fail_after(1):  # the very same call: no question
            assert isinstance(await s1(*LS, None), PermissionResultAllow)
        assert len(poster.posts) == 1

        other_args, _ = await ask(tg, poster, s1, "Bash", {"command": "rm -rf build"})  # another command: asked
        other_session, _ = await ask(tg, poster, a.callback_for("s2", here))  # another session: asked
        assert len(poster.posts) == 3
        tg.cancel_scope.cancel()
    assert not other_args.done.is_set() and not other_session.done.is_set()


@pytest.mark.anyio
async def test_deny_tells_claude_who_denied() -> None:
    poster = FakePoster()
    a = approvals(poster)
    async with anyio.create_task_group() as tg:
        asking, question = await ask(tg, poster, a.callback_for("s1", here))
        await a.on_click(DENY, request_of(question), REQUESTER)
        result = await answered(asking)
    assert isinstance(result, PermissionResultDeny)
    assert result.message == f"The user did not allow this (denied by <@{REQUESTER}> in Slack)."
    assert f":no_entry: Denied by <@{REQUESTER}>." in question.message.text


@pytest.mark.anyio
async def test_no_answer_in_time_is_a_denial_and_the_question_says_so() -> None:
    poster = FakePoster()
    a = approvals(poster, timeout=0.05)
    async with anyio.create_task_group() as tg:
        asking, question = await ask(tg, poster, a.callback_for("s1", here))
        result = await answered(asking)
    assert isinstance(result, PermissionResultDeny)
    assert result.message == "The user did not allow this (no answer in Slack within 0.05 s)."
    assert "No answer within 0.05 s (SLACKBUS_APPROVAL_SECONDS): denied." in question.message.text
    # a click after that finds nothing to answer
    assert await a.on_click(APPROVE_ONCE, request_of(question), REQUESTER) == \
        "That request was already answered."
    assert a.round_trips == []


@pytest.mark.anyio
async def test_only_the_requester_or_an_admin_may_answer() -> None:
    poster = FakePoster()
    a = approvals(poster)
    async with anyio.create_task_group() as tg:
        asking, question = await ask(tg, poster, a.callback_for("s1", here))
        request = request_of(question)
        refusal = await a.on_click(APPROVE_ONCE, request, OTHER)
        assert refusal == (f"Only <@{REQUESTER}>, who asked, or an admin (SLACKBUS_ADMIN_USERS) can answer this.")
        await anyio.wait_all_tasks_blocked()
        assert not asking.done.is_set() and len(question.versions) == 1  # still waiting, nothing edited

        assert await a.on_click(APPROVE_ONCE, request, ADMIN) is None
        assert isinstance(await answered(asking), PermissionResultAllow)
        assert f"Approved once by <@{ADMIN}>" in question.message.text
        assert await a.on_click(DENY, request, REQUESTER) == "That request was already answered."
    assert len(question.versions) == 2


@pytest.mark.anyio
async def test_a_call_outside_any_turn_is_denied_without_asking() -> None:
    poster = FakePoster()
    a = approvals(poster)
    result = await a.callback_for("s1", lambda: None)(*LS, None)
    assert isinstance(result, PermissionResultDeny)
    assert result.message == "No one in Slack can approve this now."
    assert poster.calls == []


@pytest.mark.anyio
async def test_the_commands_answer_the_latest_request_in_the_thread_that_the_user_may_answer() -> None:
    poster = FakePoster()
    a = approvals(poster, buttons=False)  # the local channel: no buttons, the question names the commands
    t2 = "1700000002.000100"
    async with anyio.create_task_group() as tg:
        assert await a.answer_command(REQUESTER, C, THREAD, APPROVE_ONCE) == "Nothing here is waiting for an approval."
        first, question = await ask(tg, poster, a.callback_for("s1", here))
        assert question.message.blocks == [] and question.message.text.endswith(COMMAND_HINT)
        theirs, _ = await ask(tg, poster, a.callback_for("s2", lambda: (C, t2, OTHER)), "Read", {"file_path": "/x"})

        # in the channel (no thread): the requester's own request, though OTHER's is newer
        assert await a.answer_command(REQUESTER, C, None, APPROVE_SESSION) == "Approved for this session: Bash."
        assert isinstance(await answered(first), PermissionResultAllow)
        assert question.message.text.endswith(f"Approved for this session by <@{REQUESTER}>.")

        newest, _ = await ask(tg, poster, a.callback_for("s3", here), "Write", {"file_path": "/y"})
        # in OTHER's thread: only the request there, though the requester's own in THREAD is newer
        assert (await a.answer_command(REQUESTER, C, t2, DENY)).startswith(f"Only <@{OTHER}>, who asked")
        assert await a.answer_command(ADMIN, C, t2, DENY) == "Denied: Read."
        assert isinstance(await answered(theirs), PermissionResultDeny)
        assert not newest.done.is_set()
        tg.cancel_scope.cancel()


class EditWaits(FakePoster):
    """A poster whose edits wait until released: the moment between a timeout and the question saying so."""

    def __init__(self) -> None:
        super().__init__()
        self.editing = anyio.Event()
        self.let_go = anyio.Event()

    async def update(self, channel: str, ts: str, message: Any) -> None:
        self.editing.set()
        await self.let_go.wait()
        await super().update(channel, ts, message)


@pytest.mark.anyio
async def test_a_click_while_the_timeout_is_being_written_cannot_turn_the_denial_into_an_approval() -> None:
    poster = EditWaits()
    a = approvals(poster, timeout=0.05)
    async with anyio.create_task_group() as tg:
        asking, question = await ask(tg, poster, a.callback_for("s1", here))
        with anyio.fail_after(2):
            await poster.editing.wait()  # timed out; "denied" is on its way to Slack
        refusal = await a.on_click(APPROVE_ONCE, request_of(question), REQUESTER)
        poster.let_go.set()
        result = await answered(asking)
    assert refusal == "That request was already answered."
    assert isinstance(result, PermissionResultDeny)
