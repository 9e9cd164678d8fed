"""A git worktree per thread: concurrent runs in one repository never share a checkout.

When a channel's folder is in a git repository, a new thread gets its own `git worktree` on a new branch
`slackbus/<short thread id>-<slug of the task>` made from the repository's default branch (or a base asked
for), under SLACKBUS_HOME/worktrees/<repo folder name>-<hash of its path>/. The repository's own working
tree, index and HEAD are never touched: every command that writes runs in the thread's worktree, or is one of
`git worktree add|move|remove|prune` and `git branch -m|-D` on slackbus's own branches.

How creating one is made fast: SPARE worktrees. A plain `git worktree add` checks every file out: on a
repository of 20,000 small files that is 0.4-1 s (FIGURES below). So per (repository, base branch) `spare`
worktrees wait, checked out at the base commit on a throwaway branch `slackbus/spare/<hex>` in a folder
`wt-<hex>`, made in the background by `run()` (or ahead of time by `prepare()`). `create` claims one:
`git branch -m` to the thread's branch and, only if the base moved since, `git reset --hard <new base>` (which
rewrites only the files that differ). The folder keeps its name: the bot pre-starts a `claude` process in each
spare (`on_spare`), and Claude Code keys a session by its folder's path, so a thread that claims a spare also
gets a process already up in it. Then it asks `run()` for the next spare. With no spare ready it falls back to
`git worktree add` (folder `<short id>-<slug>`) with parallel checkout (`checkout.workers=0`). A spare is
known by its branch (`slackbus/spare/…`), never by its folder's name.

FIGURES (bench/worktrees.py: 20,000 files in 1,000 folders, one commit; 30 new threads; 2 shared cores while
other test suites ran, on a disk where writing 20,000 small files took 8.6 s that day):
  create, spare ready (the background given time between threads): p50 21 ms, p95 141 ms, max 1.6 s (30/30
    from a spare; the claim itself is ~5 ms of git when the disk is quiet, the tail is the disk's journal
    after the bench removed the previous 20,000-file worktree)
  create, back to back (threads faster than spares are made): p50 1.1 s, 11/30 from a spare
  create, no spare (plain `git worktree add -b`, parallel checkout): p50 5.8 s on that disk (0.4-0.9 s on a
    quiet one); making a spare costs the same, in the background: p50 3.1 s
  changes() on a worktree with a few edits: p50 134 ms

Every git call goes through `anyio.run_process` as `git -C <dir> …`, bounded by `anyio.fail_after`, with
GIT_TERMINAL_PROMPT=0 and no pager; whatever goes wrong is a WorktreeError whose text says what to do.
Side files: `<folder>.json` next to each worktree and spare records what it is (so a restart adopts the spares
and `sweep` knows a worktree's base); worktrees share the repository's object store, so their disk use is the
checked-out files only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import unicodedata
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import anyio
from anyio.abc import TaskStatus

from bot.errors import WorktreeError
from bot.log import get_logger
from bot.redact import redact

log = get_logger("slackbus.worktrees")
WORKTREES_DIR = "worktrees"  # under SLACKBUS_HOME

LOCAL_TIMEOUT_S = 30.0  # a git command that only reads or renames
CHECKOUT_TIMEOUT_S = 300.0  # a full checkout (`worktree add`, `reset --hard`, `worktree remove`) of a big repo
NETWORK_TIMEOUT_S = 120.0  # `git push`, the pull request command
SLUG_MAX = 40
PREFIX = "slackbus/"
SPARE_BRANCH = "slackbus/spare/"
SPARE_DIR = "wt-"
OUTPUT_MAX = 3000  # characters of a pull request command's output handed back
_GIT_ENV_DROP = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_OBJECT_DIRECTORY",
                 "GIT_NAMESPACE", "GIT_PREFIX")


@dataclass(frozen=True)
class Worktree:
    repo: Path  # the main repository (its top level, resolved)
    path: Path  # the worktree folder
    branch: str  # e.g. "slackbus/1764150000-fix-the-flaky-test"
    base: str  # the base branch name it was made from, e.g. "main"
    base_commit: str  # the commit it started at


@dataclass(frozen=True)
class Changes:
    """What a thread changed against the commit its worktree started at: committed and not, together."""

    files: int
    insertions: int
    deletions: int
    uncommitted: bool  # tracked changes or untracked files not committed yet
    commits: int
    branch: str = ""

    def summary(self) -> str:
        if not self.files:
            return f"no changes on branch `{self.branch}`"
        noun = "file" if self.files == 1 else "files"
        return f"{self.files} {noun} changed, +{self.insertions} −{self.deletions} on branch `{self.branch}`"


@dataclass(frozen=True)
class _Git:
    code: int
    out: str
    err: str

    @property
    def ok(self) -> bool:
        return self.code == 0


@dataclass(frozen=True)
class _Refs:
    """One `git for-each-ref` of a repository: its branches, origin's, origin/HEAD and the checked-out one."""

    local: dict[str, str]  # branch → commit
    remote: dict[str, str]  # origin's branch → commit
    origin_head: str | None
    current: str | None

    def default(self) -> str:
        for name in (self.origin_head, self.current):
            if name and (name in self.local or name in self.remote):
                return name
        for name in ("main", "master"):
            if name in self.local or name in self.remote:
                return name
        return self.origin_head or self.current or "main"

    def commit_of(self, branch: str) -> str | None:
        return self.local.get(branch) or self.remote.get(branch)


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every git command: never a prompt, never a pager, messages in English."""
    env = {k: v for k, v in os.environ.items() if k not in _GIT_ENV_DROP}
    env.update({"GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat", "PAGER": "cat", "LC_ALL": "C", "LANGUAGE": "C"})
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    if extra:
        env.update(extra)
    return env


def short_id(thread_ts: str) -> str:
    """The thread's Slack ts in seconds (its last 10 digits): "1764150000.000100" → "1764150000"."""
    seconds = re.sub(r"\D", "", thread_ts.partition(".")[0]) or re.sub(r"\D", "", thread_ts)
    return seconds[-10:] or "thread"


