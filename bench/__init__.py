"""slackbus benchmarks: loopback, the fake Slack and fake model from tests/fakes, the real `claude` CLI."""
