"""`slackbus doctor`: check what a new operator gets wrong, one line per check with the fix.

It never opens a Socket Mode connection (that would take events away from a running bot): it only asks
apps.connections.open for a URL. With SLACKBUS_NATS_URL it looks at the cluster read-only (bot.cluster.inspect):
the server that answered, JetStream, the streams and buckets, and the nodes' heartbeats; it creates nothing.
"""

from __future__ import annotations

import pwd
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import Settings, load_settings, read_environment, resolve_cli, user_can
from bot.errors import ConfigError

if TYPE_CHECKING:
    from bot.cluster.inspect import View

REQUIRED_SCOPES = (
    "app_mentions:read", "channels:history", "groups:history", "im:history", "chat:write", "commands",
    "reactions:read", "reactions:write", "users:read", "channels:read",
)
EVENTS = "app_mention, message.channels, message.groups, message.im, message.mpim, reaction_added"
ANTHROPIC_CREDENTIALS = (
    "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN", "CLAUDE_CODE_USE_BEDROCK",
    "CLAUDE_CODE_USE_VERTEX",
)


@dataclass(frozen=True)
class Check:
    ok: bool | None  # None: cannot be checked from here (information)
    what: str
    fix: str = ""

    def line(self) -> str:
        mark = {True: "ok  ", False: "FAIL", None: "note"}[self.ok]
        return f"{mark}  {self.what}" + (f"\n      → {self.fix}" if self.fix and self.ok is not True else "")


def _anthropic_credential(env: Mapping[str, str]) -> Check:
    present = [name for name in ANTHROPIC_CREDENTIALS if env.get(name)]
    home = Path(env.get("HOME") or Path.home())
    if present:
        return Check(True, f"Anthropic credential: {', '.join(present)} set")
    if (home / ".claude" / ".credentials.json").exists():
        return Check(True, f"Anthropic credential: a Claude login in {home / '.claude'}")
    return Check(
        False,
        "Anthropic credential: none found",
        "set ANTHROPIC_API_KEY in .env (or run `claude` once and log in as the user claude runs as: "
        "SLACKBUS_RUN_AS, else the bot's)",
    )


def _protection(settings: Settings, env_file: str) -> Check:
    """Which user claude runs as, and so what of the bot's it can read."""
    if settings.run_as is None:
        return Check(
            None,
            "claude runs as the bot's own user: the Slack tokens are kept out of its environment and /proc, but it "
            "can read files this user can read (SLACKBUS_HOME, .env)",
            "set SLACKBUS_RUN_AS to a user of its own (the bot then starts as root) to separate them",
        )
    user = pwd.getpwnam(settings.run_as)
    who = f"claude runs as user {user.pw_name!r} (uid {user.pw_uid}, HOME {user.pw_dir})"
    # SLACKBUS_HOME (the database, the socket) the bot makes 0700 at every start; the .env is the operator's
    if Path(env_file).is_file() and user_can(user.pw_name, "r", env_file):
        return Check(False, f"{who}, but it can read the settings file {env_file}",
                     f"make it readable by the bot's user only: chmod 600 {env_file}")
    return Check(True, f"{who}: it cannot read the bot's state, .env or socket")


