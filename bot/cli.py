"""`slackbus` command line: run the bot, check the set-up."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bot import __version__
from bot.errors import ConfigError, StoreError

if TYPE_CHECKING:
    import argparse
    from pathlib import Path

    from bot.config import Settings


def _fail(message: str, code: int = 2) -> int:
    print(f"slackbus: {message}", file=sys.stderr)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    import anyio

    from bot.app import Bot
    from bot.log import configure_logging

    try:
        settings = _load_hardened(args.env_file, transport="local" if args.local else None)
        configure_logging(settings.log_level, settings.log_format)
        _warn_readable_env_file(args.env_file)
        from bot.config import check_cli

        check_cli(settings.claude_cli_path)
        bot = Bot(settings)
    except (ConfigError, StoreError) as exc:
        return _fail(str(exc))
    try:
        anyio.run(bot.serve)
    except (ConfigError, StoreError) as exc:
        return _fail(str(exc))
    except BaseExceptionGroup as group:  # raised inside the bot's task group
        found = _sentence_error(group)
        if found is None:
            raise
        return _fail(str(found))
    except KeyboardInterrupt:
        pass
    finally:
        bot.close()
    return 0


def _load_hardened(env_file: str | None, transport: str | None) -> Settings:
    """The settings of a process that starts `claude` children (the bot, the console's bot): its secrets are
    moved out of its environment (a re-exec, see bot.hardening) and out of /proc's reach, registered with the
    redactor, and its state folder made private."""
    from bot import hardening
    from bot.config import load_settings, read_environment, scrub_process_environment, secret_values
    from bot.redact import redactor

    secrets = hardening.hide_secrets()  # may re-execute this process (once): before anything else is set up
    hardening.undumpable()
    env = {**os.environ, **secrets}
    settings = load_settings(env, env_file=env_file, transport=transport)
    redactor.add(settings.slack_bot_token, settings.slack_app_token)
    redactor.add(*secret_values(read_environment(env, env_file=env_file)))
    if settings.nats_url:  # a password in the NATS address is masked like a token
        for part in re.findall(r"//([^/,]*)@", settings.nats_url):  # user:password, or a token
            redactor.add(*(p for p in (part, part.partition(":")[2]) if len(p) >= 4))
    scrub_process_environment()
    hardening.private_state(settings.home, settings.db_path)
    return settings


def _warn_readable_env_file(env_file: str | None) -> None:
    """A .env other users can read gives the tokens away whatever the bot does: say so at start."""
    from pathlib import Path

    from bot import hardening
    from bot.log import get_logger

    path = Path(env_file or os.environ.get("SLACKBUS_ENV_FILE") or ".env")
    if path.is_file() and hardening.world_readable(path):
        get_logger("slackbus.cli").warning("config.env_file_readable", path=str(path.resolve()),
                                           fix=f"chmod 600 {path}: other local users can read the tokens in it")


def _sentence_error(group: BaseExceptionGroup[BaseException]) -> ConfigError | StoreError | None:
    """The ConfigError or StoreError a task group wrapped, if that is what stopped the bot."""
    found: BaseException | None = group.split((ConfigError, StoreError))[0]
    while isinstance(found, BaseExceptionGroup):
        found = found.exceptions[0]
    return found if isinstance(found, ConfigError | StoreError) else None


def cmd_console(args: argparse.Namespace) -> int:
    from bot.local.channel import valid_name

    if not valid_name(args.channel):
        return _fail(f"{args.channel!r} is not a channel name: use letters, digits, - _ and . (e.g. general).")
    try:
        settings = _load_hardened(args.env_file, transport="local")
        from bot.config import check_cli

        check_cli(settings.claude_cli_path)
    except (ConfigError, StoreError) as exc:
        return _fail(str(exc))
    from bot import console

    try:
        return console.main(settings, args.channel, args.user)
    except (ConfigError, StoreError) as exc:
        return _fail(str(exc))


def cmd_doctor(args: argparse.Namespace) -> int:
    from bot import doctor

    return doctor.run(args.env_file, cli_only=args.cli_only)


def cmd_hook(args: argparse.Namespace) -> int:
    try:
        from bot.bridge import hooks
    except Exception as exc:
        print(f"slackbus hook {args.event}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 0
    return hooks.run(args.event, env_file=args.env_file, channel=args.channel)


def cmd_post(args: argparse.Namespace) -> int:
    from bot.bridge import bus, protocol
    from bot.core import identity

    text = " ".join(args.text)
    if text == "-" or (not text and not sys.stdin.isatty()):
        text = sys.stdin.read(protocol.MAX_POST_CHARS * 4)
    if not text.strip():
        return _fail("nothing to post: give the text as arguments, or - to read it from stdin.")
    try:
        settings = protocol.load(env_file=args.env_file)
        posted = bus.post(settings, text, identity.resolve(), channel=args.channel, thread_ts=args.thread)
    except protocol.BusError as exc:
        return _fail(str(exc), 1)
    where = f" in {posted.channel}" if posted.channel else ""
    print(f"posted{where} via {posted.via}" + (f" (ts {posted.ts})" if posted.ts else ""), file=sys.stderr)
    return 0


def cmd_read(args: argparse.Namespace) -> int:
    import json

    from bot.bridge import bus, protocol

    try:
        settings = protocol.load(env_file=args.env_file)
        messages, source = bus.read(
            settings, args.channel, thread_ts=args.thread, since=protocol.parse_since(args.since), limit=args.limit
        )
    except protocol.BusError as exc:
        return _fail(str(exc), 1)
    if args.json:
        print(json.dumps({"source": source, "messages": [m._asdict() for m in messages]}, ensure_ascii=False))
    else:
        for m in messages:
            print(m.line(limit=100_000))
    return 0


def cmd_handoff(args: argparse.Namespace) -> int:
    """Terminal → Slack: hand this session to a thread; replies there continue it on this host."""
    import getpass
    import os

    from bot.bridge import bus, hooks, protocol
    from bot.core import handoff

    settings = protocol.load(env_file=args.env_file)
    session_id, cwd = args.session, args.cwd
    hold = None
    if not session_id:
        hold = handoff.latest_hold(settings.home, cwd or os.getcwd())
        session_id = (hold or {}).get("session_id") or os.environ.get("CLAUDE_CODE_SESSION_ID")
    if not session_id:
        return _fail("which session? Run `slackbus handoff` inside Claude Code (its hooks must be installed: "
                     "`slackbus hooks install`), or give --session ID --cwd DIR.", 1)
    cwd = os.path.realpath(cwd or (hold or {}).get("cwd") or os.getcwd())
    home = os.path.expanduser("~")
    last = hooks.last_from_transcript((hold or {}).get("transcript_path") or handoff.transcript_path(home, cwd,
                                                                                                    session_id))
    request = {"op": "handoff", "session_id": session_id, "cwd": cwd, "home": home,
               "channel": args.channel or settings.channel, "note": bus.mask(settings, args.note or ""),
               "last": bus.mask(settings, last or ""),
               "by": os.environ.get("SLACKBUS_USER") or getpass.getuser()}
    try:
        answer = bus.ask_bot(settings, request, timeout=15)
    except protocol.BusError as exc:
        return _fail(str(exc), 1)
    if answer is None:
        return _fail("a hand-off needs the slackbus bot running on this host (it resumes the session here, with "
                     "this folder and HOME): start it with `slackbus run`.", 1)
    if not answer.get("ok"):
        return _fail(str(answer.get("error") or "the bot refused the hand-off"), 1)
    print(f"Handed session {session_id[:8]} to {answer.get('channel')} (thread {answer.get('ts')}): replies there "
          "continue it. If it is still open here, exit Claude Code and they will.")
    return 0


def cmd_attach(args: argparse.Namespace) -> int:
    """Slack → terminal: the command that continues a thread's session here."""
    import getpass
    import os

    from bot.bridge import bus, protocol
    from bot.core import handoff
    from bot.core.store_readonly import ReadOnlyStore, StoreMissingError

    settings = protocol.load(env_file=args.env_file)
    ref = handoff.parse_thread_link(args.link) if args.link else None
    if ref is None and args.link and args.channel:
        ref = (args.channel, args.link)
    if ref is None:
        return _fail("give the thread's link (in Slack: ⋮ → Copy link), or --channel C and the thread ts.", 1)
    channel, thread_ts = ref
    try:
        answer = bus.ask_bot(settings, {"op": "attach", "channel": channel, "thread_ts": thread_ts,
                                        "by": os.environ.get("SLACKBUS_USER") or getpass.getuser()}, timeout=10)
    except protocol.BusError as exc:
        return _fail(str(exc), 1)
    if answer is not None and not answer.get("ok"):
        return _fail(str(answer.get("error")), 1)
    if answer is None:  # no bot running here: its record still knows the thread
        try:
            with ReadOnlyStore.open(settings.db_path, timeout=2) as record:
                thread = record.thread(channel, thread_ts)
        except StoreMissingError:
            thread = None
        except StoreError as exc:
            return _fail(str(exc), 1)
        if thread is None or not thread.started:
            return _fail("this host's slackbus record does not know that thread: run this where the bot runs.", 1)
        answer = {"command": handoff.resume_command(thread.workdir, thread.session_id)}
    print(answer["command"])
    print("While it is open here, replies in the Slack thread wait; they continue the session when you exit.",
          file=sys.stderr)
    return 0


USAGE_COLUMNS = ("started_at", "run_id", "user", "channel", "thread_ts", "status", "turns", "cost_usd",
                 "duration_ms", "input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens", "model")


def cmd_usage(args: argparse.Namespace) -> int:
    """What runs cost, from this host's record (read-only; the bot may be running): CSV, one row per run, with
    --csv; else the totals by person and by channel."""
    import csv
    import time
    from datetime import UTC, datetime

    from bot.bridge import protocol
    from bot.core.store_readonly import ReadOnlyStore

    settings = protocol.load(env_file=args.env_file)
    try:
        if (args.since or "").strip().lower() == "today":
            since = float(int(time.time() // 86400 * 86400))  # UTC midnight
        else:
            since = float(protocol.parse_since(args.since) or 0.0)
    except protocol.BusError as exc:
        return _fail(str(exc).replace("10m, 2h, 1d", "today, 7d, 30d"), 2)
    try:
        with ReadOnlyStore.open(settings.db_path, timeout=5) as record:
            rows = record.usage_rows(since)
    except StoreError as exc:
        return _fail(str(exc), 1)
    if args.csv:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(USAGE_COLUMNS)
        for r in rows:
            out.writerow([datetime.fromtimestamp(r.started_at, UTC).isoformat(timespec="seconds"), r.run_id,
                          r.user or "", r.channel, r.thread_ts, r.status, r.num_turns, repr(r.cost_usd), r.duration_ms,
                          r.input_tokens, r.output_tokens, r.cache_read_tokens, r.cache_creation_tokens, r.model or ""])
        return 0
    from bot.core.usage import Tally, tally

    total = Tally()
    for r in rows:
        total.add(r)
    print(f"total: {total.line()}")
    for name, key in (("user", lambda r: r.user or "-"), ("channel", lambda r: r.channel)):
        for k, t in sorted(tally(rows, key).items(), key=lambda kv: -kv[1].cost):
            print(f"{name} {k}: {t.line()}")
    return 0


HANDOFF_MARK = "<!-- slackbus-hook -->"


def _write_handoff_command(path: Path, env_file: str | None) -> bool:
    """Claude Code's `/handoff [note]`: runs `slackbus handoff` for this session. Never overwrites someone's own."""
    import shlex

    from bot.bridge.shim import slackbus_argv

    argv = slackbus_argv() + (["--env-file", env_file] if env_file else [])
    body = (
        "---\n"
        "description: Hand this session over to a Slack thread (slackbus); replies there continue it\n"
        "argument-hint: [a note for whoever continues]\n"
        f"allowed-tools: Bash({shlex.join([*argv, 'handoff'])}:*)\n"
        "---\n"
        f"!`{shlex.join([*argv, 'handoff'])} --note \"$ARGUMENTS\"`\n\n"
        "Tell the user, in one sentence, what the hand-off above printed; if it worked, remind them to exit "
        f"Claude Code here so that replies in Slack can continue the session.\n{HANDOFF_MARK}\n"
    )
    if path.exists() and HANDOFF_MARK not in path.read_text(errors="replace"):
        return False
    if path.exists() and path.read_text() == body:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    return True


def _remove_handoff_command(path: Path) -> None:
    if path.exists() and HANDOFF_MARK in path.read_text(errors="replace"):
        path.unlink()
        if not any(path.parent.iterdir()):
            path.parent.rmdir()


def cmd_hooks(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bot.bridge import hooks_install

    try:
        path = hooks_install.settings_path(
            project=Path(args.project).expanduser() if args.project else None, user=args.user
        )
        command_file = path.parent / "commands" / "handoff.md"
        if args.uninstall:
            _remove_handoff_command(command_file)
            result = hooks_install.uninstall(path)
        else:
            channel = args.channel or os.environ.get("SLACKBUS_CHANNEL") or None
            events = [e.strip() for e in args.events.split(",") if e.strip()] if args.events else None
            tools = [t.strip() for t in (args.tools or "").split(",") if t.strip()]
            env_file = str(Path(args.env_file).resolve()) if args.env_file else None
            kwargs: dict[str, object] = {"tools": tools, "channel": channel, "env_file": env_file}
            if events:
                kwargs["events"] = events
            from bot.bridge.shim import slackbus_argv

            result = hooks_install.install(path, slackbus_argv(), **kwargs)  # type: ignore[arg-type]
            if _write_handoff_command(command_file, env_file):
                print(f"/handoff (hand this session to Slack) added as {command_file}")
    except ValueError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot write the settings file: {exc}")
    verb = "removed from" if args.uninstall else "installed in"
    if result.changed:
        names = ", ".join(result.removed if args.uninstall else result.added) or "hooks"
        print(f"slackbus hooks ({names}) {verb} {result.path}")
    else:
        print(f"{result.path}: nothing to change")
    if not args.uninstall and not (args.channel or os.environ.get("SLACKBUS_CHANNEL")):
        print("note: no channel given: set SLACKBUS_CHANNEL in the session's environment, or re-run with --channel.",
              file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(prog="slackbus", description="Claude Code in Slack, and Slack as a bus "
                                                                 "between Claude Code sessions.")
    parser.add_argument("--version", action="version", version=f"slackbus {__version__}")
    parser.add_argument("--env-file", default=None, help="settings file to read (default: .env, if present)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the bot (Socket Mode); settings from the environment and .env")
    run.add_argument("--local", action="store_true",
                     help="serve local channels (JSON-lines files under SLACKBUS_LOCAL_DIR) instead of Slack")
    run.set_defaults(func=cmd_run)
    console = sub.add_parser("console", help="chat with the bot in this terminal, on a local channel (no Slack)")
    console.add_argument("channel", nargs="?", default="general", help="the local channel (default: general)")
    console.add_argument("--user", help=argparse.SUPPRESS)  # kept for old scripts: you are your OS user now
    console.set_defaults(func=cmd_console)
    doctor = sub.add_parser("doctor", help="check the settings and the claude CLI, then exit")
    doctor.add_argument("--cli-only", action="store_true", help="only check that the claude CLI runs")
    doctor.set_defaults(func=cmd_doctor)

    hook = sub.add_parser("hook", help="run one Claude Code hook event (reads the hook's JSON on stdin)")
    hook.add_argument("event", help="SessionStart, Stop, SubagentStop, SessionEnd, PostToolUse, Notification, "
                                    "UserPromptSubmit")
    hook.add_argument("--channel", help="the channel (default: SLACKBUS_CHANNEL)")
    hook.set_defaults(func=cmd_hook)

    post = sub.add_parser("post", help="post a message to the channel, tagged with this session")
    post.add_argument("text", nargs="*", help="the message (- or nothing with a pipe: read stdin)")
    post.add_argument("--channel", help="channel id (default: SLACKBUS_CHANNEL)")
    post.add_argument("--thread", help="thread ts (default: SLACKBUS_THREAD_TS)")
    post.set_defaults(func=cmd_post)

    read = sub.add_parser("read", help="print the channel's recent history")
    read.add_argument("--channel", help="channel id or #name (default: SLACKBUS_CHANNEL)")
    read.add_argument("--thread", help="read this thread instead of the channel")
    read.add_argument("--since", help="only newer messages: 10m, 2h, 1d, a Slack ts or an ISO time")
    read.add_argument("--limit", type=int, default=50, help="at most this many messages (default 50)")
    read.add_argument("--json", action="store_true", help="JSON instead of text")
    read.set_defaults(func=cmd_read)

    handoff = sub.add_parser("handoff", help="hand this Claude Code session to a Slack thread (run it inside the "
                                             "session, or give --session and --cwd)")
    handoff.add_argument("--channel", help="where to post the hand-off (default: SLACKBUS_CHANNEL)")
    handoff.add_argument("--note", help="a note for whoever continues")
    handoff.add_argument("--session", help="the session id (default: the session open in this folder)")
    handoff.add_argument("--cwd", help="the session's folder (default: this one)")
    handoff.set_defaults(func=cmd_handoff)

    attach = sub.add_parser("attach", help="print the command that continues a Slack thread's session here")
    attach.add_argument("link", nargs="?", help="the thread's link (⋮ → Copy link), or its ts with --channel")
    attach.add_argument("--channel", help="the channel, when giving a thread ts instead of a link")
    attach.set_defaults(func=cmd_attach)

    usage = sub.add_parser("usage", help="what the runs cost, from this host's record (the bot may be running)")
    usage.add_argument("--csv", action="store_true", help="CSV on stdout, one row per run (for the books)")
    usage.add_argument("--since", help="only runs started since: today (UTC), 7d, 30d, 12h, epoch seconds or an ISO "
                                       "time (default: every run)")
    usage.set_defaults(func=cmd_usage)

    hooks = sub.add_parser("hooks", help="install slackbus's hooks into a Claude Code settings.json")
    hooks_sub = hooks.add_subparsers(dest="hooks_command", metavar="ACTION", required=True)
    install = hooks_sub.add_parser("install", help="merge the hook entries (idempotent); --uninstall removes ours")
    where = install.add_mutually_exclusive_group()
    where.add_argument("--project", metavar="DIR", help="DIR/.claude/settings.json (default: the current directory)")
    where.add_argument("--user", action="store_true", help="~/.claude/settings.json: every session of this user")
    install.add_argument("--channel", help="the channel the hooks post to and read (default: SLACKBUS_CHANNEL)")
    install.add_argument("--tools", help="also post a line per call of these tools (PostToolUse), e.g. Bash,Edit")
    install.add_argument("--events", help="hook events to install (default: SessionStart,Stop,SubagentStop,"
                                          "Notification,SessionEnd)")
    install.add_argument("--uninstall", action="store_true", help="remove exactly slackbus's entries")
    install.set_defaults(func=cmd_hooks)
    return parser


def _hook_fast_path(argv: list[str]) -> int | None:
    """`[--env-file F] hook EVENT [--channel C]` without argparse: hooks run once per event, start-up is latency."""
    env_file = None
    if argv[:1] == ["--env-file"] and len(argv) >= 2:
        env_file, argv = argv[1], argv[2:]
    if len(argv) < 2 or argv[0] != "hook" or argv[1].startswith("-"):
        return None
    channel = None
    if argv[2:4] and argv[2] == "--channel" and len(argv) == 4:
        channel = argv[3]
    elif len(argv) != 2:
        return None
    try:
        from bot.bridge import hooks
    except Exception as exc:  # a hook must never break the session, even a broken install
        print(f"slackbus hook {argv[1]}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 0
    return hooks.run(argv[1], env_file=env_file, channel=channel)


def main(argv: Sequence[str] | None = None) -> int:
    fast = _hook_fast_path(list(sys.argv[1:] if argv is None else argv))
    if fast is not None:
        return fast
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
