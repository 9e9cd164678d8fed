"""Hand a Claude Code session over between a terminal and a Slack thread, both ways.

- Holds: while a session is open in a terminal, its SessionStart hook records a hold
  (SLACKBUS_HOME/holds/<session id>.json: the `claude` process, its folder and HOME) and its SessionEnd hook
  removes it. The bot never runs a held session: a reply in its thread waits, and says so, until the hold is
  gone (or its process has died).
- Terminal → Slack: `slackbus handoff` asks the bot (its local socket) to post a hand-off message and to map
  that thread to the session, folder and HOME (`--resume` needs the same ones); replies there continue it.
- Slack → terminal: `/claude attach` in Slack, or `slackbus attach THREAD_LINK` here, gives the exact command.

Stdlib only: the hold is taken inside a hook.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

HOLDS = "holds"
HOME = os.path.expanduser("~")  # this process's HOME: where the sessions it runs keep their files


def _holds_dir(home: str) -> str:
    return os.path.join(home, HOLDS)


def _safe(session_id: str) -> str:
    return "".join(c for c in session_id if c.isalnum() or c in "-_")[:80] or "unknown"


def claude_pid(start: int | None = None) -> int:
    """The `claude` process running this hook: up the parent chain (a hook runs under a shell), else the parent."""
    pid = os.getppid() if start is None else start
    first = pid
    for _ in range(5):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return first
        if any(os.path.basename(a.decode(errors="replace")) == "claude" or b"claude" in a.split(b"/")[-1]
               for a in argv[:2]):
            return pid
        if ppid <= 1:
            break
        pid = ppid
    return first


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def take(home: str, session_id: str, *, cwd: str, pid: int, transcript: str | None, user_home: str) -> None:
    directory = _holds_dir(home)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    record = {"session_id": session_id, "cwd": cwd, "pid": pid, "transcript_path": transcript, "home": user_home,
              "since": time.time()}
    tmp = os.path.join(directory, f".{_safe(session_id)}.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, os.path.join(directory, f"{_safe(session_id)}.json"))


def release(home: str, session_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(_holds_dir(home), f"{_safe(session_id)}.json"))


def holder(home: str, session_id: str) -> dict[str, Any] | None:
    """The live hold on a session, if any (a hold whose process died is stale: removed)."""
    path = os.path.join(_holds_dir(home), f"{_safe(session_id)}.json")
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not alive(int(record.get("pid") or 0)):
        with contextlib.suppress(OSError):
            os.remove(path)
        return None
    return record


def latest_hold(home: str, cwd: str) -> dict[str, Any] | None:
    """The most recent live hold in this folder (or one above it): the session a `slackbus handoff` run from
    inside Claude Code's Bash tool belongs to."""
    best: dict[str, Any] | None = None
    try:
        names = os.listdir(_holds_dir(home))
    except FileNotFoundError:
        return None
    here = os.path.realpath(cwd)
    for name in names:
        if not name.endswith(".json"):
            continue
        record = holder(home, name[:-5])
        if record is None:
            continue
        where = os.path.realpath(str(record.get("cwd") or ""))
        if (here == where or here.startswith(where + os.sep)) and (
                best is None or float(record.get("since") or 0) > float(best.get("since") or 0)):
            best = record
    return best


def transcript_path(user_home: str, cwd: str, session_id: str) -> str:
    """Where Claude Code keeps a session: ~/.claude/projects/<the folder, with / and . as ->/<id>.jsonl."""
    munged = "".join(c if c.isalnum() else "-" for c in os.path.realpath(cwd))
    return os.path.join(user_home, ".claude", "projects", munged, f"{session_id}.jsonl")


def session_exists(user_home: str, cwd: str, session_id: str) -> bool:
    return os.path.isfile(transcript_path(user_home, cwd, session_id))


THREAD_LINK = r"archives/([CDG][A-Z0-9]+)/p(\d{10})(\d{6})(?:\S*?thread_ts=(\d+\.\d+))?"
THREAD_TS = r"^\d{10}\.\d{6}$"


def parse_thread_ref(text: str) -> tuple[str | None, str] | None:
    """A thread link (…/archives/C123/p1700000000000100[?thread_ts=…]) or a bare ts → (channel, thread ts);
    the channel is None for a bare ts. The one parser of thread links (Slack's "Copy link", `<link|label>` too)."""
    import re  # here: a hook imports this module and never parses a link

    text = text.strip().strip("<>").split("|")[0]
    match = re.search(THREAD_LINK, text)
    if match:
        return match.group(1), match.group(4) or f"{match.group(2)}.{match.group(3)}"
    if re.match(THREAD_TS, text):
        return None, text
    return None


def parse_thread_link(link: str) -> tuple[str, str] | None:
    """`https://team.slack.com/archives/C0123/p1700000000000100[?thread_ts=…]` → (channel, thread ts)."""
    ref = parse_thread_ref(link)
    if ref is None or ref[0] is None:
        return None
    return ref[0], ref[1]


def resume_command(cwd: str, session_id: str, user_home: str | None = None) -> str:
    import shlex

    prefix = f"HOME={shlex.quote(user_home)} " if user_home and user_home != os.path.expanduser("~") else ""
    return f"cd {shlex.quote(cwd)} && {prefix}claude --resume={session_id}"
