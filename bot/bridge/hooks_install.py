"""Put slackbus's hook entries into a Claude Code settings.json, and take exactly them out again.

Claude Code reads hooks from settings files (~/.claude/settings.json, <project>/.claude/settings.json):

    {"hooks": {"Stop": [{"matcher": "...", "hooks": [{"type": "command", "command": "...", "timeout": 10}]}]}}

Our handlers are recognised by the shell comment ` # slackbus-hook` that ends their command, so `install` can
rewrite them in place (idempotently) and `uninstall` can remove them without touching anybody else's hooks.

`install` followed by `uninstall` gives back the original file byte for byte: the original's formatting (indent,
compact separators, \\u escapes or not, CRLF, BOM, surrounding whitespace) is detected and reused when writing,
containers we add are dropped again when they empty, and a sidecar note next to the file
(`.slackbus-hooks.json`) remembers what install created (the file, the `.claude` directory) or found empty, so
uninstall can delete or keep exactly those. A file whose formatting is not what a JSON serializer produces (hand
aligned, comments are impossible anyway) is rewritten in the closest detected style the first time it changes.

Only the standard library is imported here: the CLI imports this module on a path where start-up time matters.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_EVENTS = ("SessionStart", "Stop", "SubagentStop", "Notification", "SessionEnd")
MARKER = "slackbus-hook"
SIDECAR_NAME = ".slackbus-hooks.json"

_MARK_SUFFIX = f" # {MARKER}"
# Claude Code's event names are PascalCase words (the set grows between releases, so no fixed list); this catches
# "stop" and "Stop --x" without going stale.
_EVENT_NAME = re.compile(r"[A-Z][A-Za-z]*")
_JSON_WS = " \t\n\r"
_DEFAULT_INDENT = "  "  # what Claude Code itself writes


@dataclass(frozen=True)
class Result:
    path: Path
    changed: bool  # the settings file was written, created or deleted
    added: list[str]  # install: events whose slackbus entry was added or rewritten
    removed: list[str]  # events our entries were taken out of (install: events no longer asked for)


# ---------------------------------------------------------------------------------------------------- public API


def settings_path(*, project: Path | None = None, user: bool = False, home: Path | None = None) -> Path:
    """The settings.json to edit: the user's (`user=True`), a project's, or the current directory's."""
    if user and project is not None:
        raise ValueError("Choose either --user or --project, not both.")
    if user:
        return (home if home is not None else Path.home()) / ".claude" / "settings.json"
    return (project if project is not None else Path.cwd()) / ".claude" / "settings.json"


def hook_command(base: list[str], event: str, *, channel: str | None = None, env_file: str | None = None) -> str:
    """The shell command Claude Code runs for `event`, ending in the marker comment that identifies it as ours."""
    if not base:
        raise ValueError("The command that runs slackbus is empty.")
    _check_event(event)
    argv = list(base)
    if env_file:
        argv += ["--env-file", env_file]
    argv += ["hook", event]
    if channel:
        argv += ["--channel", channel]
    return shlex.join(argv) + _MARK_SUFFIX


def install(
    path: Path,
    base: list[str],
    *,
    events: Sequence[str] = DEFAULT_EVENTS,
    tools: Sequence[str] = (),
    channel: str | None = None,
    env_file: str | None = None,
    timeout: int = 10,
) -> Result:
    """Add (or update in place) one slackbus handler per event; leave everything else in the file as it was."""
    wanted = _wanted(base, events, tools, channel, env_file, timeout)
    doc = _Document.load(path)
    data = doc.data if doc is not None else {}
    before = _snapshot(data)

    hooks = data.get("hooks")
    note = _FileNote()
    if doc is None:
        note.created_file = True
        note.created_dir = not path.parent.is_dir()
    elif doc.blank:
        note.original_text = doc.text
    if isinstance(hooks, dict):
        note.empty_hooks = not hooks
        note.empty_events = [event for event in wanted if hooks.get(event) == []]
    else:
        hooks = data["hooks"] = {}

    sidecar = _Sidecar.load(path)
    earlier = _FileNote.from_json(sidecar.files.get(path.name))
    placed, rewritten, swept = _sweep(hooks, wanted, keep=set(wanted) | set(earlier.empty_events))
    for event, want in wanted.items():
        if event not in placed:
            group: dict[str, Any] = {} if want.matcher is None else {"matcher": want.matcher}
            group["hooks"] = [dict(want.handler)]
            hooks.setdefault(event, []).append(group)

    added = [event for event in wanted if event not in placed or event in rewritten or event in swept]
    removed = [event for event in swept if event not in wanted]
    if _snapshot(data) == before and doc is not None:
        return Result(path, False, [], [])

    if note.created_dir:
        _make_dir(path.parent)
    if sidecar.remember(path.name, note):  # before the settings file, so a crash in between leaves no orphan
        sidecar.save()
    style = doc.style if doc is not None else _Style.default()
    _atomic_write(path, style.dump(data), mode=doc.mode if doc is not None else None)
    return Result(path, True, added, removed)


