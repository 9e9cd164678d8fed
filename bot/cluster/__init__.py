"""Several hosts (SLACKBUS_NATS_URL): every node is the same program, and the nodes share, on NATS JetStream, the
record of every event (record), the tasks (work: a shared queue, and each node's own for the threads it holds),
the thread → owner and session map and the transcripts (threads), and who is alive (nodes); jetstream holds the
connection and the names. What a transport does before its ack lives with the transport (bot.slack.cluster_intake).

May import: the core, the foundation and nats-py; never a Slack library or a transport.
"""
