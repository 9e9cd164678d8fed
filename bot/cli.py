"""`slackbus` command line: run the bot, check the set-up."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence

import anyio

from bot import __version__
from bot.errors import ConfigError, StoreError


def _fail(message: str, code: int = 2) -> int:
    print(f"slackbus: {message}", file=sys.stderr)
    return code


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


def cmd_run(args: argparse.Namespace) -> int:
    from bot.app import Bot
    from bot.config import load_settings, read_environment, scrub_process_environment, secret_values
    from bot.log import configure_logging
    from bot.redact import redactor

    try:
        settings = load_settings(env_file=args.env_file)
        redactor.add(settings.slack_bot_token, settings.slack_app_token)
        redactor.add(*secret_values(read_environment(env_file=args.env_file)))
        scrub_process_environment()
        configure_logging(settings.log_level, settings.log_format)
        check_cli(settings.claude_cli_path)
        bot = Bot(settings)
    except (ConfigError, StoreError) as exc:
        return _fail(str(exc))
    try:
        anyio.run(bot.serve)
    except (ConfigError, StoreError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        pass
    finally:
        bot.close()
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from bot import doctor

    return doctor.run(args.env_file, cli_only=args.cli_only)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slackbus", description="Claude Code in Slack, and Slack as a bus "
                                                                 "between Claude Code sessions.")
    parser.add_argument("--version", action="version", version=f"slackbus {__version__}")
    parser.add_argument("--env-file", default=None, help="settings file to read (default: .env, if present)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the bot (Socket Mode); settings from the environment and .env")
    run.set_defaults(func=cmd_run)
    doctor = sub.add_parser("doctor", help="check the settings and the claude CLI, then exit")
    doctor.add_argument("--cli-only", action="store_true", help="only check that the claude CLI runs")
    doctor.set_defaults(func=cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
