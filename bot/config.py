"""Settings, read once at start-up from the environment and an optional .env file.

Every problem is reported as one ConfigError sentence that says what to set. Values from .env never go
into os.environ: the Slack tokens stay in this object and never reach a child process's environment.
"""

from __future__ import annotations

import math
import os
import pwd
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from bot.cron import CRON_HELP, ScheduleSpec, cron_problem, host_zone, zone_problem
from bot.envfile import DEFAULT_SLACK_API_URL, read_environment
from bot.errors import ConfigError
from bot.redact import SECRET_NAME, secret_values
from bot.request_options import KEYS, RequestOptions, branch_problem, find_folder, match_model, model_problem

__all__ = ["DEFAULT_SLACK_API_URL", "Settings", "load_settings", "read_environment", "secret_values"]


# Variables that must never reach the `claude` child (nor anything it spawns).
SECRET_ENV_NAMES = frozenset(
    {
        "SLACK_BOT_TOKEN",
        "SLACK_APP_TOKEN",
        "SLACK_USER_TOKEN",
        "SLACK_SIGNING_SECRET",
        "SLACK_CLIENT_SECRET",
        "SLACK_WEBHOOK_URL",
        "SLACKBUS_NATS_URL",  # may carry a user and password (nats://user:pass@host)
    }
)
# The attachments a request may bring by default: images Claude can see, text, and common documents and archives.
ATTACHMENT_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "text/*", "application/json",
                    "application/xml", "application/x-yaml", "application/yaml", "application/pdf", "application/zip",
                    "application/gzip", "application/x-tar", "application/x-ndjson", "application/javascript",
                    "application/x-sh", "application/octet-stream")
# Set by a parent Claude Code session; a `claude` started with them thinks it is nested and may hang.
NESTING_ENV_NAMES = frozenset({"CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT", "CLAUDE_CODE_SSE_PORT"})


@dataclass(frozen=True)
class Limits:
    """USD per UTC day / month; None: no limit."""

    user_day: float | None = None
    user_month: float | None = None
    channel_day: float | None = None
    channel_month: float | None = None
    day: float | None = None
    month: float | None = None

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    def of(self, scope: str, period: str) -> float | None:
        return getattr(self, period if scope == "all" else f"{scope}_{period}")  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Settings:
    slack_bot_token: str = field(repr=False)
    slack_app_token: str = field(repr=False)
    slack_api_url: str
    claude_cli_path: str
    home: Path
    workdir: Path
    allowed_users: frozenset[str]  # {"*"} means everyone in the workspace
    admin_users: frozenset[str]
    max_concurrent: int
    run_timeout: float
    stall_seconds: float
    idle_seconds: float
    warm_pool: int
    warm_pool_max: int
    max_processes: int
    max_turns: int | None
    max_budget_usd: float | None
    context_messages: int
    context_chars: int
    log_level: str
    log_format: str
    model: str | None
    allowed_tools: tuple[str, ...]
    disallowed_tools: tuple[str, ...]
    allowed_channels: frozenset[str] | None  # None: every channel the bot is in
    permission_mode: str
    roots: tuple[Path, ...]
    channel_dirs: Mapping[str, Path]
    approval_seconds: float
    child_env: Mapping[str, str] = field(repr=False)
    transport: str = "slack"  # or "local": channels are JSON-lines files (bot.local.channel)
    local_dir: Path = Path()
    run_as: str | None = None  # SLACKBUS_RUN_AS: the OS user `claude` (and every tool) runs as; None: the bot's own
    max_input_chars: int = 20_000  # a longer task is refused (attach it as a file instead)
    max_attachment_mb: int = 20  # a larger attached file is left out, with a sentence
    attachment_types: tuple[str, ...] = ATTACHMENT_TYPES  # MIME types (fnmatch patterns) an attachment may have
    inline_chars: int = 8_000  # an attached text file this short goes into the prompt itself
    repos: Mapping[str, Path] = field(default_factory=dict)  # SLACKBUS_REPOS / [repos]: name → folder under the roots
    models: frozenset[str] | None = None  # SLACKBUS_MODELS: the models a request may choose; None: any
    worktrees: bool = True  # SLACKBUS_WORKTREES: a git worktree per thread when the folder is a git repository
    worktree_ttl: float = 7 * 86400.0  # SLACKBUS_WORKTREE_TTL: an idle thread's pushed worktree is removed after this
    pr_command: str | None = None  # SLACKBUS_PR_COMMAND: opens a pull request for a thread's branch
    channel_defaults: Mapping[str, RequestOptions] = field(default_factory=dict)  # [channels.C…] repo/branch/model
    triggers: tuple[TriggerRule, ...] = ()  # SLACKBUS_CONFIG's [[triggers]] (bot.core.triggers matches them)
    trigger_cooldown: float = 600.0  # SLACKBUS_TRIGGER_COOLDOWN: a thread a trigger answered is not triggered again
    schedules: tuple[ScheduleSpec, ...] = ()  # SLACKBUS_CONFIG's [[schedules]] (bot.core.schedules runs them)
    schedules_by: str = "admins"  # SLACKBUS_SCHEDULES: who may add one with /claude schedule: admins, or users
    schedule_grace: float = 3600.0  # SLACKBUS_SCHEDULE_GRACE: a time missed while down runs at start if this recent

    max_processes_why: str = ""  # where SLACKBUS_MAX_PROCESSES came from: set, or sized from the memory
    park_seconds: float = 5.0  # an idle claude process is stopped (SIGSTOP) after this long; 0: never
    nats_url: str | None = field(default=None, repr=False)  # SLACKBUS_NATS_URL: join the cluster (bot.cluster)
    nats_replicas: int = 1  # SLACKBUS_NATS_REPLICAS: copies of each stream and bucket (3 on a 3-server cluster)
    node_id: str = ""  # SLACKBUS_NODE_ID: this node's name in the cluster (default: host name and home folder)
    budget: Limits = field(default_factory=Limits)  # SLACKBUS_BUDGET_* / [budget]: spending limits (bot.core.budget)

    @property
    def db_path(self) -> Path:
        return self.home / "slackbus.db"

    def is_allowed(self, user_id: str) -> bool:
        return "*" in self.allowed_users or user_id in self.allowed_users or user_id in self.admin_users

    def is_admin(self, user_id: str) -> bool:
        return user_id in self.admin_users

    def is_channel_allowed(self, channel: str) -> bool:
        """Direct messages follow the user rules alone; channels may be restricted further."""
        return self.allowed_channels is None or channel in self.allowed_channels or channel.startswith("D")

    def workdir_for(self, channel: str) -> Path:
        return self.channel_dirs.get(channel, self.workdir)

    def channel_defaults_for(self, channel: str) -> RequestOptions:
        """The channel's default repo, branch and model (SLACKBUS_CONFIG's [channels.C…]); empty when none."""
        return self.channel_defaults.get(channel, RequestOptions())

    def within_roots(self, path: Path) -> Path | None:
        """The real path (symlinks and .. resolved) if it lies under an allowed root, else None."""
        try:
            real = path.expanduser().resolve()
        except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte, an unknown ~user: not a folder
            return None
        return real if any(real == root or real.is_relative_to(root) for root in self.roots) else None


