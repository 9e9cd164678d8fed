"""Files attached to a local channel's message: paths its writer named (`/attach PATH` in the console, or a path
like ./crash.log in the text), fetched by copying. The bot may be able to read more than the writer (it may be
root): a file its writer cannot read is left out, with the sentence saying so.
"""

from __future__ import annotations

import mimetypes
import os
import shutil
import stat
from pathlib import Path

from bot.core.attachments import AttachmentRefused, Fetched, Limits, check, permits, target_path
from bot.core.events import FileRef
from bot.log import get_logger

log = get_logger("slackbus.local.files")


def refs_of(paths: tuple[str, ...], *, author: str, ts: str) -> tuple[FileRef, ...]:
    """FileRefs for the paths a record names; mode "unreadable" for one its author cannot read (or that is gone)."""
    out = []
    for i, path in enumerate(paths):
        name = os.path.basename(path) or "file"
        kind = mimetypes.guess_type(name)[0] or ("text/plain" if name.endswith((".log", ".txt")) else
                                                  "application/octet-stream")
        try:
            info = os.stat(path)
            reachable = all(permits(os.stat(d), author, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)
                            for d in _parents(path))
            readable = permits(info, author, stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)
            mode = "hosted" if stat.S_ISREG(info.st_mode) and reachable and readable else "unreadable"
            size = info.st_size
        except OSError:
            mode, size = "unreadable", 0
        out.append(FileRef(id=f"{ts}-{i}", name=name, mimetype=kind, size=size, source=path, mode=mode))
    return tuple(out)


class LocalFetcher:
    async def fetch(self, ref: FileRef, folder: Path, limits: Limits) -> Fetched:
        try:
            if ref.mode == "unreadable":
                raise AttachmentRefused(f"{ref.name} was left out: there is no such file, or its writer cannot "
                                        "read it.")
            check(ref, limits)
            os.makedirs(folder, mode=0o700, exist_ok=True)
            target = target_path(folder, ref)
            with open(ref.source, "rb") as src, open(target, "wb") as dst:  # noqa: ASYNC230 - a local copy
                shutil.copyfileobj(src, dst, length=1024 * 1024)
            if target.stat().st_size > limits.max_bytes:
                target.unlink()
                raise AttachmentRefused(f"{ref.name} was left out: it is larger than the limit of "
                                        f"{limits.max_bytes // (1024 * 1024)} MB (SLACKBUS_MAX_ATTACHMENT_MB).")
            return Fetched(ref, target)
        except AttachmentRefused as why:
            log.info("files.left_out", file=ref.source, reason=str(why))
            return Fetched(ref, left_out=str(why))
        except OSError as exc:
            return Fetched(ref, left_out=f"{ref.name} was left out: it could not be read ({exc.strerror}).")


def _parents(path: str) -> list[str]:
    out, here = [], os.path.dirname(os.path.abspath(path))
    while True:
        out.append(here)
        up = os.path.dirname(here)
        if up == here:
            return out
        here = up
