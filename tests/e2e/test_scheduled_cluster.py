"""Schedules on several hosts: a schedule from SLACKBUS_CONFIG is on every node, and its due time runs once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster_support import cluster, marker_answers
from tests.e2e.test_scheduled_runs import cron_in, scheduled_posts

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def test_a_config_schedule_on_three_nodes_runs_once(tmp_path: Path) -> None:
    cron, _due = cron_in(20)
    config = tmp_path / "slackbus.toml"
    config.write_text(f'[[schedules]]\nchannel = "C1"\ncron = "{cron}"\ntz = "UTC"\nowner = "U1"\n'
                      'prompt = "once across the cluster [[id:sc3]]"\n')
    with cluster(tmp_path, SLACKBUS_CONFIG=str(config)) as c:
        post = c.slack.wait_for(lambda: next(iter(scheduled_posts(c.slack)), None), timeout=60,
                                what="the scheduled run's top-level message")
        c.slack.wait_for(lambda: marker_answers(c.slack, "C1", post["ts"], "answer for sc3"), timeout=60,
                         what="the scheduled run's answer")
        for bot in c.nodes.values():
            bot.wait_quiet(c.slack, quiet=1.0)
        assert len(scheduled_posts(c.slack)) == 1
        assert len(marker_answers(c.slack, "C1", post["ts"], "answer for sc3")) == 1
        assert len(c.events("schedule.ran")) == 1 and len(c.events("schedule.run_elsewhere")) == 2
