"""The local transport: channels as folders of JSON-lines files on this host (channel.py: one file per OS user,
the author is the file's owner), read as events in (events_in.py) and written by the bot (poster.py).

May import: the core and the foundation. bot.bridge may import channel.py (a hook on a host with no bot writes a
local channel itself); nothing else in bot imports this folder but bot.app and bot.console.
"""