def uninstall(path: Path) -> Result:
    """Remove exactly slackbus's handlers (and what install created for them); touch nothing else."""
    doc = _Document.load(path)
    sidecar = _Sidecar.load(path)
    note = sidecar.forget(path.name)
    if doc is None:  # nothing to edit; still tidy up a note (and directory) an earlier install left
        if note is not None:
            sidecar.save()
        return Result(path, False, [], [])

    data = doc.data
    hooks = data.get("hooks")
    removed: list[str] = []
    if isinstance(hooks, dict):
        keep = set(note.empty_events) if note is not None else set()
        _, _, swept = _sweep(hooks, {}, keep=keep)
        removed = list(swept)
        if swept and not hooks and not (note is not None and note.empty_hooks):
            del data["hooks"]

    changed = bool(removed)
    if changed:
        if not data and note is not None and note.created_file:
            path.unlink()
        elif not data and note is not None and note.original_text is not None:
            _atomic_write(path, note.original_text.encode("utf-8"), mode=doc.mode)
        else:
            _atomic_write(path, doc.style.dump(data), mode=doc.mode)
    if note is not None:
        sidecar.save()
    return Result(path, changed, [], removed)


# ------------------------------------------------------------------------------------------------ hooks surgery


@dataclass(frozen=True)
class _Want:
    matcher: str | None
    handler: dict[str, Any]


def _check_event(event: object) -> None:
    if not isinstance(event, str) or not _EVENT_NAME.fullmatch(event):
        raise ValueError(f"{event!r} is not a Claude Code hook event name (they look like Stop or SessionStart).")


def _wanted(
    base: list[str],
    events: Sequence[str],
    tools: Sequence[str],
    channel: str | None,
    env_file: str | None,
    timeout: int,
) -> dict[str, _Want]:
    if isinstance(events, str) or isinstance(tools, str):
        raise ValueError("Events and tools must be lists of names, not a single string.")
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
        raise ValueError(f"The hook timeout must be a positive number of seconds, not {timeout!r}.")
    for tool in tools:
        if not isinstance(tool, str) or not tool.strip():
            raise ValueError(f"{tool!r} is not a tool name.")
    matchers: dict[str, str | None] = dict.fromkeys(events)
    if tools:
        matchers["PostToolUse"] = "|".join(tools)
    if not matchers:
        raise ValueError("Nothing to install: give at least one hook event or tool.")
    return {
        event: _Want(
            matcher,
            {
                "type": "command",
                "command": hook_command(base, event, channel=channel, env_file=env_file),
                "timeout": timeout,
            },
        )
        for event, matcher in matchers.items()
    }


def _is_ours(handler: object) -> bool:
    if not isinstance(handler, dict):
        return False
    command = handler.get("command")
    return isinstance(command, str) and command.rstrip().endswith(_MARK_SUFFIX)


def _sweep(hooks: dict[str, Any], wanted: dict[str, _Want], *, keep: set[str]) -> tuple[set[str], set[str], list[str]]:
    """Take our handlers out of every event, except the first one per wanted event that sits in a group with the
    wanted matcher: that one is rewritten to the wanted handler in place. A group we empty is dropped, and so is an
    event we empty unless it is in `keep`. Returns (events with a kept handler, of those the rewritten ones, events
    something was removed from, in file order)."""
    placed: set[str] = set()
    rewritten: set[str] = set()
    swept: list[str] = []
    for event in list(hooks):
        groups: list[Any] = hooks[event]
        want = wanted.get(event)
        remaining: list[Any] = []
        for group in groups:
            handlers = group.get("hooks") if isinstance(group, dict) else None
            if not isinstance(handlers, list) or not any(_is_ours(h) for h in handlers):
                remaining.append(group)
                continue
            left: list[Any] = []
            for handler in handlers:
                if not _is_ours(handler):
                    left.append(handler)
                elif want is not None and event not in placed and group.get("matcher") == want.matcher:
                    placed.add(event)
                    if handler != want.handler:
                        rewritten.add(event)
                        handler = dict(want.handler)
                    left.append(handler)
                elif event not in swept:
                    swept.append(event)
            if left:
                group["hooks"] = left
                remaining.append(group)
        if remaining or not groups or event in keep:
            hooks[event] = remaining
        else:
            del hooks[event]
    return placed, rewritten, swept


