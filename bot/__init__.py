"""slackbus: talk to Claude Code through Slack, and let Claude Code sessions talk to each other there.

    transport events in (bot.slack.events_in, bot.local.events_in)
      → bot.core: dispatcher → pipeline → context_builder → sessions / claude_runner → stream_parser → renderer
      → transport out (bot.slack.poster, bot.local.poster)
    bot.bridge: the sessions' side (hooks, post/read, the bot's socket, MCP tools)
    bot.app builds and runs it; bot.cli is the `slackbus` command; bot.config, bot.log, bot.errors, bot.redact
    are the foundation everything stands on. Each folder's __init__ says its job and what it may import.
"""

__version__ = "0.1.0"
