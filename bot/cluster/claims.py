"""Several hosts: each due time of a schedule is run by one node. Every node that has the schedule (one from
SLACKBUS_CONFIG is on all of them) takes the due time in its own store, then asks here: a key made once in a KV
bucket (create fails where it exists), so the first node runs it and the others let it be."""

from __future__ import annotations

from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from bot.cluster.jetstream import Link, _kv, subject_part

BUCKET = "slackbus_schedule_claims"
TTL_S = 7 * 86400.0  # a due time is long past by then


class ScheduleClaims:
    def __init__(self, link: Link, node: str) -> None:
        self._link = link
        self._node = node
        self._kv: KeyValue | None = None

    async def take(self, schedule_id: str, due: float) -> bool:
        """True for the one node that takes this due time, False for every other."""
        if self._kv is None:
            self._kv = await _kv(self._link.js, BUCKET, self._link.replicas, ttl=TTL_S)
        try:
            await self._kv.create(f"{subject_part(schedule_id)}.{int(due)}", self._node.encode())
        except KeyWrongLastSequenceError:
            return False
        return True
