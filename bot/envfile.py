"""Settings come from the process environment over an optional .env file (the environment wins).

Kept apart from bot.config so that hooks, which start a fresh process per event, read their few settings
without importing the bot's whole configuration.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

DEFAULT_SLACK_API_URL = "https://slack.com/api/"


def read_environment(env: Mapping[str, str] | None = None, env_file: str | None = None) -> dict[str, str]:
    """The process environment over the .env file (the environment wins)."""
    env = dict(os.environ if env is None else env)
    path = env_file or env.get("SLACKBUS_ENV_FILE") or ".env"
    merged: dict[str, str] = {}
    if os.path.isfile(path):
        from dotenv import dotenv_values  # only when there is a file

        merged.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    merged.update(env)
    return merged
