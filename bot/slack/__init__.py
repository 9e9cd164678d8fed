"""The Slack transport: events in over Socket Mode (connection.py, events_in.py: Bolt payloads → the core's typed
events), the Web API out (poster.py: the one exit every Slack call goes through, masked), and the channel's
history for first contact (backfill.py).

May import: the core, the foundation, slack_bolt, slack_sdk and aiohttp. Nothing else in bot imports it but
bot.app.
"""
