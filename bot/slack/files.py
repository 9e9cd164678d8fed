"""Files attached to a Slack message: what the event says about them, and their bytes, fetched with the bot token.

Slack serves `url_private_download` only to a request with `Authorization: Bearer <bot token>` from an app with the
files:read scope; without it Slack answers with its sign-in page (HTML, status 200), which is caught here and said
in one sentence instead of being handed to Claude as the file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import aiohttp
import anyio
from slack_sdk.web.async_client import AsyncWebClient

from bot.core.attachments import AttachmentRefused, Fetched, Limits, check, target_path
from bot.core.events import FileRef
from bot.log import get_logger

log = get_logger("slackbus.files")

DOWNLOAD_TIMEOUT_S = 60.0
CHUNK = 64 * 1024


def ref_from_slack(file: dict[str, Any]) -> FileRef:
    """A FileRef from a file object of a Slack event (hostile input: every field checked)."""
    mode = str(file.get("mode") or "hosted")
    if file.get("is_external") or file.get("external_type"):
        mode = "external"
    size = file.get("size")
    return FileRef(
        id=str(file.get("id") or ""),
        name=str(file.get("name") or file.get("title") or "file")[:200],
        mimetype=str(file.get("mimetype") or "application/octet-stream")[:100],
        size=size if isinstance(size, int) and size >= 0 else 0,
        source=str(file.get("url_private_download") or file.get("url_private") or ""),
        mode=mode,
    )


class SlackFetcher:
    """Fetches attached files with the bot's token, over the Web API client's HTTP session."""

    def __init__(self, client: AsyncWebClient) -> None:
        self._client = client

    async def fetch(self, ref: FileRef, folder: Path, limits: Limits) -> Fetched:
        session = self._client.session
        if session is None:
            async with aiohttp.ClientSession() as own:
                return await download(own, str(self._client.token), ref, folder, limits)
        return await download(session, str(self._client.token), ref, folder, limits)


async def download(session: aiohttp.ClientSession, token: str, ref: FileRef, folder: Path,
                   limits: Limits) -> Fetched:
    """Fetch one file into `folder`; a file that cannot or must not be fetched comes back with the sentence why."""
    try:
        check(ref, limits)
        if not ref.source.startswith(("https://", "http://")):
            raise AttachmentRefused(f"{ref.name} was left out: Slack gave no address to download it from.")
        return Fetched(ref, await _fetch(session, token, ref, folder, limits))
    except AttachmentRefused as why:
        log.info("files.left_out", file_id=ref.id, reason=str(why))
        return Fetched(ref, left_out=str(why))


async def _fetch(session: aiohttp.ClientSession, token: str, ref: FileRef, folder: Path, limits: Limits) -> Path:
    os.makedirs(folder, mode=0o700, exist_ok=True)
    path = target_path(folder, ref)
    partial = path.with_name(path.name + ".part")
    done = False
    try:
        with anyio.fail_after(DOWNLOAD_TIMEOUT_S):
            async with session.get(ref.source, headers={"Authorization": f"Bearer {token}"},
                                   allow_redirects=True) as response:
                if response.status != 200:
                    raise AttachmentRefused(f"{ref.name} was left out: Slack answered HTTP {response.status} when "
                                            "it was downloaded.")
                kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
                if kind == "text/html" and not ref.mimetype.startswith("text/html"):
                    raise AttachmentRefused(
                        f"{ref.name} was left out: Slack sent its sign-in page instead of the file, so this app "
                        "cannot read files. Add the files:read scope (manifest.yaml) and reinstall the app.")
                total = 0
                fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    async for chunk in response.content.iter_chunked(CHUNK):
                        total += len(chunk)
                        if total > limits.max_bytes:
                            raise AttachmentRefused(
                                f"{ref.name} was left out: it is larger than the limit of "
                                f"{limits.max_bytes // (1024 * 1024)} MB (SLACKBUS_MAX_ATTACHMENT_MB).")
                        out.write(chunk)
        done = True
    except TimeoutError:
        raise AttachmentRefused(f"{ref.name} was left out: its download took longer than "
                                f"{DOWNLOAD_TIMEOUT_S:g} s.") from None
    except aiohttp.ClientError as exc:
        raise AttachmentRefused(f"{ref.name} was left out: it could not be downloaded "
                                f"({type(exc).__name__}).") from None
    finally:
        if not done:
            with contextlib.suppress(OSError):
                partial.unlink()
    os.replace(partial, path)
    return path
