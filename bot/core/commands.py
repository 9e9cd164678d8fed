"""Job control: `/claude` and its subcommands, the 🛑 reaction and the buttons (Stop, approvals, Continue in a
terminal, Show diff / Push / Pull request), whichever transport they came by (bot.core.events).

Every path checks who may: only allowed users start work; only the requester or an admin cancels.
Answers to subcommands go back through the command's Reply (on Slack: its ack, ephemeral, within Slack's 3 s).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bot.config import Settings
from bot.core import handoff, renderer
from bot.core.approvals import Approvals
from bot.core.dispatcher import Dispatcher, Job, JobQueue, too_long
from bot.core.events import (
    APPROVE_ONCE,
    APPROVE_SESSION,
    DENY,
    DIFF_ACTION,
    PR_ACTION,
    PUSH_ACTION,
    ButtonClick,
    Reaction,
    Reply,
    SlashCommand,
)
from bot.core.handoff import parse_thread_ref
from bot.core.pipeline import RunHandle, TaskPipeline
from bot.core.poster import Poster
from bot.core.signs import STOPPED, Signs
from bot.core.store import Store, StoredMessage, ThreadSession
from bot.core.worktrees import Worktree, Worktrees
from bot.errors import PostRefusedError, WorktreeError
from bot.log import get_logger

log = get_logger("slackbus.commands")

DIFF, PUSH, PR = "diff", "push", "pr"
INLINE_DIFF_CHARS = 2500  # a longer diff is posted as a file

HELP = """\
*slackbus* runs Claude Code on tasks from this channel.
• `@slackbus <task>` or `/claude <task>`: run a task; I answer in a thread, with the channel's recent messages \
as context. Reply in the thread to continue the same Claude session (no mention needed).
• `/claude status`: what is running and queued here and for you (admins: everywhere), and the Claude processes \
I keep (against the cap).
• `/claude sessions`: this channel's recent sessions, with links to their threads.
• `/claude cancel [thread link]`: stop your run (admins: any run). A :octagonal_sign: reaction on the request, \
or the Stop button, does the same.
• `/claude cwd [path]`: the folder Claude works in here (admins can change it, within the allowed roots).
• `/claude approve [session]`, `/claude deny`: answer Claude's request to use a tool (the buttons do the same).
• `/claude attach [thread link]`: the command that continues your thread's session (admins: any) in a \
terminal on my host (default: your latest thread here). `slackbus handoff` there hands a terminal session to Slack.
• `/claude diff|push|pr [thread link]`: for a thread with its own git worktree: post its changes, push its \
branch, or open a pull request (push and pr: who started it, or an admin; default: your latest such thread here).
• `/claude usage [@someone|#channel] [today|7d|30d]`: what runs cost, by person and by channel; `/claude budget`: \
the spending limits and what is used (admins: `/claude budget lift <thread link>` lets that thread run over them).
• `/claude schedule "0 9 * * 1-5" <task>`, `/claude schedule list|rm ID`: run a task here on a schedule \
(`/claude schedule` explains).
• `/claude help`: this text."""

ECHO_CHARS = 300  # how much of a `/claude <task>` the "asked:" message in the channel repeats


def _shortened(text: str, limit: int = ECHO_CHARS) -> str:
    if len(text) <= limit:
        return text
    kept = text[:limit].rstrip()
    return f"{kept} … [{len(text) - len(kept):,} more characters]"


@dataclass(frozen=True)
class Answer:
    """What a command did, in a sentence for the person who asked: `acted` is False when it was refused or had
    nothing to act on (a button or a reaction then shows the sentence privately)."""

    text: str
    acted: bool


def _ago(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds // 60 % 60:02d}m"


@dataclass(frozen=True)
class NodeState:
    """One node of the cluster as `/claude status` shows it (bot.cluster.nodes makes these)."""

    node: str
    me: bool
    alive: bool
    age_s: float  # since its last heartbeat
    running: int
    queued: int
    max_concurrent: int
    processes: int
    runs: tuple[tuple[str, str, str, str, float], ...]  # (channel, thread_ts, requester, run id, seconds)


class Commands:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        queue: JobQueue,
        pipeline: TaskPipeline,
        poster: Poster,
        dispatcher: Dispatcher,
        signs: Signs,
        *,
        workspace_url: str,
        spawn: Callable[..., None],
        workdir_for: Callable[[str], str],
        approvals: Approvals | None = None,
        worktrees: Worktrees | None = None,
        cluster_view: Callable[[], Awaitable[list[NodeState]]] | None = None,
        more: Mapping[str, Callable[[SlashCommand], Awaitable[str]]] | None = None,
    ) -> None:
        self._more = dict(more or {})  # more subcommands (usage, triggers, schedule…): name → answer
        self._cluster_view = cluster_view  # the cluster's nodes (SLACKBUS_NATS_URL); None on one host
        self._signs = signs
        self._worktrees = worktrees
        self._workdir_for = workdir_for
        self._approvals = approvals
        self._settings = settings
        self._store = store
        self._queue = queue
        self._pipeline = pipeline
        self._poster = poster
        self._dispatcher = dispatcher
        self._url = workspace_url.rstrip("/") + "/" if workspace_url else ""
        self._spawn = spawn

    def link(self, channel: str, ts: str, label: str = "thread") -> str:
        if not self._url:
            return f"`{ts}`"
        return f"<{self._url}archives/{channel}/p{ts.replace('.', '')}|{label}>"

    # --- /claude -----------------------------------------------------------------------------------------
    async def slash(self, command: SlashCommand, reply: Reply) -> None:
        """`/claude …`: a subcommand's answer, or a task started, said through `reply` (once, on every path)."""
        text = command.text.strip()
        user, channel = command.user, command.channel
        word, _, rest = text.partition(" ")
        sub = word.lower()
        if not self._settings.is_allowed(user):
            await reply(
                f"Sorry, you are not on this bot's allow list, so nothing was run: ask its operator to add your "
                f"member id ({user}) to SLACKBUS_ALLOWED_USERS."
            )
            log.info("commands.refused", user=user, channel=channel, sub=sub or "help")
            return
        if not self._settings.is_channel_allowed(channel):
            await reply(f"I am not enabled in this channel, so nothing was run: ask the person who runs slackbus "
                        f"to add it ({channel}) to SLACKBUS_ALLOWED_CHANNELS.")
            log.info("commands.channel_refused", user=user, channel=channel, sub=sub or "help")
            return
        handlers: dict[str, Callable[[str, str, str], Awaitable[str]]] = {
            "status": self._status,
            "sessions": self._sessions,
            "cancel": self._cancel,
            "stop": self._cancel,
            "cwd": self._cwd,
            "attach": self._attach,
            "diff": lambda u, c, r: self._change(DIFF, u, c, r),
            "push": lambda u, c, r: self._change(PUSH, u, c, r),
            "pr": lambda u, c, r: self._change(PR, u, c, r),
            "approve": lambda u, c, r: self._decide(u, c, r, command.thread_ts, approve=True),
            "allow": lambda u, c, r: self._decide(u, c, r, command.thread_ts, approve=True),
            "deny": lambda u, c, r: self._decide(u, c, r, command.thread_ts, approve=False),
        }
        if not text or sub in {"help", "?", "-h", "--help"}:
            await reply(HELP)
            return
        if sub in self._more:
            await reply(await self._more[sub](command))
            return
        if sub in handlers:
            await reply(await handlers[sub](user, channel, rest.strip()))
            return
        if not rest and re.fullmatch(r"[a-z][a-z-]{1,15}", word):
            # one bare word is a mistyped subcommand far more often than a task
            await reply(f"`{word}` is not a subcommand I know. To run a task, describe it: "
                        f"`/claude {word} the flaky login test`.\n\n{HELP}")
            return
        if len(text) > self._settings.max_input_chars:
            await reply(too_long(len(text), self._settings.max_input_chars))
            log.info("commands.too_long", user=user, channel=channel, chars=len(text))
            return
        await reply("Got it: starting in a thread here.")
        await self.start_task(user, channel, text)

    async def start_task(self, user: str, channel: str, text: str, *, heading: str | None = None,
                         kind: str = "command") -> str | None:
        """Post the request in the channel (`heading`, else "<@user> asked: …") and run it in that message's thread
        as `user`'s request (a schedule's owner's too): the parent's ts, or None when it could not be posted."""
        try:
            parent_ts = await self._poster.post(channel, None, renderer.render_notice(
                heading or f"<@{user}> asked: {_shortened(text)}"))
        except PostRefusedError as exc:
            await self._poster.post_ephemeral(
                channel, user, f"I could not post in this channel ({exc.reason}): invite me with "
                "`/invite @slackbus` first."
            )
            return None
        # The parent stands for the user's request: record it as theirs, so context and follow-ups work.
        self._store.record_message(StoredMessage(channel, parent_ts, None, user, None, text))
        if not self._store.claim_request(channel, parent_ts, parent_ts, user, kind):
            return None
        self._store.save_thread(ThreadSession(channel, parent_ts, "", self._workdir_for(channel), False, "0", user))
        self._dispatcher.submit(
            Job(channel=channel, thread_ts=parent_ts, trigger_ts=parent_ts, user=user, new_session=True,
                received=time.monotonic(), is_dm=channel.startswith("D"))
        )
        return parent_ts

    def _may_see(self, user: str, channel: str, where: str, requester: str | None) -> bool:
        """Runs in this channel and the user's own; admins see every channel's and DM's."""
        return where == channel or requester == user or self._settings.is_admin(user)

    async def _status(self, user: str, channel: str, rest: str) -> str:
        now = time.monotonic()
        lines = []
        running = self._pipeline.runs()
        cap = self._settings.max_concurrent
        lines.append(f"*Running* ({len(running)} of {cap}):" if running else "*Running*: none")
        hidden = 0
        for h in running:
            if not self._may_see(user, channel, h.channel, h.requester):
                hidden += 1
                continue
            step = f", {h.step}" if h.step else ""
            where = self.link(h.channel, h.thread_ts)
            lines.append(
                f"• <@{h.requester}> in <#{h.channel}>, {where}: for {_ago(now - h.started)}{step} (run `{h.run_id}`)"
            )
        if hidden:
            lines.append(f"• and {hidden} elsewhere")
        waiting = self._queue.waiting()
        lines.append(f"*Queued* ({len(waiting)}):" if waiting else "*Queued*: none")
        hidden = 0
        for position, job in enumerate(waiting, start=1):
            if not self._may_see(user, channel, job.channel, job.user):
                hidden += 1
                continue
            lines.append(
                f"{position}. <@{job.user}> in <#{job.channel}>, {self.link(job.channel, job.thread_ts)}: waiting "
                f"{_ago(now - job.received)}"
            )
        if hidden:
            lines.append(f"and {hidden} elsewhere")
        c = self._pipeline.process_counts()
        other = c["live"] - c["busy"] - c["warm"] - c["pool"]
        why = self._settings.max_processes_why
        source = "SLACKBUS_MAX_PROCESSES" + (f", {why}" if why and why != "SLACKBUS_MAX_PROCESSES" else "")
        lines.append(f"*Claude processes*: {c['live']} of {self._settings.max_processes} ({source}): "
                     f"{c['busy']} running, {c['warm']} kept warm for follow-ups, {c['pool']} pre-started"
                     + (f", {other} starting or closing" if other > 0 else ""))
        if self._worktrees is not None:
            kept = self._store.worktrees()
            if kept:
                size = await self._worktrees.disk_use()
                lines.append(f"*Worktrees*: {len(kept)} kept, {size / 1e6:,.1f} MB (removed after "
                             f"{self._settings.worktree_ttl / 86400:g} days quiet, unless they hold unpushed work)")
        if self._cluster_view is not None:
            lines.extend(self._nodes_lines(user, channel, await self._cluster_view()))
        return "\n".join(lines)

    def _nodes_lines(self, user: str, channel: str, nodes: list[NodeState]) -> list[str]:
        """The cluster: each node's runs, queue and processes (this node's runs are listed above)."""
        lines = [f"*Nodes* ({sum(n.alive for n in nodes)} alive of {len(nodes)}):"]
        for n in nodes:
            name = f"`{n.node}`" + (" (this one)" if n.me else "")
            if not n.alive:
                lines.append(f"• {name}: stopped {_ago(n.age_s)} ago; its threads go on on the others")
                continue
            lines.append(f"• {name}: {n.running} of {n.max_concurrent} running, {n.queued} queued, "
                         f"{n.processes} Claude processes")
            if n.me:
                continue
            hidden = 0
            for run_channel, thread_ts, requester, run_id, seconds in n.runs:
                if not self._may_see(user, channel, run_channel, requester):
                    hidden += 1
                    continue
                lines.append(f"    ◦ <@{requester}> in <#{run_channel}>, {self.link(run_channel, thread_ts)}: for "
                             f"{_ago(seconds)} (run `{run_id}`)")
            if hidden:
                lines.append(f"    ◦ and {hidden} elsewhere")
        return lines

    async def _sessions(self, user: str, channel: str, rest: str) -> str:
        threads = self._store.recent_threads(channel, limit=10)
        if not threads:
            return "No Claude sessions in this channel yet: mention me with a task to start one."
        lines = ["*Recent sessions in this channel* (reply in a thread to continue it):"]
        for thread, updated in threads:
            key = (thread.channel, thread.thread_ts)
            state = "running" if self._pipeline.is_running(key) else "idle"
            who = f"<@{thread.requester}>" if thread.requester else "someone"
            when = renderer.utc_time(updated)
            lines.append(
                f"• {self.link(thread.channel, thread.thread_ts)}: started by {who}, session "
                f"`{thread.session_id[:8]}`, last active {when}, {state}"
            )
        return "\n".join(lines)

    async def _decide(self, user: str, channel: str, rest: str, thread_ts: str | None, *, approve: bool) -> str:
        """`/claude approve [session]`, `/claude deny`: answer a tool request without the buttons."""
        if self._approvals is None:
            return "Nothing here is waiting for an approval."
        if not approve:
            decision = DENY
        elif rest.lower() in {"", "once"}:
            decision = APPROVE_ONCE
        elif rest.lower() in {"session", "all", "always"}:
            decision = APPROVE_SESSION
        else:
            return "Use `/claude approve` (this once), `/claude approve session` (for the rest of the session) or " \
                   "`/claude deny`."
        return await self._approvals.answer_command(user, channel, thread_ts, decision)

    async def _attach(self, user: str, channel: str, rest: str) -> str:
        """The exact command to continue a thread's session in a terminal on the bot's host."""
        thread = self._named_or_latest(user, channel, rest)
        return thread if isinstance(thread, str) else self.attach_command(thread, user)

    def _named_or_latest(self, user: str, channel: str, rest: str,
                         keep: Callable[[ThreadSession], bool] = lambda _t: True) -> ThreadSession | str | None:
        """The thread a link (or ts) in `rest` names, else the user's latest thread here that `keep` accepts;
        a sentence when `rest` cannot be read."""
        if rest:
            ref = parse_thread_ref(rest)
            if ref is None:
                return "I could not read that: give a thread link (⋮ → Copy link), or nothing for your latest thread."
            return self._store.get_thread(ref[0] or channel, ref[1])
        mine = [t for t, _ in self._store.recent_threads(channel, limit=50) if t.requester == user and keep(t)]
        return mine[0] if mine else None

    def attach_command(self, thread: ThreadSession | None, user: str) -> str:
        if thread is None or not thread.started or not thread.session_id:
            return "That thread has no Claude session yet (or I have not seen one of yours here): start one first."
        if thread.requester != user and not self._settings.is_admin(user):
            log.info("commands.attach_refused", user=user, channel=thread.channel, thread_ts=thread.thread_ts)
            if not thread.requester:
                return ("That thread was handed over from a terminal: only an admin (SLACKBUS_ADMIN_USERS) can take "
                        "its session back to one from Slack, so nothing was changed.")
            return (f"Only <@{thread.requester}>, who started that thread, or an admin (SLACKBUS_ADMIN_USERS) can take "
                    "its session to a terminal, so nothing was changed.")
        if self._pipeline.is_running((thread.channel, thread.thread_ts)):
            return "That thread's session is running now: attach once it has answered (or cancel it first)."
        home = self._store.handoff_home(thread.channel, thread.thread_ts) or handoff.HOME
        self._store.record_handoff(thread.channel, thread.thread_ts, thread.session_id, thread.workdir, home,
                                   by=user, direction="to_terminal")
        self._pipeline.forget_warm((thread.channel, thread.thread_ts))
        return (
            f"On the bot's host, run:\n```\n{handoff.resume_command(thread.workdir, thread.session_id, home)}\n```\n"
            f"(or `slackbus attach {self.link(thread.channel, thread.thread_ts)}` there). While the session is open "
            "in a terminal, replies in the thread wait for it and continue it when it is closed."
        )

    async def on_attach_button(self, clicked: ButtonClick) -> None:
        """"Continue in a terminal" on an answer: the command, privately, to whoever clicked (if allowed)."""
        user = clicked.user
        channel, _, thread_ts = clicked.value.partition("|")
        if not user or not channel:
            log.info("commands.odd_click", action="attach", user=user, channel=channel)
            return
        if not self._settings.is_allowed(user) or not self._settings.is_channel_allowed(channel):
            await self._poster.post_ephemeral(channel, user, "You are not on this bot's allow list.", thread_ts)
            return
        answer = self.attach_command(self._store.get_thread(channel, thread_ts), user)
        await self._poster.post_ephemeral(channel, user, answer, thread_ts or None)

    # --- a thread's worktree: Show diff, Push, Pull request ---------------------------------------------------
    async def _change(self, action: str, user: str, channel: str, rest: str) -> str:
        """`/claude diff|push|pr [thread link]`: the thread named, else your latest thread here with a worktree."""
        thread = self._named_or_latest(
            user, channel, rest, keep=lambda t: self._store.worktree_of(t.channel, t.thread_ts) is not None)
        return thread if isinstance(thread, str) else self.change_action(action, thread, user).text

    def change_action(self, action: str, thread: ThreadSession | None, user: str) -> Answer:
        """Start a diff, push or pull request for the thread's worktree; the result goes to the thread."""
        worktree = self._store.worktree_of(thread.channel, thread.thread_ts) if thread is not None else None
        if thread is None or worktree is None or self._worktrees is None:
            return Answer("That thread has no worktree of its own (its folder is not a git repository, or worktrees "
                          "are off with SLACKBUS_WORKTREES=off), so there is no branch to show, push or open a pull "
                          "request for.", acted=False)
        if action != DIFF and user != thread.requester and not self._settings.is_admin(user):
            log.info("commands.change_refused", user=user, action=action, thread_ts=thread.thread_ts)
            who = f"<@{thread.requester}>, who started it," if thread.requester else "the person who started it"
            return Answer(f"Only {who} or an admin (SLACKBUS_ADMIN_USERS) can push that thread's branch or open a "
                          "pull request.", acted=False)
        if action != DIFF and self._pipeline.is_running((thread.channel, thread.thread_ts)):
            return Answer("That thread is running now: push or open the pull request once it has answered.",
                          acted=False)
        self._spawn(self._post_change, action, thread, worktree, user)
        return Answer({DIFF: "Posting the diff in the thread.", PUSH: f"Pushing `{worktree.branch}`…",
                       PR: f"Opening a pull request for `{worktree.branch}`…"}[action], acted=True)

    async def _post_change(self, action: str, thread: ThreadSession, worktree: Worktree, user: str) -> None:
        assert self._worktrees is not None
        channel, thread_ts = thread.channel, thread.thread_ts
        try:
            if action == DIFF:
                diff = await self._worktrees.diff(worktree)
                summary = (await self._worktrees.changes(worktree)).summary()
                if not diff.strip():
                    await self._poster.post(channel, thread_ts, renderer.render_notice(f":mag: {summary}."))
                elif len(diff) <= INLINE_DIFF_CHARS:
                    await self._poster.post(channel, thread_ts,
                                            renderer.render_notice(f":mag: {summary}:\n```\n{diff.rstrip()}\n```"))
                else:
                    await self._poster.deliver(channel, thread_ts, [renderer.render_notice(
                        f":mag: {summary}; the whole diff is attached.")], attachment=diff,
                        filename=f"{worktree.branch.rsplit('/', 1)[-1]}.diff", title=f"Changes on {worktree.branch}")
            elif action == PUSH:
                said = await self._worktrees.push(worktree)
                await self._poster.post(channel, thread_ts, renderer.render_notice(
                    f":arrow_up: Pushed by <@{user}>: {said}"))
            else:
                said = await self._worktrees.pull_request(worktree, self._settings.pr_command)
                await self._poster.post(channel, thread_ts, renderer.render_notice(
                    f":twisted_rightwards_arrows: Pull request for `{worktree.branch}`, asked by <@{user}>: {said}"))
            log.info("commands.change", action=action, user=user, channel=channel, thread_ts=thread_ts,
                     branch=worktree.branch)
        except WorktreeError as exc:
            await self._poster.post(channel, thread_ts, renderer.render_notice(f":x: {exc}"))

    async def on_change_button(self, clicked: ButtonClick) -> None:
        """Show diff / Push / Pull request on an answer: the result in the thread, a refusal privately."""
        action = {DIFF_ACTION: DIFF, PUSH_ACTION: PUSH, PR_ACTION: PR}.get(clicked.action_id)
        channel, _, thread_ts = clicked.value.partition("|")
        if not clicked.user or not channel or action is None:
            log.info("commands.odd_click", action=clicked.action_id, user=clicked.user, channel=channel)
            return
        if not self._settings.is_allowed(clicked.user) or not self._settings.is_channel_allowed(channel):
            await self._poster.post_ephemeral(channel, clicked.user, "You are not on this bot's allow list.",
                                              thread_ts or None)
            return
        answer = self.change_action(action, self._store.get_thread(channel, thread_ts), clicked.user)
        if not answer.acted:
            await self._poster.post_ephemeral(channel, clicked.user, answer.text, thread_ts or None)

    async def _cancel(self, user: str, channel: str, rest: str) -> str:
        by_run_id = [h for h in self._pipeline.runs() if rest and h.run_id == rest.strip()]
        if by_run_id:
            return (await self.cancel_run(by_run_id[0], user)).text
        if rest:
            ref = parse_thread_ref(rest)
            if ref is None:
                return ("I could not read that: give a thread link (⋮ → Copy link), a run id from `/claude status`, "
                        "or nothing, to cancel your own run.")
            ref_channel, ts = ref
            target_channel = ref_channel or channel
            handle = self._pipeline.find(target_channel, ts)
            queued = [
                j for j in self._queue.waiting() if j.channel == target_channel and ts in (j.thread_ts, j.trigger_ts)
            ]
        else:
            mine = [h for h in self._pipeline.runs() if h.requester == user and h.channel == channel]
            mine = mine or [h for h in self._pipeline.runs() if h.requester == user]
            handle = max(mine, key=lambda h: h.started) if mine else None
            queued = [] if handle else [j for j in self._queue.waiting() if j.user == user][-1:]
        if handle is not None:
            return (await self.cancel_run(handle, user)).text
        if queued:
            job = queued[0]
            if job.user != user and not self._settings.is_admin(user):
                return "Only the person who asked, or an admin (SLACKBUS_ADMIN_USERS), can cancel that task."
            removed = self._queue.remove(job.key)
            for each in removed:
                self._store.set_request_status(each.channel, [each.trigger_ts], "cancelled")
            self._signs.cancelled_before_start(removed)
            self._spawn(self._poster.post, job.channel, job.thread_ts,
                        renderer.render_notice(f":octagonal_sign: Cancelled by <@{user}> before it started."))
            return "Cancelled the queued task."
        return "Nothing of yours is running or queued." if not rest else "No run or queued task in that thread."

    async def _cwd(self, user: str, channel: str, rest: str) -> str:
        current = self._workdir_for(channel)
        if not rest:
            roots = ", ".join(f"`{r}`" for r in self._settings.roots)
            return f"Claude works in `{current}` in this channel (allowed roots: {roots})."
        if not self._settings.is_admin(user):
            return "Only an admin (SLACKBUS_ADMIN_USERS) can change this channel's directory."
        real = self._settings.within_roots(Path(rest.strip().strip("`")))
        if real is None:
            roots = ", ".join(f"`{r}`" for r in self._settings.roots)
            return (f"`{rest.strip()}` is outside the allowed roots ({roots}) once links and `..` are resolved, "
                    "so the directory was not changed.")
        if not real.is_dir():
            return f"`{real}` is not a directory on the bot's host, so the directory was not changed."
        self._store.set_channel_workdir(channel, str(real))
        log.info("commands.cwd", channel=channel, by=user, workdir=str(real))
        return f"New sessions in this channel now work in `{real}` (threads already going keep theirs)."

    async def cancel_run(self, handle: RunHandle, user: str) -> Answer:
        if user != handle.requester and not self._settings.is_admin(user):
            log.info("commands.cancel_refused", user=user, run_id=handle.run_id)
            return Answer(f"Only <@{handle.requester}>, who asked, or an admin (SLACKBUS_ADMIN_USERS) can cancel that "
                          "run.", acted=False)
        self._spawn(self._pipeline.cancel, handle, user)
        return Answer(f"Cancelling the run in {self.link(handle.channel, handle.thread_ts)}.", acted=True)

    # --- 🛑 and the Stop button ----------------------------------------------------------------------------
    async def on_reaction(self, reacted: Reaction) -> None:
        """🛑 added on a running request, its thread or its status message: cancels the run (if allowed)."""
        if not reacted.added or reacted.name != STOPPED or not reacted.user:
            return
        user, channel = reacted.user, reacted.channel
        handle = self._pipeline.find(channel, reacted.ts)
        if handle is None or handle.cancelled_by:
            return
        if not self._settings.is_allowed(user):
            await self._poster.post_ephemeral(channel, user, "You are not on this bot's allow list, so you cannot "
                                              "stop runs.", handle.thread_ts)
            return
        answer = await self.cancel_run(handle, user)
        if not answer.acted:
            await self._poster.post_ephemeral(channel, user, answer.text, handle.thread_ts)

    async def on_approval_button(self, clicked: ButtonClick) -> None:
        user, channel, thread_ts = clicked.user, clicked.channel, clicked.thread_ts
        if not user or not channel:
            log.info("commands.odd_click", action="approval", user=user, channel=channel)
            return
        if not self._settings.is_allowed(user) or self._approvals is None:
            await self._poster.post_ephemeral(channel, user, "You are not on this bot's allow list.", thread_ts)
            return
        refusal = await self._approvals.on_click(clicked.action_id, clicked.value, user)
        if refusal:
            await self._poster.post_ephemeral(channel, user, refusal, thread_ts)

    async def on_stop_button(self, clicked: ButtonClick) -> None:
        user = clicked.user
        channel, _, thread_ts = clicked.value.partition("|")
        if not user or not channel:
            log.info("commands.odd_click", action="stop", user=user, channel=channel)
            return
        handle = self._pipeline.find(channel, thread_ts)
        if handle is None:
            await self._poster.post_ephemeral(channel, user, "That run has already finished.", thread_ts or None)
            return
        if not self._settings.is_allowed(user):
            await self._poster.post_ephemeral(channel, user, "You are not on this bot's allow list.", thread_ts)
            return
        answer = await self.cancel_run(handle, user)
        if not answer.acted:
            await self._poster.post_ephemeral(channel, user, answer.text, thread_ts)
