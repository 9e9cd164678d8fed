"""bot.core.worktrees with real git in tmp_path: worktrees per thread, spares, changes, push, pull requests,
clean-up."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from bot.core.store import Store
from bot.core.worktrees import Changes, Worktree, Worktrees, short_id, slug
from bot.errors import WorktreeError

TS = "1764150000.000100"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def git(where: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(where), *args], check=True, capture_output=True, text=True,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"},
    )
    return out.stdout.strip()


def make_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Test")
    git(path, "config", "user.email", "test@example.com")
    git(path, "config", "commit.gpgsign", "false")
    for name, text in (files or {"app.py": "print('hello')\n", "docs/readme.md": "# api\n"}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "first")
    return path.resolve()


def init_bare(path: Path) -> Path:
    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
    return path


def commit_all(where: Path, message: str) -> None:
    git(where, "add", "-A")
    git(where, "commit", "-q", "-m", message)


def snapshot(repo: Path) -> tuple[str, str, str]:
    """What must never change in the base checkout: HEAD, its branch and `git status`."""
    return git(repo, "rev-parse", "HEAD"), git(repo, "symbolic-ref", "HEAD"), git(repo, "status", "--porcelain")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "api")


@pytest.fixture
def origin(tmp_path: Path, repo: Path) -> Path:
    bare = init_bare(tmp_path / "origin.git")
    git(repo, "remote", "add", "origin", str(bare))
    git(repo, "push", "-q", "origin", "main")
    return bare


@pytest.fixture
def wts(tmp_path: Path) -> Worktrees:
    return Worktrees(tmp_path / "home", spare=0)


# --- creating ---------------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_two_threads_edit_the_same_file_each_in_its_own_worktree_and_the_base_is_untouched(
    repo: Path, wts: Worktrees, tmp_path: Path
) -> None:
    before = snapshot(repo)
    a = await wts.create(repo, thread_ts="1764150000.000100", task="Fix the flaky test!", base=None)
    b = await wts.create(repo, thread_ts="1764150077.000200", task="Rename the <@U123> greeting")

    assert a.branch == "slackbus/1764150000-fix-the-flaky-test"
    assert b.branch == "slackbus/1764150077-rename-the-greeting"
    assert a.base == b.base == "main" and a.base_commit == b.base_commit == before[0]
    assert a.repo == b.repo == repo
    for wt in (a, b):
        assert wt.path.parent.parent == tmp_path / "home" / "worktrees"
        assert wt.path.parent.name.startswith("api-")
        assert git(wt.path, "symbolic-ref", "--short", "HEAD") == wt.branch

    (a.path / "app.py").write_text("print('from a')\n")
    commit_all(a.path, "a's change")
    (b.path / "app.py").write_text("print('from b')\n")
    commit_all(b.path, "b's change")

    assert git(repo, "show", f"{a.branch}:app.py") == "print('from a')"
    assert git(repo, "show", f"{b.branch}:app.py") == "print('from b')"
    assert (a.path / "app.py").read_text() == "print('from a')\n"
    assert (b.path / "app.py").read_text() == "print('from b')\n"
    assert (repo / "app.py").read_text() == "print('hello')\n"
    assert snapshot(repo) == before


@pytest.mark.anyio
async def test_a_name_already_taken_gets_a_suffix_and_the_base_asked_for_is_used(repo: Path, wts: Worktrees) -> None:
    git(repo, "branch", "release/1.2")
    git(repo, "branch", "slackbus/1764150000-fix-it")  # somebody's branch with the same name
    wt = await wts.create(repo, thread_ts=TS, task="fix it", base="release/1.2")
    again = await wts.create(repo, thread_ts=TS, task="fix it", base="release/1.2")
    assert wt.branch == "slackbus/1764150000-fix-it-2"
    assert again.branch == "slackbus/1764150000-fix-it-3"
    assert wt.base == "release/1.2"
    assert wt.path != again.path and wt.path.is_dir() and again.path.is_dir()


def test_slugs_and_short_ids() -> None:
    assert slug("Fix the flaky test in `tests/test_api.py` — please!") == "fix-the-flaky-test-in-tests-test-api-py"
    assert len(slug("word " * 40)) <= 40
    assert slug("Café crème") == "cafe-creme"
    assert slug("日本語 🎉") == "task"
    assert slug("x" * 100) == "x" * 40
    assert short_id("1764150000.000100") == "1764150000"
    assert short_id("17641500001") == "7641500001"


@pytest.mark.anyio
async def test_an_unknown_base_branch_is_a_sentence_naming_the_branches(repo: Path, wts: Worktrees) -> None:
    git(repo, "branch", "release/1.2")
    with pytest.raises(WorktreeError) as err:
        await wts.create(repo, thread_ts=TS, task="x", base="nope")
    assert str(err.value).startswith("There is no branch `nope` in api: ")
    assert "`main`" in str(err.value) and "`release/1.2`" in str(err.value)
    assert git(repo, "worktree", "list").count("\n") == 0  # nothing was made


@pytest.mark.anyio
async def test_repo_of(tmp_path: Path, repo: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    bare = init_bare(tmp_path / "bare.git")
    assert await Worktrees.repo_of(plain) is None
    assert await Worktrees.repo_of(bare) is None
    assert await Worktrees.repo_of(tmp_path / "missing") is None
    assert await Worktrees.repo_of(repo / "docs") == repo


@pytest.mark.anyio
async def test_default_branch(tmp_path: Path, repo: Path, origin: Path, wts: Worktrees) -> None:
    assert await wts.default_branch(repo) == "main"  # the main checkout's branch
    git(repo, "branch", "trunk")
    git(repo, "push", "-q", "origin", "trunk")
    git(repo, "symbolic-ref", "refs/remotes/origin/HEAD", "refs/remotes/origin/trunk")
    assert await wts.default_branch(repo) == "trunk"  # origin/HEAD wins
    old = make_repo(tmp_path / "old")
    git(old, "branch", "-m", "main", "master")
    git(old, "checkout", "-q", "--detach")
    assert await wts.default_branch(old) == "master"


# --- changes and diff --------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_changes_and_diff_count_committed_uncommitted_and_untracked(repo: Path, wts: Worktrees) -> None:
    wt = await wts.create(repo, thread_ts=TS, task="work")
    assert await wts.changes(wt) == Changes(0, 0, 0, False, 0, wt.branch)
    assert (await wts.changes(wt)).summary() == f"no changes on branch `{wt.branch}`"
    assert await wts.diff(wt) == ""

    (wt.path / "app.py").write_text("print('hello')\nprint('committed')\n")
    commit_all(wt.path, "committed change")
    (wt.path / "docs" / "readme.md").write_text("# api\nmore\nand more\n")  # tracked, not committed
    (wt.path / "new.txt").write_text("brand new\n")  # untracked
    index_before = git(wt.path, "ls-files", "--stage")

    changes = await wts.changes(wt)
    assert changes == Changes(files=3, insertions=4, deletions=0, uncommitted=True, commits=1, branch=wt.branch)
    assert changes.summary() == f"3 files changed, +4 −0 on branch `{wt.branch}`"
    diff = await wts.diff(wt)
    assert "+print('committed')" in diff and "+and more" in diff and "+brand new" in diff
    assert "diff --git a/new.txt b/new.txt" in diff
    assert git(wt.path, "ls-files", "--stage") == index_before  # the worktree's own index is not written
    assert git(wt.path, "status", "--porcelain") == "M docs/readme.md\n?? new.txt".strip()

    (wt.path / "new.txt").unlink()
    (wt.path / "docs" / "readme.md").write_text("# api\n")
    assert await wts.changes(wt) == Changes(1, 1, 0, False, 1, wt.branch)


# --- push and pull requests ----------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_push_sends_commits_to_origin_and_says_what_stayed_behind(
    repo: Path, origin: Path, wts: Worktrees
) -> None:
    wt = await wts.create(repo, thread_ts=TS, task="push me")
    nothing = await wts.push(wt)
    assert nothing.startswith(f"Nothing to push: `{wt.branch}` has no commits beyond `main` yet.")
    (wt.path / "app.py").write_text("print('pushed')\n")
    commit_all(wt.path, "to push")
    (wt.path / "later.txt").write_text("not committed\n")

    sentence = await wts.push(wt)
    assert sentence.startswith(f"Pushed 1 commit(s) to `origin/{wt.branch}` ({origin})")
    assert "1 uncommitted change was not pushed" in sentence
    assert git(origin, "rev-parse", wt.branch) == git(wt.path, "rev-parse", "HEAD")
    assert git(wt.path, "rev-parse", "--abbrev-ref", "@{upstream}") == f"origin/{wt.branch}"

    git(repo, "remote", "set-url", "origin", "git@github.com:acme/api.git")
    git(repo, "remote", "set-url", "--push", "origin", str(origin))
    (wt.path / "app.py").write_text("print('pushed again')\n")
    commit_all(wt.path, "again")
    linked = await wts.push(wt)
    assert f"`origin/{wt.branch}`: https://github.com/acme/api/tree/{wt.branch}." in linked


@pytest.mark.anyio
async def test_push_without_a_remote_is_a_sentence(repo: Path, wts: Worktrees) -> None:
    wt = await wts.create(repo, thread_ts=TS, task="no remote")
    with pytest.raises(WorktreeError, match=r"api has no remote `origin` to push to: add one \(`git -C "):
        await wts.push(wt)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://github.com/acme/api.git", "https://github.com/acme/api/compare/main...slackbus/1-x?expand=1"),
        ("git@github.com:acme/api.git", "https://github.com/acme/api/compare/main...slackbus/1-x?expand=1"),
        ("ssh://git@github.com/acme/api", "https://github.com/acme/api/compare/main...slackbus/1-x?expand=1"),
        ("https://x-access-token:t0k3n@github.com/acme/api",
         "https://github.com/acme/api/compare/main...slackbus/1-x?expand=1"),
        ("https://gitlab.com/acme/backend/api.git",
         "https://gitlab.com/acme/backend/api/-/merge_requests/new?merge_request[source_branch]=slackbus/1-x"
         "&merge_request[target_branch]=main"),
        ("git@gitlab.com:acme/api.git",
         "https://gitlab.com/acme/api/-/merge_requests/new?merge_request[source_branch]=slackbus/1-x"
         "&merge_request[target_branch]=main"),
        ("https://me@bitbucket.org/acme/api.git",
         "https://bitbucket.org/acme/api/pull-requests/new?source=slackbus/1-x&dest=main"),
        ("git@bitbucket.org:acme/api.git", "https://bitbucket.org/acme/api/pull-requests/new?source=slackbus/1-x&dest=main"),
        ("/srv/git/api.git", None),
        ("https://example.com/acme/api.git", None),
        ("git@github.com:api.git", None),
    ],
)
def test_compare_link(url: str, expected: str | None, wts: Worktrees) -> None:
    assert wts.compare_link(url, "main", "slackbus/1-x") == expected


@pytest.mark.anyio
async def test_pull_request_pushes_first_then_runs_the_configured_command(
    tmp_path: Path, repo: Path, origin: Path, wts: Worktrees
) -> None:
    record = tmp_path / "argv.txt"
    script = tmp_path / "make-pr"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$PWD" "$@" > {record}\necho "  https://example.test/pr/7  "\n')
    script.chmod(0o755)
    wt = await wts.create(repo, thread_ts=TS, task="open a pr")
    (wt.path / "app.py").write_text("print('pr')\n")
    commit_all(wt.path, "Greet with pr")

    out = await wts.pull_request(wt, f"{script} --head {{branch}} --base {{base}} --title {{title}} --repo {{repo}}")
    assert out == "https://example.test/pr/7"
    assert record.read_text().splitlines() == [
        str(wt.path), "--head", wt.branch, "--base", "main", "--title", "Greet with pr", "--repo", str(repo),
    ]
    assert git(origin, "rev-parse", wt.branch) == git(wt.path, "rev-parse", "HEAD")  # pushed before

    failing = tmp_path / "fail-pr"
    failing.write_text("#!/bin/sh\necho 'gh: not logged in' >&2\nexit 4\n")
    failing.chmod(0o755)
    with pytest.raises(WorktreeError, match=r"The pull request command `.*fail-pr` failed \(exit 4\): gh: not logged"):
        await wts.pull_request(wt, str(failing))


@pytest.mark.anyio
async def test_pull_request_without_a_command_or_gh_gives_the_compare_link(
    tmp_path: Path, repo: Path, origin: Path, wts: Worktrees, monkeypatch: pytest.MonkeyPatch
) -> None:
    only_git = tmp_path / "bin"
    only_git.mkdir()
    real_git = shutil.which("git")
    assert real_git
    (only_git / "git").symlink_to(real_git)
    monkeypatch.setenv("PATH", str(only_git))
    git(repo, "remote", "set-url", "origin", "https://github.com/acme/api.git")
    git(repo, "remote", "set-url", "--push", "origin", str(origin))
    wt = await wts.create(repo, thread_ts=TS, task="link please")
    (wt.path / "app.py").write_text("print('link')\n")
    commit_all(wt.path, "link")

    out = await wts.pull_request(wt, None)
    assert out == (
        f"`{wt.branch}` is pushed: open the pull request into `main` here: "
        f"https://github.com/acme/api/compare/main...{wt.branch}?expand=1"
    )
    assert git(origin, "rev-parse", wt.branch) == git(wt.path, "rev-parse", "HEAD")

    git(repo, "remote", "set-url", "origin", str(origin))
    git(repo, "config", "--unset", "remote.origin.pushurl")
    out = await wts.pull_request(wt, None)
    assert "set SLACKBUS_PR_COMMAND" in out and str(origin) in out


# --- clean-up ---------------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_remove_refuses_unpushed_work_and_removes_pushed(repo: Path, origin: Path, wts: Worktrees) -> None:
    fresh = await wts.create(repo, thread_ts="1764150001.000100", task="nothing done")
    assert await wts.unpushed(fresh) == 0
    assert await wts.remove(fresh) is True
    assert not fresh.path.exists()
    assert fresh.branch not in git(repo, "branch", "--list")

    wt = await wts.create(repo, thread_ts=TS, task="real work")
    (wt.path / "wip.txt").write_text("draft\n")
    assert await wts.unpushed(wt) == 1  # uncommitted counts as one
    assert await wts.remove(wt) is False
    commit_all(wt.path, "work")
    (wt.path / "app.py").write_text("print('two')\n")
    commit_all(wt.path, "more work")
    assert await wts.unpushed(wt) == 2
    assert await wts.remove(wt) is False
    assert wt.path.is_dir() and wt.branch in git(repo, "branch", "--list")

    await wts.push(wt)
    assert await wts.unpushed(wt) == 0
    assert await wts.remove(wt) is True
    assert not wt.path.exists()
    assert wt.branch not in git(repo, "branch", "--list")
    assert git(origin, "rev-parse", wt.branch)  # the pushed branch stays on the remote
    assert str(wt.path) not in git(repo, "worktree", "list")


@pytest.mark.anyio
async def test_sweep_honours_the_ttl_and_never_deletes_unpushed_work_or_spares(
    tmp_path: Path, repo: Path
) -> None:
    wts = Worktrees(tmp_path / "home", spare=1)
    idle_clean = await wts.create(repo, thread_ts="1764150001.000100", task="idle clean")
    idle_unpushed = await wts.create(repo, thread_ts="1764150002.000100", task="idle unpushed")
    recent = await wts.create(repo, thread_ts="1764150003.000100", task="recent")
    unknown = await wts.create(repo, thread_ts="1764150004.000100", task="unknown")
    (idle_unpushed.path / "app.py").write_text("print('mine')\n")
    commit_all(idle_unpushed.path, "unpushed")
    assert await wts.prepare(repo) == 1
    idle = {idle_clean.path: 90.0, idle_unpushed.path: 90.0, recent.path: 10.0, unknown.path: None}
    asked: list[Path] = []

    def idle_for(path: Path) -> float | None:
        asked.append(path)
        return idle.get(path, 1e9)

    removed = await wts.sweep(idle_for, ttl=60)
    assert removed == [idle_clean.path]
    assert not idle_clean.path.exists()
    for kept in (idle_unpushed, recent, unknown):
        assert kept.path.is_dir() and kept.branch in git(repo, "branch", "--list")
    assert not any(p.name.startswith("wt-") for p in asked)
    assert wts.ready(repo, "main") == 1
    assert await wts.sweep(idle_for, ttl=60) == []


@pytest.mark.anyio
async def test_disk_use_counts_the_checkouts(tmp_path: Path, repo: Path, wts: Worktrees) -> None:
    assert await wts.disk_use() == 0
    wt = await wts.create(repo, thread_ts=TS, task="big")
    before = await wts.disk_use()
    assert before > 0
    (wt.path / "blob.bin").write_bytes(b"x" * 200_000)
    assert await wts.disk_use() >= before + 200_000


# --- spares -------------------------------------------------------------------------------------------------
@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Worktrees]:
    wts = Worktrees(tmp_path / "home", spare=1)
    async with anyio.create_task_group() as tg:
        await tg.start(wts.run)
        yield wts
        tg.cancel_scope.cancel()


def admin_name(wt: Worktree) -> str:
    """The name git gave the worktree when it was added (kept by `git worktree move`)."""
    return Path((wt.path / ".git").read_text().split(":", 1)[1].strip()).name


@pytest.mark.anyio
async def test_create_is_served_from_a_spare_and_the_next_spare_is_prepared(repo: Path, served: Worktrees) -> None:
    before = snapshot(repo)
    first = await served.create(repo, thread_ts="1764150001.000100", task="no spare yet")
    assert not admin_name(first).startswith("wt-")  # a plain `git worktree add`
    with anyio.fail_after(30):
        await served.settled()
    assert served.ready(repo, "main") == 1
    spare_dirs = [p for p in first.path.parent.iterdir() if p.name.startswith("wt-") and p.is_dir()]
    assert len(spare_dirs) == 1

    second = await served.create(repo, thread_ts="1764150002.000100", task="from the spare")
    assert admin_name(second) == spare_dirs[0].name  # the spare's checkout: the folder stays (a claude may wait there)
    assert second.path == spare_dirs[0]
    assert second.branch == "slackbus/1764150002-from-the-spare"
    assert git(second.path, "symbolic-ref", "--short", "HEAD") == second.branch
    assert git(second.path, "status", "--porcelain") == ""
    assert "slackbus/spare/" + spare_dirs[0].name.removeprefix("wt-") not in git(repo, "branch", "--list")
    with anyio.fail_after(30):
        await served.settled()
    assert served.ready(repo, "main") == 1  # the next one is ready
    assert snapshot(repo) == before


@pytest.mark.anyio
async def test_a_spare_follows_the_base_when_it_moved(repo: Path, served: Worktrees) -> None:
    assert await served.prepare(repo) == 1
    (repo / "app.py").write_text("print('newer main')\n")
    commit_all(repo, "main moves on")
    head = git(repo, "rev-parse", "HEAD")
    wt = await served.create(repo, thread_ts=TS, task="after the move")
    assert admin_name(wt).startswith("wt-")
    assert wt.base_commit == head == git(wt.path, "rev-parse", "HEAD")
    assert (wt.path / "app.py").read_text() == "print('newer main')\n"
    assert git(wt.path, "status", "--porcelain") == ""


@pytest.mark.anyio
async def test_a_restart_adopts_the_ready_spare(tmp_path: Path, repo: Path) -> None:
    first = Worktrees(tmp_path / "home", spare=1)
    assert await first.prepare(repo) == 1
    spares = sorted(p for p in (tmp_path / "home" / "worktrees").glob("*/wt-*") if p.is_dir())
    assert len(spares) == 1
    again = Worktrees(tmp_path / "home", spare=1)
    assert await again.prepare(repo) == 1
    assert sorted(p for p in (tmp_path / "home" / "worktrees").glob("*/wt-*") if p.is_dir()) == spares
    wt = await again.create(repo, thread_ts=TS, task="adopted")
    assert admin_name(wt) == spares[0].name


# --- store ----------------------------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "state.db")
    yield s
    s.close()


def test_the_store_keeps_each_threads_worktree(store: Store) -> None:
    a = Worktree(Path("/r/api"), Path("/h/worktrees/api-1/1-a"), "slackbus/1-a", "main", "c0ffee")
    b = Worktree(Path("/r/api"), Path("/h/worktrees/api-1/2-b"), "slackbus/2-b", "release/1.2", "beef")
    assert store.worktree_of("C1", "1.0") is None
    store.save_worktree("C1", "1.0", a)
    store.save_worktree("C2", "2.0", b)
    assert store.worktree_of("C1", "1.0") == a
    assert store.worktrees() == [("C1", "1.0", a), ("C2", "2.0", b)]
    moved = Worktree(a.repo, a.path, a.branch, a.base, "d00d")
    store.save_worktree("C1", "1.0", moved)
    assert store.worktree_of("C1", "1.0") == moved
    store.forget_worktree("C1", "1.0")
    assert store.worktree_of("C1", "1.0") is None
    assert store.worktrees() == [("C2", "2.0", b)]
