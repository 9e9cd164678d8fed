"""The core: one request's way through the bot, whatever transport it came by.

events (what comes in, typed) → dispatcher (who may, dedupe, queue, per-thread order) → pipeline (one run) →
context_builder (the channel as data, from the store) → sessions (which `claude` process) → claude_runner (the
process) → stream_parser (its stream-json) → renderer (Slack-shaped messages) and progress → poster (the protocol
every transport's poster implements). Beside them: store (SQLite, the only owner of the schema; store_readonly is
its light read-only half, for hooks and the CLI), signs (👀 ⏳ ✅ ❌ 🛑 and the notices), commands (`/claude …`,
🛑, buttons), approvals, worktrees, recovery, identity and handoff.

May import: the foundation (bot.errors, bot.redact, bot.log, bot.config, bot.request_options, bot.envfile) and
itself. Never a transport (bot.slack, bot.local), the bridge, slack_bolt, slack_sdk or aiohttp
(tests/unit/test_layers.py checks it).
"""
