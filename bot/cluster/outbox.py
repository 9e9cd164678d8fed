"""Answers not yet posted, shared: the poster's outbox (kept in this node's store until Slack has the answer) is
copied into a KV bucket, key <node>.<item>. When a node dies, a living node claims each of its keys (a delete
that names the revision it read: only one node wins) and posts the answer from its own outbox. So an answer
produced but not yet posted is posted once, by whichever node gets to it."""

from __future__ import annotations

import json

import anyio
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from bot.cluster.jetstream import Link, dumps
from bot.cluster.nodes import Nodes
from bot.core.store import Store
from bot.log import get_logger

log = get_logger("slackbus.cluster")

OUTBOX = "slackbus_outbox"


class SharedOutbox:
    """The poster's outbox (outbox_add / outbox_update / outbox_pending, as the store has them), mirrored."""

    def __init__(self, link: Link, store: Store, nodes: Nodes) -> None:
        self._link = link
        self._store = store
        self._nodes = nodes
        self._send, self._changes = anyio.create_memory_object_stream[tuple[int, bytes | None]](100_000)

    # --- what the poster calls (sync, on the event loop) -----------------------------------------------------
    def outbox_add(self, channel: str, thread_ts: str, payload: str) -> int:
        item = self._store.outbox_add(channel, thread_ts, payload)
        self._send.send_nowait((item, dumps({"channel": channel, "thread_ts": thread_ts, "payload": payload})))
        return item

    def outbox_update(self, item_id: int, payload: str | None, error: str | None) -> None:
        self._store.outbox_update(item_id, payload, error)
        if payload is None:  # delivered
            self._send.send_nowait((item_id, None))

    def outbox_pending(self) -> list[tuple[int, str, str, str]]:
        return self._store.outbox_pending()

    # --- in the background -------------------------------------------------------------------------------------
    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        from nats.js.api import KeyValueConfig, StorageType

        try:
            kv = await self._link.js.key_value(OUTBOX)
        except Exception:
            kv = await self._link.js.create_key_value(config=KeyValueConfig(
                bucket=OUTBOX, history=1, storage=StorageType.FILE, replicas=self._link.replicas))
        me = self._nodes.me
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._adopt, kv)
            task_status.started()
            async for item, value in self._changes:
                key = f"{me}.{item}"
                for _ in range(50):  # through a NATS restart
                    try:
                        if value is None:
                            await kv.purge(key)
                        else:
                            await kv.put(key, value)
                        break
                    except Exception as exc:
                        log.warning("cluster.outbox_mirror_retry", error=type(exc).__name__)
                        await anyio.sleep(0.2)

    async def _adopt(self, kv: KeyValue) -> None:
        """Every few seconds: the answers a dead node left unposted become this node's to post."""
        while True:
            await anyio.sleep(2.0)
            dead = set(self._nodes.dead())
            if not dead:
                continue
            try:
                keys = await kv.keys()
            except Exception:  # no keys at all raises too
                continue
            for key in keys:
                node, _, _item = key.rpartition(".")
                if node not in dead:
                    continue
                try:
                    entry = await kv.get(key)
                    await kv.delete(key, last=entry.revision)
                except (KeyNotFoundError, KeyWrongLastSequenceError):
                    continue  # another node took it
                except Exception as exc:
                    log.warning("cluster.outbox_adopt_failed", key=key, error=type(exc).__name__)
                    continue
                try:
                    data = json.loads(entry.value or b"{}")
                    self.outbox_add(str(data["channel"]), str(data["thread_ts"]), str(data["payload"]))
                    log.info("cluster.outbox_adopted", from_node=node, channel=data["channel"])
                except (ValueError, KeyError, TypeError):
                    log.warning("cluster.outbox_bad_item", key=key)
