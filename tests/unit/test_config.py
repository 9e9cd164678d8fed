"""config.load_settings: every problem is one ConfigError sentence naming the variable to set."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from bot import config
from bot.config import DEFAULT_SLACK_API_URL, load_settings, parse_allowed_users
from bot.errors import ConfigError
from bot.request_options import RequestOptions

BOT_TOKEN = "xoxb-1111-2222-abcdefgh"
APP_TOKEN = "xapp-1-A111-2222-abcdefgh"


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    """A folder holding an executable `claude` (a tiny shell script), to be used as PATH."""
    folder = tmp_path / "bin"
    folder.mkdir()
    cli = folder / "claude"
    cli.write_text("#!/bin/sh\necho fake claude\n")
    cli.chmod(cli.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder


@pytest.fixture
def no_env_file(tmp_path: Path) -> str:
    return str(tmp_path / "does-not-exist.env")


@pytest.fixture
def base_env(tmp_path: Path, fake_bin: Path) -> dict[str, str]:
    return {
        "PATH": str(fake_bin),
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_APP_TOKEN": APP_TOKEN,
        "SLACKBUS_ALLOWED_USERS": "U012ABCDEF,U034GHIJKL",
        "SLACKBUS_HOME": str(tmp_path / "state"),
        "SLACKBUS_WORKDIR": str(tmp_path / "work"),
    }


def load(env: dict[str, str], env_file: str) -> config.Settings:
    return load_settings(env=env, env_file=env_file)


# --- tokens ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["SLACK_BOT_TOKEN", "SLACK_APP_TOKEN"])
def test_a_missing_token_is_a_sentence_naming_the_variable(base_env, no_env_file, name):
    del base_env[name]
    with pytest.raises(ConfigError, match=rf"^{name} is not set") as info:
        load(base_env, no_env_file)
    assert str(info.value).endswith(".")


@pytest.mark.parametrize("name", ["SLACK_BOT_TOKEN", "SLACK_APP_TOKEN"])
def test_a_blank_token_counts_as_missing(base_env, no_env_file, name):
    base_env[name] = "   "
    with pytest.raises(ConfigError, match=rf"^{name} is not set"):
        load(base_env, no_env_file)


@pytest.mark.parametrize(
    ("name", "value", "prefix"),
    [
        ("SLACK_BOT_TOKEN", "xoxp-user-token-not-a-bot-token", "xoxb-"),
        ("SLACK_BOT_TOKEN", "xoxb-1", "xoxb-"),  # the right prefix but far too short
        ("SLACK_APP_TOKEN", BOT_TOKEN, "xapp-"),  # the bot token pasted in the wrong place
    ],
)
def test_a_malformed_token_is_named_without_echoing_it(base_env, no_env_file, name, value, prefix):
    base_env[name] = value
    with pytest.raises(ConfigError) as info:
        load(base_env, no_env_file)
    message = str(info.value)
    assert message.startswith(f"{name} does not look like")
    assert prefix in message
    assert value not in message  # at most the first few characters are shown


def test_tokens_are_kept_but_not_shown_in_the_repr(base_env, no_env_file):
    settings = load(base_env, no_env_file)
    assert settings.slack_bot_token == BOT_TOKEN
    assert settings.slack_app_token == APP_TOKEN
    assert BOT_TOKEN not in repr(settings)
    assert APP_TOKEN not in repr(settings)


# --- SLACK_API_URL ----------------------------------------------------------------------------------


def test_slack_api_url_defaults_to_slack(base_env, no_env_file):
    assert load(base_env, no_env_file).slack_api_url == DEFAULT_SLACK_API_URL == "https://slack.com/api/"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("http://127.0.0.1:8080/api", "http://127.0.0.1:8080/api/"),
        ("http://127.0.0.1:8080/api/", "http://127.0.0.1:8080/api/"),
        ("  https://example.test/api  ", "https://example.test/api/"),
    ],
)
def test_slack_api_url_gets_one_trailing_slash(base_env, no_env_file, raw, expected):
    base_env["SLACK_API_URL"] = raw
    assert load(base_env, no_env_file).slack_api_url == expected


def test_slack_api_url_must_be_http(base_env, no_env_file):
    base_env["SLACK_API_URL"] = "ftp://slack.com/api/"
    with pytest.raises(ConfigError, match=r"^SLACK_API_URL must be an http\(s\) URL"):
        load(base_env, no_env_file)


# --- the claude CLI -----------------------------------------------------------------------------------


def test_claude_is_found_on_path(base_env, no_env_file, fake_bin):
    assert load(base_env, no_env_file).claude_cli_path == str(fake_bin / "claude")


def test_claude_cli_path_to_a_valid_executable_is_used(base_env, no_env_file, tmp_path):
    other = tmp_path / "elsewhere" / "my-claude"
    other.parent.mkdir()
    other.write_text("#!/bin/sh\nexit 0\n")
    other.chmod(0o755)
    base_env["CLAUDE_CLI_PATH"] = str(other)
    assert load(base_env, no_env_file).claude_cli_path == str(other)


def test_claude_cli_path_may_be_a_name_on_path(base_env, no_env_file, fake_bin):
    base_env["CLAUDE_CLI_PATH"] = "claude"
    assert load(base_env, no_env_file).claude_cli_path == str(fake_bin / "claude")


def test_claude_cli_path_to_a_missing_file(base_env, no_env_file, tmp_path):
    missing = tmp_path / "nowhere" / "claude"
    base_env["CLAUDE_CLI_PATH"] = str(missing)
    with pytest.raises(ConfigError) as info:
        load(base_env, no_env_file)
    assert str(info.value).startswith(f"CLAUDE_CLI_PATH={missing} does not exist")


def test_claude_cli_path_to_a_file_that_is_not_executable(base_env, no_env_file, tmp_path):
    plain = tmp_path / "claude.txt"
    plain.write_text("not a program\n")
    plain.chmod(0o644)
    base_env["CLAUDE_CLI_PATH"] = str(plain)
    with pytest.raises(ConfigError) as info:
        load(base_env, no_env_file)
    assert str(info.value).startswith(f"CLAUDE_CLI_PATH={plain} is not executable")
    assert "chmod +x" in str(info.value)


def test_without_claude_on_path_the_bundled_cli_is_used(base_env, no_env_file, tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    base_env["PATH"] = str(empty)
    bundled = tmp_path / "sdk" / "_bundled" / "claude"
    bundled.parent.mkdir(parents=True)
    bundled.write_text("#!/bin/sh\nexit 0\n")
    bundled.chmod(0o755)
    monkeypatch.setattr(config, "bundled_cli_path", lambda: str(bundled))
    assert load(base_env, no_env_file).claude_cli_path == str(bundled)

    bundled.chmod(0o644)  # a bundled CLI that cannot run is no fallback
    with pytest.raises(ConfigError, match="was not found"):
        load(base_env, no_env_file)


def test_without_any_claude_the_error_says_how_to_install_it(base_env, no_env_file, tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    base_env["PATH"] = str(empty)
    monkeypatch.setattr(config, "bundled_cli_path", lambda: None)
    with pytest.raises(ConfigError) as info:
        load(base_env, no_env_file)
    assert "(`claude`) was not found" in str(info.value)
    assert "CLAUDE_CLI_PATH" in str(info.value)


# --- SLACKBUS_ALLOWED_USERS --------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, "", "  ", " , ", ",,,"])
def test_allowed_users_unset_refuses_to_start(base_env, no_env_file, raw):
    if raw is None:
        del base_env["SLACKBUS_ALLOWED_USERS"]
    else:
        base_env["SLACKBUS_ALLOWED_USERS"] = raw
    with pytest.raises(ConfigError, match=r"^SLACKBUS_ALLOWED_USERS"):
        load(base_env, no_env_file)


def test_allowed_users_star_allows_everyone(base_env, no_env_file):
    base_env["SLACKBUS_ALLOWED_USERS"] = "*"
    settings = load(base_env, no_env_file)
    assert settings.allowed_users == frozenset({"*"})
    assert settings.is_allowed("U999ANYONE")
    assert settings.is_allowed("W123")


def test_allowed_users_list_is_trimmed_and_exact(base_env, no_env_file):
    base_env["SLACKBUS_ALLOWED_USERS"] = " U012ABCDEF , W034GHIJKL,,"
    settings = load(base_env, no_env_file)
    assert settings.allowed_users == frozenset({"U012ABCDEF", "W034GHIJKL"})
    assert settings.is_allowed("U012ABCDEF")
    assert settings.is_allowed("W034GHIJKL")
    assert not settings.is_allowed("U999OTHER")
    assert not settings.is_allowed("U012ABCDE")  # a prefix is not a match


@pytest.mark.parametrize("bad", ["bob", "u012abcdef", "@U012ABCDEF", "C012ABCDEF", "U012-ABC"])
def test_allowed_users_invalid_id_is_named(bad):
    with pytest.raises(ConfigError) as info:
        parse_allowed_users(f"U012ABCDEF,{bad}")
    assert str(info.value).startswith("SLACKBUS_ALLOWED_USERS holds")
    assert repr(bad) in str(info.value)


# --- numbers ------------------------------------------------------------------------------------------


def test_number_defaults(base_env, no_env_file):
    settings = load(base_env, no_env_file)
    assert settings.max_concurrent == 4
    assert settings.run_timeout == 1800.0
    assert settings.context_messages == 40
    assert settings.context_chars == 12000
    assert (settings.warm_pool, settings.warm_pool_max) == (1, 2)


@pytest.mark.parametrize(("pool", "expected_max"), [("0", 0), ("3", 4)])
def test_the_pool_may_grow_by_one_unless_it_is_off(base_env, no_env_file, pool, expected_max):
    settings = load(base_env | {"SLACKBUS_WARM_POOL": pool}, no_env_file)
    assert settings.warm_pool_max == expected_max


def test_numbers_are_read(base_env, no_env_file):
    base_env |= {
        "SLACKBUS_MAX_CONCURRENT": " 7 ",
        "SLACKBUS_RUN_TIMEOUT": "12.5",
        "SLACKBUS_CONTEXT_MESSAGES": "0",
        "SLACKBUS_CONTEXT_CHARS": "500",
    }
    settings = load(base_env, no_env_file)
    assert settings.max_concurrent == 7
    assert settings.run_timeout == 12.5
    assert settings.context_messages == 0
    assert settings.context_chars == 500


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("SLACKBUS_MAX_CONCURRENT", "four", "SLACKBUS_MAX_CONCURRENT must be a whole number"),
        ("SLACKBUS_MAX_CONCURRENT", "2.5", "SLACKBUS_MAX_CONCURRENT must be a whole number"),
        ("SLACKBUS_MAX_CONCURRENT", "0", "SLACKBUS_MAX_CONCURRENT must be at least 1"),
        ("SLACKBUS_MAX_CONCURRENT", "-3", "SLACKBUS_MAX_CONCURRENT must be at least 1"),
        ("SLACKBUS_RUN_TIMEOUT", "soon", "SLACKBUS_RUN_TIMEOUT must be a number of seconds"),
        ("SLACKBUS_RUN_TIMEOUT", "0", "SLACKBUS_RUN_TIMEOUT must be greater than 0"),
        ("SLACKBUS_RUN_TIMEOUT", "-1", "SLACKBUS_RUN_TIMEOUT must be greater than 0"),
        ("SLACKBUS_CONTEXT_MESSAGES", "-1", "SLACKBUS_CONTEXT_MESSAGES must be at least 0"),
        ("SLACKBUS_WARM_POOL_MAX", "0", r"SLACKBUS_WARM_POOL_MAX \(0\) must be at least SLACKBUS_WARM_POOL \(1\)"),
    ],
)
def test_bad_numbers_are_named(base_env, no_env_file, name, value, expected):
    base_env[name] = value
    with pytest.raises(ConfigError, match=rf"^{expected}"):
        load(base_env, no_env_file)


def test_run_timeout_nan_is_refused(base_env, no_env_file):
    base_env["SLACKBUS_RUN_TIMEOUT"] = "nan"
    with pytest.raises(ConfigError, match=r"^SLACKBUS_RUN_TIMEOUT"):
        load(base_env, no_env_file)


# --- .env --------------------------------------------------------------------------------------------


def test_env_file_values_are_read_and_the_environment_wins(base_env, tmp_path):
    env_file = tmp_path / "test.env"
    env_file.write_text(
        "SLACKBUS_MAX_CONCURRENT=9\n"
        "SLACKBUS_MODEL=from-dotenv\n"
        "SLACKBUS_TEST_ONLY_FROM_DOTENV=yes\n"
        "SLACK_BOT_TOKEN=xoxb-from-dotenv-000000\n"
    )
    base_env["SLACKBUS_MAX_CONCURRENT"] = "2"
    settings = load_settings(env=base_env, env_file=str(env_file))
    assert settings.max_concurrent == 2  # the environment wins
    assert settings.model == "from-dotenv"  # only .env set it
    assert settings.slack_bot_token == BOT_TOKEN
    assert settings.child_env["SLACKBUS_TEST_ONLY_FROM_DOTENV"] == "yes"
    assert "SLACKBUS_TEST_ONLY_FROM_DOTENV" not in os.environ  # .env never reaches os.environ


def test_tokens_may_come_from_the_env_file_only(base_env, tmp_path):
    env_file = tmp_path / "tokens.env"
    env_file.write_text(f"SLACK_BOT_TOKEN={BOT_TOKEN}\nSLACK_APP_TOKEN='{APP_TOKEN}'\n")
    del base_env["SLACK_BOT_TOKEN"], base_env["SLACK_APP_TOKEN"]
    settings = load_settings(env=base_env, env_file=str(env_file))
    assert (settings.slack_bot_token, settings.slack_app_token) == (BOT_TOKEN, APP_TOKEN)
    assert "SLACK_BOT_TOKEN" not in settings.child_env
    assert "SLACK_APP_TOKEN" not in settings.child_env


def test_slackbus_env_file_names_the_file(base_env, tmp_path):
    env_file = tmp_path / "named.env"
    env_file.write_text("SLACKBUS_MODEL=named-file\n")
    base_env["SLACKBUS_ENV_FILE"] = str(env_file)
    assert load_settings(env=base_env).model == "named-file"


# --- the child's environment ----------------------------------------------------------------------------


def test_child_env_drops_slack_secrets_and_nesting_markers(base_env, tmp_path):
    env_file = tmp_path / "child.env"
    env_file.write_text("ANTHROPIC_BASE_URL=http://127.0.0.1:9/\nSLACK_SIGNING_SECRET=from-dotenv-secret\n")
    base_env |= {
        "SLACK_USER_TOKEN": "xoxp-user-000000",
        "SLACK_CLIENT_SECRET": "client-secret-value",
        "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/X",
        "SLACK_EXTRA_TOKEN_2": "xoxe-something",
        "SLACK_refresh_token": "lowercase-still-a-token",
        "SLACKBUS_WEBHOOK_SECRET": "shh",
        "CLAUDECODE": "1",
        "CLAUDE_CODE_ENTRYPOINT": "cli",
        "CLAUDE_CODE_SSE_PORT": "12345",
        "ANTHROPIC_API_KEY": "sk-ant-api-key-for-the-child",
        "ANTHROPIC_AUTH_TOKEN": "kept-for-the-child",
        "SLACK_API_URL": "http://127.0.0.1:1/api/",
        "HOME": "/home/someone",
    }
    child = load_settings(env=base_env, env_file=str(env_file)).child_env
    for gone in (
        "SLACK_BOT_TOKEN",
        "SLACK_APP_TOKEN",
        "SLACK_USER_TOKEN",
        "SLACK_CLIENT_SECRET",
        "SLACK_SIGNING_SECRET",
        "SLACK_WEBHOOK_URL",
        "SLACK_EXTRA_TOKEN_2",
        "SLACK_refresh_token",
        "SLACKBUS_WEBHOOK_SECRET",
        "CLAUDECODE",
        "CLAUDE_CODE_ENTRYPOINT",
        "CLAUDE_CODE_SSE_PORT",
    ):
        assert gone not in child, gone
    assert child["ANTHROPIC_API_KEY"] == "sk-ant-api-key-for-the-child"
    assert child["ANTHROPIC_AUTH_TOKEN"] == "kept-for-the-child"
    assert child["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9/"
    assert child["PATH"] == base_env["PATH"]
    assert child["HOME"] == "/home/someone"
    assert child["SLACK_API_URL"] == "http://127.0.0.1:1/api/"
    assert BOT_TOKEN not in child.values()
    assert APP_TOKEN not in child.values()


# --- folders -------------------------------------------------------------------------------------------


def test_home_and_workdir_are_created(base_env, no_env_file, tmp_path):
    base_env["SLACKBUS_HOME"] = str(tmp_path / "a" / "b" / "home")
    base_env["SLACKBUS_WORKDIR"] = str(tmp_path / "c" / "work")
    settings = load(base_env, no_env_file)
    assert settings.home == (tmp_path / "a" / "b" / "home").resolve()
    assert settings.workdir == (tmp_path / "c" / "work").resolve()
    assert settings.home.is_dir()
    assert settings.workdir.is_dir()
    assert settings.db_path == settings.home / "slackbus.db"


def test_workdir_defaults_to_a_folder_in_home(base_env, no_env_file, tmp_path):
    del base_env["SLACKBUS_WORKDIR"]
    settings = load(base_env, no_env_file)
    assert settings.workdir == (tmp_path / "state" / "workspace").resolve()
    assert settings.workdir.is_dir()


def test_home_that_cannot_be_created_is_named(base_env, no_env_file, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    base_env["SLACKBUS_HOME"] = str(blocker / "home")
    with pytest.raises(ConfigError, match=r"^SLACKBUS_HOME=.* cannot be created"):
        load(base_env, no_env_file)


# --- the rest -------------------------------------------------------------------------------------------


def test_log_format_and_tool_lists(base_env, no_env_file):
    base_env |= {
        "SLACKBUS_LOG_FORMAT": "Console",
        "SLACKBUS_LOG_LEVEL": "DEBUG",
        "SLACKBUS_ALLOWED_TOOLS": "Read, Bash(git diff:*, git log:*) ,Edit",
        "SLACKBUS_DISALLOWED_TOOLS": "WebFetch",
    }
    settings = load(base_env, no_env_file)
    assert settings.log_format == "console"
    assert settings.log_level == "debug"
    assert settings.allowed_tools == ("Read", "Bash(git diff:*, git log:*)", "Edit")
    assert settings.disallowed_tools == ("WebFetch",)
    assert settings.model is None


def test_unknown_log_format_is_named(base_env, no_env_file):
    base_env["SLACKBUS_LOG_FORMAT"] = "xml"
    with pytest.raises(ConfigError, match=r"^SLACKBUS_LOG_FORMAT must be json or console"):
        load(base_env, no_env_file)


# --- repositories, models, worktrees (issue 14) ------------------------------------------------------------------


def one_sentence(message: str) -> bool:
    return message.endswith(".") and not re.search(r"[.!?] +[A-Z]", message)


def refused(env: dict[str, str], env_file: str, start: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(env, env_file)
    message = str(info.value)
    assert message.startswith(start), message
    assert one_sentence(message), message
    return message


@pytest.fixture
def srv(tmp_path: Path, base_env: dict[str, str]) -> Path:
    """A root holding the workdir and the repositories api, web and team/tools; a folder and a link outside it."""
    root = tmp_path / "srv"
    for name in ("work", "api", "web", "team/tools"):
        (root / name).mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (root / "escape").symlink_to(tmp_path / "secret")
    base_env |= {"SLACKBUS_ROOTS": str(root), "SLACKBUS_WORKDIR": str(root / "work")}
    return root


def with_config(base_env: dict[str, str], tmp_path: Path, toml: str) -> dict[str, str]:
    path = tmp_path / "slackbus.toml"
    path.write_text(toml)
    return base_env | {"SLACKBUS_CONFIG": str(path)}


def test_the_new_settings_have_their_defaults(base_env, no_env_file):
    settings = load(base_env, no_env_file)
    assert settings.repos == {}
    assert settings.models is None
    assert settings.worktrees is True
    assert settings.worktree_ttl == 7 * 86400
    assert settings.pr_command is None
    assert settings.channel_defaults == {}
    assert settings.channel_defaults_for("C1") == RequestOptions()


def test_repos_are_read_from_the_environment_and_the_config_file(base_env, no_env_file, srv, tmp_path):
    env = with_config(base_env, tmp_path, f'[repos]\nweb = "{srv / "web"}"\napi = "/nowhere-overridden"\n')
    env["SLACKBUS_REPOS"] = f" api={srv / 'api'} , tools=team/tools,"
    settings = load(env, no_env_file)
    assert settings.repos == {"api": srv / "api", "web": srv / "web", "tools": srv / "team" / "tools"}


@pytest.mark.parametrize(
    ("value", "start"),
    [
        ("api", "SLACKBUS_REPOS holds 'api': write NAME=/path"),
        ("=/srv/api", "SLACKBUS_REPOS holds '=/srv/api'"),
        ("api=", "SLACKBUS_REPOS holds 'api='"),
        ("my repo={srv}/api", "SLACKBUS_REPOS names a repository 'my repo'"),
        ("api={srv}/missing", "The repository api in SLACKBUS_REPOS, {srv}/missing, is not an existing folder"),
        ("api=missing", "The repository api in SLACKBUS_REPOS, missing, is not an existing folder"),
        ("api={tmp}/secret", "The repository api in SLACKBUS_REPOS, {tmp}/secret, is {tmp}/secret once links"),
        ("api=escape", "The repository api in SLACKBUS_REPOS, escape, is {tmp}/secret once links"),
        ("api=../secret", "The repository api in SLACKBUS_REPOS, ../secret, is {tmp}/secret once links"),
    ],
)
def test_a_bad_repo_is_one_sentence(base_env, no_env_file, srv, tmp_path, value, start):
    base_env["SLACKBUS_REPOS"] = value.format(srv=srv, tmp=tmp_path)
    message = refused(base_env, no_env_file, start.format(srv=srv, tmp=tmp_path.resolve()))
    if "once links" in message:
        assert "outside SLACKBUS_ROOTS" in message


def test_a_bad_repo_in_the_config_file_names_the_file(base_env, no_env_file, srv, tmp_path):
    env = with_config(base_env, tmp_path, f'[repos]\napi = "{tmp_path / "secret"}"\n')
    refused(env, no_env_file, "The repository api in SLACKBUS_CONFIG's [repos]")
    env = with_config(base_env, tmp_path, "[repos]\napi = 3\n")
    refused(env, no_env_file, "SLACKBUS_CONFIG's [repos] api must be a path in quotes")
    env = with_config(base_env, tmp_path, 'repos = "api"\n')
    refused(env, no_env_file, "SLACKBUS_CONFIG's repos must be a table")


def test_models_are_a_set_and_slackbus_model_must_be_in_it(base_env, no_env_file):
    settings = load(base_env | {"SLACKBUS_MODELS": " opus, sonnet ,,claude-haiku-4-5"}, no_env_file)
    assert settings.models == frozenset({"opus", "sonnet", "claude-haiku-4-5"})
    assert settings.model is None
    spelled = base_env | {"SLACKBUS_MODELS": "opus,sonnet", "SLACKBUS_MODEL": "Sonnet"}
    assert load(spelled, no_env_file).model == "sonnet"  # the spelling of SLACKBUS_MODELS
    assert load(base_env | {"SLACKBUS_MODELS": " , "}, no_env_file).models is None
    message = refused(base_env | {"SLACKBUS_MODELS": "opus,sonnet", "SLACKBUS_MODEL": "haiku"}, no_env_file,
                      "SLACKBUS_MODEL=haiku is not in SLACKBUS_MODELS (opus, sonnet)")
    assert "add it there" in message
    refused(base_env | {"SLACKBUS_MODELS": "opus,--yolo"}, no_env_file, "SLACKBUS_MODELS holds '--yolo'")


@pytest.mark.parametrize(("raw", "expected"), [("on", True), ("OFF", False), ("true", True), ("false", False),
                                               ("1", True), ("0", False), (" off ", False), ("", True)])
def test_worktrees_switch(base_env, no_env_file, raw, expected):
    assert load(base_env | {"SLACKBUS_WORKTREES": raw}, no_env_file).worktrees is expected


def test_worktrees_switch_refuses_other_words(base_env, no_env_file):
    refused(base_env | {"SLACKBUS_WORKTREES": "maybe"}, no_env_file, "SLACKBUS_WORKTREES must be on or off")


@pytest.mark.parametrize(("raw", "seconds"), [("3600", 3600), ("90.5", 90.5), ("7d", 7 * 86400), ("12h", 43200),
                                              ("30m", 1800), ("45s", 45), ("1.5 h", 5400), ("2D", 2 * 86400)])
def test_worktree_ttl_takes_seconds_or_a_duration(base_env, no_env_file, raw, seconds):
    assert load(base_env | {"SLACKBUS_WORKTREE_TTL": raw}, no_env_file).worktree_ttl == seconds


@pytest.mark.parametrize(("raw", "start"), [
    ("soon", "SLACKBUS_WORKTREE_TTL must be a number of seconds or a duration like 7d"),
    ("7w", "SLACKBUS_WORKTREE_TTL must be a number of seconds or a duration like 7d"),
    ("-1d", "SLACKBUS_WORKTREE_TTL must be a number of seconds or a duration like 7d"),
    ("0", "SLACKBUS_WORKTREE_TTL must be greater than 0"),
    ("0d", "SLACKBUS_WORKTREE_TTL must be greater than 0"),
])
def test_a_bad_worktree_ttl_is_one_sentence(base_env, no_env_file, raw, start):
    refused(base_env | {"SLACKBUS_WORKTREE_TTL": raw}, no_env_file, start)


def test_pr_command_is_kept_as_written(base_env, no_env_file):
    command = "gh pr create --fill --head {branch}"
    assert load(base_env | {"SLACKBUS_PR_COMMAND": f"  {command} "}, no_env_file).pr_command == command
    assert load(base_env | {"SLACKBUS_PR_COMMAND": "  "}, no_env_file).pr_command is None
    refused(base_env | {"SLACKBUS_PR_COMMAND": "gh pr create --title 'oops"}, no_env_file,
            "SLACKBUS_PR_COMMAND cannot be read as shell words (no closing quotation)")


def test_channel_tables_give_folders_and_defaults(base_env, no_env_file, srv, tmp_path):
    env = with_config(base_env, tmp_path, (
        f'[repos]\napi = "{srv / "api"}"\n'
        f'[channels]\nC1 = "{srv / "web"}"\n'
        '[channels.C2]\nrepo = "api"\nbranch = "release/1.2"\nmodel = "OPUS"\n'
        '[channels.C3]\nrepo = "team/tools"\n'
        f'[channels.C4]\ndir = "{srv / "web"}"\nmodel = "sonnet"\n'
    ))
    settings = load(env | {"SLACKBUS_MODELS": "opus,sonnet"}, no_env_file)
    assert settings.workdir_for("C1") == srv / "web"  # the plain form still works
    assert settings.workdir_for("C2") == srv / "api"  # a default repo is the channel's folder
    assert settings.workdir_for("C3") == srv / "team" / "tools"
    assert settings.workdir_for("C4") == srv / "web"
    assert settings.channel_defaults_for("C2") == RequestOptions(repo="api", branch="release/1.2", model="opus")
    assert settings.channel_defaults_for("C3") == RequestOptions(repo="team/tools")
    assert settings.channel_defaults_for("C4") == RequestOptions(model="sonnet")
    assert settings.channel_defaults_for("C1") == RequestOptions()


def test_slackbus_channel_dirs_wins_over_a_channel_table_repo(base_env, no_env_file, srv, tmp_path):
    env = with_config(base_env, tmp_path, '[channels.C2]\nrepo = "api"\n')
    settings = load(env | {"SLACKBUS_CHANNEL_DIRS": f"C2={srv / 'web'}"}, no_env_file)
    assert settings.workdir_for("C2") == srv / "web"
    assert settings.channel_defaults_for("C2").repo == "api"


@pytest.mark.parametrize(
    ("table", "start"),
    [
        ('colour = "red"', "SLACKBUS_CONFIG's [channels.C2] holds colour: the keys it may hold are dir, repo, branch"),
        ("repo = 3", "SLACKBUS_CONFIG's [channels.C2] repo must be a non-empty string"),
        ('repo = " "', "SLACKBUS_CONFIG's [channels.C2] repo must be a non-empty string"),
        ('repo = "api"\ndir = "{srv}/api"', "SLACKBUS_CONFIG's [channels.C2] sets both dir and repo"),
        ('repo = "nope"', "SLACKBUS_CONFIG's [channels.C2] sets repo = 'nope', which is neither a name in"),
        ('repo = "escape"', "SLACKBUS_CONFIG's [channels.C2] sets repo = 'escape', which is {tmp}/secret once"),
        ('branch = "a..b"', "SLACKBUS_CONFIG's [channels.C2] sets branch = 'a..b', which git refuses"),
        ('branch = "fix it"', "SLACKBUS_CONFIG's [channels.C2] sets branch = 'fix it', which git refuses"),
        ('model = "haiku"', "SLACKBUS_CONFIG's [channels.C2] sets model = 'haiku', which is not in SLACKBUS_MODELS"),
        ('model = "-x"', "SLACKBUS_CONFIG's [channels.C2] sets model = '-x', which is not a model name"),
        ('dir = "{tmp}/secret"', "The directory for channel C2"),
    ],
)
def test_a_bad_channel_table_is_one_sentence(base_env, no_env_file, srv, tmp_path, table, start):
    env = with_config(base_env, tmp_path, "[channels.C2]\n" + table.format(srv=srv, tmp=tmp_path) + "\n")
    refused(env | {"SLACKBUS_MODELS": "opus,sonnet"}, no_env_file, start.format(tmp=tmp_path.resolve()))


def test_a_channels_value_that_is_not_a_table_is_one_sentence(base_env, no_env_file, tmp_path):
    refused(with_config(base_env, tmp_path, 'channels = "C1"\n'), no_env_file,
            "SLACKBUS_CONFIG's channels must be a table")


def test_the_process_cap_is_sized_from_the_memory_available_between_its_floor_and_ceiling() -> None:
    from bot.config import MAX_PROCESSES_CEILING, sized_max_processes

    assert sized_max_processes(7, 24_000)[0] == 48  # 24 GB × 50% ÷ 250 MB
    assert sized_max_processes(7, 1_000)[0] == 7  # little memory: never below the running tasks, pool and 2
    assert sized_max_processes(7, 10_000_000)[0] == MAX_PROCESSES_CEILING
    cap, why = sized_max_processes(7, None)
    assert cap == 7 and "unknown" in why
    assert "23.4 GB available at start × 50% ÷ 250 MB" in sized_max_processes(7, 24_000)[1]


def test_slackbus_max_processes_overrides_the_sizing(tmp_path) -> None:
    from bot.config import load_settings

    env = {"SLACKBUS_HOME": str(tmp_path / "h"), "SLACKBUS_ENV_FILE": str(tmp_path / "no.env")}
    sized = load_settings(env, transport="local")
    assert sized.max_processes >= 7 and sized.max_processes_why.startswith(("sized from memory", "the running"))
    fixed = load_settings({**env, "SLACKBUS_MAX_PROCESSES": "9"}, transport="local")
    assert fixed.max_processes == 9 and fixed.max_processes_why == "SLACKBUS_MAX_PROCESSES"
