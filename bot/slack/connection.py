"""The bot's link to Slack: who it is (auth.test), and the Socket Mode connection events come in on, kept alive.

Socket Mode keep-alive: slack_bolt's default ping every 10 s (aiohttp then waits 5 s for the pong) left a dead link
unnoticed for ~18 s; at 5 s the heartbeat closes it within ~7.5 s. slack_sdk looks at a closed socket only at its
next ping; `watch` looks every SOCKET_CHECK_S and reconnects.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.errors import ConfigError
from bot.log import get_logger

log = get_logger("slackbus.app")

CONNECT_TIMEOUT_S = 30.0
SOCKET_PING_S = 5.0
SOCKET_CHECK_S = 0.5


async def identify(client: AsyncWebClient, api_url: str) -> dict[str, Any]:
    """auth.test: the bot's user id, bot id and workspace URL; a ConfigError with a sentence when refused."""
    try:
        with anyio.fail_after(CONNECT_TIMEOUT_S):
            auth = await client.auth_test()
    except SlackApiError as exc:
        error = exc.response.get("error")
        if error in {"invalid_auth", "not_authed", "token_revoked", "account_inactive"}:
            raise ConfigError(
                f"Slack refused SLACK_BOT_TOKEN ({error}): copy the Bot User OAuth Token (xoxb-…) again from "
                "the app's OAuth & Permissions page, and reinstall the app if it was revoked."
            ) from None
        raise ConfigError(f"Slack's auth.test failed ({error}); check SLACK_API_URL and the token.") from None
    except (TimeoutError, OSError) as exc:
        raise ConfigError(
            f"Slack's Web API at {api_url} cannot be reached ({type(exc).__name__}): check the network or "
            "SLACK_API_URL."
        ) from None
    data = auth.data
    return data if isinstance(data, dict) else {}


class SocketModeSource:
    """Events in from Slack: a Bolt app (its listeners added by `register`) on a Socket Mode connection."""

    def __init__(self, client: AsyncWebClient, app_token: str, register: Callable[[AsyncApp], None], *,
                 ack_after_listeners: bool = False) -> None:
        # ack_after_listeners (the cluster): an event is acked once its listeners ran, so what they placed is
        # stored in JetStream before Slack forgets the event
        app = AsyncApp(client=client, process_before_response=ack_after_listeners,
                       ignoring_self_events_enabled=False)
        register(app)
        self._handler = AsyncSocketModeHandler(app, app_token, ping_interval=SOCKET_PING_S)

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Connect (a ConfigError with a sentence when Slack refuses the app token), then keep the link alive."""
        try:
            with anyio.fail_after(CONNECT_TIMEOUT_S):
                await self._handler.connect_async()  # type: ignore[no-untyped-call]
        except SlackApiError as exc:
            error = exc.response.get("error")
            raise ConfigError(
                f"Slack refused SLACK_APP_TOKEN for Socket Mode ({error}): create an app-level token with the "
                "connections:write scope (Basic Information → App-Level Tokens) and enable Socket Mode."
            ) from None
        tg.start_soon(self._watch)

    async def close(self) -> None:
        await self._handler.close_async()  # type: ignore[no-untyped-call]

    async def _watch(self) -> None:
        """Reconnect as soon as the Socket Mode link is closed (by Slack, by the network, or by the heartbeat
        that found it dead), instead of at slack_sdk's next ping; log every link change."""
        client = self._handler.client
        session = client.current_session
        lost_at: float | None = None
        pause = SOCKET_CHECK_S
        while not client.closed:
            await anyio.sleep(pause)
            pause = SOCKET_CHECK_S
            current = client.current_session
            if current is not session and current is not None and not current.closed:
                gap_ms = None if lost_at is None else round((time.monotonic() - lost_at) * 1000)
                log.info("slack.reconnected", ms=gap_ms)
                session, lost_at = current, None
            elif current is not None and current.closed and not client.closed:
                if lost_at is None:
                    lost_at = time.monotonic()
                    log.warning("slack.socket_lost")
                try:
                    await client.connect_to_new_endpoint()
                except Exception as exc:  # e.g. apps.connections.open refused: try again, not in a tight loop
                    log.warning("slack.reconnect_failed", error=f"{type(exc).__name__}: {exc}")
                    pause = min(max(2.0, (time.monotonic() - lost_at) / 2), 30.0)