def _snapshot(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False)


# ------------------------------------------------------------------------------------------ reading and writing


@dataclass(frozen=True)
class _Style:
    indent: str | None
    separators: tuple[str, str]
    ensure_ascii: bool
    newline: str = "\n"
    prefix: str = ""
    suffix: str = "\n"
    bom: bool = False

    @classmethod
    def default(cls) -> _Style:
        return cls(_DEFAULT_INDENT, (",", ": "), False)

    def render(self, data: object) -> str:
        return json.dumps(data, indent=self.indent, separators=self.separators, ensure_ascii=self.ensure_ascii)

    def dump(self, data: object) -> bytes:
        text = self.prefix + self.render(data) + self.suffix
        if self.newline != "\n":
            text = text.replace("\n", self.newline)  # safe: JSON strings never hold a raw newline
        return (("\ufeff" if self.bom else "") + text).encode("utf-8")

    @classmethod
    def detect(cls, text: str, data: object) -> _Style:
        """The serializer settings that reproduce `text` from `data`, or the closest guess if none does."""
        bom = text.startswith("\ufeff")
        if bom:
            text = text[1:]
        newline = "\r\n" if "\r\n" in text and text.count("\r\n") == text.count("\n") else "\n"
        if newline != "\n":
            text = text.replace("\r\n", "\n")
        body = text.strip(_JSON_WS)
        if not body:  # a blank file: write it the way Claude Code would
            return cls(_DEFAULT_INDENT, (",", ": "), False, newline, bom=bom)
        prefix = text[: len(text) - len(text.lstrip(_JSON_WS))]
        suffix = text[len(text.rstrip(_JSON_WS)) :]

        indents: list[str | None]
        seps: list[tuple[str, str]]
        if "\n" in body:
            unit = _indent_unit(body)
            indents = list(dict.fromkeys([unit, "  ", "    ", "\t"]))
            seps = [(",", ": "), (", ", ": "), (",", ":")]
        elif body == "{}":  # no hint at all: when it grows, grow it the way Claude Code writes
            indents, seps = [_DEFAULT_INDENT], [(",", ": ")]
        else:
            indents = [None]
            seps = [(", ", ": "), (",", ":"), (",", ": "), (", ", ":")]
        asciis = [False, True] if body.isascii() else [False]
        for indent in indents:
            for sep in seps:
                for ensure_ascii in asciis:
                    style = cls(indent, sep, ensure_ascii, newline, prefix, suffix, bom)
                    if style.render(data) == body:
                        return style
        return cls(indents[0], seps[0], False, newline, prefix, suffix, bom)


def _indent_unit(body: str) -> str:
    """The leading whitespace of the first indented line: one level, since it belongs to the top object."""
    for line in body.split("\n")[1:]:
        content = line.lstrip(" \t")
        if content and content != line:
            return line[: len(line) - len(content)]
    return _DEFAULT_INDENT


class _DuplicateKeyError(Exception):
    pass


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKeyError(key)
        obj[key] = value
    return obj


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


@dataclass
class _Document:
    data: dict[str, Any]
    style: _Style
    mode: int
    text: str
    blank: bool  # the file held only whitespace

    @classmethod
    def load(cls, path: Path) -> _Document | None:
        try:
            raw = path.read_bytes()
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not UTF-8 text, so slackbus will not edit it.") from None
        body = text.removeprefix("\ufeff")
        blank = not body.strip(_JSON_WS)
        try:
            data = {} if blank else json.loads(body, object_pairs_hook=_object_without_duplicates)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                "fix it and run this again."
            ) from None
        except _DuplicateKeyError as exc:
            raise ValueError(f"{path} has the key {exc.args[0]!r} twice in one object; remove one of them.") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object at the top level, not {_kind(data)}.")
        hooks = data.get("hooks", {})
        if not isinstance(hooks, dict):
            raise ValueError(f'{path}: "hooks" must be an object mapping event names to lists, not {_kind(hooks)}.')
        for event, groups in hooks.items():
            if not isinstance(groups, list):
                raise ValueError(f'{path}: "hooks.{event}" must be a list of matcher groups, not {_kind(groups)}.')
        return cls(data, _Style.detect(text, data), mode, text, blank)


