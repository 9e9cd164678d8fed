"""slackbus: talk to Claude Code through Slack.

Data flow, one module each:
    slack_events (Bolt listeners) -> dispatcher (who may, dedupe, queue, per-thread order)
    -> context_builder -> claude_runner -> stream_parser -> renderer -> slack_poster
with store (SQLite), config, errors, log, cli and app around them.
"""

__version__ = "0.1.0"