def slug(task: str) -> str:
    """Lowercase ASCII words of the task joined by '-', at most SLUG_MAX characters, never empty."""
    text = re.sub(r"<[^>]*>", " ", task)  # Slack mentions and links
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    out = ""
    for word in re.findall(r"[a-z0-9]+", text):
        candidate = f"{out}-{word[:SLUG_MAX]}" if out else word[:SLUG_MAX]
        if len(candidate) > SLUG_MAX:
            break
        out = candidate
    return out or "task"


def _tail(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()][-lines:]
    return redact(" ".join(kept))[:500]


def _without_credentials(url: str) -> str:
    return re.sub(r"(?<=://)[^/@]+@", "", url)


def web_url(remote_url: str) -> tuple[str, str] | None:
    """("github" | "gitlab" | "bitbucket", "https://host/owner/name") for a remote URL in https, ssh:// or
    scp-like (git@host:owner/name.git) form on one of those hosts; None for anything else."""
    url = remote_url.strip()
    if "://" in url:
        parts = urlsplit(url)
        host, path = (parts.hostname or ""), parts.path
    else:
        match = re.fullmatch(r"(?:[^@/]+@)?([^:/]+):(.+)", url)
        if not match:
            return None
        host, path = match.group(1), match.group(2)
    path = path.strip("/")
    path = path.removesuffix(".git").strip("/")
    if path.count("/") < 1 or not host:
        return None
    host = host.lower()
    if "github" in host:
        kind, web = "github", "github.com" if "github.com" in host else host
    elif "gitlab" in host:
        kind, web = "gitlab", "gitlab.com" if "gitlab.com" in host else host
    elif "bitbucket.org" in host:
        kind, web = "bitbucket", "bitbucket.org"
    else:
        return None
    return kind, f"https://{web}/{path}"


def branch_link(remote_url: str, branch: str) -> str | None:
    found = web_url(remote_url)
    if found is None:
        return None
    kind, web = found
    b = quote(branch, safe="/")
    return {"github": f"{web}/tree/{b}", "gitlab": f"{web}/-/tree/{b}", "bitbucket": f"{web}/branch/{b}"}[kind]


