"""Files Claude hands back to the thread: through the MCP tool `mcp__slackbus__upload(path, title, comment)`, or by
writing them into the session's outbox folder ($SLACKBUS_OUTBOX), which is emptied into its thread after every turn.

Either way the transport's poster uploads them (Slack: files.getUploadURLExternal + files.completeUploadExternal,
text files masked on the way out like every other text; the local channel: a copy in the channel folder's files/).
A file over SLACKBUS_MAX_ATTACHMENT_MB is not uploaded; the thread gets one sentence instead.

A path given to the tool must lie in the thread's folder (its repository or worktree), its outbox or its
attachments, after symlinks are resolved: a session cannot hand out the bot's own files. Under SLACKBUS_RUN_AS
(the bot is root) the file must also be readable by that user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from pathlib import Path

import anyio

from bot.config import Settings
from bot.core.attachments import permits, safe_part, thread_dir
from bot.core.poster import Poster
from bot.core.store import Store
from bot.log import get_logger

log = get_logger("slackbus.files_out")

OUTBOX_DIR = "outbox"
SENT_DIR = ".sent"  # files already uploaded, kept beside the outbox until the thread's folder is cleaned


def outbox_dir(home: Path, session_id: str) -> Path:
    """A Claude session's outbox (under SLACKBUS_HOME, never in a repository). It belongs to the session, not the
    thread, so a process started before it had a thread (the pool) has one too; the thread is the session's."""
    return home / OUTBOX_DIR / safe_part(session_id)


class UploadRefused(Exception):
    """A file that is not uploaded, with the sentence saying why."""


class FilesOut:
    def __init__(self, settings: Settings, store: Store, poster: Poster) -> None:
        self._settings = settings
        self._store = store
        self._poster = poster

    def allowed(self, channel: str, thread_ts: str, session_id: str, path: str) -> Path:
        """The real path of a file the thread's session may hand back; UploadRefused (a sentence) otherwise."""
        s = self._settings
        thread = self._store.get_thread(channel, thread_ts)
        given = Path(path).expanduser()
        if not given.is_absolute() and thread is not None and thread.workdir:
            given = Path(thread.workdir) / given  # relative to the session's folder, as Claude sees it
        try:
            real = given.resolve(strict=True)
        except (OSError, RuntimeError, ValueError):
            raise UploadRefused(f"{path} was not uploaded: there is no such file.") from None
        roots = [outbox_dir(s.home, session_id), thread_dir(s.home, channel, thread_ts)]
        if thread is not None and thread.workdir:
            roots.append(Path(thread.workdir))
        roots = [r.resolve() for r in roots]
        if not any(real == r or real.is_relative_to(r) for r in roots):
            raise UploadRefused(f"{path} was not uploaded: only files in this thread's folder ({roots[-1]}), its "
                                "outbox or its attachments can be handed back.")
        info = real.stat()
        if not stat.S_ISREG(info.st_mode):
            raise UploadRefused(f"{path} was not uploaded: it is not a regular file.")
        if s.run_as and not permits(info, s.run_as, stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH):
            raise UploadRefused(f"{path} was not uploaded: {s.run_as}, who runs Claude, cannot read it.")
        return real

    async def upload(self, channel: str, thread_ts: str, path: Path, *, title: str | None = None,
                     comment: str | None = None) -> str:
        """Upload one file to the thread; returns a sentence for the caller. UploadRefused when too big."""
        size = (await anyio.Path(path).stat()).st_size
        limit = self._settings.max_attachment_mb * 1024 * 1024
        if size > limit:
            raise UploadRefused(f"{path.name} was not uploaded: it is {size / 1024 / 1024:.1f} MB, over the limit of "
                                f"{self._settings.max_attachment_mb} MB (SLACKBUS_MAX_ATTACHMENT_MB).")
        content = await anyio.Path(path).read_bytes()
        await self._poster.upload(channel, thread_ts, path.name, content, title=title or path.name, comment=comment)
        log.info("files_out.uploaded", channel=channel, thread_ts=thread_ts, file=path.name, bytes=size)
        return f"Uploaded {path.name} to the thread."

    async def send_outbox(self, channel: str, thread_ts: str, session_id: str) -> list[str]:
        """Upload what the session wrote into its outbox since the last turn, oldest first, to its thread; each file
        moves to .sent/ once uploaded. Returns the sentences for files that could not go."""
        folder = outbox_dir(self._settings.home, session_id)
        try:
            entries = sorted((e for e in os.scandir(folder) if e.is_file(follow_symlinks=False)),
                             key=lambda e: e.stat().st_mtime)
        except FileNotFoundError:
            return []
        problems = []
        for entry in entries:
            path = Path(entry.path)
            try:
                await self.upload(channel, thread_ts, path)
            except UploadRefused as why:
                problems.append(str(why))
            sent = folder / SENT_DIR
            sent.mkdir(mode=0o700, exist_ok=True)
            shutil.move(str(path), sent / path.name)
        return problems


def forget_empty_outboxes(home: Path, older_than_s: float = 86400.0) -> int:
    """At start: remove the outboxes of sessions that never handed anything back (every process gets one, the
    pool's too), once they are a day old. Returns how many went."""
    root = home / OUTBOX_DIR
    gone = 0
    now = time.time()
    try:
        folders = list(os.scandir(root))
    except FileNotFoundError:
        return 0
    for folder in folders:
        with contextlib.suppress(OSError):  # not empty, or not ours to remove: kept
            if folder.is_dir(follow_symlinks=False) and now - folder.stat().st_mtime > older_than_s:
                os.rmdir(folder.path)
                gone += 1
    return gone


def prepare_outbox(home: Path, session_id: str) -> Path:
    """The session's outbox, made (0700) before a process that may write there starts."""
    folder = outbox_dir(home, session_id)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder
