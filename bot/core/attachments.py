"""Files that come with a request: which may be fetched, where they are kept, and how the prompt names them.

A transport says what was attached (FileRef) and fetches the bytes (bot.slack.files with the bot token; the local
transport copies a path); this module decides the rest, the same for every transport:

- a file over SLACKBUS_MAX_ATTACHMENT_MB, of a type not in SLACKBUS_ATTACHMENT_TYPES, deleted, or only a link to
  another service is left out, with one sentence saying which and why (the task runs without it);
- fetched files go to a folder per thread under SLACKBUS_HOME (outside any repository), which the `claude` process
  may read (`--add-dir`);
- the prompt names each file with its path, type and size; a small text file is inlined (≤ SLACKBUS_INLINE_CHARS);
  an image (png, jpeg, gif, webp) also goes to the model as an image block, so Claude sees it without a tool call.

Files are data like every other part of the channel: their text is framed as such by the context builder.
"""

from __future__ import annotations

import base64
import ctypes
import fnmatch
import functools
import os
import pwd
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bot.config import ATTACHMENT_TYPES
from bot.core.events import FileRef

ATTACHMENTS_DIR = "attachments"
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
MAX_IMAGE_BYTES = 5 * 1024 * 1024  # the Messages API's limit for one image
DEFAULT_TYPES = ATTACHMENT_TYPES
TEXT_TYPES = ("text/*", "application/json", "application/xml", "application/x-yaml", "application/yaml",
              "application/x-ndjson", "application/javascript", "application/x-sh")


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    types: tuple[str, ...]
    inline_chars: int


@dataclass(frozen=True)
class Fetched:
    """One attachment after the transport tried to fetch it: its path, or the sentence saying why it was left out."""

    ref: FileRef
    path: Path | None = None
    left_out: str | None = None


class Fetcher(Protocol):
    """A transport's way to get an attached file's bytes into `folder` (bot.slack.files.SlackFetcher)."""

    async def fetch(self, ref: FileRef, folder: Path, limits: Limits) -> Fetched: ...


class AttachmentRefused(Exception):
    """A file that is not fetched, with the sentence that says why (shown in the thread; the task still runs)."""


def type_allowed(mimetype: str, types: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(mimetype.lower(), pattern.lower()) for pattern in types)


def check(ref: FileRef, limits: Limits) -> None:
    """Raise AttachmentRefused if `ref` must not be fetched at all."""
    if ref.mode == "tombstone":
        raise AttachmentRefused(f"{ref.name} was left out: it was deleted in Slack.")
    if ref.mode == "external":
        raise AttachmentRefused(f"{ref.name} was left out: it is a link to another service (Google Drive, Dropbox …), "
                                "not a file stored in Slack.")
    if ref.size > limits.max_bytes:
        raise AttachmentRefused(f"{ref.name} was left out: it is {_size(ref.size)}, over the limit of "
                                f"{_size(limits.max_bytes)} (SLACKBUS_MAX_ATTACHMENT_MB).")
    if not type_allowed(ref.mimetype, limits.types):
        raise AttachmentRefused(f"{ref.name} was left out: files of type {ref.mimetype} are not accepted "
                                "(SLACKBUS_ATTACHMENT_TYPES).")


def thread_dir(home: Path, channel: str, thread_ts: str) -> Path:
    """The folder a thread's attachments are kept in (under SLACKBUS_HOME, never inside a repository)."""
    return home / ATTACHMENTS_DIR / safe_part(channel) / safe_part(thread_ts)


def target_path(folder: Path, ref: FileRef) -> Path:
    """Where `ref` is written: its own name, made safe, prefixed with its id so two files of one name both stay."""
    return folder / f"{safe_part(ref.id)[:16]}-{safe_part(ref.name)[:120] or 'file'}"


def prompt_section(fetched: list[Fetched], limits: Limits) -> tuple[str, list[dict[str, Any]], bool]:
    """The text that names the attachments (paths, types, sizes, small text inlined, left-out files with their
    reason), the image blocks for the model, and whether a file reaches Claude only by its path (then the process
    must be one that may read the thread's folder)."""
    if not fetched:
        return "", [], False
    by_path = False
    lines = ["Files attached to this message (saved where you can read them):"]
    images: list[dict[str, Any]] = []
    for f in fetched:
        if f.path is None:
            lines.append(f"- {f.ref.name}: not available. {f.left_out or ''}".rstrip())
            continue
        size = f.path.stat().st_size
        lines.append(f"- {f.ref.name} ({f.ref.mimetype}, {_size(size)}): {f.path}")
        if f.ref.mimetype in IMAGE_TYPES and size <= MAX_IMAGE_BYTES:
            images.append({"type": "image", "source": {"type": "base64", "media_type": f.ref.mimetype,
                                                       "data": base64.b64encode(f.path.read_bytes()).decode()}})
            lines.append("  (the image is attached below as well)")
            continue
        if type_allowed(f.ref.mimetype, TEXT_TYPES) and size <= limits.inline_chars * 4:
            text = f.path.read_bytes().decode("utf-8", errors="replace")
            if len(text) <= limits.inline_chars:
                fence = "~" * max(3, _longest_run(text, "~") + 1)
                lines.append(f"  Its content:\n{fence}\n{text}\n{fence}")
                continue
        by_path = True
    return "\n".join(lines), images, by_path


@functools.cache
def _libc() -> Any:
    return ctypes.CDLL(None)


def give_back_memory() -> bool:
    """After a run that fetched files: the heap pages its short-lived buffers were freed into (the download's 64 KB
    pieces, an image's bytes, its base64 and the JSON line that carried it) go back to the OS (glibc malloc_trim);
    glibc keeps them otherwise, and a bot that answers files all day grows by them. False where there is no
    malloc_trim (not glibc)."""
    try:
        _libc().malloc_trim(0)
    except (AttributeError, OSError):
        return False
    return True


def left_out_notes(fetched: list[Fetched]) -> list[str]:
    return [f.left_out for f in fetched if f.left_out]


def _longest_run(text: str, char: str) -> int:
    runs = re.findall(re.escape(char) + "+", text)
    return max((len(r) for r in runs), default=0)


def safe_part(name: str) -> str:
    """A channel id, ts or file name as one harmless path component."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")


def _size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / 1024 / 1024:.1f} MB"
    if n >= 1024:
        return f"{n / 1024:.0f} KB"
    return f"{n} bytes"


def permits(info: os.stat_result, user: str, owner: int, group: int, other: int) -> bool:
    """Whether a file's permission bits give OS user `user` an access (stat.S_IRUSR/S_IRGRP/S_IROTH for reading,
    the S_IX* bits for entering a folder); root always, an unknown user never."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return False
    if entry.pw_uid == 0:
        return True
    if info.st_uid == entry.pw_uid:
        return bool(info.st_mode & owner)
    if info.st_gid in os.getgrouplist(user, entry.pw_gid):
        return bool(info.st_mode & group)
    return bool(info.st_mode & other)
