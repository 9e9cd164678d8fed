"""A worktree per thread (issue 14), end to end: real git, the real `claude` CLI, the fake Slack and model.

Two mentions in one channel edit the same file at the same time, each in its own worktree on its own branch,
and the base checkout is untouched; a follow-up edits the same worktree; the branch is pushed to a bare
repository standing in for the remote; `/claude pr` runs the configured command; only the requester (or an
admin) may push. Options in the request choose the repository, base branch and model.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_reactive import answer_in
from tests.fakes.fake_model import FakeModel, Reply, last_user_text
from tests.fakes.fake_slack import FakeSlack

pytestmark = pytest.mark.e2e

EDIT = """#!/bin/sh
# ./edit.sh NAME SYNC: say it started, wait for the test's go, then write app.py and commit it
touch "$2/started-$1"
while [ ! -e "$2/go" ]; do sleep 0.05; done
printf '%s\\n' "$1" > app.py
git add app.py && git commit -qm "write $1"
"""
GIT_ID = {"GIT_AUTHOR_NAME": "Claude", "GIT_AUTHOR_EMAIL": "claude@example.test", "GIT_COMMITTER_NAME": "Claude",
          "GIT_COMMITTER_EMAIL": "claude@example.test"}


def git(*args: str, cwd: Path) -> str:
    out = subprocess.run(["git", *args], cwd=str(cwd), capture_output=True, text=True, timeout=30, check=True,
                         env={**os.environ, **GIT_ID})
    return out.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The channel's folder: a git repository on main with app.py and edit.sh, pushed to a bare 'origin'."""
    work = tmp_path / "work"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    (work / "app.py").write_text("base\n")
    (work / "edit.sh").write_text(EDIT)
    (work / "edit.sh").chmod(0o755)
    git("add", ".", cwd=work)
    git("commit", "-qm", "base", cwd=work)
    git("init", "-q", "--bare", str(tmp_path / "origin.git"), cwd=tmp_path)
    git("remote", "add", "origin", str(tmp_path / "origin.git"), cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    (tmp_path / "sync").mkdir()
    return work


def editing(fake_model: FakeModel, sync: Path) -> None:
    """`[[edit:NAME]]` in a request: the model runs ./edit.sh NAME, then says it edited."""

    def respond(body: dict[str, Any]) -> Reply | None:
        names = re.findall(r"\[\[edit:(\w+)\]\]", last_user_text(body))
        if not names:
            return None
        name = names[-1]  # the request comes last, after the channel's messages (which may name others)
        last = (body.get("messages") or [{}])[-1]
        content = last.get("content")
        if isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
            return Reply(text=f"edited {name}")
        return Reply(tool_use=("Bash", {"command": f"./edit.sh {name} {sync}", "description": "edit"}))

    fake_model.set_responder(respond)


def worktrees(repo: Path) -> dict[str, Path]:
    """branch → worktree folder, for the slackbus branches of `repo`."""
    out: dict[str, Path] = {}
    path: Path | None = None
    for line in git("worktree", "list", "--porcelain", cwd=repo).splitlines():
        if line.startswith("worktree "):
            path = Path(line.split(" ", 1)[1])
        elif (line.startswith("branch refs/heads/slackbus/")
              and not line.startswith("branch refs/heads/slackbus/spare/")  # a spare waits: no thread's yet
              and path is not None):
            out[line.split("refs/heads/", 1)[1]] = path
    return out


@pytest.fixture
def bot_with_repo(start_bot: Any, repo: Path, tmp_path: Path) -> Any:
    pr = tmp_path / "pr.sh"
    pr.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {tmp_path}/pr-args\necho https://example.test/pull/7\n")
    pr.chmod(0o755)
    return start_bot(SLACKBUS_ALLOWED_TOOLS="Bash(./edit.sh:*)", SLACKBUS_ADMIN_USERS="U3",
                     SLACKBUS_PR_COMMAND=f"{pr} {{branch}} {{base}}", **GIT_ID)


def test_two_threads_edit_the_same_file_at_once_each_in_its_own_worktree(
    bot_with_repo: Any, fake_slack: FakeSlack, fake_model: FakeModel, repo: Path, tmp_path: Path
) -> None:
    sync = tmp_path / "sync"
    editing(fake_model, sync)
    base_head = git("rev-parse", "HEAD", cwd=repo)
    a = fake_slack.user_says("C1", "U1", "make it alpha [[edit:alpha]]", mention=True)
    b = fake_slack.user_says("C1", "U2", "make it beta [[edit:beta]]", mention=True)
    fake_slack.wait_for(lambda: (sync / "started-alpha").exists() and (sync / "started-beta").exists(),
                        timeout=60, what="both runs to be editing at the same time")
    (sync / "go").touch()
    answer_a = answer_in(fake_slack, "C1", a, "edited alpha", timeout=60)
    answer_in(fake_slack, "C1", b, "edited beta", timeout=60)

    trees = worktrees(repo)
    assert len(trees) == 2, trees
    contents = {(path / "app.py").read_text().strip(): branch for branch, path in trees.items()}
    assert set(contents) == {"alpha", "beta"}
    for name, branch in contents.items():
        assert git("show", f"{branch}:app.py", cwd=repo) == name  # committed on its own branch
    # the base checkout is untouched
    assert (repo / "app.py").read_text() == "base\n"
    assert git("status", "--porcelain", cwd=repo) == ""
    assert git("rev-parse", "HEAD", cwd=repo) == base_head and git("branch", "--show-current", cwd=repo) == "main"
    # the footer says what changed, on which branch
    shown = json.dumps(answer_a.get("blocks"), ensure_ascii=False)
    assert "1 file changed" in shown and f"`{contents['alpha']}`" in shown

    # a follow-up edits the same worktree
    (sync / "started-gamma").unlink(missing_ok=True)
    fake_slack.user_says("C1", "U1", "now gamma [[edit:gamma]]", thread_ts=a)
    answer_in(fake_slack, "C1", a, "edited gamma", timeout=60)
    assert (trees[contents["alpha"]] / "app.py").read_text().strip() == "gamma"
    assert (trees[contents["beta"]] / "app.py").read_text().strip() == "beta"
    assert len(worktrees(repo)) == 2


def test_push_and_pull_request_from_the_thread_only_by_its_requester(
    bot_with_repo: Any, fake_slack: FakeSlack, fake_model: FakeModel, repo: Path, tmp_path: Path
) -> None:
    sync = tmp_path / "sync"
    (sync / "go").touch()
    editing(fake_model, sync)
    # a spare worktree is made at start and a claude process waits in it: the new thread gets both
    bot_with_repo.wait_event("sessions.pooled", timeout=60)
    [pooled] = bot_with_repo.events("sessions.pooled")
    assert "/worktrees/" in pooled["cwd"]
    ts = fake_slack.user_says("C1", "U1", "make it delta [[edit:delta]]", mention=True)
    answer = answer_in(fake_slack, "C1", ts, "edited delta", timeout=60)
    [branch] = worktrees(repo)
    [reused] = bot_with_repo.events("run.reusing")
    assert reused["origin"] == "pool" and str(worktrees(repo)[branch]) == pooled["cwd"]
    buttons = {e["action_id"]: e for e in answer["blocks"][-1]["elements"]}
    assert {"slackbus_diff", "slackbus_push", "slackbus_pr"} <= set(buttons)
    origin = tmp_path / "origin.git"

    # someone else may not push
    fake_slack.block_action("U2", "C1", answer["ts"], "slackbus_push", value=buttons["slackbus_push"]["value"])
    refusal = fake_slack.wait_for(lambda: [e for e in fake_slack.ephemerals if e.get("user") == "U2"],
                                  what="the refusal")[0]
    assert "Only" in refusal["text"]
    assert subprocess.run(["git", "--git-dir", str(origin), "rev-parse", "--verify", "-q", branch],
                          capture_output=True, check=False).returncode != 0

    # Show diff posts the change in the thread
    fake_slack.block_action("U2", "C1", answer["ts"], "slackbus_diff", value=buttons["slackbus_diff"]["value"])
    answer_in(fake_slack, "C1", ts, "+delta")

    # the requester pushes: the bare repository gets the branch
    fake_slack.block_action("U1", "C1", answer["ts"], "slackbus_push", value=buttons["slackbus_push"]["value"])
    answer_in(fake_slack, "C1", ts, "Pushed")
    assert git("--git-dir", str(origin), "rev-parse", branch, cwd=tmp_path) == git("rev-parse", branch, cwd=repo)

    # /claude pr (your latest thread here) runs the configured command and posts what it printed
    fake_slack.slash_command(text="pr", user="U1", channel="C1")
    answer_in(fake_slack, "C1", ts, "https://example.test/pull/7")
    assert (tmp_path / "pr-args").read_text().split() == [branch, "main"]


def test_options_choose_the_base_branch_and_model_and_unknown_ones_get_one_sentence(
    start_bot: Any, fake_slack: FakeSlack, fake_model: FakeModel, repo: Path, tmp_path: Path
) -> None:
    git("branch", "release", cwd=repo)
    (repo / "app.py").write_text("main moved on\n")
    git("commit", "-qam", "main moves", cwd=repo)
    start_bot(SLACKBUS_MODELS="sonnet,haiku", SLACKBUS_REPOS=f"api={repo}", **GIT_ID)

    ts = fake_slack.user_says("C1", "U1", "[repo=api branch=release model=haiku] what is here? [[id:opt]]",
                              mention=True)
    answer = answer_in(fake_slack, "C1", ts, "answer for opt", timeout=60)
    [path] = worktrees(repo).values()
    assert (path / "app.py").read_text() == "base\n"  # made from release, not main
    assert "haiku" in json.dumps(fake_model.requests[-1].get("model"))
    shown = json.dumps(answer.get("blocks"), ensure_ascii=False)
    assert "from `release`" in shown and "model haiku" in shown
    assert "[repo=api" not in "\n".join(fake_model.user_texts(len(fake_model.requests) - 1))

    requests = len(fake_model.requests)
    bad = fake_slack.user_says("C1", "U1", "[model=opus] try this", mention=True)
    sentence = answer_in(fake_slack, "C1", bad, "opus")
    assert "sonnet" in sentence["text"] and "haiku" in sentence["text"]
    fake_slack.slash_command(text="--repo nope do a thing", user="U1", channel="C1")
    fake_slack.wait_for(lambda: any("nope" in (m.get("text") or "") and "api" in (m.get("text") or "")
                                    for m in fake_slack.bot_messages("C1")), what="the unknown repo sentence")
    assert len(fake_model.requests) == requests  # nothing ran


def test_the_local_transport_gets_worktrees_and_the_typed_commands(
    start_bot: Any, fake_model: FakeModel, repo: Path, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the local transport's authors are OS users: writing as daemon and bin needs root")
    from tests.fakes.chat import LocalChat, wait_for

    sync = tmp_path / "sync"
    (sync / "go").touch()
    editing(fake_model, sync)
    chat = LocalChat(tmp_path / "channels")
    chat.say("U1", "hello")
    start_bot(SLACKBUS_TRANSPORT="local", SLACKBUS_LOCAL_DIR=str(tmp_path / "channels"), SLACK_BOT_TOKEN="",
              SLACK_APP_TOKEN="", SLACKBUS_ALLOWED_USERS="daemon,bin", SLACKBUS_ALLOWED_TOOLS="Bash(./edit.sh:*)",
              **GIT_ID)
    ts = chat.mention("U1", "make it local [[edit:loc]]")
    chat.wait_answer(ts, "edited loc", timeout=60)
    [(branch, path)] = worktrees(repo).items()
    assert (path / "app.py").read_text() == "loc\n" and (repo / "app.py").read_text() == "base\n"

    chat.command("U1", "diff")  # typed: no buttons here
    chat.wait_answer(ts, "+loc", timeout=30)
    chat.command("U2", f"push {ts}")  # bin did not start that thread: told privately, nothing pushed
    wait_for(lambda: any("Only" in t for t in chat.private_to("U2")), what="the private refusal")
    chat.command("U1", "push")
    chat.wait_answer(ts, "Pushed", timeout=30)
    assert git("--git-dir", str(tmp_path / "origin.git"), "rev-parse", branch, cwd=tmp_path) == git(
        "rev-parse", branch, cwd=repo)
