"""Fast checks of what the slow e2e tests cover only end to end: which folders a session may start in
(Settings.within_roots), what the `claude` child's environment holds, and how a thread's session is resumed
(`--resume`) or created (`--session-id`). No bot process, no real CLI: at most a stand-in `claude` that records
its argv and environment."""

from __future__ import annotations

import json
import os
import stat
import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from claude_agent_sdk._internal.transport.subprocess_cli import SubprocessCLITransport

from bot.app import Bot
from bot.config import Settings, child_environment, load_settings, scrub_process_environment
from bot.core.claude_runner import SessionSpec, _options
from bot.redact import secret_values

BOT_TOKEN = "xoxb-1111-2222-fastpathbot"
APP_TOKEN = "xapp-1-A111-2222-fastpathapp"
SESSION = "0b7f6a52-3c1e-4f59-9a55-2f1d7e0c9b11"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- Settings.within_roots ---------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp/
         roots/a/            a root: inside/, work/, and links: out -> outside, dangling -> outside/missing,
                             back -> inside, loop1 <-> loop2
         roots/a2/, roots/a-evil/   siblings whose names start with the root's
         roots/b -> real_b/  a root given as a link
         real_b/x/
         outside/secret/
    """
    base = tmp_path.resolve()
    for folder in ("roots/a/inside", "roots/a/work", "roots/a2/x", "roots/a-evil", "real_b/x", "outside/secret"):
        (base / folder).mkdir(parents=True)
    a = base / "roots" / "a"
    (a / "out").symlink_to(base / "outside")
    (a / "dangling").symlink_to(base / "outside" / "missing")
    (a / "back").symlink_to(a / "inside")
    (a / "loop1").symlink_to(a / "loop2")
    (a / "loop2").symlink_to(a / "loop1")
    (base / "roots" / "b").symlink_to(base / "real_b")
    return base


@pytest.fixture
def fake_cli(tmp_path: Path) -> Path:
    """A stand-in `claude`: writes its argv, working folder and environment to argv.json next to it, then exits."""
    folder = tmp_path / "bin"
    folder.mkdir()
    cli = folder / "claude"
    out = folder / "argv.json"
    cli.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"open({str(out)!r} + '.tmp', 'w').write(json.dumps("
        "{'argv': sys.argv[1:], 'cwd': os.getcwd(), 'env': dict(os.environ)}))\n"
        f"os.replace({str(out)!r} + '.tmp', {str(out)!r})\n"
    )
    cli.chmod(cli.stat().st_mode | stat.S_IXUSR)
    return folder


def base_env(tmp_path: Path, fake_cli: Path, work: Path) -> dict[str, str]:
    return {
        "PATH": f"{fake_cli}{os.pathsep}/usr/bin:/bin",
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_APP_TOKEN": APP_TOKEN,
        "SLACKBUS_ALLOWED_USERS": "U012ABCDEF",
        "SLACKBUS_HOME": str(tmp_path / "state"),
        "SLACKBUS_WORKDIR": str(work),
        "SLACKBUS_ENV_FILE": str(tmp_path / "no.env"),
    }


@pytest.fixture
def rooted(tmp_path: Path, tree: Path, fake_cli: Path) -> Settings:
    """Settings as load_settings makes them, with two roots: roots/a, and roots/b (a link to real_b)."""
    env = base_env(tmp_path, fake_cli, tree / "roots" / "a" / "work")
    env["SLACKBUS_ROOTS"] = f"{tree / 'roots' / 'a'},{tree / 'roots' / 'b'}"
    return load_settings(env)


def test_roots_are_kept_as_real_paths(rooted, tree):
    assert rooted.roots == (tree / "roots" / "a", tree / "real_b")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("roots/a", "roots/a"),  # the root itself
        ("roots/a/inside", "roots/a/inside"),
        ("roots/a/inside/", "roots/a/inside"),
        ("roots/a/inside/not/made/yet", "roots/a/inside/not/made/yet"),  # existence is the caller's check
        ("roots/a/inside/..", "roots/a"),
        ("roots/a/../a/inside", "roots/a/inside"),  # a `..` that comes back in
        ("roots/a/missing/../inside", "roots/a/inside"),
        ("roots/a/back", "roots/a/inside"),  # a link inside the root to inside it: its real path
        ("roots/a/back/deeper", "roots/a/inside/deeper"),
        ("roots/b", "real_b"),  # a root given as a link: through the link ...
        ("roots/b/x", "real_b/x"),
        ("real_b/x", "real_b/x"),  # ... or by its real path
        ("roots/b/new", "real_b/new"),
    ],
)
def test_a_path_under_a_root_is_given_back_as_its_real_path(rooted, tree, path, expected):
    assert rooted.within_roots(tree / path) == tree / expected


@pytest.mark.parametrize(
    "path",
    [
        "outside",
        "outside/secret",
        "outside/not-there",
        "roots",  # the parent of the roots
        "roots/a2/x",  # siblings whose names merely start with the root's name
        "roots/a-evil",
        "roots/a/..",
        "roots/a/inside/../../a2",
        "roots/a/../../outside/secret",  # `..` escapes
        "roots/a/inside/../../../outside",
        "roots/a/missing/../../../outside",
        "roots/a/out",  # a link inside a root to a folder outside it ...
        "roots/a/out/secret",  # ... and whatever is under it
        "roots/a/out/new-file",
        "roots/a/dangling",  # a dangling link out: writing through it would land outside
        "roots/a/dangling/deeper",
        "roots/b/..",  # a link's `..` is its target's parent
        "roots/b/../real_b/../outside",
    ],
)
def test_a_path_outside_every_root_is_refused(rooted, tree, path):
    assert rooted.within_roots(tree / path) is None


def test_a_relative_path_is_taken_from_the_current_folder(rooted, tree, monkeypatch):
    monkeypatch.chdir(tree / "roots" / "a")
    assert rooted.within_roots(Path("inside")) == tree / "roots" / "a" / "inside"
    assert rooted.within_roots(Path("out/secret")) is None
    monkeypatch.chdir(tree / "outside")
    assert rooted.within_roots(Path("secret")) is None
    assert rooted.within_roots(Path("../roots/b/x")) == tree / "real_b" / "x"


def test_a_tilde_is_the_home_folder(rooted, tree, monkeypatch):
    monkeypatch.setenv("HOME", str(tree / "roots" / "a"))
    assert rooted.within_roots(Path("~/inside")) == tree / "roots" / "a" / "inside"
    monkeypatch.setenv("HOME", str(tree / "outside"))
    assert rooted.within_roots(Path("~/secret")) is None


def test_a_symlink_loop_is_refused(rooted, tree):
    assert rooted.within_roots(tree / "roots" / "a" / "loop1") is None


# --- the child's environment ---------------------------------------------------------------------------------------

KEPT = {
    "PATH": "/opt/tools/bin:/usr/bin:/bin",
    "HOME": "/home/operator",
    "LANG": "C.UTF-8",
    "ANTHROPIC_API_KEY": "sk-ant-api03-child-needs-this-key",
    "ANTHROPIC_BASE_URL": "http://127.0.0.1:9/",
    "ANTHROPIC_AUTH_TOKEN": "child-needs-this-auth-token",
    "CLAUDE_CODE_USE_BEDROCK": "1",
    "GITHUB_TOKEN": "ghp_the-tools-may-need-this",  # not a Slack secret: the child's tools may use it
    "SLACK_API_URL": "http://127.0.0.1:1/api/",
    "SLACKBUS_HOME": "/srv/slackbus",
    "SLACKBUS_MAX_CONCURRENT": "3",
}
SECRETS = {
    "SLACK_BOT_TOKEN": BOT_TOKEN,
    "SLACK_APP_TOKEN": APP_TOKEN,
    "SLACK_USER_TOKEN": "xoxp-user-token-0000",
    "SLACK_SIGNING_SECRET": "signing-secret-value-1234",
    "SLACK_CLIENT_SECRET": "client-secret-value-5678",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/XYZXYZXYZ",
    "SLACK_CONFIG_REFRESH_TOKEN": "xoxe-1-refresh-token-value",
    "SLACK_refresh_token": "lower-case-is-still-a-token",
    "SLACK_ADMIN_PASSWORD": "hunter2-hunter2",
    "SLACK_ALERTS_WEBHOOK": "https://hooks.slack.com/services/T1/B1/ABCABCABC",
    "SLACKBUS_WEBHOOK_SECRET": "slackbus-webhook-secret-1",
    "SLACKBUS_DB_PASSWORD": "slackbus-db-password-2",
    "SLACKBUS_RELAY_TOKEN": "slackbus-relay-token-3",
}
NESTING = {"CLAUDECODE": "1", "CLAUDE_CODE_ENTRYPOINT": "cli", "CLAUDE_CODE_SSE_PORT": "40404"}
HOSTILE = {**KEPT, **SECRETS, **NESTING}


def test_child_environment_keeps_what_the_child_needs_and_nothing_secret():
    assert child_environment(HOSTILE) == KEPT


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_each_slack_secret_is_dropped_on_its_own(name):
    assert child_environment({"PATH": "/bin", name: SECRETS[name]}) == {"PATH": "/bin"}


def test_every_slack_variable_the_redactor_masks_is_dropped():
    """What bot.redact treats as a secret (by its name) in the Slack namespace never reaches the child."""
    masked = set(secret_values({k: v for k, v in HOSTILE.items() if k.startswith("SLACK")}))
    assert masked == set(SECRETS.values())  # the test's list is the redactor's view, value for value
    assert masked.isdisjoint(child_environment(HOSTILE).values())


@pytest.mark.parametrize("name", ["SLACK_API_KEY", "SLACKBUS_PRIVATE_KEY"])
def test_a_slack_key_the_redactor_masks_is_dropped_too(name):
    assert secret_values({name: "a-key-value-1234"}) == ["a-key-value-1234"]
    assert name not in child_environment({name: "a-key-value-1234"})


@pytest.fixture
def restore_environ() -> Iterator[None]:
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_scrubbing_the_process_environment_removes_exactly_the_secrets_and_nesting_markers(restore_environ):
    os.environ.update(HOSTILE)
    before = dict(os.environ)
    scrub_process_environment()
    gone = set(before) - set(os.environ)
    assert gone == set(SECRETS) | set(NESTING) | {k for k in before if k not in HOSTILE and k not in
                                                  child_environment(before)}
    for name, value in KEPT.items():
        assert os.environ[name] == value


@pytest.fixture
def hostile_bot(tmp_path: Path, fake_cli: Path, restore_environ: None) -> Iterator[Bot]:
    """A Bot whose settings were loaded from a hostile environment, in a process whose environ held the same
    secrets and was then scrubbed, as `slackbus run` does."""
    work = tmp_path / "work"
    env = {**HOSTILE, **base_env(tmp_path, fake_cli, work), "HOME": str(tmp_path / "home")}
    os.environ.update(env)
    settings = load_settings(env)
    scrub_process_environment()
    bot = Bot(settings)
    yield bot
    bot.close()


def check_no_secret(env: dict[str, str]) -> None:
    for name in (*SECRETS, *NESTING):
        if name == "CLAUDE_CODE_ENTRYPOINT":
            continue  # the SDK sets its own ("sdk-py"); checked apart
        assert name not in env, name
    values = "\n".join(env.values())
    for value in SECRETS.values():
        assert value not in values


@pytest.mark.parametrize("resume", [False, True])
def test_the_session_spec_env_has_no_secret_and_what_the_session_needs(hostile_bot, tmp_path, fake_cli, resume):
    spec = hostile_bot.session_spec(tmp_path / "work", SESSION, resume, ("C042", "1700000000.000100"))
    env = dict(spec.env)
    check_no_secret(env)
    assert "CLAUDE_CODE_ENTRYPOINT" not in env
    assert env["HOME"] == str(tmp_path / "home")
    assert env["PATH"] == f"{tmp_path / 'state' / 'bin'}{os.pathsep}{fake_cli}{os.pathsep}/usr/bin:/bin"
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN", "GITHUB_TOKEN", "LANG"):
        assert env[name] == KEPT[name], name
    assert (env["SLACKBUS_SPAWNED"], env["SLACKBUS_SESSION_ID"], env["SLACKBUS_HOME"]) == (
        "1", SESSION, str(tmp_path / "state"))
    assert (env["SLACKBUS_CHANNEL"], env["SLACKBUS_THREAD_TS"]) == ("C042", "1700000000.000100")
    assert (spec.session_id, spec.resume, spec.cwd) == (SESSION, resume, (tmp_path / "work").resolve())


def test_a_pooled_spec_names_no_thread(hostile_bot, tmp_path):
    env = dict(hostile_bot.session_spec(tmp_path / "work", SESSION, False).env)
    assert "SLACKBUS_CHANNEL" not in env and "SLACKBUS_THREAD_TS" not in env
    assert env["SLACKBUS_SESSION_ID"] == SESSION


# --- --resume or --session-id ----------------------------------------------------------------------------------------


def spec(tmp_path: Path, resume: bool) -> SessionSpec:
    return SessionSpec(cwd=tmp_path, session_id=SESSION, resume=resume, cli_path="/opt/claude",
                       env={"PATH": "/bin", "HOME": "/home/x"})


@pytest.mark.parametrize(
    ("resume", "expected"),
    [(True, {"resume": SESSION, "session_id": None}), (False, {"resume": None, "session_id": SESSION})],
)
def test_the_options_resume_a_thread_or_create_its_session(tmp_path, resume, expected):
    options = _options(spec(tmp_path, resume), deque())
    assert {"resume": options.resume, "session_id": options.session_id} == expected
    assert options.continue_conversation is False and options.fork_session is False
    assert (options.cli_path, options.cwd, options.env) == ("/opt/claude", str(tmp_path),
                                                            {"PATH": "/bin", "HOME": "/home/x"})


def session_flags(argv: list[str]) -> list[str]:
    return [a for a in argv if a.startswith(("--resume", "--session-id", "--continue", "--fork-session"))]


@pytest.mark.parametrize(
    ("resume", "expected"), [(True, [f"--resume={SESSION}"]), (False, [f"--session-id={SESSION}"])]
)
def test_the_cli_argv_has_resume_or_session_id_never_both(tmp_path, resume, expected):
    argv = SubprocessCLITransport(prompt="", options=_options(spec(tmp_path, resume), deque()))._build_command()
    assert argv[0] == "/opt/claude"
    assert session_flags(argv) == expected
    assert SESSION not in argv  # only in the `--flag=value` form: a value can never be read as a flag of its own


@pytest.mark.anyio
@pytest.mark.parametrize("resume", [False, True])
async def test_the_claude_child_really_gets_that_argv_and_a_clean_environment(hostile_bot, tmp_path, fake_cli,
                                                                              resume):
    """Through the SDK's own spawn (it merges os.environ under the options' env), into a stand-in `claude`."""
    spec = hostile_bot.session_spec(tmp_path / "work", SESSION, resume, ("C042", "1700000000.000100"))
    transport = SubprocessCLITransport(prompt="", options=_options(spec, deque()))
    out = fake_cli / "argv.json"
    await transport.connect()
    try:
        with anyio.fail_after(15):
            async for message in transport.read_messages():  # the stand-in prints nothing: this waits for its exit
                raise AssertionError(f"unexpected output {message}")
    finally:
        await transport.close()
    seen = json.loads(out.read_text())
    assert seen["cwd"] == str((tmp_path / "work").resolve())
    assert session_flags(seen["argv"]) == [f"--resume={SESSION}" if resume else f"--session-id={SESSION}"]
    env = seen["env"]
    check_no_secret(env)
    assert env["CLAUDE_CODE_ENTRYPOINT"] == "sdk-py"  # the SDK's own, not the parent session's "cli"
    assert (env["SLACKBUS_SESSION_ID"], env["SLACKBUS_CHANNEL"]) == (SESSION, "C042")
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN", "GITHUB_TOKEN"):
        assert env[name] == KEPT[name], name
    assert env["HOME"] == str(tmp_path / "home")
    assert env["PATH"].split(os.pathsep)[:2] == [str(tmp_path / "state" / "bin"), str(fake_cli)]