async def _slack_checks(settings: Settings) -> list[Check]:
    checks: list[Check] = []
    bot = AsyncWebClient(token=settings.slack_bot_token, base_url=settings.slack_api_url, timeout=15)
    app = AsyncWebClient(token=settings.slack_app_token, base_url=settings.slack_api_url, timeout=15)
    try:
        with anyio.fail_after(20):
            auth = await bot.auth_test()
        checks.append(Check(True, f"SLACK_BOT_TOKEN: valid, bot user {auth.get('user')} ({auth.get('user_id')}) "
                                  f"in {auth.get('team')}"))
        granted = {s.strip() for s in str(auth.headers.get("x-oauth-scopes", "")).split(",") if s.strip()}
        if granted:
            missing = [s for s in REQUIRED_SCOPES if s not in granted]
            checks.append(
                Check(not missing, "bot scopes: " + ("all present" if not missing else f"missing {', '.join(missing)}"),
                      "add them from manifest.yaml (OAuth & Permissions → Scopes), then reinstall the app")
            )
    except SlackApiError as exc:
        checks.append(Check(False, f"SLACK_BOT_TOKEN: refused ({exc.response.get('error')})",
                            "copy the Bot User OAuth Token (xoxb-…) from OAuth & Permissions; reinstall if revoked"))
        return checks
    except (TimeoutError, OSError) as exc:
        checks.append(Check(False, f"Slack Web API at {settings.slack_api_url}: unreachable ({type(exc).__name__})",
                            "check the network, a proxy, or SLACK_API_URL"))
        return checks
    try:
        with anyio.fail_after(20):
            await app.apps_connections_open(app_token=settings.slack_app_token)
        checks.append(Check(True, "SLACK_APP_TOKEN: Socket Mode reachable"))
    except SlackApiError as exc:
        checks.append(Check(False, f"SLACK_APP_TOKEN: Socket Mode refused ({exc.response.get('error')})",
                            "enable Socket Mode, and make an app-level token with connections:write"))
    except (TimeoutError, OSError) as exc:
        checks.append(Check(False, f"Socket Mode: unreachable ({type(exc).__name__})", "check the network"))
    try:
        with anyio.fail_after(20):
            resp = await bot.users_conversations(types="public_channel,private_channel", limit=200)
        names = [f"#{c.get('name')}" for c in resp.get("channels") or []]
        checks.append(Check(bool(names), "channels the bot is in: " + (", ".join(names[:10]) or "none"),
                            "invite it where it should work: /invite @slackbus"))
    except SlackApiError as exc:
        checks.append(Check(None, f"channel membership: cannot list ({exc.response.get('error')})",
                            "add the channels:read and groups:read scopes to let doctor check"))
    checks.append(Check(None, f"event subscriptions cannot be read with these tokens; they must include {EVENTS}",
                        "compare Event Subscriptions with manifest.yaml"))
    return checks


