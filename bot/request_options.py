"""Options at the start of a request — repository, base branch, model — and the choice they make for a thread.

    @slackbus [repo=api branch=release/1.2 model=opus] fix the flaky test
    /claude --repo api --branch release/1.2 --model opus fix the flaky test

split_options() only reads the text: which options it starts with, and the task without them. choose() weighs
them against the settings (SLACKBUS_REPOS, SLACKBUS_ROOTS, SLACKBUS_MODELS, the channel's defaults) and says where
the thread works. Every refusal is one OptionsError sentence saying what is allowed. Stdlib only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bot.errors import OptionsError

if TYPE_CHECKING:
    from bot.config import Settings

__all__ = [
    "KEYS",
    "OptionsError",
    "RequestOptions",
    "ThreadChoice",
    "branch_problem",
    "choose",
    "find_folder",
    "locate_repo",
    "match_model",
    "model_problem",
    "split_options",
]

KEYS = ("repo", "branch", "model")
MAX_VALUE_CHARS = 200  # a longer value is no repository, branch or model name
SHOWN_CHARS = 60  # how much of a bad value a refusal repeats


@dataclass(frozen=True)
class RequestOptions:
    repo: str | None = None  # a name from SLACKBUS_REPOS or a path (absolute, ~, or relative to a root)
    branch: str | None = None  # the base branch
    model: str | None = None

    def __bool__(self) -> bool:
        return any((self.repo, self.branch, self.model))


@dataclass(frozen=True)
class ThreadChoice:
    folder: Path  # where the thread works: the repo's folder (the worktree is made from it later) or the channel's
    repo_name: str | None  # the SLACKBUS_REPOS name, or the folder's name when given as a path; None: no repo
    branch: str | None  # base branch asked for (None: the repo's default)
    model: str | None  # None: the CLI's default


# --- reading the text ------------------------------------------------------------------------------------------

# What may come before the options: whitespace and Slack mentions (`<@U123>`, `<@U123|name>`), kept as they are.
_LEAD = re.compile(r"(?:\s*<@[UW][A-Z0-9]+(?:\|[^>]*)?>)*\s*")
# Quotes a value may be wrapped in; Slack clients often turn straight quotes into curly ones.
_QUOTES = {'"': '"', "'": "'", "“": "”", "”": "”", "‘": "’", "’": "’", "«": "»"}
# Slack clients (and phones) turn `--` into an em or en dash: `—repo api` means `--repo api`.
_DASHES = ("--", "—", "–")
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def _skip(text: str, pos: int) -> int:
    """Past the whitespace at `pos`."""
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


class _NotOptions(Exception):
    """The text at the start is ordinary text, not options."""


def _shown(value: str) -> str:
    """A value as a refusal repeats it: short, on one line, unable to form Slack markup or close a code span."""
    one_line = " ".join(value.split()).replace("`", "'").replace("<", "&lt;").replace(">", "&gt;")
    return one_line if len(one_line) <= SHOWN_CHARS else one_line[: SHOWN_CHARS - 1] + "…"


def _decoded(value: str) -> str:
    """Slack sends & < > as entities; a value means what the person typed."""
    return value.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _value(text: str, pos: int, stops: str) -> tuple[str, int] | None:
    """A value at `pos`: quoted (straight or curly quotes), or up to whitespace or one of `stops`."""
    if pos < len(text) and text[pos] in _QUOTES:
        close = _QUOTES[text[pos]]
        end = text.find(close, pos + 1)
        if end < 0 and close == "”":
            end = text.find("“", pos + 1)  # some clients curl both ends the same way
        if end < 0:
            return None
        return text[pos + 1 : end], end + 1
    end = pos
    while end < len(text) and not text[end].isspace() and text[end] not in stops:
        end += 1
    return text[pos:end], end


def _options(pairs: Iterable[tuple[str, str]], form: str) -> RequestOptions:
    """The options from (key, value) pairs, as they were written: keys checked, values decoded and bounded."""
    found: dict[str, str] = {}
    for key, raw in pairs:
        name = key.lower()
        if name not in KEYS:
            raise OptionsError(
                f"I do not know the option `{_shown(form.format(key))}`: the options are "
                f"{', '.join(f'`{form.format(k)}`' for k in KEYS[:-1])} and `{form.format(KEYS[-1])}`, "
                f"so nothing was run{_ESCAPE if form.startswith('--') else ''}."
            )
        if name in found:
            raise OptionsError(f"The option `{form.format(name)}` is given twice, so nothing was run: give it once.")
        value = _decoded(raw).strip()
        if not value:
            raise OptionsError(
                f"The option `{form.format(name)}` has no value, so nothing was run: give one, e.g. "
                f"`{form.format(name)}{'' if form.endswith('=') else ' '}{_EXAMPLES[name]}`."
            )
        if len(value) > MAX_VALUE_CHARS:
            raise OptionsError(
                f"The value of `{form.format(name)}` is {len(value)} characters long, so nothing was run: "
                f"a {name} name has at most {MAX_VALUE_CHARS}."
            )
        found[name] = value
    return RequestOptions(repo=found.get("repo"), branch=found.get("branch"), model=found.get("model"))


_ESCAPE = " (start with `--` alone if the task itself begins with --)"
_EXAMPLES = {"repo": "api", "branch": "main", "model": "opus"}


def _bracket_block(text: str, pos: int) -> tuple[RequestOptions, int]:
    """`[k=v k2="v 2", k3=v3]` at `pos` (a `[`): the options and where the block ends. _NotOptions unless every
    item is key=value."""
    pairs: list[tuple[str, str]] = []
    i = pos + 1
    while True:
        i = _skip(text, i)
        if i < len(text) and text[i] == "]":
            if not pairs:
                raise _NotOptions  # `[]`, `[ ]`
            return _options(pairs, "{}="), i + 1
        key = _KEY.match(text, i)
        if key is None:
            raise _NotOptions
        i = _skip(text, key.end())
        if i >= len(text) or text[i] != "=":
            raise _NotOptions  # `[WIP]`, `[1]`, `[see below]`
        i = _skip(text, i + 1)
        got = _value(text, i, stops=",]")
        if got is None:
            raise OptionsError(f"The quote after `{_shown(key.group())}=` is never closed, so nothing was run.")
        value, i = got
        pairs.append((key.group(), value))
        i = _skip(text, i)
        if i < len(text) and text[i] == ",":
            i += 1
        elif i >= len(text):
            raise _NotOptions  # no closing bracket


def _flags(text: str, pos: int) -> tuple[RequestOptions, int]:
    """`--repo api --branch=x --model "a b"` at `pos`: the options and where the task starts (after a lone `--`
    too). _NotOptions when the text does not start with a flag."""
    pairs: list[tuple[str, str]] = []
    i, ended = pos, False
    while True:
        dash = next((d for d in _DASHES if text.startswith(d, i)), None)
        if dash is None:
            break
        after = i + len(dash)
        if dash == "--" and (after >= len(text) or text[after].isspace()):
            i, ended = _skip(text, after), True  # `--` alone: what follows is the task, even if it starts with --
            break
        key = _KEY.match(text, after)
        if key is None or (dash != "--" and key.group().lower() not in KEYS):
            break  # `--5 minutes`, `—anyway`: ordinary text
        name_end = key.end()
        if name_end < len(text) and not text[name_end].isspace() and text[name_end] != "=":
            break  # `--repo/x`, `--repo:` : not a flag
        if name_end < len(text) and text[name_end] == "=":
            got = _value(text, name_end + 1, stops="")
        else:
            start = _skip(text, name_end)
            nothing = start >= len(text) or any(text.startswith(d, start) for d in _DASHES)
            got = ("", start) if nothing else _value(text, start, stops="")
        if got is None:
            raise OptionsError(f"The quote after `--{_shown(key.group())}` is never closed, so nothing was run.")
        pairs.append((key.group(), got[0]))
        i = _skip(text, got[1])
    if not pairs and not ended:
        raise _NotOptions
    return _options(pairs, "--{}"), i


def split_options(text: str) -> tuple[RequestOptions, str]:
    """The options at the START of a task and the task without them; the text as it was when it has none.

    Both forms: `[repo=api branch=release/1.2 model=opus] fix the flaky test` (brackets; key=value items separated
    by spaces or commas; values may be quoted) and `--repo api --branch release/1.2 --model opus fix …` (also
    `--repo=api`; a lone `--` ends the options). Whitespace and Slack mentions (`<@U123>`) before the options stay
    where they were, so mention-stripping still works. `[WIP] fix it` is ordinary text: a bracket block counts
    only when every item in it is key=value. Unknown keys, a key given twice or without a value raise
    OptionsError; nothing else is raised, whatever the text.
    """
    lead = _LEAD.match(text)
    start = lead.end() if lead else 0
    try:
        if text.startswith("[", start):
            options, end = _bracket_block(text, start)
        else:
            options, end = _flags(text, start)
    except _NotOptions:
        return RequestOptions(), text
    prefix, rest = text[:start], text[end:].lstrip()
    if not rest:
        return options, prefix.rstrip()
    if prefix and not prefix[-1].isspace():
        prefix += " "  # `<@U1>[repo=a]fix` → `<@U1> fix`
    return options, prefix + rest


# --- checking the values -------------------------------------------------------------------------------------

_BRANCH_BAD_CHARS = {" ": "a space", "~": "~", "^": "^", ":": ":", "?": "?", "*": "*", "[": "[", "\\": "\\"}


def branch_problem(name: str) -> str | None:
    """Why git would refuse `name` as a branch (`git check-ref-format --branch`), as a phrase, or None."""
    if not name:
        return "it is empty"
    if name.startswith("-"):
        return "it starts with -"
    for ch in name:
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            return "it holds a control character"
        if ch.isspace():
            return "it holds a space"
        if ch in _BRANCH_BAD_CHARS:
            return f"it holds {_BRANCH_BAD_CHARS[ch]}"
    if name in ("@", "HEAD"):
        return f"{name} stands for a commit, not a branch"
    if "@{" in name:
        return "it holds @{"
    if ".." in name:
        return "it holds .."
    if name.startswith("/") or name.endswith("/") or "//" in name:
        return "it starts or ends with /, or holds //"
    if name.endswith("."):
        return "it ends with ."
    for part in name.split("/"):
        if part.startswith("."):
            return "a part of it starts with ."
        if part.endswith(".lock"):
            return "a part of it ends with .lock"
    return None


_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@\[\]-]*")


def model_problem(name: str) -> str | None:
    """Why `name` cannot be a model name (it goes to `claude --model` as one argument), as a phrase, or None."""
    if len(name) > MAX_VALUE_CHARS:
        return f"it is longer than {MAX_VALUE_CHARS} characters"
    if not _MODEL_NAME.fullmatch(name):
        return "it holds characters no model name has (letters, digits and . _ - : / @ [ ] only)"
    return None


def match_model(name: str, models: frozenset[str] | None) -> str | None:
    """The model `name` means: the allowed spelling (case does not matter), or `name` itself when every model is
    allowed; None when it is not allowed."""
    if models is None:
        return name
    folded = {m.casefold(): m for m in models}
    return folded.get(name.casefold())


def _listed(items: Iterable[str]) -> str:
    names = sorted(items, key=str.casefold)
    shown = [f"`{n}`" for n in names]
    if len(shown) > 1:
        return ", ".join(shown[:-1]) + " or " + shown[-1]
    return shown[0] if shown else "none"


def _under(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def find_folder(raw: str, roots: tuple[Path, ...]) -> tuple[Path | None, Path | None]:
    """The existing folder `raw` names — absolute, ~, or relative to a root (tried in order) — with links and ..
    resolved: (the folder, None) when one is under the roots, else (None, where the first candidate outside them
    leads, existing or not), else (None, None)."""
    try:
        path = Path(raw).expanduser()
    except RuntimeError:  # ~someone who is not a user here
        path = Path(raw)
    outside: Path | None = None
    for candidate in [path] if path.is_absolute() else [root / path for root in roots]:
        try:
            real = candidate.resolve()
            if not _under(real, roots):
                outside = outside or real  # said whether or not it exists: nothing is learnt about the outside
                continue
            if real.is_dir():
                return real, None
        except (OSError, RuntimeError, ValueError):  # a link loop, a name too long, a NUL
            continue
    return None, outside


def locate_repo(raw: str, repos: Mapping[str, Path], roots: tuple[Path, ...]) -> tuple[Path, str]:
    """The folder and name `raw` means: a SLACKBUS_REPOS name, else a path (absolute, ~, or relative to a root,
    tried in order) to an existing folder under the roots once links and .. are resolved. OptionsError else."""
    if not raw.strip():
        raise OptionsError("The option repo is empty, so nothing was run: give a repository's name or folder.")
    if raw in repos:
        named = repos[raw].resolve()
        if not _under(named, roots) or not named.is_dir():
            raise OptionsError(
                f"The repository `{_shown(raw)}` is no longer a folder under the allowed roots, so nothing was "
                "run: ask the person who runs slackbus to fix SLACKBUS_REPOS."
            )
        return named, raw
    real, outside = find_folder(raw, roots)
    if real is not None:
        return real, real.name or raw
    where = ", ".join(str(r) for r in roots)
    if outside is not None:
        raise OptionsError(
            f"The folder `{_shown(raw)}` is outside the allowed roots ({where}) once links and `..` are resolved, "
            "so nothing was run: name a repository or a folder under them."
        )
    names = f"one of {_listed(repos)} or " if repos else ""
    raise OptionsError(
        f"There is no repository or folder `{_shown(raw)}`, so nothing was run: use {names}a folder under "
        f"{where}."
    )


def _real(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path


def choose(options: RequestOptions, settings: Settings, channel: str, channel_folder: Path) -> ThreadChoice:
    """Where a thread works and with what: the request's options over the channel's defaults
    (Settings.channel_defaults_for: repo/branch/model from SLACKBUS_CONFIG) over the global ones (SLACKBUS_MODEL).

    With no repo in the request the thread works in `channel_folder`, the channel's folder as the caller knows it
    (`/claude cwd`, else Settings.workdir_for, which a channel's default repo feeds); its repo_name is the
    SLACKBUS_REPOS name of that folder, or the channel's default repo when that is where it points, else None.
    The channel's default branch applies only in the channel's configured folder (Settings.workdir_for).
    The model is the request's, else the channel's, else SLACKBUS_MODEL (None: the CLI's default).
    A repo not in SLACKBUS_REPOS and not a folder under SLACKBUS_ROOTS, a folder outside the roots (links
    resolved), a model not in SLACKBUS_MODELS (when set) and a branch git would refuse are each one OptionsError
    sentence. Whether the branch exists is for git to say later.
    """
    defaults = settings.channel_defaults_for(channel)
    repo_name: str | None
    if options.repo is not None:
        folder, repo_name = locate_repo(options.repo, settings.repos, settings.roots)
    else:
        folder, real = channel_folder, _real(channel_folder)
        repo_name = next((name for name, path in sorted(settings.repos.items()) if path == real), None)
        if repo_name is None and defaults.repo is not None:
            try:
                default_folder, default_name = locate_repo(defaults.repo, settings.repos, settings.roots)
            except OptionsError:
                pass  # the default no longer resolves: the folder the caller gave stands, unnamed
            else:
                repo_name = default_name if default_folder == real else None

    # the channel's default branch goes with the channel's configured folder: elsewhere (another repo, or a
    # folder set with `/claude cwd`) the thread starts from that repository's own default branch
    at_home = _real(folder) == _real(settings.workdir_for(channel))
    branch = options.branch if options.branch is not None else defaults.branch if at_home else None
    if branch is not None:
        problem = branch_problem(branch)
        if problem is not None:
            raise OptionsError(
                f"The branch `{_shown(branch)}` is not a name git accepts ({problem}), so nothing was run: give an "
                "existing branch, e.g. `main` or `release/1.2`."
            )

    asked = options.model if options.model is not None else defaults.model
    model = settings.model if asked is None else asked
    if asked is not None:
        problem = model_problem(asked)
        allowed = match_model(asked, settings.models) if problem is None else None
        if allowed is None:
            if settings.models is not None:
                raise OptionsError(
                    f"The model `{_shown(asked)}` is not allowed here, so nothing was run: use "
                    f"{_listed(settings.models)}."
                )
            raise OptionsError(f"The model `{_shown(asked)}` does not look like a model name ({problem}), so nothing "
                               "was run.")
        model = allowed
    return ThreadChoice(folder=folder, repo_name=repo_name, branch=branch, model=model)