# The default SLACKBUS_MAX_PROCESSES: a share of the memory available at start, divided by what one `claude`
# process takes. Measured here (bench/sessions.py, "memory"): 185-190 MB RSS for a warm, idle process; a process
# at work grows, so 250 MB is assumed. Half of what is available leaves the other half to the tools Claude runs.
PROCESS_MB = 250
MEMORY_SHARE = 0.5
MAX_PROCESSES_CEILING = 64  # past this, CPU, not memory, is what runs out


def memory_available_mb() -> float | None:
    """MemAvailable from /proc/meminfo (Linux), in MB; None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def sized_max_processes(floor: int, available_mb: float | None) -> tuple[int, str]:
    """(the cap, how it was chosen): MEMORY_SHARE of the memory available ÷ PROCESS_MB, between `floor` (every
    running task, the pool and two warm threads) and MAX_PROCESSES_CEILING."""
    if available_mb is None:
        return floor, "the running tasks, the pool and 2 (the memory available is unknown here)"
    sized = int(available_mb * MEMORY_SHARE // PROCESS_MB)
    cap = max(floor, min(sized, MAX_PROCESSES_CEILING))
    return cap, (f"sized from memory: {available_mb / 1024:.1f} GB available at start × {MEMORY_SHARE:.0%} ÷ "
                 f"{PROCESS_MB} MB a process")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}.") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}.")
    return value


def _types(raw: str | None) -> tuple[str, ...]:
    """SLACKBUS_ATTACHMENT_TYPES: MIME types or patterns (image/*, text/*), comma-separated; unset: ATTACHMENT_TYPES."""
    if raw is None or not raw.strip():
        return ATTACHMENT_TYPES
    types = tuple(t.strip().lower() for t in raw.split(",") if t.strip())
    bad = [t for t in types if not re.fullmatch(r"[a-z0-9*.+-]+/[a-z0-9*.+-]+", t)]
    if bad:
        raise ConfigError(f"SLACKBUS_ATTACHMENT_TYPES: {', '.join(bad)} is not a MIME type (like image/png or text/*).")
    return types


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}.") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be greater than 0 (a number of seconds), got {raw!r}.")
    return value


def _token(env: Mapping[str, str], name: str, prefix: str, what: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(
            f"{name} is not set: put the {what} (it starts with {prefix}) in the environment or in .env "
            "(see .env.example and the README's Slack app set-up)."
        )
    if not value.startswith(prefix) or len(value) < len(prefix) + 4:
        raise ConfigError(
            f"{name} does not look like a {what}: it should start with {prefix} "
            f"(got a value starting with {value[:5]!r}...)."
        )
    return value


PERMISSION_MODES = ("default", "acceptEdits", "plan", "bypassPermissions")


def _permission_mode(env: Mapping[str, str], allowed: frozenset[str]) -> str:
    mode = env.get("SLACKBUS_PERMISSION_MODE", "").strip() or "default"
    if mode not in PERMISSION_MODES:
        raise ConfigError(f"SLACKBUS_PERMISSION_MODE must be one of {', '.join(PERMISSION_MODES)}, got {mode!r}.")
    if mode != "bypassPermissions":
        return mode
    if (len(allowed) > 1 or "*" in allowed) and env.get("SLACKBUS_I_UNDERSTAND_BYPASS") != "1":
        raise ConfigError(
            "SLACKBUS_PERMISSION_MODE=bypassPermissions lets every allowed user run any command on this host "
            "without being asked, and more than one user is allowed: use acceptEdits or default, or set "
            "SLACKBUS_I_UNDERSTAND_BYPASS=1 if that is really what you want."
        )
    if hasattr(os, "geteuid") and os.geteuid() == 0 and env.get("IS_SANDBOX") != "1":
        raise ConfigError(
            "Claude Code refuses bypassPermissions as root unless IS_SANDBOX=1 is set: run the bot as an "
            "unprivileged user, or set IS_SANDBOX=1 if this host is a disposable sandbox."
        )
    return mode


def _config_file(env: Mapping[str, str]) -> dict[str, object]:
    """The TOML file named by SLACKBUS_CONFIG, or nothing."""
    config_file = env.get("SLACKBUS_CONFIG", "").strip()
    if not config_file:
        return {}
    import tomllib

    try:
        return tomllib.loads(Path(config_file).expanduser().read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"SLACKBUS_CONFIG={config_file} cannot be read ({exc}).") from None


def _table(data: Mapping[str, object], name: str) -> dict[str, object]:
    table = data.get(name) or {}
    if not isinstance(table, dict):
        raise ConfigError(f"SLACKBUS_CONFIG's {name} must be a table ([{name}]), got {type(table).__name__}.")
    return {str(k): v for k, v in table.items()}


_REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _repos(env: Mapping[str, str], data: Mapping[str, object], roots: tuple[Path, ...]) -> dict[str, Path]:
    """SLACKBUS_REPOS (`name=path`, comma-separated) over SLACKBUS_CONFIG's [repos]: each an existing folder under
    the roots (a relative path is taken under the first root that has it)."""
    pairs: dict[str, tuple[str, str]] = {}
    for name, raw in _table(data, "repos").items():
        if not isinstance(raw, str):
            raise ConfigError(f"SLACKBUS_CONFIG's [repos] {name} must be a path in quotes, got {raw!r}.")
        pairs[name] = ("SLACKBUS_CONFIG's [repos]", raw)
    for item in env.get("SLACKBUS_REPOS", "").split(","):
        if item.strip():
            name, sep, raw = item.partition("=")
            if not sep or not name.strip() or not raw.strip():
                raise ConfigError(f"SLACKBUS_REPOS holds {item.strip()!r}: write NAME=/path, comma-separated.")
            pairs[name.strip()] = ("SLACKBUS_REPOS", raw.strip())
    where = ", ".join(map(str, roots))
    repos: dict[str, Path] = {}
    for name, (source, raw) in pairs.items():
        if not _REPO_NAME.fullmatch(name):
            raise ConfigError(
                f"{source} names a repository {name!r}: a name is letters, digits and . _ - only (people write it "
                "after repo=)."
            )
        real, outside = find_folder(raw, roots)
        if outside is not None and real is None:
            raise ConfigError(
                f"The repository {name} in {source}, {raw}, is {outside} once links and .. are resolved, which is "
                f"outside SLACKBUS_ROOTS ({where}): move it or add a root."
            )
        if real is None:
            raise ConfigError(
                f"The repository {name} in {source}, {raw}, is not an existing folder (a relative path is taken "
                f"under SLACKBUS_ROOTS: {where})."
            )
        repos[name] = real
    return repos


def _models(env: Mapping[str, str]) -> tuple[frozenset[str] | None, str | None]:
    """SLACKBUS_MODELS (the models a request may choose; None: any) and SLACKBUS_MODEL, which must be one of them."""
    names = [m.strip() for m in env.get("SLACKBUS_MODELS", "").split(",") if m.strip()]
    for name in names:
        problem = model_problem(name)
        if problem is not None:
            raise ConfigError(f"SLACKBUS_MODELS holds {name!r}, which is not a model name ({problem}).")
    models = frozenset(names) or None
    model = env.get("SLACKBUS_MODEL", "").strip() or None
    if model is not None and models is not None:
        allowed = match_model(model, models)
        if allowed is None:
            raise ConfigError(
                f"SLACKBUS_MODEL={model} is not in SLACKBUS_MODELS ({', '.join(sorted(models))}): add it there or "
                "choose one of those."
            )
        model = allowed
    return models, model


def _channel_default(
    channel: str, entry: Mapping[str, object], repos: Mapping[str, Path], roots: tuple[Path, ...],
    models: frozenset[str] | None,
) -> tuple[RequestOptions, Path | None]:
    """A [channels.C…] table's repo, branch and model, checked, and the folder its repo names (None: no repo)."""
    where = f"SLACKBUS_CONFIG's [channels.{channel}]"
    repo, branch, model = (entry.get(k) for k in KEYS)
    folder: Path | None = None
    if isinstance(repo, str):
        if repo in repos:
            folder = repos[repo]
        else:
            folder, outside = find_folder(repo, roots)
            if folder is None and outside is not None:
                raise ConfigError(
                    f"{where} sets repo = {repo!r}, which is {outside} once links and .. are resolved, outside "
                    f"SLACKBUS_ROOTS ({', '.join(map(str, roots))}): move it or add a root."
                )
            if folder is None:
                raise ConfigError(
                    f"{where} sets repo = {repo!r}, which is neither a name in SLACKBUS_REPOS "
                    f"({', '.join(sorted(repos)) or 'none set'}) nor a folder under SLACKBUS_ROOTS "
                    f"({', '.join(map(str, roots))})."
                )
    if isinstance(branch, str) and (problem := branch_problem(branch)) is not None:
        raise ConfigError(f"{where} sets branch = {branch!r}, which git refuses as a branch name ({problem}).")
    if isinstance(model, str):
        problem = model_problem(model)
        if problem is not None:
            raise ConfigError(f"{where} sets model = {model!r}, which is not a model name ({problem}).")
        allowed = match_model(model, models)
        if allowed is None:
            raise ConfigError(
                f"{where} sets model = {model!r}, which is not in SLACKBUS_MODELS ({', '.join(sorted(models or ()))})."
            )
        model = allowed
    options = RequestOptions(
        repo=repo if isinstance(repo, str) else None,
        branch=branch if isinstance(branch, str) else None,
        model=model if isinstance(model, str) else None,
    )
    return options, folder


@dataclass(frozen=True)
class _Folders:
    roots: tuple[Path, ...]
    channel_dirs: dict[str, Path]
    repos: dict[str, Path]
    channel_defaults: dict[str, RequestOptions]


_CHANNEL_KEYS = ("dir", *KEYS)


def _directories(env: Mapping[str, str], workdir: Path, models: frozenset[str] | None) -> _Folders:
    """SLACKBUS_ROOTS, the repositories, and per channel a folder (SLACKBUS_CHANNEL_DIRS over SLACKBUS_CONFIG's
    [channels], where `C123 = "/path"` or a [channels.C123] table with dir, repo, branch, model) and defaults."""
    roots_raw = [r.strip() for r in env.get("SLACKBUS_ROOTS", "").split(",") if r.strip()]
    roots = tuple(Path(r).expanduser().resolve() for r in roots_raw) or (workdir,)
    data = _config_file(env)
    pairs: dict[str, str] = {}
    tables: dict[str, dict[str, object]] = {}
    for channel, entry in _table(data, "channels").items():
        if not isinstance(entry, dict):
            pairs[channel] = str(entry)
            continue
        unknown = sorted(set(map(str, entry)) - set(_CHANNEL_KEYS))
        if unknown:
            raise ConfigError(
                f"SLACKBUS_CONFIG's [channels.{channel}] holds {', '.join(unknown)}: the keys it may hold are "
                f"{', '.join(_CHANNEL_KEYS[:-1])} and {_CHANNEL_KEYS[-1]}."
            )
        for key, value in entry.items():
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(
                    f"SLACKBUS_CONFIG's [channels.{channel}] {key} must be a non-empty string in quotes, got {value!r}."
                )
        if "dir" in entry and "repo" in entry:
            raise ConfigError(
                f"SLACKBUS_CONFIG's [channels.{channel}] sets both dir and repo: keep one (a repo is the channel's "
                "folder too)."
            )
        if "dir" in entry:
            pairs[channel] = str(entry["dir"]).strip()
        tables[channel] = {str(k): str(v).strip() for k, v in entry.items()}
    for item in env.get("SLACKBUS_CHANNEL_DIRS", "").split(","):
        if item.strip():
            channel, sep, directory = item.partition("=")
            if not sep or not channel.strip() or not directory.strip():
                raise ConfigError(
                    f"SLACKBUS_CHANNEL_DIRS holds {item.strip()!r}: write CHANNEL_ID=/path, comma-separated."
                )
            pairs[channel.strip()] = directory.strip()
    if not any(workdir == r or workdir.is_relative_to(r) for r in roots):
        raise ConfigError(f"SLACKBUS_WORKDIR={workdir} is not under SLACKBUS_ROOTS ({', '.join(map(str, roots))}).")
    dirs: dict[str, Path] = {}
    for channel, raw in pairs.items():
        real = Path(raw).expanduser().resolve()
        if not any(real == r or real.is_relative_to(r) for r in roots):
            raise ConfigError(
                f"The directory for channel {channel}, {raw}, is {real} once links and .. are resolved, which is "
                f"outside SLACKBUS_ROOTS ({', '.join(map(str, roots))}): move it or add a root."
            )
        if not real.is_dir():
            raise ConfigError(f"The directory for channel {channel}, {raw}, does not exist.")
        dirs[channel] = real
    repos = _repos(env, data, roots)
    defaults: dict[str, RequestOptions] = {}
    for channel, entry in tables.items():
        options, folder = _channel_default(channel, entry, repos, roots, models)
        if folder is not None:
            dirs.setdefault(channel, folder)  # SLACKBUS_CHANNEL_DIRS, when it names the channel, wins
        if options:
            defaults[channel] = options
    return _Folders(roots, dirs, repos, defaults)


def _pr_command(env: Mapping[str, str]) -> str | None:
    """SLACKBUS_PR_COMMAND, which is split into shell words when a pull request is opened: they must split."""
    command = env.get("SLACKBUS_PR_COMMAND", "").strip()
    if not command:
        return None
    import shlex

    try:
        shlex.split(command)
    except ValueError as exc:
        raise ConfigError(
            f"SLACKBUS_PR_COMMAND cannot be read as shell words ({str(exc).lower().rstrip('.')}): check its quotes."
        ) from None
    return command


_TRUE, _FALSE = frozenset({"on", "true", "1", "yes"}), frozenset({"off", "false", "0", "no"})


def _switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE or raw in _FALSE:
        return raw in _TRUE
    raise ConfigError(f"{name} must be on or off (or true/false, 1/0), got {raw!r}.")


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)")
_UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(env: Mapping[str, str], name: str, default: float) -> float:
    """Seconds, or a number with a unit: 30m, 12h, 7d."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    match = _DURATION.fullmatch(raw.lower())
    if match is None:
        raise ConfigError(f"{name} must be a number of seconds or a duration like 7d, 12h or 30m, got {raw!r}.")
    value = float(match[1]) * _UNIT_SECONDS[match[2]]
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be greater than 0, got {raw!r}.")
    return value


def _tool_list(raw: str | None) -> tuple[str, ...]:
    """Claude Code permission rules, comma-separated; commas inside parentheses belong to the rule."""
    if not raw:
        return ()
    rules, depth, current = [], 0, ""
    for ch in raw:
        if ch == "," and depth == 0:
            rules.append(current.strip())
            current = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        current += ch
    rules.append(current.strip())
    return tuple(r for r in rules if r)


def user_can(user: str, test: str, path: Path | str) -> bool:
    """Whether `user` passes `test -<test> path` (permission bits, groups and ACLs alike): the check runs as
    that user with its groups, as claude will (bot.core.claude_runner.take_groups_of)."""
    gid = pwd.getpwnam(user).pw_gid
    try:
        out = subprocess.run(["/bin/sh", "-c", f'test -{test} "$1"', "sh", str(path)], user=user, group=gid,
                             extra_groups=os.getgrouplist(user, gid), timeout=10, stdin=subprocess.DEVNULL,
                             capture_output=True, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0


def _run_as(env: Mapping[str, str], cli: str, home: Path, folders: Mapping[str, Path]) -> str | None:
    """SLACKBUS_RUN_AS: a user other than the bot's own, which the bot (root) can switch to, with a writable
    HOME, able to run the CLI and to work in every configured folder (none inside the bot's private `home`)."""
    name = env.get("SLACKBUS_RUN_AS", "").strip()
    if not name:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(
            f"SLACKBUS_RUN_AS={name} is not a user on this host: create it (e.g. `useradd --create-home {name}`) "
            "or unset SLACKBUS_RUN_AS."
        ) from None
    if entry.pw_uid == os.geteuid():
        raise ConfigError(
            f"SLACKBUS_RUN_AS={name} is the user the bot itself runs as, which separates nothing: name another "
            "user (e.g. one made with `useradd --create-home slackbus-agent`), or unset it."
        )
    if os.geteuid() != 0:
        raise ConfigError(
            f"SLACKBUS_RUN_AS={name} needs the bot to start as root (it switches to {name} for each claude "
            "process); or unset it."
        )
    if not os.path.isdir(entry.pw_dir):
        raise ConfigError(
            f"SLACKBUS_RUN_AS={name}: its home folder {entry.pw_dir} does not exist, and claude keeps its sessions "
            f"there: create it (`mkdir -p {entry.pw_dir} && chown {name} {entry.pw_dir}`) or give {name} another home."
        )
    if not (user_can(name, "w", entry.pw_dir) and user_can(name, "x", entry.pw_dir)):
        raise ConfigError(
            f"SLACKBUS_RUN_AS={name}: its home folder {entry.pw_dir} is not writable by {name}, and claude keeps "
            f"its sessions there: `chown {name} {entry.pw_dir}`."
        )
    if not user_can(name, "x", cli):
        raise ConfigError(
            f"SLACKBUS_RUN_AS={name} cannot run the Claude Code CLI at {cli} (it or a folder above it is not "
            f"readable by {name}): make it so, or point CLAUDE_CLI_PATH at a copy {name} can run."
        )
    for what, folder in folders.items():
        if folder == home or folder.is_relative_to(home):
            raise ConfigError(
                f"{what} lies inside SLACKBUS_HOME={home}, which the bot keeps private to itself, so {name} "
                f"(SLACKBUS_RUN_AS) cannot work there: choose a folder outside it that {name} may write, "
                f"e.g. SLACKBUS_WORKDIR=/srv/slackbus-work owned by {name}."
            )
        if not (user_can(name, "w", folder) and user_can(name, "x", folder)):
            raise ConfigError(
                f"{what} is not writable by {name} (SLACKBUS_RUN_AS), who runs claude there: "
                f"`chown -R {name} {folder}` (or `chgrp -R` a group of {name}'s and `chmod -R g+rwX`), "
                "or choose another folder."
            )
    return name


def bundled_cli_path() -> str | None:
    """The `claude` executable shipped inside the claude-agent-sdk wheel, if present."""
    try:
        import claude_agent_sdk
    except ImportError:  # pragma: no cover - a hard dependency
        return None
    path = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
    return str(path) if path.is_file() else None


def resolve_cli(env: Mapping[str, str]) -> str:
    """CLAUDE_CLI_PATH, else `claude` on PATH, else the CLI bundled with claude-agent-sdk."""
    configured = env.get("CLAUDE_CLI_PATH", "").strip()
    if configured:
        import shutil

        found = shutil.which(configured, path=env.get("PATH"))
        if found is None:
            if Path(configured).exists():
                raise ConfigError(f"CLAUDE_CLI_PATH={configured} is not executable: chmod +x it or fix the path.")
            raise ConfigError(
                f"CLAUDE_CLI_PATH={configured} does not exist: point it at the `claude` executable, "
                "or unset it to use the CLI bundled with claude-agent-sdk."
            )
        return found
    import shutil

    found = shutil.which("claude", path=env.get("PATH"))
    if found:
        return found
    bundled = bundled_cli_path()
    if bundled and os.access(bundled, os.X_OK):
        return bundled
    raise ConfigError(
        "The Claude Code CLI (`claude`) was not found: run scripts/install (it installs the CLI bundled "
        "with claude-agent-sdk), `npm install -g @anthropic-ai/claude-code`, or set CLAUDE_CLI_PATH."
    )


def child_environment(env: Mapping[str, str]) -> dict[str, str]:
    """What the `claude` child may see: everything but Slack secrets and nesting markers."""
    out: dict[str, str] = {}
    for key, value in env.items():
        if key in SECRET_ENV_NAMES or key in NESTING_ENV_NAMES:
            continue
        if key.startswith(("SLACK_", "SLACKBUS_")) and SECRET_NAME.search(key):  # what the redactor masks
            continue
        out[key] = value
    return out


def parse_allowed_users(raw: str | None) -> frozenset[str]:
    if raw is None or not raw.replace(",", " ").strip():
        raise ConfigError(
            "SLACKBUS_ALLOWED_USERS is not set, so nobody could use the bot: set it to the Slack member ids "
            "allowed to run Claude (e.g. SLACKBUS_ALLOWED_USERS=U012ABCDEF,U034GHIJKL; find an id under a "
            "profile's ⋮ menu, 'Copy member ID'), or to * to allow everyone in the workspace."
        )
    users = frozenset(part.strip() for part in raw.split(",") if part.strip())
    for user in users:
        if user != "*" and not re.fullmatch(r"[UW][A-Z0-9]+", user):
            raise ConfigError(
                f"SLACKBUS_ALLOWED_USERS holds {user!r}, which is not a Slack member id (like U012ABCDEF) or *."
            )
    return users


def load_settings(
    env: Mapping[str, str] | None = None, *, env_file: str | None = None, transport: str | None = None
) -> Settings:
    merged = read_environment(env, env_file)
    transport = transport or merged.get("SLACKBUS_TRANSPORT", "").strip().lower() or "slack"
    if transport not in ("slack", "local"):
        raise ConfigError(f"SLACKBUS_TRANSPORT must be slack or local, got {transport!r}.")
    local = transport == "local"
    # the local channel needs no Slack app: its tokens are not read, and the folder's permissions are the gate
    bot_token = "" if local else _token(merged, "SLACK_BOT_TOKEN", "xoxb-", "bot token")
    app_token = "" if local else _token(merged, "SLACK_APP_TOKEN", "xapp-", "app-level token")
    api_url = merged.get("SLACK_API_URL", "").strip() or DEFAULT_SLACK_API_URL
    if not re.match(r"https?://", api_url):
        raise ConfigError(f"SLACK_API_URL must be an http(s) URL like {DEFAULT_SLACK_API_URL}, got {api_url!r}.")
    if not api_url.endswith("/"):
        api_url += "/"
    if local:
        raw = merged.get("SLACKBUS_ALLOWED_USERS", "").strip() or "*"
        allowed = frozenset(u.strip() for u in raw.split(",") if u.strip())
    else:
        allowed = parse_allowed_users(merged.get("SLACKBUS_ALLOWED_USERS"))
    cli = resolve_cli(merged)

    home = Path(merged.get("SLACKBUS_HOME", "").strip() or Path.home() / ".slackbus").expanduser()
    workdir_raw = merged.get("SLACKBUS_WORKDIR", "").strip()
    workdir = Path(workdir_raw).expanduser() if workdir_raw else home / "workspace"
    for what, path in (("SLACKBUS_HOME", home), ("SLACKBUS_WORKDIR", workdir)):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{what}={path} cannot be created ({exc.strerror}): choose a writable folder.") from None
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{what}={path} is not writable: choose a writable folder.")

    log_format = merged.get("SLACKBUS_LOG_FORMAT", "").strip().lower() or "json"
    if log_format not in {"json", "console"}:
        raise ConfigError(f"SLACKBUS_LOG_FORMAT must be json or console, got {log_format!r}.")

    max_concurrent = _int(merged, "SLACKBUS_MAX_CONCURRENT", 4)
    warm_pool = _int(merged, "SLACKBUS_WARM_POOL", 1, minimum=0)
    warm_pool_max = _int(merged, "SLACKBUS_WARM_POOL_MAX", warm_pool + 1 if warm_pool else 0, minimum=0)
    if warm_pool_max < warm_pool:
        raise ConfigError(
            f"SLACKBUS_WARM_POOL_MAX ({warm_pool_max}) must be at least SLACKBUS_WARM_POOL ({warm_pool}): "
            "it is how far the pool of pre-started processes may grow when new threads come fast."
        )
    floor = max_concurrent + warm_pool + 2
    if merged.get("SLACKBUS_MAX_PROCESSES", "").strip():
        max_processes, max_processes_why = _int(merged, "SLACKBUS_MAX_PROCESSES", floor), "SLACKBUS_MAX_PROCESSES"
    else:
        max_processes, max_processes_why = sized_max_processes(floor, memory_available_mb())
    if max_processes < max_concurrent:
        raise ConfigError(
            f"SLACKBUS_MAX_PROCESSES ({max_processes}) must be at least SLACKBUS_MAX_CONCURRENT ({max_concurrent}): "
            "every running task needs its own claude process."
        )
    admins = frozenset(u.strip() for u in merged.get("SLACKBUS_ADMIN_USERS", "").split(",") if u.strip())
    permission_mode = _permission_mode(merged, allowed)
    channels_raw = merged.get("SLACKBUS_ALLOWED_CHANNELS", "").strip()
    allowed_channels = (
        frozenset(c.strip() for c in channels_raw.split(",") if c.strip()) if channels_raw and channels_raw != "*"
        else None
    )
    models, model = _models(merged)
    folders = _directories(merged, workdir.resolve(), models)
    roots, channel_dirs = folders.roots, folders.channel_dirs
    run_as = _run_as(merged, cli, home.resolve(), {
        f"SLACKBUS_WORKDIR={workdir.resolve()}": workdir.resolve(),
        **{f"The folder for channel {c}, {d},": d for c, d in channel_dirs.items()},
        **{f"The repository {n}, {d},": d for n, d in folders.repos.items()},
    })
    budget = merged.get("SLACKBUS_MAX_BUDGET_USD", "").strip()
    idle_off = merged.get("SLACKBUS_IDLE_SECONDS", "").strip() == "0"  # 0: no warm sessions
    return Settings(
        slack_bot_token=bot_token,
        slack_app_token=app_token,
        slack_api_url=api_url,
        claude_cli_path=cli,
        home=home.resolve(),
        workdir=workdir.resolve(),
        allowed_users=allowed,
        admin_users=admins,
        max_concurrent=max_concurrent,
        run_timeout=_float(merged, "SLACKBUS_RUN_TIMEOUT", 1800.0),
        stall_seconds=_float(merged, "SLACKBUS_STALL_SECONDS", 300.0),
        idle_seconds=0.0 if idle_off else _float(merged, "SLACKBUS_IDLE_SECONDS", 600.0),
        warm_pool=warm_pool,
        warm_pool_max=warm_pool_max,
        max_processes=max_processes,
        max_processes_why=max_processes_why,
        park_seconds=0.0 if merged.get("SLACKBUS_PARK_SECONDS", "").strip() == "0"
        else _float(merged, "SLACKBUS_PARK_SECONDS", 5.0),
        max_turns=_int(merged, "SLACKBUS_MAX_TURNS", 0, minimum=0) or None,
        max_budget_usd=_float(merged, "SLACKBUS_MAX_BUDGET_USD", 1.0) if budget else None,
        context_messages=_int(merged, "SLACKBUS_CONTEXT_MESSAGES", 40, minimum=0),
        context_chars=_int(merged, "SLACKBUS_CONTEXT_CHARS", 12000, minimum=0),
        log_level=(merged.get("SLACKBUS_LOG_LEVEL", "").strip() or "info").lower(),
        log_format=log_format,
        model=model,
        allowed_channels=allowed_channels,
        permission_mode=permission_mode,
        roots=roots,
        channel_dirs=channel_dirs,
        approval_seconds=_float(merged, "SLACKBUS_APPROVAL_SECONDS", 300.0),
        allowed_tools=_tool_list(merged.get("SLACKBUS_ALLOWED_TOOLS")),
        disallowed_tools=_tool_list(merged.get("SLACKBUS_DISALLOWED_TOOLS")),
        child_env=child_environment(merged),
        transport=transport,
        local_dir=Path(merged.get("SLACKBUS_LOCAL_DIR", "").strip() or home / "channels").expanduser().resolve(),
        run_as=run_as,
        max_input_chars=_int(merged, "SLACKBUS_MAX_INPUT_CHARS", 20_000),
        max_attachment_mb=_int(merged, "SLACKBUS_MAX_ATTACHMENT_MB", 20),
        attachment_types=_types(merged.get("SLACKBUS_ATTACHMENT_TYPES")),
        inline_chars=_int(merged, "SLACKBUS_INLINE_CHARS", 8_000, minimum=0),
        repos=folders.repos,
        models=models,
        worktrees=_switch(merged, "SLACKBUS_WORKTREES", True),
        worktree_ttl=_duration(merged, "SLACKBUS_WORKTREE_TTL", 7 * 86400.0),
        pr_command=_pr_command(merged),
        channel_defaults=folders.channel_defaults,
        triggers=_trigger_rules(_config_file(merged).get("triggers"), allowed, admins, allowed_channels),
        trigger_cooldown=_duration(merged, "SLACKBUS_TRIGGER_COOLDOWN", 600.0),
        schedules=_schedules(_config_file(merged), allowed, admins, allowed_channels),
        schedules_by=_schedules_by(merged),
        schedule_grace=_duration(merged, "SLACKBUS_SCHEDULE_GRACE", 3600.0),
        nats_url=_nats_url(merged),
        nats_replicas=_int(merged, "SLACKBUS_NATS_REPLICAS", 1, minimum=1),
        node_id=_node_id(merged, home.resolve()),
        budget=_budget(merged, _table(_config_file(merged), "budget")),
    )


# --- spending limits (bot.core.budget checks them) ------------------------------------------------------------
def budget_setting(key: str) -> str:
    return f"SLACKBUS_BUDGET_{key.upper()}"


def _amount(raw: object, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ConfigError(f"{where} must be an amount in USD (like 5 or 2.50), got {raw!r}.")
    text = str(raw).strip().removeprefix("$")
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{where} must be an amount in USD (like 5 or 2.50), got {raw!r}.") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{where} must be more than 0 USD (leave it unset for no limit), got {raw!r}.")
    return value


def _budget(env: Mapping[str, str], table: Mapping[str, object]) -> Limits:
    """The limits from SLACKBUS_BUDGET_* over SLACKBUS_CONFIG's [budget]; a ConfigError sentence naming a bad one."""
    keys = [f.name for f in fields(Limits)]
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise ConfigError(f"SLACKBUS_CONFIG's [budget] has an unknown key {unknown[0]!r}: use "
                          f"{', '.join(keys)} (USD per UTC day or month).")
    values: dict[str, float | None] = {}
    for key in keys:
        raw_env = env.get(budget_setting(key), "").strip()
        if raw_env:
            values[key] = _amount(raw_env, budget_setting(key))
        elif key in table:
            values[key] = _amount(table[key], f"SLACKBUS_CONFIG's [budget] {key}")
        else:
            values[key] = None
    return Limits(**values)


def _nats_url(env: Mapping[str, str]) -> str | None:
    """SLACKBUS_NATS_URL: one or more nats:// (or tls://) servers, comma-separated; unset: one host, no cluster."""
    raw = env.get("SLACKBUS_NATS_URL", "").strip()
    if not raw:
        return None
    for url in raw.split(","):
        if not re.fullmatch(r"(nats|tls|ws|wss)://\S+", url.strip()):
            raise ConfigError(
                f"SLACKBUS_NATS_URL holds {redact_url(url.strip())!r}, which is not a NATS server address: give "
                "nats://HOST:4222 (several comma-separated), or unset it to run on one host."
            )
    return raw


def redact_url(url: str) -> str:
    """A server address without its password, for logs and sentences."""
    return re.sub(r"//[^/,]*@", "//[redacted]@", url)  # user:password@ or a token@


def _node_id(env: Mapping[str, str], home: Path) -> str:
    """SLACKBUS_NODE_ID, else the host's name and a short hash of SLACKBUS_HOME (two nodes on one host differ)."""
    raw = env.get("SLACKBUS_NODE_ID", "").strip()
    if raw:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", raw):
            raise ConfigError(f"SLACKBUS_NODE_ID is {raw!r}: use letters, digits, - and _ only (at most 64).")
        return raw
    import hashlib
    import socket

    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{hashlib.sha256(str(home).encode()).hexdigest()[:6]}"


_SCHEDULE_KEYS = ("channel", "cron", "prompt", "owner", "tz")


def _schedules(data: Mapping[str, object], allowed: frozenset[str], admins: frozenset[str],
               channels: frozenset[str] | None) -> tuple[ScheduleSpec, ...]:
    """SLACKBUS_CONFIG's [[schedules]]: channel, cron, prompt, owner (an allowed user) and tz (default: the host's),
    each checked, so a cron expression or a time zone that cannot be read stops the start."""
    entries = data.get("schedules") or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError("SLACKBUS_CONFIG's schedules must be tables ([[schedules]], one per schedule).")
    specs = []
    for number, entry in enumerate(entries, start=1):
        where = f"SLACKBUS_CONFIG's schedule #{number}"
        unknown = sorted(set(map(str, entry)) - set(_SCHEDULE_KEYS))
        if unknown:
            raise ConfigError(f"{where} holds {', '.join(unknown)}: a schedule has channel, cron, prompt, owner "
                              "and tz (optional) only.")
        for key in _SCHEDULE_KEYS:
            value = entry.get(key)
            if (value is None and key != "tz") or (value is not None and (not isinstance(value, str)
                                                                          or not value.strip())):
                raise ConfigError(f"{where} needs {key} as a non-empty string in quotes, got {value!r}.")
        channel, cron, owner = entry["channel"].strip(), " ".join(entry["cron"].split()), entry["owner"].strip()
        tz = str(entry.get("tz") or "").strip() or host_zone()
        problem = cron_problem(cron)
        if problem is not None:
            raise ConfigError(f"{where} has cron = {cron!r}, which is not a cron expression ({problem}): write "
                              f"{CRON_HELP}.")
        problem = zone_problem(tz)
        if problem is not None:
            raise ConfigError(f"{where} has tz = {tz!r}, which is {problem}.")
        if not ("*" in allowed or owner in allowed or owner in admins):
            raise ConfigError(f"{where} has owner = {owner!r}, who is not in SLACKBUS_ALLOWED_USERS: its runs are "
                              "that person's requests, so name an allowed user.")
        if channels is not None and channel not in channels and not channel.startswith("D"):
            raise ConfigError(f"{where} has channel = {channel!r}, which is not in SLACKBUS_ALLOWED_CHANNELS: add it "
                              "there or choose another channel.")
        specs.append(ScheduleSpec(channel, cron, tz, entry["prompt"].strip(), owner))
    return tuple(specs)


def _schedules_by(env: Mapping[str, str]) -> str:
    raw = env.get("SLACKBUS_SCHEDULES", "").strip().lower() or "admins"
    if raw not in ("admins", "users"):
        raise ConfigError(f"SLACKBUS_SCHEDULES must be admins (only admins add schedules) or users (the channel's "
                          f"allowed users too), got {raw!r}.")
    return raw


# --- trigger rules (bot.core.triggers matches them) --------------------------------------------------------------
TRIGGER_MAX_PER_HOUR = 10
TRIGGER_FIELDS = frozenset({"text", "user", "link"})  # a rule's prompt may use these, and its pattern's named groups
_TRIGGER_KEYS = frozenset({"name", "channel", "pattern", "prompt", "owner", "user", "bot_id", "app_id", "bots",
                           "max_per_hour"})
_IDS = {"user": (r"[UW][A-Z0-9]+", "U012ABCDEF"), "bot_id": (r"B[A-Z0-9]+", "B012ABCDEF"),
        "app_id": (r"A[A-Z0-9]+", "A012ABCDEF")}


@dataclass(frozen=True)
class TriggerRule:
    """One [[triggers]] table: a message in `channel` whose text `pattern` finds (and whose poster is `user` /
    `bot_id` / `app_id` when set; other bots' posts only with `bots`) starts a run as `owner`, asked `prompt`."""

    name: str
    channel: str
    pattern: re.Pattern[str]
    prompt: str
    owner: str
    user: str | None = None
    bot_id: str | None = None
    app_id: str | None = None
    bots: bool = False
    max_per_hour: int = TRIGGER_MAX_PER_HOUR


def _trigger_rules(raw: object, allowed: frozenset[str], admins: frozenset[str],
                   allowed_channels: frozenset[str] | None) -> tuple[TriggerRule, ...]:
    """SLACKBUS_CONFIG's [[triggers]]; a ConfigError sentence naming the rule for anything wrong in one."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ConfigError("SLACKBUS_CONFIG's triggers must be a list of tables ([[triggers]] with name, channel, "
                          "pattern, prompt and owner).")
    rules: list[TriggerRule] = []
    for index, table in enumerate(raw, start=1):
        rule = _trigger_rule(table, index, allowed | admins, allowed_channels)
        if any(r.name == rule.name for r in rules):
            raise ConfigError(f"SLACKBUS_CONFIG has two trigger rules named {rule.name!r}: give each its own name.")
        rules.append(rule)
    return tuple(rules)


def _trigger_rule(table: Mapping[str, object], index: int, allowed: frozenset[str],
                  allowed_channels: frozenset[str] | None) -> TriggerRule:
    import string

    name = table.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise ConfigError(f"SLACKBUS_CONFIG's trigger rule #{index} needs a name (letters, digits, . _ -), got "
                          f"{name!r}.")
    where = f"SLACKBUS_CONFIG's trigger rule {name!r}"
    unknown = sorted(set(table) - _TRIGGER_KEYS)
    if unknown:
        raise ConfigError(f"{where} has {', '.join(unknown)}, which a rule does not take (it takes "
                          f"{', '.join(sorted(_TRIGGER_KEYS))}).")

    def text(key: str, required: bool = True) -> str | None:
        value = table.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where} needs {key} as text in quotes, got {value!r}.")
        return value if key == "prompt" else value.strip()

    channel = text("channel") or ""
    if not re.fullmatch(r"[CG][A-Z0-9]+", channel):
        raise ConfigError(f"{where} has channel = {channel!r}, which is not a channel id (like C0123ABCDEF; in Slack: "
                          "the channel's name, About, Channel ID).")
    if allowed_channels is not None and channel not in allowed_channels:
        raise ConfigError(f"{where} watches {channel}, which SLACKBUS_ALLOWED_CHANNELS leaves out: add it there, or "
                          "remove the rule.")
    source = text("pattern") or ""
    try:
        pattern = re.compile(source)
    except re.error as exc:
        raise ConfigError(f"{where} has pattern = {source!r}, which is not a valid regular expression ({exc}).") \
            from None
    owner = text("owner") or ""
    if not re.fullmatch(_IDS["user"][0], owner):
        raise ConfigError(f"{where} has owner = {owner!r}, which is not a Slack member id (like U012ABCDEF).")
    if "*" not in allowed and owner not in allowed:
        raise ConfigError(f"{where} has owner = {owner}, who is not on SLACKBUS_ALLOWED_USERS (or ADMIN_USERS): a "
                          "rule runs as its owner, so the owner must be allowed to use the bot.")
    poster = {key: text(key, required=False) for key in _IDS}
    for key, value in poster.items():
        if value is not None and not re.fullmatch(_IDS[key][0], value):
            raise ConfigError(f"{where} has {key} = {value!r}, which is not a Slack id (like {_IDS[key][1]}).")
    bots = table.get("bots", poster["bot_id"] is not None or poster["app_id"] is not None)
    if not isinstance(bots, bool):
        raise ConfigError(f"{where} has bots = {bots!r}: write true or false.")
    if not bots and (poster["bot_id"] or poster["app_id"]):
        raise ConfigError(f"{where} names a bot_id or app_id but sets bots = false, so no post could match it.")
    cap = table.get("max_per_hour", TRIGGER_MAX_PER_HOUR)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ConfigError(f"{where} has max_per_hour = {cap!r}: give a whole number of runs, at least 1.")
    prompt = text("prompt") or ""
    known = TRIGGER_FIELDS | set(pattern.groupindex)
    may = ", ".join("{" + k + "}" for k in sorted(known))
    try:
        parts = list(string.Formatter().parse(prompt))
    except ValueError as exc:
        raise ConfigError(f"{where} has a prompt with a stray brace ({exc}): write {{{{ and }}}} for a brace.") \
            from None
    for _, field_name, spec, conversion in parts:
        if field_name is not None and (field_name not in known or spec or conversion):
            raise ConfigError(f"{where}'s prompt has {{{field_name}}}, which it cannot fill in: it may use {may} "
                              "(write {{ and }} for a brace).")
    return TriggerRule(name=name, channel=channel, pattern=pattern, prompt=prompt, owner=owner, user=poster["user"],
                       bot_id=poster["bot_id"], app_id=poster["app_id"], bots=bots, max_per_hour=cap)


def scrub_process_environment() -> None:
    """Drop the secrets from os.environ so no child process (the SDK merges os.environ) inherits them."""
    for key in list(os.environ):
        if key in SECRET_ENV_NAMES or key in NESTING_ENV_NAMES or key not in child_environment({key: ""}):
            os.environ.pop(key, None)


def check_cli(path: str, timeout: float = 30.0) -> str:
    """`claude --version`, or a ConfigError saying why the CLI cannot run."""

    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
        )
    except OSError as exc:
        raise ConfigError(
            f"The Claude Code CLI at {path} cannot be started ({exc.strerror}): check CLAUDE_CLI_PATH."
        ) from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"The Claude Code CLI at {path} did not answer `--version` within {timeout:g} s.") from None
    if out.returncode != 0:
        raise ConfigError(
            f"The Claude Code CLI at {path} failed `--version` (exit {out.returncode}): "
            f"{(out.stderr or out.stdout).strip()[:200]}"
        )
    return out.stdout.strip()
