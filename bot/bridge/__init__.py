"""The bridge between Claude Code sessions and the channel: the hooks (`slackbus hook …`), `slackbus post/read`,
and the bus client they use (bus: post and read, through the bot's socket, else the Web API or a webhook; protocol:
its settings, types and the socket's wire; web: the HTTP client; cache: the paced history; local_channel: local
channel files); on the bot's side the socket server, the blackboard's operations and the MCP tools of the sessions
the bot spawns; hand-off and hooks install.

May import: the core, the foundation and bot.local.channel. A hook starts a fresh Python for each event, so
modules a hook loads import nothing heavy at the top (anyio, structlog, claude_agent_sdk only where needed).
"""
