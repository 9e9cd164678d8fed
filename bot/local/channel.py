"""The local channel: Slack's role played by JSON-lines files on the local filesystem, one file per author.

    SLACKBUS_LOCAL_DIR (default SLACKBUS_HOME/channels)/
        <channel>/                       mode 1777 (sticky, like /tmp): anyone may create a file, no one may
                                         delete or rename another's (except the folder's owner and root)
            <os user>.jsonl              mode 0644: that person's messages, readable by all, writable by them
            .slackbus-bot.jsonl          the bot's posts, edits, reactions and status lines
            .private/                    mode 0711, the bot's: private answers
                <os user>.jsonl          mode 0600, owned by that user: only they (and root) can read it

Identity comes from the operating system, never from a record: the author of a line is the OS user who owns
the file it is in, and that file must be named after its owner (`alice.jsonl` owned by alice). A file whose
owner does not match its name, a symlink, or anything but a regular file is ignored, with one line to
`on_skip`. A record's own "user" or "bot" field means nothing. The bot's records are those in
`.slackbus-bot.jsonl` when that file is owned by the bot's uid; the bot itself trusts only its own uid there,
and other readers (the console, `slackbus read`) trust it when it is owned by themselves, root, or the owner
of SLACKBUS_LOCAL_DIR (run the bot as the folder's owner). So when `slackbus console` runs the bot in-process
as the person chatting, `alice.jsonl` (alice's messages) and `.slackbus-bot.jsonl` (the bot's) have the same
owner, and which file a line is in tells them apart.

Why 1777 and not 1770: who may use local channels at all is decided once, by SLACKBUS_LOCAL_DIR's own
permissions (e.g. `chgrp slackbus` and mode 1770 on it, or the permissions of the folder above it); each
channel folder is then open to everyone who can reach it, and the sticky bit keeps people's files their own.
(A folder is created with that mode by the first writer; an existing one is left as it is.)

Private answers (Slack's ephemeral messages) are never written where others can read them: the bot appends
them to `.private/<user>.jsonl`, created 0600. When the bot runs as root the file is chowned to that user,
so they can read it; when it runs as an ordinary user it can only do that for itself (the console case);
for anyone else `append_private` raises Undeliverable and the caller says so in public, without the text.
`.private` must be the bot's own directory, not writable by others; if someone else created it first,
nothing private is written there.

Order: every record gets a ts strictly increasing across the whole channel (all files): a writer takes an
exclusive flock on the channel folder itself (a directory opened read-only: no lock file that another user
could create first, with modes of their choosing), computes ts = max(now, newest ts in the channel's files
+ 1 µs), and appends the whole line with one write() on an O_APPEND descriptor. A reader takes a shared lock
while it reads a batch, so it sees every record below the newest ts it read, and merges the files' records in
ts order. Anyone who can open the folder can also hold its lock, so every wait for it is bounded: a writer
that has not got it after LOCK_WAIT_S writes anyway (ts then only as increasing as it can see), and a reader
after 10 ms reads anyway; a lock held forever slows a channel, it cannot stop it.

A malformed line (not JSON, not an object, a field of the wrong type, a ts that is not a ts, a line over
MAX_LINE) is skipped and reported with its file and line number; lone surrogates in text become U+FFFD.
Nothing in a record can stop a reader.

The old layout, one shared `<channel>.jsonl` per channel, is no longer read: its lines say nothing
trustworthy about who wrote them. `legacy_files` lists such files so the bot can say so once.

Stdlib only apart from bot.redact (also stdlib only): hooks and `slackbus post` use it too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pwd
import re
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from bot.redact import redact

MAX_LINE = 1024 * 1024
TAIL_BYTES = 64 * 1024
BOT_FILE = ".slackbus-bot.jsonl"
PRIVATE_DIR = ".private"
BOT_NAME = "claude"  # the bot's name on a local channel: people write "@claude …"
DIR_MODE = 0o1777
FILE_MODE = 0o644
PRIVATE_DIR_MODE = 0o711
PRIVATE_FILE_MODE = 0o600
LOCK_WAIT_S = 2.0
KINDS = frozenset({"message", "edit", "reaction", "ephemeral"})
_TS = re.compile(r"[0-9]{1,10}\.[0-9]{6}")
_REACTION = re.compile(r"[a-z0-9_+\-']{1,100}")
_SURROGATES = re.compile("[\ud800-\udfff]")

OnSkip = Callable[[str, "int | None", str], None]  # (file, line number or None, why)


class Undeliverable(Exception):
    """A private answer that cannot be put where only its reader can read it."""


@dataclass(frozen=True)
class Record:
    """One line of a channel, checked; `user` and `bot` come from the file it is in, not from the line."""

    ts: str
    kind: str  # message | edit | reaction | ephemeral
    user: str  # the file owner's OS user name; BOT_NAME for the bot's file
    bot: bool = False
    session: bool = False  # a Claude Code session's post (hooks, `slackbus post`): context, never a request
    status: bool = False  # a running task's status line (the bot's)
    thread_ts: str | None = None
    text: str = ""
    target: str | None = None  # edit, reaction: the ts it applies to
    name: str = ""  # reaction: its name (eyes, white_check_mark…)
    op: str = "add"  # reaction: add | remove
    to: str | None = None  # ephemeral: whom it is for
    source: str = ""  # "<file>:<line>", for logs
    files: tuple[str, ...] = ()  # message: absolute paths of files its writer attached


def channel_dir(home: str, env: dict[str, str] | None = None) -> str:
    env = dict(os.environ) if env is None else env
    return os.path.expanduser(env.get("SLACKBUS_LOCAL_DIR", "").strip() or os.path.join(home, "channels"))


def valid_name(name: str) -> bool:
    return bool(name) and len(name) <= 80 and all(c.isalnum() or c in "-_." for c in name) and name[0] != "."


def user_name(uid: int) -> str:
    """The OS user name of `uid` (its number when it has no entry, e.g. in a container)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def me() -> str:
    return user_name(os.geteuid())