def _size(n: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _n(count: int, word: str, plural: str = "") -> str:
    return f"{count:,} {word if count == 1 else plural or word + 's'}"


def _ago(seconds: float) -> str:
    if seconds == float("inf"):
        return "at an unknown time"
    if seconds < 120:
        return f"{seconds:.0f} s ago" if seconds >= 10 else f"{seconds:.1f} s ago"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _cluster_lines(settings: Settings, view: View) -> list[Check]:
    from bot.cluster.inspect import Resource
    from bot.cluster.jetstream import EVENTS, NODES, SESSIONS, THREADS
    from bot.cluster.outbox import OUTBOX

    checks = [Check(True, f"NATS: {view.server} answered (nats-server {view.version}); this "
                          f"host's node id: {settings.node_id}")]
    limit = "no limit" if view.max_storage < 0 else f"of {_size(view.max_storage)} allowed"
    checks.append(Check(True, f"JetStream: on, {_n(view.streams, 'stream')} in the account, {_size(view.storage)} on "
                              f"disk ({limit})"))

    def counts(r: Resource) -> str:
        if r.name == EVENTS:
            return f"{_n(r.messages, 'event')} in {_n(r.subjects, 'channel')}, {_size(r.bytes)}"
        if r.name == SESSIONS:
            return f"{_n(r.subjects, 'transcript')}, {_size(r.bytes)}"
        if r.name in (THREADS, NODES):
            return _n(r.messages, "thread" if r.name == THREADS else "node")
        if r.name == OUTBOX:
            return f"{_n(r.keys or 0, 'answer')} not posted yet"
        return f"{_n(r.messages, 'task')} waiting"

    for r in view.resources:
        if not r.exists:
            checks.append(Check(None, f"{r.kind} {r.name}: not there yet; the first node to start creates it"))
            continue
        where = _n(r.replicas, "replica") + (f", leader {r.leader}" if r.leader else "")
        checks.append(Check(True, f"{r.kind} {r.name}: {counts(r)} ({where})"))
        if r.lagging:
            checks.append(Check(None, f"{r.kind} {r.name}: replica{'s' if len(r.lagging) > 1 else ''} "
                                      f"{', '.join(r.lagging)} not current", "start that server, or read its log"))
        if r.replicas < settings.nats_replicas:
            checks.append(Check(None, f"{r.kind} {r.name}: {_n(r.replicas, 'replica')}, SLACKBUS_NATS_REPLICAS is "
                                      f"{settings.nats_replicas}",
                                f"it was made before the setting: nats stream edit {r.stream} --replicas "
                                f"{settings.nats_replicas} (the nats CLI)"))
    host = socket.gethostname()
    for b in view.nodes:
        who = f"node {b.node} on {b.host}" + (f" (pid {b.pid})" if b.pid else "")
        if b.alive:
            load = f"running {b.running}" + (f" of {b.max_concurrent}" if b.max_concurrent else "")
            load += f", queued {b.queued}"
            if b.processes is not None:
                load += f", {_n(b.processes, 'claude process', 'claude processes')}"
            if b.node == settings.node_id and b.host != host:
                checks.append(Check(False, f"{who}: alive, and this host's node id is {b.node} too",
                                    "give each node its own SLACKBUS_NODE_ID"))
            else:
                checks.append(Check(True, f"{who}: alive (beat {_ago(b.age_s)}); {load}"
                                          + (" (this host's node id)" if b.node == settings.node_id else "")))
        else:
            checks.append(Check(None, f"{who}: stopped {_ago(b.age_s)} (its threads go to the living nodes)"))
    if any(r.name == NODES and r.exists for r in view.resources) and not any(b.alive for b in view.nodes):
        checks.append(Check(None, "nodes alive: none yet", "start `slackbus run` with SLACKBUS_NATS_URL set"))
    return checks


async def _cluster_checks(settings: Settings) -> list[Check]:
    """The cluster as this host sees it (read-only), or one line saying it runs on one host."""
    if not settings.nats_url:
        return [Check(True, "one host (SLACKBUS_NATS_URL not set)")]
    from bot.cluster.inspect import Unusable, look

    try:
        view = await look(settings.nats_url)
    except Unusable as exc:
        return [Check(False, exc.what, exc.fix)]
    return _cluster_lines(settings, view)


def run(env_file: str | None = None, *, cli_only: bool = False) -> int:
    from bot.config import check_cli

    env = read_environment(env_file=env_file)
    checks: list[Check] = []
    try:
        cli = resolve_cli(env)
        checks.append(Check(True, f"claude CLI: {cli} ({check_cli(cli)})"))
    except ConfigError as exc:
        checks.append(Check(False, f"claude CLI: {exc}"))
    if not cli_only:
        try:
            settings = load_settings(env_file=env_file)
        except ConfigError as exc:
            checks.append(Check(False, f"settings: {exc}"))
        else:
            checks.append(Check(True, f"state folder: {settings.home} (writable)"))
            checks.append(Check(True, f"working directory: {settings.workdir}"))
            home = pwd.getpwnam(settings.run_as).pw_dir if settings.run_as else env.get("HOME", str(Path.home()))
            checks.append(_anthropic_credential({**settings.child_env, "HOME": home}))
            checks.append(_protection(settings, env_file or env.get("SLACKBUS_ENV_FILE") or ".env"))
            checks.append(Check(True, f"claude processes at most: {settings.max_processes} ("
                                      f"{settings.max_processes_why or 'SLACKBUS_MAX_PROCESSES'}); running tasks "
                                      f"at once: {settings.max_concurrent}"))
            checks.extend(anyio.run(_slack_checks, settings))
            checks.extend(anyio.run(_cluster_checks, settings))
    for check in checks:
        print(check.line())
    failed = sum(1 for c in checks if c.ok is False)
    print(f"\n{len(checks)} checks, {failed} to fix." if failed else f"\n{len(checks)} checks, all good.")
    return 1 if failed else 0


__all__ = ["Check", "run"]