class Worktrees:
    def __init__(self, home: Path, *, spare: int = 1, on_spare: Callable[[Path], None] | None = None) -> None:
        self.root = home / WORKTREES_DIR
        self.spare = spare
        self._on_spare = on_spare  # told each spare's folder when it is ready (the bot pre-starts claude there)
        self._spares: dict[tuple[Path, str], list[Worktree]] = {}
        self._making: dict[tuple[Path, str], int] = {}
        self._adopted: set[Path] = set()
        self._reserved: set[str] = set()  # branch names being created right now
        self._locks: dict[Path, anyio.Lock] = {}
        self._wanted: dict[tuple[Path, str], None] = {}  # spares to make in the background, in order
        self._wake = anyio.Event()
        self._settled = anyio.Event()
        self._settled.set()
        self._serving = False

    # --- git --------------------------------------------------------------------------------------------
    async def _git(
        self,
        where: Path,
        *args: str,
        bound: float = LOCAL_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        retry_locked: bool = False,
    ) -> _Git:
        """`git -C where args…`, bounded; a failure (when `check`) is a WorktreeError sentence."""
        argv = ["git", "-C", str(where), *args]
        for attempt in range(6):
            try:
                with anyio.fail_after(bound):
                    proc = await anyio.run_process(
                        argv, check=False, env=git_env(env), stdin=subprocess.DEVNULL
                    )
            except TimeoutError:
                raise WorktreeError(
                    f"`git {args[0]}` in {where} did not finish within {bound:.0f} s: the disk may be slow or "
                    "the repository very large; try again, or turn worktrees off (SLACKBUS_WORKTREES=off)."
                ) from None
            except FileNotFoundError as exc:
                raise WorktreeError(
                    "git is not installed (or not on PATH): install git, or turn worktrees off "
                    "(SLACKBUS_WORKTREES=off)."
                ) from exc
            out = _Git(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))
            locked = "could not lock config file" in out.err or ".lock': File exists" in out.err
            if out.ok or not (retry_locked and locked) or attempt == 5:
                break
            await anyio.sleep(0.05 * (attempt + 1))  # another git process holds the lock: back off briefly
        if check and not out.ok:
            raise WorktreeError(
                f"`git {_label(args)}` failed in {where}: {_tail(out.err) or f'exit {out.code}'}."
                " Check the repository there (`git status`), then try again."
            )
        return out

    def _lock(self, repo: Path) -> anyio.Lock:
        """Serialises the commands that write the repository's shared config (`branch -m/-D`, upstreams)."""
        return self._locks.setdefault(repo, anyio.Lock())

    async def _refs(self, repo: Path) -> _Refs:
        res = await self._git(
            repo, "for-each-ref", "--format=%(HEAD)%00%(objectname)%00%(refname)%00%(symref)",
            "refs/heads", "refs/remotes/origin",
        )
        local: dict[str, str] = {}
        remote: dict[str, str] = {}
        origin_head = current = None
        for line in res.out.splitlines():
            head, commit, ref, symref = [*line.split("\0"), "", "", ""][:4]
            if ref == "refs/remotes/origin/HEAD":
                origin_head = symref.removeprefix("refs/remotes/origin/") or None
            elif ref.startswith("refs/heads/"):
                local[ref.removeprefix("refs/heads/")] = commit
                if head == "*":
                    current = ref.removeprefix("refs/heads/")
            elif ref.startswith("refs/remotes/origin/"):
                remote[ref.removeprefix("refs/remotes/origin/")] = commit
        return _Refs(local, remote, origin_head, current)

    # --- which repository, which branch ---------------------------------------------------------------
    @staticmethod
    async def repo_of(folder: Path) -> Path | None:
        """The top level of the git work tree `folder` is in; None for a bare repository or no repository."""
        if not await anyio.Path(folder).is_dir():
            return None
        try:
            with anyio.fail_after(LOCAL_TIMEOUT_S):
                proc = await anyio.run_process(
                    ["git", "-C", str(folder), "rev-parse", "--is-inside-work-tree", "--show-toplevel"],
                    check=False, env=git_env(), stdin=subprocess.DEVNULL,
                )
        except (TimeoutError, FileNotFoundError):
            return None
        lines = proc.stdout.decode(errors="replace").splitlines()
        if proc.returncode != 0 or len(lines) < 2 or lines[0] != "true":
            return None
        return Path(await anyio.Path(lines[1]).resolve())

    async def default_branch(self, repo: Path) -> str:
        """origin/HEAD's branch if set, else the main checkout's branch, else `main` or `master`."""
        return (await self._refs(Path(await anyio.Path(repo).resolve()))).default()

    # --- names ----------------------------------------------------------------------------------------
    def _repo_dir(self, repo: Path) -> Path:
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", repo.name).strip("-.") or "repo"
        return self.root / f"{name}-{hashlib.sha1(str(repo).encode()).hexdigest()[:8]}"

    def _name(self, repo: Path, refs: _Refs, thread_ts: str, task: str) -> tuple[str, Path]:
        stem = f"{short_id(thread_ts)}-{slug(task)}"
        folder = self._repo_dir(repo)
        for n in range(1, 1000):
            name = stem if n == 1 else f"{stem}-{n}"
            branch, path = PREFIX + name, folder / name
            if branch not in refs.local and branch not in self._reserved and not path.exists():
                return branch, path
        raise WorktreeError(f"Too many worktrees named {stem} in {folder}: remove some, then try again.")

    # --- create ---------------------------------------------------------------------------------------
    async def create(self, repo: Path, *, thread_ts: str, task: str, base: str | None = None) -> Worktree:
        """A new worktree on a new branch for a thread: from a spare when one is ready, else `worktree add`."""
        started = time.monotonic()
        repo = Path(await anyio.Path(repo).resolve())
        refs = await self._refs(repo)
        base_name = base or refs.default()
        commit = self._base_commit(repo, refs, base_name, asked=base is not None)
        branch, path = self._name(repo, refs, thread_ts, task)
        self._reserved.add(branch)
        try:
            wt = None
            spare = self._take_spare(repo, base_name)
            if spare is not None:
                wt = await self._claim(spare, branch, commit)
            if wt is None:
                wt = await self._add(repo, path, branch, base_name, commit)
        finally:
            self._reserved.discard(branch)
        self._write_meta(wt)
        self._want(repo, base_name)
        log.info(
            "worktrees.created", thread_ts=thread_ts, repo=str(repo), path=str(wt.path), branch=branch,
            base=base_name, from_spare=spare is not None, ms=round((time.monotonic() - started) * 1000, 1),
        )
        return wt

    def _base_commit(self, repo: Path, refs: _Refs, base: str, *, asked: bool) -> str:
        commit = refs.commit_of(base)
        if commit:
            return commit
        names = sorted(set(refs.local) | set(refs.remote))
        names = [n for n in names if not n.startswith(SPARE_BRANCH)]
        if not names:
            raise WorktreeError(
                f"{repo.name} ({repo}) has no commits yet: make a first commit there, then ask again."
            )
        shown = ", ".join(f"`{n}`" for n in names[:12]) + (", …" if len(names) > 12 else "")
        if asked:
            raise WorktreeError(f"There is no branch `{base}` in {repo.name}: ask for one of {shown}.")
        raise WorktreeError(
            f"{repo.name} has no branch `{base}` to start from: ask for one of {shown} (branch=<name>)."
        )

    def _take_spare(self, repo: Path, base: str) -> Worktree | None:
        ready = self._spares.get((repo, base))
        return ready.pop(0) if ready else None

    async def _claim(self, spare: Worktree, branch: str, commit: str) -> Worktree | None:
        """Turn a spare into the thread's worktree; None (and the spare discarded) if it cannot be.

        The folder stays where it is (a `claude` process may already wait in it, and Claude Code keys its
        sessions by the folder's path): only the branch is renamed, and the files reset if the base moved."""
        try:
            async with self._lock(spare.repo):
                await self._git(spare.path, "branch", "-m", spare.branch, branch, retry_locked=True)
            if commit != spare.base_commit:
                await self._git(spare.path, "reset", "--hard", "--quiet", commit, bound=CHECKOUT_TIMEOUT_S)
        except WorktreeError as exc:
            log.warning("worktrees.spare_failed", path=str(spare.path), error=str(exc))
            with anyio.CancelScope(shield=True):
                await self._discard(spare.repo, spare.path, (spare.branch, branch))
            return None
        return Worktree(repo=spare.repo, path=spare.path, branch=branch, base=spare.base, base_commit=commit)

    async def _add(self, repo: Path, path: Path, branch: str, base: str, commit: str) -> Worktree:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            await self._git(
                repo, "-c", "checkout.workers=0", "worktree", "add", "--quiet", "--no-track", "-b", branch,
                str(path), commit, bound=CHECKOUT_TIMEOUT_S,
            )
        except WorktreeError as exc:
            if "already exists" not in str(exc):  # not ours to remove: somebody made that branch or folder
                with anyio.CancelScope(shield=True):
                    await self._discard(repo, path, (branch,))
            raise
        except BaseException:  # cancelled (shutting down): a short clean-up; `_adopt` removes what is left
            with anyio.CancelScope(shield=True):
                await self._discard(repo, path, (branch,), bound=10.0)
            raise
        return Worktree(repo=repo, path=path, branch=branch, base=base, base_commit=commit)

    async def _discard(
        self, repo: Path, path: Path, branches: Sequence[str], *, bound: float = CHECKOUT_TIMEOUT_S
    ) -> None:
        """Best effort, bounded: remove a worktree folder and slackbus branches nobody has used."""
        with anyio.move_on_after(bound):
            if await anyio.Path(path).exists():
                await self._git(repo, "worktree", "remove", "--force", str(path), check=False)
            if await anyio.Path(path).exists():
                await anyio.to_thread.run_sync(lambda: shutil.rmtree(path, ignore_errors=True))
            async with self._lock(repo):
                for b in branches:
                    await self._git(repo, "branch", "-D", b, check=False, retry_locked=True)
            await self._git(repo, "worktree", "prune", check=False)
            self._meta_path(path).unlink(missing_ok=True)

    # --- spares ---------------------------------------------------------------------------------------
    def ready(self, repo: Path, base: str) -> int:
        """How many spares are ready for (repo, base) now."""
        return len(self._spares.get((repo.resolve(), base), []))

    async def prepare(self, repo: Path, base: str | None = None) -> int:
        """Make spares for (repo, base) until `spare` are ready; returns how many are."""
        if self.spare <= 0:
            return 0
        repo = Path(await anyio.Path(repo).resolve())
        await self._adopt(repo)
        refs = await self._refs(repo)
        base_name = base or refs.default()
        commit = self._base_commit(repo, refs, base_name, asked=base is not None)
        key = (repo, base_name)
        while len(self._spares.get(key, [])) + self._making.get(key, 0) < self.spare:
            self._making[key] = self._making.get(key, 0) + 1
            try:
                spare = await self._make_spare(repo, base_name, commit)
            finally:
                self._making[key] -= 1
            self._spares.setdefault(key, []).append(spare)
            if self._on_spare is not None:
                self._on_spare(spare.path)
        return len(self._spares.get(key, []))

    async def _make_spare(self, repo: Path, base: str, commit: str) -> Worktree:
        started = time.monotonic()
        token = secrets.token_hex(4)
        path = self._repo_dir(repo) / f"{SPARE_DIR}{token}"
        spare = await self._add(repo, path, SPARE_BRANCH + token, base, commit)
        self._write_meta(spare)
        log.info("worktrees.spare_ready", repo=str(repo), base=base, path=str(path),
                 ms=round((time.monotonic() - started) * 1000, 1))
        return spare

    async def _adopt(self, repo: Path) -> None:
        """Once per repository: take back the spares a previous process left ready; remove broken ones."""
        if repo in self._adopted:
            return
        self._adopted.add(repo)
        folder = self._repo_dir(repo)
        if not folder.is_dir():
            return
        listed = await self._listed(repo)
        for entry in sorted(folder.iterdir()):
            if not entry.is_dir() or not entry.name.startswith(SPARE_DIR):
                continue
            branch = listed.get(entry, "")
            if not branch.startswith(SPARE_BRANCH):
                continue  # a spare a thread claimed (its folder kept its name): the thread's, never touched
            spare = self._read_meta(entry)
            good = (
                spare is not None and spare.repo == repo and branch == spare.branch and await self._pristine(spare)
            )
            if good and spare is not None:
                self._spares.setdefault((repo, spare.base), []).append(spare)
                log.info("worktrees.spare_adopted", repo=str(repo), path=str(entry))
                if self._on_spare is not None:
                    self._on_spare(spare.path)
            else:
                await self._discard(repo, entry, [branch])
        for meta in folder.glob(f"{SPARE_DIR}*.json"):
            if not meta.with_suffix("").exists():
                meta.unlink(missing_ok=True)

    async def _pristine(self, spare: Worktree) -> bool:
        head = await self._git(spare.path, "rev-parse", "HEAD", check=False)
        if head.out.strip() != spare.base_commit:
            return False
        status = await self._git(spare.path, "status", "--porcelain", check=False)
        return status.ok and not status.out.strip()

    async def _listed(self, repo: Path) -> dict[Path, str]:
        """`git worktree list`: folder → branch (short name; "" when detached)."""
        res = await self._git(repo, "worktree", "list", "--porcelain", check=False)
        out: dict[Path, str] = {}
        path: Path | None = None
        for line in res.out.splitlines():
            if line.startswith("worktree "):
                path = Path(line.removeprefix("worktree "))
                out[path] = ""
            elif line.startswith("branch refs/heads/") and path is not None:
                out[path] = line.removeprefix("branch refs/heads/")
        return out

    def _want(self, repo: Path, base: str) -> None:
        if self.spare <= 0 or not self._serving:
            return
        self._wanted[(repo, base)] = None
        if self._settled.is_set():
            self._settled = anyio.Event()
        self._wake.set()

    async def settled(self) -> None:
        """Returns once the background has made every spare asked for so far (at once when `run` is not)."""
        await self._settled.wait()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Make spares in the background, one at a time, until cancelled."""
        self._serving = True
        task_status.started()
        try:
            while True:
                if not self._wanted:
                    self._settled.set()
                    self._wake = anyio.Event()
                    await self._wake.wait()
                    continue
                repo, base = next(iter(self._wanted))
                del self._wanted[(repo, base)]
                try:
                    await self.prepare(repo, base)
                except WorktreeError as exc:
                    log.warning("worktrees.spare_failed", repo=str(repo), base=base, error=str(exc))
        finally:
            self._serving = False
            self._settled.set()

    # --- side files -----------------------------------------------------------------------------------
    @staticmethod
    def _meta_path(path: Path) -> Path:
        return path.parent / f"{path.name}.json"

    def _write_meta(self, wt: Worktree) -> None:
        data = {k: str(v) for k, v in asdict(wt).items()}
        meta = self._meta_path(wt.path)
        tmp = meta.with_name(meta.name + ".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(meta)

    def _read_meta(self, path: Path) -> Worktree | None:
        try:
            data = json.loads(self._meta_path(path).read_text())
            return Worktree(Path(data["repo"]), Path(data["path"]), data["branch"], data["base"],
                            data["base_commit"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # --- what changed ---------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _with_untracked(self, wt: Worktree) -> AsyncIterator[dict[str, str]]:
        """An environment whose index is a private copy of the worktree's with untracked files added as
        intent-to-add (`git add -N`): `git diff <commit>` then shows committed, uncommitted and new files
        together, and neither the worktree's index nor the object store is written."""
        index = await self._git(wt.path, "rev-parse", "--git-path", "index")
        source = Path(index.out.strip())
        source = source if source.is_absolute() else wt.path / source
        with tempfile.TemporaryDirectory(prefix="slackbus-index-") as tmp:
            copy = Path(tmp) / "index"
            if source.exists():
                await anyio.to_thread.run_sync(shutil.copyfile, source, copy)
            env = {"GIT_INDEX_FILE": str(copy)}
            await self._git(wt.path, "add", "--intent-to-add", ".", env=env, bound=CHECKOUT_TIMEOUT_S)
            yield env

    async def changes(self, wt: Worktree) -> Changes:
        """Files, lines and commits changed since base_commit, committed or not (untracked files included)."""
        async with self._with_untracked(wt) as env:
            numstat = await self._git(wt.path, "diff", "--numstat", "--no-renames", wt.base_commit, env=env,
                                      bound=CHECKOUT_TIMEOUT_S)
            dirty = await self._git(wt.path, "diff", "--quiet", "HEAD", env=env, check=False,
                                    bound=CHECKOUT_TIMEOUT_S)
        files = insertions = deletions = 0
        for line in numstat.out.splitlines():
            added, removed, _name = [*line.split("\t", 2), "", ""][:3]
            files += 1
            insertions += int(added) if added.isdigit() else 0
            deletions += int(removed) if removed.isdigit() else 0
        commits = await self._git(wt.path, "rev-list", "--count", f"{wt.base_commit}..HEAD")
        return Changes(files, insertions, deletions, dirty.code == 1, int(commits.out.strip() or 0), wt.branch)

    async def diff(self, wt: Worktree) -> str:
        """The unified diff of base_commit against the worktree as it is (new files included), for posting."""
        async with self._with_untracked(wt) as env:
            res = await self._git(wt.path, "diff", "--no-color", "--no-ext-diff", wt.base_commit, env=env,
                                  bound=CHECKOUT_TIMEOUT_S)
        return res.out

    # --- pushing and pull requests --------------------------------------------------------------------
    async def _remote_url(self, repo: Path, remote: str) -> str | None:
        res = await self._git(repo, "remote", "get-url", remote, check=False)
        return res.out.strip() if res.ok and res.out.strip() else None

    async def _uncommitted_files(self, wt: Worktree) -> int:
        res = await self._git(wt.path, "status", "--porcelain", bound=CHECKOUT_TIMEOUT_S)
        return len([line for line in res.out.splitlines() if line.strip()])

    async def push(self, wt: Worktree, remote: str = "origin") -> str:
        """Push the branch's commits (never uncommitted changes) and say where they went."""
        return (await self._push(wt, remote))[1]

    async def _push(self, wt: Worktree, remote: str) -> tuple[bool, str]:
        url = await self._remote_url(wt.repo, remote)
        if url is None:
            raise WorktreeError(
                f"{wt.repo.name} has no remote `{remote}` to push to: add one "
                f"(`git -C {wt.repo} remote add {remote} <url>`), then push again."
            )
        uncommitted = await self._uncommitted_files(wt)
        later = (
            f" {uncommitted} uncommitted {'change was' if uncommitted == 1 else 'changes were'} not pushed:"
            " ask Claude to commit them, then push again." if uncommitted else ""
        )
        commits = await self._git(wt.path, "rev-list", "--count", f"{wt.base_commit}..refs/heads/{wt.branch}")
        if int(commits.out.strip() or 0) == 0:
            return False, f"Nothing to push: `{wt.branch}` has no commits beyond `{wt.base}` yet.{later}"
        res = await self._git(
            wt.path, "push", "--porcelain", remote, f"refs/heads/{wt.branch}:refs/heads/{wt.branch}",
            bound=NETWORK_TIMEOUT_S, check=False,
        )
        if not res.ok:
            raise WorktreeError(
                f"Pushing `{wt.branch}` to {remote} failed: {_tail(res.err) or f'exit {res.code}'}. Check that "
                "this machine may push there (`gh auth login`, or a deploy key with write access), then try again."
            )
        async with self._lock(wt.repo):  # the upstream is in the shared config: set it under the lock
            await self._git(wt.path, "branch", f"--set-upstream-to={remote}/{wt.branch}", wt.branch,
                            check=False, retry_locked=True)
        link = branch_link(url, wt.branch)
        where = f"`{remote}/{wt.branch}`" + (f": {link}" if link else f" ({_without_credentials(url)})")
        log.info("worktrees.pushed", repo=str(wt.repo), branch=wt.branch, remote=remote)
        return True, f"Pushed {int(commits.out.strip())} commit(s) to {where}.{later}"

    def compare_link(self, remote_url: str, base: str, branch: str) -> str | None:
        """Where to open a pull (merge) request of `branch` into `base` on GitHub, GitLab or Bitbucket."""
        found = web_url(remote_url)
        if found is None:
            return None
        kind, web = found
        b, h = quote(base, safe="/"), quote(branch, safe="/")
        if kind == "github":
            return f"{web}/compare/{b}...{h}?expand=1"
        if kind == "gitlab":
            return (f"{web}/-/merge_requests/new?merge_request[source_branch]={h}"
                    f"&merge_request[target_branch]={b}")
        return f"{web}/pull-requests/new?source={h}&dest={b}"

    async def pull_request(self, wt: Worktree, command: str | None) -> str:
        """Push if the remote does not have the branch's commits yet, then open a pull request: with
        SLACKBUS_PR_COMMAND (`command`: shell words, {branch} {base} {repo} {title} filled in, run in the
        worktree), else `gh pr create`, else a compare link; returns what to post."""
        remote = "origin"
        tips = await self._git(
            wt.repo, "rev-parse", f"refs/heads/{wt.branch}", f"refs/remotes/{remote}/{wt.branch}", check=False
        )
        lines = tips.out.split()
        if not (tips.ok and len(lines) == 2 and lines[0] == lines[1]):
            pushed, sentence = await self._push(wt, remote)
            if not pushed:
                return sentence
        if command:
            words = shlex.split(command)
            title = await self._title(wt) if any("{title}" in w for w in words) else ""
            values = {"{branch}": wt.branch, "{base}": wt.base, "{repo}": str(wt.repo), "{title}": title}
            argv = [_fill(w, values) for w in words]
        elif shutil.which("gh"):
            argv = ["gh", "pr", "create", "--fill", "--head", wt.branch, "--base", wt.base]
        else:
            url = await self._remote_url(wt.repo, remote) or ""
            link = self.compare_link(url, wt.base, wt.branch)
            if link:
                return f"`{wt.branch}` is pushed: open the pull request into `{wt.base}` here: {link}"
            return (
                f"`{wt.branch}` is pushed to {remote} ({_without_credentials(url)}), but slackbus knows no pull "
                "request page there: set SLACKBUS_PR_COMMAND (e.g. `gh pr create --fill --head {branch} "
                "--base {base}`), or install `gh` and run `gh auth login`."
            )
        code, output = await _run_command(argv, wt.path, NETWORK_TIMEOUT_S)
        log.info("worktrees.pull_request", repo=str(wt.repo), branch=wt.branch, command=argv[0], exit_code=code)
        if code != 0:
            raise WorktreeError(
                f"The pull request command `{argv[0]}` failed (exit {code}): {_tail(output) or 'no output'}. "
                "Check SLACKBUS_PR_COMMAND (or `gh auth status`), then try again."
            )
        text = redact(output.strip())
        return text[-OUTPUT_MAX:] if text else f"`{argv[0]}` finished for `{wt.branch}` with no output."

    async def _title(self, wt: Worktree) -> str:
        res = await self._git(
            wt.path, "log", "--reverse", "--format=%s", f"{wt.base_commit}..refs/heads/{wt.branch}", check=False
        )
        first = next((line for line in res.out.splitlines() if line.strip()), "")
        return first.strip() or wt.branch.removeprefix(PREFIX).split("-", 1)[-1].replace("-", " ")

    # --- clean-up -------------------------------------------------------------------------------------
    async def unpushed(self, wt: Worktree) -> int:
        """Commits on the branch that are on no remote branch, no other local branch and not in base_commit's
        history (so merged or pushed work is 0); +1 when the worktree has uncommitted changes."""
        dirty = 0
        where = wt.repo
        if wt.path.is_dir():
            where = wt.path
            dirty = 1 if await self._uncommitted_files(wt) else 0
        tips = ["HEAD"] if where == wt.path else []
        tips.append(f"refs/heads/{wt.branch}")
        others = ["--not", f"--exclude={wt.branch}", "--branches", "--remotes"]  # names without refs/heads/
        base = [wt.base_commit] if wt.base_commit else []
        # a branch or base commit that is gone makes rev-list fail: ask again with less
        attempts = [[*tips, *others, *base], [*tips, *others], [tips[0], *others]]
        res = _Git(1, "", "")
        for argv in attempts:
            res = await self._git(where, "rev-list", "--count", *argv, check=False, bound=CHECKOUT_TIMEOUT_S)
            if res.ok:
                return int(res.out.strip() or 0) + dirty
        if where == wt.path:
            raise WorktreeError(f"Cannot tell what is unpushed in {wt.path}: {_tail(res.err)}. Check it with "
                                "`git status` there.")
        return dirty

    async def remove(self, wt: Worktree) -> bool:
        """Remove a worktree and its branch, unless it holds work that is not pushed (then False)."""
        if await self.unpushed(wt) > 0:
            log.info("worktrees.kept_unpushed", path=str(wt.path), branch=wt.branch)
            return False
        if wt.path.exists():
            await self._git(wt.repo, "worktree", "remove", "--force", str(wt.path), bound=CHECKOUT_TIMEOUT_S)
        async with self._lock(wt.repo):
            await self._git(wt.repo, "branch", "-D", wt.branch, check=False, retry_locked=True)
        await self._git(wt.repo, "worktree", "prune", check=False)
        self._meta_path(wt.path).unlink(missing_ok=True)
        log.info("worktrees.removed", repo=str(wt.repo), path=str(wt.path), branch=wt.branch)
        return True

    async def _load(self, path: Path) -> Worktree | None:
        """A worktree folder as recorded next to it, or as git describes it."""
        recorded = self._read_meta(path)
        if recorded is not None and recorded.path == path:
            return recorded
        common = await self._git(path, "rev-parse", "--path-format=absolute", "--git-common-dir", check=False)
        branch = await self._git(path, "symbolic-ref", "--quiet", "--short", "HEAD", check=False)
        if not (common.ok and branch.ok):
            return None
        repo = Path(common.out.strip())
        repo = repo.parent if repo.name == ".git" else repo
        return Worktree(repo=repo.resolve(), path=path, branch=branch.out.strip(), base="", base_commit="")

    async def sweep(self, idle: Callable[[Path], float | None], ttl: float) -> list[Path]:
        """Remove the worktrees whose thread has been idle longer than `ttl` seconds (`idle(path)`; None keeps
        it) and that hold no unpushed work. Spares are never swept. Returns the folders removed."""
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for path in sorted(p for p in folder.iterdir() if p.is_dir()):
                recorded = self._read_meta(path)
                if recorded is not None and recorded.branch.startswith(SPARE_BRANCH):
                    continue  # a spare waiting for a thread
                seconds = idle(path)
                if seconds is None or seconds <= ttl:
                    continue
                wt = await self._load(path)
                if wt is None:
                    log.warning("worktrees.sweep_unknown", path=str(path))
                    continue
                try:
                    if await self.remove(wt):
                        removed.append(path)
                        log.info("worktrees.swept", path=str(path), branch=wt.branch, idle_s=round(seconds))
                except WorktreeError as exc:
                    log.warning("worktrees.sweep_failed", path=str(path), error=str(exc))
        return removed

    async def disk_use(self) -> int:
        """Bytes on disk under SLACKBUS_HOME/worktrees (blocks, as `du` counts; hard links once)."""
        return await anyio.to_thread.run_sync(_disk_use, self.root)