def ts_key(ts: str) -> int:
    whole, _, frac = ts.partition(".")
    return int(whole) * 1_000_000 + int(frac.ljust(6, "0")[:6])


def _ts_of(micros: int) -> str:
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def _clean(value: Any) -> Any:
    """Every str in a record masked (bot.redact) and made encodable: the one place every written record passes."""
    if isinstance(value, str):
        return redact(_SURROGATES.sub("\ufffd", value))
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _encode(record: Mapping[str, Any]) -> bytes:
    line = (json.dumps(_clean(record), ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    if len(line) > MAX_LINE:
        raise ValueError(f"a record of {len(line)} bytes is over the {MAX_LINE}-byte limit")
    return line


def make_dir(path: str, mode: int) -> None:
    """Create `path` with exactly `mode` (not cut by the umask); an existing folder is left as it is."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        os.mkdir(path, mode)
    except FileExistsError:
        return
    os.chmod(path, mode)


class _DirLock:
    """An flock on a directory opened read-only, bounded: a writer that cannot get it in `wait` s gives up."""

    def __init__(self, path: str, exclusive: bool, wait: float) -> None:
        self.path, self.exclusive, self.wait = path, exclusive, wait
        self.fd = -1

    def __enter__(self) -> bool:
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return False
        op = (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        deadline = time.monotonic() + self.wait
        delay = 0.0005
        while True:
            try:
                fcntl.flock(self.fd, op)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 0.02)

    def __exit__(self, *_: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing releases the lock


class LocalChannel:
    """One channel's folder. `append` writes as the OS user running this process (into `<user>.jsonl`), or
    as the bot (`bot=True`, into BOT_FILE). `as_user` lets root write as someone else (tests, an admin)."""

    def __init__(self, directory: str, name: str, *, bot: bool = False, as_user: str | None = None) -> None:
        if not valid_name(name):
            raise ValueError(f"{name!r} is not a channel name: use letters, digits, - _ and . (e.g. general).")
        self.root = directory
        self.name = name
        self.path = os.path.join(directory, name)
        self.bot = bot
        self.author = BOT_NAME if bot else (as_user or me())
        if not bot and not valid_name(self.author):
            raise ValueError(f"the user name {self.author!r} cannot be a file name here (letters, digits, - _ .)")
        if not bot and self.author == BOT_NAME:
            raise ValueError(f"{BOT_NAME!r} is the bot's name on local channels: write as another OS user.")
        self._uid, self._gid = os.geteuid(), os.getegid()
        if as_user is not None and not bot and as_user != me():
            if os.geteuid() != 0:
                raise PermissionError(f"only root can write as {as_user!r}; you are {me()!r}.")
            entry = pwd.getpwnam(as_user)
            self._uid, self._gid = entry.pw_uid, entry.pw_gid

    @property
    def own_file(self) -> str:
        return os.path.join(self.path, BOT_FILE if self.bot else f"{self.author}.jsonl")

    # --- writing -----------------------------------------------------------------------------------------------
    def append(self, record: Mapping[str, Any]) -> Record:
        """Write one record to this writer's own file, its ts given under the channel lock; return it as written."""
        make_dir(self.root, DIR_MODE)
        make_dir(self.path, DIR_MODE)
        fields = {k: v for k, v in record.items() if k not in ("ts", "user", "bot")}  # identity is the file's
        fd = self._open_own(self.own_file, FILE_MODE, self._uid, self._gid)
        try:
            return self._locked_write(fd, fields, self.own_file)
        finally:
            os.close(fd)

    def save_file(self, filename: str, content: bytes) -> str:
        """A file handed back to the channel, in its folder's files/ (a text file masked, like every record);
        an existing name gets a number. Returns its path."""
        folder = os.path.join(self.path, "files")
        for d in (self.root, self.path, folder):
            make_dir(d, DIR_MODE)
        with contextlib.suppress(UnicodeDecodeError):  # binary (an image): nothing a redactor could read
            content = redact(content.decode("utf-8")).encode("utf-8")
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", filename).lstrip(".") or "file"
        for n in range(1000):
            target = os.path.join(folder, stem if n == 0 else f"{n}-{stem}")
            try:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            except FileExistsError:
                continue
            with os.fdopen(fd, "wb") as out:
                out.write(content)
            return target
        raise OSError(f"no free name for {filename} in {folder}")

    def append_private(self, to: str, record: Mapping[str, Any]) -> Record:
        """A private answer for OS user `to`, in a file only they can read; Undeliverable when that cannot be."""
        if not self.bot:
            raise Undeliverable("only the bot writes private answers")
        if not valid_name(to):
            raise Undeliverable(f"{to!r} is not a user name that can be a file name")
        euid = os.geteuid()
        if user_name(euid) == to:
            uid, gid = euid, os.getegid()
        elif euid == 0:
            try:
                entry = pwd.getpwnam(to)
            except KeyError:
                raise Undeliverable(f"there is no OS user {to!r}") from None
            uid, gid = entry.pw_uid, entry.pw_gid
        else:
            raise Undeliverable(f"the bot runs as {user_name(euid)!r}, not root, so it cannot give {to!r} a file "
                                "only they can read")
        make_dir(self.root, DIR_MODE)
        make_dir(self.path, DIR_MODE)
        private = os.path.join(self.path, PRIVATE_DIR)
        make_dir(private, PRIVATE_DIR_MODE)
        st = os.lstat(private)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != euid or st.st_mode & 0o022:
            raise Undeliverable(f"{private} is not the bot's own folder (owner {user_name(st.st_uid)}, mode "
                                f"{stat.S_IMODE(st.st_mode):o}): remove it and the bot will make its own")
        path = os.path.join(private, f"{to}.jsonl")
        try:
            fd = self._open_own(path, PRIVATE_FILE_MODE, uid, gid, private=True)
        except PermissionError as exc:
            raise Undeliverable(str(exc)) from None
        try:
            return self._locked_write(fd, {**record, "kind": "ephemeral", "to": to}, path)
        finally:
            os.close(fd)

    @staticmethod
    def _open_own(path: str, mode: int, uid: int, gid: int, *, private: bool = False) -> int:
        """An O_APPEND descriptor on a regular file owned by `uid` (created with `mode` if new), never a symlink."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, mode)
            created = True
        except FileExistsError:
            try:
                fd = os.open(path, flags)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise PermissionError(f"{path} is a symlink: remove it") from None
                raise
            created = False
        try:
            if created:
                os.fchmod(fd, mode)  # not cut by the umask
                if uid != os.geteuid():
                    os.fchown(fd, uid, gid)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise PermissionError(f"{path} is not a regular file: remove it")
            if st.st_uid != uid:
                raise PermissionError(f"{path} belongs to {user_name(st.st_uid)}, not {user_name(uid)}: "
                                      "its records are ignored; ask them or an admin to remove it")
            if private and st.st_mode & 0o077:
                os.fchmod(fd, PRIVATE_FILE_MODE)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _locked_write(self, fd: int, fields: Mapping[str, Any], path: str) -> Record:
        with _DirLock(self.path, exclusive=True, wait=LOCK_WAIT_S):  # not got in time: write anyway
            now = int(time.time() * 1_000_000)
            last = self.last_ts()
            ts = _ts_of(max(now, ts_key(last) + 1) if last else now)
            out = {"ts": ts, **fields}
            line = _encode(out)
            rec = parse_line(line, author=self.author, bot=self.bot,
                             private_to=str(fields.get("to")) if fields.get("kind") == "ephemeral" else None)
            if isinstance(rec, str):  # what readers would skip is not written
                raise ValueError(f"not a valid record: {rec}")
            written = os.write(fd, line)
            while written < len(line):  # a regular file takes it whole; never leave half a line
                written += os.write(fd, line[written:])
        return rec

    # --- reading -----------------------------------------------------------------------------------------------
    def last_ts(self) -> str | None:
        """The newest ts in any of the channel's public files (each file's last whole line); one more than a day
        ahead of the clock is not believed (it would push every later ts past the 10-digit form)."""
        best: str | None = None
        horizon = int((time.time() + 86400) * 1_000_000)
        for _name, path in self.files():
            ts = _tail_ts(path)
            if ts is not None and ts_key(ts) <= horizon and (best is None or ts_key(ts) > ts_key(best)):
                best = ts
        return best

    def files(self) -> Iterator[tuple[str, str]]:
        """(file name, path) of each author file in the folder (not yet checked)."""
        try:
            names = os.listdir(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return
        for n in sorted(names):
            if n == BOT_FILE or (n.endswith(".jsonl") and valid_name(n[:-6])):
                yield n, os.path.join(self.path, n)

    def private_file(self, user: str) -> str:
        return os.path.join(self.path, PRIVATE_DIR, f"{user}.jsonl")

    def records(self, on_skip: OnSkip | None = None, *, private_for: str | None = None) -> list[Record]:
        """Every record now in the channel, in ts order (and `private_for`'s private answers)."""
        return Follower(self, on_skip=on_skip, private_for=private_for).poll()


def _tail_ts(path: str) -> str | None:
    """The ts of a file's last whole line that has one: its tail (4 KB, more if a line is longer)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        size = st.st_size
        span = 4096
        while True:
            start = max(size - span, 0)
            tail = os.pread(fd, size - start, start)
            lines = tail.splitlines()
            if start > 0:
                lines = lines[1:]  # the first may be cut
            for raw in reversed(lines):
                try:
                    ts = json.loads(raw).get("ts")
                except (ValueError, AttributeError, RecursionError):
                    continue
                if isinstance(ts, str) and _TS.fullmatch(ts):
                    return ts
            if start == 0 or span >= TAIL_BYTES * 16:
                return None
            span *= 4
    finally:
        os.close(fd)


def parse_line(raw: bytes, *, author: str, bot: bool, private_to: str | None = None) -> Record | str:
    """One line as a checked Record, or the reason it is not one."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return f"not JSON ({type(exc).__name__})"
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    ts = data.get("ts")
    if not isinstance(ts, str) or not _TS.fullmatch(ts):
        return "no ts like 1764150000.000100"
    kind = data.get("kind", "message")
    if not isinstance(kind, str) or kind not in KINDS:
        return f"an unknown kind {str(kind)[:40]!r}"
    thread_ts = data.get("thread_ts")
    if thread_ts is not None and not (isinstance(thread_ts, str) and _TS.fullmatch(thread_ts)):
        return "a thread_ts that is not null or a ts"
    text = data.get("text")
    if text is None:
        text = ""
    if not isinstance(text, str):
        return "a text that is not a string"
    target = data.get("target")
    if kind in ("edit", "reaction") and not (isinstance(target, str) and _TS.fullmatch(target)):
        return f"a {kind} whose target is not a ts"
    name = data.get("name", "")
    op = data.get("op", "add")
    if kind == "reaction" and not (isinstance(name, str) and _REACTION.fullmatch(name) and op in ("add", "remove")):
        return "a reaction without a name and op (add or remove)"
    for flag in ("session", "status"):
        if flag in data and not isinstance(data[flag], bool):
            return f"a {flag} that is not true or false"
    files = data.get("files", [])
    if not (isinstance(files, list) and len(files) <= 20
            and all(isinstance(f, str) and f.startswith("/") and len(f) < 4096 for f in files)):
        return "files that are not a list of absolute paths"
    return Record(
        ts=ts, kind=kind, user=author, bot=bot, session=data.get("session") is True,
        status=data.get("status") is True, thread_ts=thread_ts, text=_SURROGATES.sub("\ufffd", text),
        target=target if kind in ("edit", "reaction") else None, name=name if kind == "reaction" else "",
        op=op if kind == "reaction" else "add", to=private_to,
        files=tuple(files) if kind == "message" else (),
    )


@dataclass
class _File:
    ino: tuple[int, int, int]
    fd: int
    author: str
    bot: bool
    private: bool
    offset: int = 0
    line: int = 0


class Follower:
    """Follows a channel's files as they grow: `poll` returns the whole records appended since the last poll,
    from every author's file, in ts order. Each file is opened once (O_NOFOLLOW), checked (a regular file
    named after its owner), and read by offset; what is wrong is reported once to `on_skip`.

    `bot_uids`: whose `.slackbus-bot.jsonl` counts as the bot's (the bot passes its own uid; by default: this
    process's uid, root, and the owner of the channels folder). `private_for`: also read that user's private
    answers (only when the file is theirs, so no one else can have written it)."""

    def __init__(
        self,
        channel: LocalChannel,
        *,
        on_skip: OnSkip | None = None,
        bot_uids: frozenset[int] | None = None,
        private_for: str | None = None,
    ) -> None:
        self.channel = channel
        self._on_skip = on_skip
        if bot_uids is None:
            uids = {os.geteuid(), 0}
            with contextlib.suppress(OSError):
                uids.add(os.stat(channel.root).st_uid)
            bot_uids = frozenset(uids)
        self._bot_uids = bot_uids
        self._private_for = private_for
        self._files: dict[str, _File] = {}
        self._refused: dict[str, tuple[tuple[int, int, int], str]] = {}  # path → (inode, why): said once
        self._dir_stamp: int | None = None
        self._scanned = 0.0

    def close(self) -> None:
        for f in self._files.values():
            os.close(f.fd)
        self._files.clear()

    def __del__(self) -> None:
        self.close()

    def _skip(self, path: str, line: int | None, why: str) -> None:
        if self._on_skip is not None:
            self._on_skip(path, line, why)

    def _candidates(self) -> Iterator[tuple[str, str, bool]]:
        for name, path in self.channel.files():
            yield name, path, False
        if self._private_for:
            yield f"{self._private_for}.jsonl", self.channel.private_file(self._private_for), True

    def _scan(self) -> None:
        seen = set()
        for name, path, private in self._candidates():
            seen.add(path)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            ino = (st.st_dev, st.st_ino, st.st_uid)  # a file replaced or given away is looked at again
            known = self._files.get(path)
            if known is not None and known.ino == ino:
                continue
            if known is not None:  # replaced (by its owner, the folder's owner or root): read the new one anew
                os.close(known.fd)
                del self._files[path]
            refused = self._refused.get(path)
            if refused is not None and refused[0] == ino:
                continue
            why = self._open(path, name, ino, private)
            if why is not None:
                self._refused[path] = (ino, why)
                self._skip(path, None, why)
        for path in [p for p in self._files if p not in seen]:
            os.close(self._files.pop(path).fd)

    def _open(self, path: str, name: str, ino: tuple[int, int, int], private: bool) -> str | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "a symlink: its records are ignored"
            return f"cannot be read ({exc.strerror}): its records are ignored"
        st = os.fstat(fd)
        owner = user_name(st.st_uid)
        why = None
        if not stat.S_ISREG(st.st_mode):
            why = "not a regular file: ignored"
        elif private:
            if st.st_uid != os.geteuid():
                why = f"a private file owned by {owner}, not you: ignored"
        elif name == BOT_FILE:
            if st.st_uid not in self._bot_uids:
                why = f"the bot's file, but owned by {owner}, whom this reader does not take for the bot: ignored"
        elif owner != name[:-6]:
            why = f"owned by {owner}, not {name[:-6]}: a person's file must be their own; its records are ignored"
        elif owner == BOT_NAME:
            why = f"the OS user {BOT_NAME!r} has the bot's name on local channels: their records are ignored"
        if why is not None:
            os.close(fd)
            return why
        bot = name == BOT_FILE and not private
        author = BOT_NAME if bot or private else owner
        self._files[path] = _File(ino=ino, fd=fd, author=author, bot=bot, private=private)
        return None

    def poll(self) -> list[Record]:
        stamp = _mtime(self.channel.path)
        if stamp != self._dir_stamp or time.monotonic() - self._scanned > 0.5:
            self._dir_stamp = stamp
            self._scanned = time.monotonic()
            self._scan()
        grown = []
        for path, f in self._files.items():
            try:
                size = os.fstat(f.fd).st_size
            except OSError:
                continue
            if size < f.offset:  # cut short by its owner: read it again from the start
                f.offset, f.line = 0, 0
            if size > f.offset:
                grown.append((path, f))
        if not grown:
            return []
        out: list[Record] = []
        with _DirLock(self.channel.path, exclusive=False, wait=0.01):  # a consistent batch when we get it
            for path, f in grown:
                try:
                    out.extend(self._read(path, f))
                except OSError as exc:  # a file that cannot be read now: said, and tried again next time
                    self._skip(path, None, f"cannot be read ({exc.strerror})")
        out.sort(key=lambda r: ts_key(r.ts))
        return out

    def _read(self, path: str, f: _File) -> Iterator[Record]:
        size = os.fstat(f.fd).st_size
        data = os.pread(f.fd, min(size - f.offset, 4 * MAX_LINE), f.offset)
        end = data.rfind(b"\n") + 1
        if end == 0:
            if len(data) > MAX_LINE:  # one line longer than any record may be: skip what there is of it
                f.line += 1
                self._skip(path, f.line, f"a line over {MAX_LINE} bytes")
                f.offset += len(data)
            return
        f.offset += end
        for raw in data[:end].split(b"\n")[:-1]:
            f.line += 1
            if not raw.strip():
                continue
            if len(raw) > MAX_LINE:
                self._skip(path, f.line, f"a line over {MAX_LINE} bytes")
                continue
            rec = parse_line(raw, author=f.author, bot=f.bot, private_to=self._private_for if f.private else None)
            if isinstance(rec, str):
                self._skip(path, f.line, rec)
                continue
            if f.private != (rec.kind == "ephemeral"):
                self._skip(path, f.line, "a private answer outside .private/" if not f.private
                           else "not a private answer")
                continue
            if rec.kind == "edit" and not f.bot:
                continue  # only the bot edits (its status line into its answer); a person's "edit" means nothing
            yield replace(rec, source=f"{path}:{f.line}")


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def channels_in(directory: str) -> Iterator[str]:
    """Channel folders (not symlinks) under the local channels folder."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    for e in entries:
        if valid_name(e.name) and e.is_dir(follow_symlinks=False):
            yield e.name


def legacy_files(directory: str) -> list[str]:
    """Channel files of the old one-file layout (`<channel>.jsonl`), which are no longer read."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(os.path.join(directory, n) for n in names if n.endswith(".jsonl") and valid_name(n[:-6]))
