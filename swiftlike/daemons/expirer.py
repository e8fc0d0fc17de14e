"""The object expirer: deletes objects whose X-Delete-At has passed, on every replica.

It pops due entries from each local device's expiring queue
(:mod:`swiftlike.storage.expiring_queue`) and sends ``DELETE`` to all primaries of the
object with ``X-Timestamp`` = the delete-at time (so a newer overwrite wins) and
``X-If-Delete-At`` (so an object whose expiry was changed or removed is left alone), plus
the container-update headers so listings drop the row. First it asks the primaries
(HEAD): an entry some replica has moved past (an overwrite, a POST that changed or
removed the expiry) is dropped without a DELETE, and with fewer than a quorum of answers
it waits (see :meth:`ObjectExpirer._current_state`). A node answering 2xx, 404, 409
or 412 is settled; the entry is removed once every primary is settled, otherwise it
stays for the next pass (the queue survives restarts).

Config ``[expirer]``: interval (s, 30), concurrency (16).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from swiftlike.common.node_client import NODE_ERRORS, node_path
from swiftlike.common.timestamp import Timestamp
from swiftlike.daemons.base import Daemon, PassStats, all_settled, delete_object_everywhere
from swiftlike.storage.expiring_queue import due_entries, remove_entry

LOG = logging.getLogger(__name__)
SETTLED = {404, 409, 412}


class ObjectExpirer(Daemon):
    """Expires due objects: :meth:`run_once`."""

    name = "expirer"
    section = "expirer"
    pass_failed = "expirer pass failed"

    async def run_once(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        results = {}
        for dev in self.ctx.local_devices():
            device_path = self.ctx.device_path(dev["device"])
            stats = PassStats(self.name, dev["device"])
            entries = await self.ctx.run_io(lambda p=device_path: list(due_entries(p, now)))
            semaphore = asyncio.Semaphore(self.concurrency)

            async def guarded(path: str, record: dict[str, Any], semaphore: Any = semaphore,
                              stats: PassStats = stats) -> None:
                async with semaphore:
                    try:
                        if await self.expire(record, stats):
                            await self.ctx.run_io(remove_entry, path)
                    except Exception as err:
                        LOG.exception("expiring %s failed", record)
                        stats.error(f"{record.get('obj')}: {err!r}")

            await asyncio.gather(*(guarded(p, r) for p, r in entries))
            results[dev["device"]] = await self.ctx.run_io(stats.save, device_path)
        return results

    async def expire(self, record: dict[str, Any], stats: PassStats) -> bool:
        """Delete one object everywhere; True when every primary is settled."""
        account, container, obj = record["account"], record["container"], record["obj"]
        delete_at = int(record["delete_at"])
        ring = self.ctx.ring
        part, nodes = ring.get_nodes(account, container, obj)
        stats.add("attempted")
        verdict = await self._current_state(part, nodes, account, container, obj, delete_at)
        if verdict == "superseded":
            stats.add("superseded")
            return True
        if verdict == "unsure":
            stats.add("retries")
            return False

        statuses = await delete_object_everywhere(self.ctx, account, container, obj, {
            "X-Timestamp": Timestamp(delete_at).internal, "X-If-Delete-At": str(delete_at)})
        if all_settled(statuses, SETTLED):
            stats.add("objects_expired")
            return True
        stats.add("retries")
        return False

    async def _current_state(self, part: int, nodes: list[dict[str, Any]], account: str,
                             container: str, obj: str, delete_at: int) -> str:
        """"due", "superseded" (some replica holds a later state: an overwrite, or a
        POST that moved or removed the expiry) or "unsure" (fewer than a quorum of the
        primaries answered).

        Why ask first: a replica that missed the overwrite or the POST still holds the
        old version with this X-Delete-At, so it takes the DELETE, whose tombstone is
        stamped with the delete-at time, later than the overwrite; replication would
        then spread it and delete the newer version everywhere. Swift avoids that by
        removing the queue entry when the object changes; this queue lives with each
        object replica, so the entry is checked against the replicas instead.
        """
        headers = {"X-Backend-Server-Type": "object"}

        async def head(node: dict[str, Any]) -> tuple[int, str | None] | None:
            try:
                async with self.ctx.client.request(
                        node, "HEAD", node_path(node, part, account, container, obj),
                        headers=headers) as resp:
                    await resp.read()
                    return resp.status, resp.headers.get("X-Delete-At")
            except NODE_ERRORS as err:
                LOG.info("expirer HEAD to %s:%s failed: %r", node["ip"], node["port"], err)
                return None

        answers = [a for a in await asyncio.gather(*(head(n) for n in nodes))
                   if a is not None and (200 <= a[0] < 300 or a[0] == 404)]
        if any(200 <= status < 300 and (at or "").strip() != str(delete_at)
               for status, at in answers):
            return "superseded"
        if len(answers) < len(nodes) // 2 + 1:
            return "unsure"
        return "due"

