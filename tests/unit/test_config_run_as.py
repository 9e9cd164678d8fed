"""SLACKBUS_RUN_AS in load_settings: every problem is one ConfigError sentence saying what to do.

The checks that need root (the bot switching to another user) use a throwaway OS user and skip elsewhere.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot import config
from bot.config import load_settings
from bot.errors import ConfigError
from tests.e2e.test_run_as import Agent, throwaway_user


def settings_env(home: Path, work: Path, cli: Path, **more: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "SLACK_BOT_TOKEN": "xoxb-1111-2222-abcdefgh",
        "SLACK_APP_TOKEN": "xapp-1-A111-2222-abcdefgh",
        "SLACKBUS_ALLOWED_USERS": "U012ABCDEF",
        "SLACKBUS_HOME": str(home),
        "SLACKBUS_WORKDIR": str(work),
        "CLAUDE_CLI_PATH": str(cli),
        **more,
    }


@pytest.fixture
def plain_env(tmp_path: Path) -> dict[str, str]:
    cli = tmp_path / "claude"
    cli.write_text("#!/bin/sh\necho fake claude\n")
    cli.chmod(0o755)
    return settings_env(tmp_path / "state", tmp_path / "work", cli)


def load(env: dict[str, str], tmp_path: Path) -> config.Settings:
    return load_settings(env=env, env_file=str(tmp_path / "no.env"))


def test_unset_means_claude_runs_as_the_bots_own_user(plain_env, tmp_path):
    assert load(plain_env, tmp_path).run_as is None
    assert load({**plain_env, "SLACKBUS_RUN_AS": " "}, tmp_path).run_as is None


def test_a_user_that_does_not_exist_is_one_sentence(plain_env, tmp_path):
    with pytest.raises(ConfigError) as info:
        load({**plain_env, "SLACKBUS_RUN_AS": "no-such-user-5x7q"}, tmp_path)
    assert str(info.value) == (
        "SLACKBUS_RUN_AS=no-such-user-5x7q is not a user on this host: create it (e.g. `useradd --create-home "
        "no-such-user-5x7q`) or unset SLACKBUS_RUN_AS."
    )


def test_the_bots_own_user_separates_nothing(plain_env, tmp_path):
    me = pwd.getpwuid(os.geteuid()).pw_name
    with pytest.raises(ConfigError, match=rf"^SLACKBUS_RUN_AS={me} is the user the bot itself runs as, which "
                                          r"separates nothing: name another user .*, or unset it\.$"):
        load({**plain_env, "SLACKBUS_RUN_AS": me}, tmp_path)


def test_switching_user_needs_the_bot_to_start_as_root(plain_env, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 54321)  # an unprivileged bot, whichever user runs the tests
    with pytest.raises(ConfigError) as info:
        load({**plain_env, "SLACKBUS_RUN_AS": "root"}, tmp_path)
    assert str(info.value) == (
        "SLACKBUS_RUN_AS=root needs the bot to start as root (it switches to root for each claude process); "
        "or unset it."
    )


# --- as root, with a throwaway user ---------------------------------------------------------------------


@pytest.fixture
def agent() -> Iterator[Agent]:
    with throwaway_user() as made:
        yield made


@pytest.fixture
def agent_env(agent: Agent) -> dict[str, str]:
    cli = agent.base / "claude"
    cli.write_text("#!/bin/sh\necho fake claude\n")
    cli.chmod(0o755)
    return settings_env(agent.state, agent.work, cli, SLACKBUS_RUN_AS=agent.name)


def test_a_user_with_a_home_and_a_working_folder_of_its_own_is_taken(agent, agent_env, tmp_path):
    assert load(agent_env, tmp_path).run_as == agent.name


def test_its_home_must_exist(agent, agent_env, tmp_path):
    agent.home.rename(agent.base / "elsewhere")
    with pytest.raises(ConfigError) as info:
        load(agent_env, tmp_path)
    assert str(info.value) == (
        f"SLACKBUS_RUN_AS={agent.name}: its home folder {agent.home} does not exist, and claude keeps its sessions "
        f"there: create it (`mkdir -p {agent.home} && chown {agent.name} {agent.home}`) or give {agent.name} "
        "another home."
    )


def test_its_home_must_be_writable_by_it(agent, agent_env, tmp_path):
    os.chown(agent.home, 0, 0)
    with pytest.raises(ConfigError) as info:
        load(agent_env, tmp_path)
    assert str(info.value) == (
        f"SLACKBUS_RUN_AS={agent.name}: its home folder {agent.home} is not writable by {agent.name}, and claude "
        f"keeps its sessions there: `chown {agent.name} {agent.home}`."
    )


def test_it_must_be_able_to_run_the_cli(agent, agent_env, tmp_path):
    private = agent.base / "private"
    private.mkdir(mode=0o700)
    cli = private / "claude"
    cli.write_text("#!/bin/sh\n")
    cli.chmod(0o755)
    with pytest.raises(ConfigError) as info:
        load({**agent_env, "CLAUDE_CLI_PATH": str(cli)}, tmp_path)
    assert str(info.value) == (
        f"SLACKBUS_RUN_AS={agent.name} cannot run the Claude Code CLI at {cli} (it or a folder above it is not "
        f"readable by {agent.name}): make it so, or point CLAUDE_CLI_PATH at a copy {agent.name} can run."
    )


def test_the_working_folder_must_be_writable_by_it(agent, agent_env, tmp_path):
    root_owned = agent.base / "root-work"
    root_owned.mkdir(mode=0o755)
    with pytest.raises(ConfigError) as info:
        load({**agent_env, "SLACKBUS_WORKDIR": str(root_owned)}, tmp_path)
    assert str(info.value) == (
        f"SLACKBUS_WORKDIR={root_owned} is not writable by {agent.name} (SLACKBUS_RUN_AS), who runs claude there: "
        f"`chown -R {agent.name} {root_owned}` (or `chgrp -R` a group of {agent.name}'s and `chmod -R g+rwX`), "
        "or choose another folder."
    )


def test_a_channel_folder_must_be_writable_by_it_too(agent, agent_env, tmp_path):
    root_owned = agent.base / "root-work"
    root_owned.mkdir(mode=0o755)
    env = {**agent_env, "SLACKBUS_ROOTS": str(agent.base), "SLACKBUS_CHANNEL_DIRS": f"C123={root_owned}"}
    with pytest.raises(ConfigError, match=rf"^The folder for channel C123, {root_owned}, is not writable by "):
        load(env, tmp_path)


def test_a_working_folder_inside_the_private_state_folder_is_refused(agent, agent_env, tmp_path):
    inside = agent.state / "workspace"  # the default SLACKBUS_WORKDIR
    env = {k: v for k, v in agent_env.items() if k != "SLACKBUS_WORKDIR"}
    with pytest.raises(ConfigError) as info:
        load(env, tmp_path)
    assert str(info.value) == (
        f"SLACKBUS_WORKDIR={inside} lies inside SLACKBUS_HOME={agent.state}, which the bot keeps private to itself, "
        f"so {agent.name} (SLACKBUS_RUN_AS) cannot work there: choose a folder outside it that {agent.name} may "
        f"write, e.g. SLACKBUS_WORKDIR=/srv/slackbus-work owned by {agent.name}."
    )