def _make_dir(directory: Path) -> None:
    try:
        directory.mkdir(exist_ok=True)
    except FileNotFoundError:
        raise ValueError(f"Cannot create {directory} because {directory.parent} does not exist.") from None


def _new_file_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_write(path: Path, content: bytes, *, mode: int | None) -> None:
    """Replace `path` (or the file its symlink points to) with `content` in one rename; keep its permissions."""
    target = Path(os.path.realpath(path))
    fd = -1
    tmp = target
    for attempt in range(1000):
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{attempt}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"Cannot create a temporary file next to {target}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode if mode is not None else _new_file_mode())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------------- sidecar note


@dataclass
class _FileNote:
    """What install found or made for one settings file, so uninstall can put exactly that back."""

    created_file: bool = False
    created_dir: bool = False
    empty_hooks: bool = False  # "hooks": {} was there before us
    empty_events: list[str] = field(default_factory=list)  # "hooks": {"Stop": []} was there before us
    original_text: str | None = None  # the file held only whitespace

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.created_file:
            out["created_file"] = True
        if self.empty_hooks:
            out["empty_hooks"] = True
        if self.empty_events:
            out["empty_events"] = self.empty_events
        if self.original_text is not None:
            out["original_text"] = self.original_text
        return out

    @classmethod
    def from_json(cls, raw: object) -> _FileNote:
        if not isinstance(raw, dict):
            return cls()
        events = raw.get("empty_events")
        text = raw.get("original_text")
        return cls(
            created_file=raw.get("created_file") is True,
            empty_hooks=raw.get("empty_hooks") is True,
            empty_events=[e for e in events if isinstance(e, str)] if isinstance(events, list) else [],
            original_text=text if isinstance(text, str) else None,
        )


class _Sidecar:
    """`.slackbus-hooks.json` next to the settings file: {"created_dir": true, "files": {"settings.json": {...}}}.
    It is ours alone, so an unreadable one is treated as empty rather than refused."""

    def __init__(self, path: Path, created_dir: bool, files: dict[str, dict[str, Any]], existed: bool) -> None:
        self.path = path
        self.created_dir = created_dir
        self.files = files
        self.existed = existed

    @classmethod
    def load(cls, settings: Path) -> _Sidecar:
        path = settings.parent / SIDECAR_NAME
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(path, False, {}, existed=False)
        except (OSError, ValueError):
            return cls(path, False, {}, existed=True)
        if not isinstance(raw, dict):
            return cls(path, False, {}, existed=True)
        files = raw.get("files")
        files = {k: v for k, v in files.items() if isinstance(v, dict)} if isinstance(files, dict) else {}
        return cls(path, raw.get("created_dir") is True, files, existed=True)

    def remember(self, name: str, note: _FileNote) -> bool:
        """Merge `note` into the entry for `name` (what an earlier install recorded stays). True if it changed."""
        old = _FileNote.from_json(self.files.get(name))
        merged = _FileNote(
            created_file=old.created_file or note.created_file,
            empty_hooks=old.empty_hooks or note.empty_hooks,
            empty_events=list(dict.fromkeys(old.empty_events + note.empty_events)),
            original_text=old.original_text if old.original_text is not None else note.original_text,
        )
        before = (self.created_dir, dict(self.files))
        self.created_dir = self.created_dir or note.created_dir
        entry = merged.to_json()
        if entry:
            self.files[name] = entry
        return (self.created_dir, self.files) != before

    def forget(self, name: str) -> _FileNote | None:
        raw = self.files.pop(name, None)
        if raw is None:
            return None
        note = _FileNote.from_json(raw)
        note.created_dir = self.created_dir
        return note

    def save(self) -> None:
        """Write the note, or delete it (and the directory we created, if now empty) when nothing is left in it."""
        if self.files:
            body = {"created_dir": True, "files": self.files} if self.created_dir else {"files": self.files}
            _atomic_write(self.path, (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode(), mode=None)
            return
        if self.existed:
            self.path.unlink(missing_ok=True)
        if self.created_dir:
            with contextlib.suppress(OSError):  # not empty (or already gone): leave it
                self.path.parent.rmdir()