def _label(args: Sequence[str]) -> str:
    """The command's name for a sentence: `worktree add` out of `-c checkout.workers=0 worktree add …`."""
    words: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "-c":
            skip = True
        elif not arg.startswith("-"):
            words.append(arg)
        if len(words) == 2:
            break
    return " ".join(words)


def _fill(word: str, values: Mapping[str, str]) -> str:
    for key, value in values.items():
        word = word.replace(key, value)
    return word


def _disk_use(root: Path) -> int:
    total = 0
    seen: set[tuple[int, int]] = set()
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += getattr(st, "st_blocks", 0) * 512 or st.st_size
    return total


async def _run_command(argv: Sequence[str], cwd: Path, bound: float) -> tuple[int, str]:
    """Run a command in its own process group, output captured; the group is killed on timeout or cancel."""
    try:
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat", "PAGER": "cat", "GH_PROMPT_DISABLED": "1"}
        process = await anyio.open_process(
            list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise WorktreeError(
            f"The pull request command `{argv[0]}` was not found: fix SLACKBUS_PR_COMMAND, or install it."
        ) from exc
    chunks: list[bytes] = []
    try:
        with anyio.fail_after(bound):
            assert process.stdout is not None
            async for chunk in process.stdout:
                chunks.append(chunk)
            await process.wait()
    except TimeoutError:
        raise WorktreeError(
            f"The pull request command `{argv[0]}` did not finish within {bound:.0f} s: check it by hand in "
            f"{cwd}, then try again."
        ) from None
    finally:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.aclose()
    return int(process.returncode or 0), b"".join(chunks).decode(errors="replace")
