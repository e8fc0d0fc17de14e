"""The account reaper: empties the accounts a reseller deleted, so their data goes too.

``DELETE /v1/<account>`` by a reseller admin only marks the account database deleted
(its delete timestamp passes its put timestamp); the containers and objects are left
where they are, and without this daemon they would stay for ever, uncounted and
unlisted. As Swift's account reaper does, each pass walks the account databases this
device is a primary for, and for every deleted one (once ``delay_reaping`` has passed
since the DELETE):

- lists its containers from the local database, and takes its share of them: the
  primaries split an account's containers by a hash of the name, so three account
  servers do not send the same deletes three times;
- lists each container's objects from every container primary, deleted databases
  included (``X-Backend-Include-Deleted``), and deletes the union: a replica that missed
  rows, or got them after the container's deletion, must not hide an object;
- sends ``DELETE`` to every primary of every object, with the container-update headers,
  so the container rows go too;
- then deletes the container on all its primaries, with the account-update headers: the
  account servers take that report although the account is deleted, and the account's
  container count falls. A 409 from any replica (rows still arriving) means not done.

Whatever fails (a node down, a container whose object rows have not all arrived, 409)
is left for the next pass; a node that failed ``node_failures_per_pass`` times is not
asked again in the pass (a hung node would cost every request its timeout). An account
keeps a container row whose report says deleted but not empty (as Swift's account
broker), so rows reaching a container after its deletion bring the reaper back. Once
every container is gone the account database holds only deleted rows, and the database
replicator removes it after ``reclaim_age``
(:func:`swiftlike.daemons.db_replicator.reclaim_db`).

The proxy answers 404 for the containers of a deleted account and so refuses object
writes into them, as Swift's checks the account before the container. A primary that
is down leaves its share of the containers until it is back.

Config ``[reaper]``: interval (s, 3600), concurrency (16, object deletes in flight),
delay_reaping (s, 0), node_failures_per_pass (10).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from typing import Any

from swiftlike.common.node_client import NODE_ERRORS, node_path
from swiftlike.common.timestamp import Timestamp
from swiftlike.daemons.base import (
    Daemon,
    DaemonContext,
    NodeBudget,
    PassStats,
    all_settled,
    delete_object_everywhere,
    update_headers_for,
)
from swiftlike.daemons.db_replicator import list_databases

LOG = logging.getLogger(__name__)

#: Object or container deletes a node has settled: done (2xx) or nothing left to do
#: (404: never there or already gone; 409 on an object: a newer write, which a later
#: pass finds in the listing and deletes in turn).
OBJECT_SETTLED = {404, 409}
#: Names asked for per listing request (Swift's default listing limit).
LISTING_LIMIT = 10000


def read_account(path: str) -> dict[str, Any] | None:
    """The stat row of an account database; None if it vanished meanwhile."""
    from swiftlike.storage.account_db import AccountBroker
    from swiftlike.storage.db import DatabaseNotFound

    broker = AccountBroker(path, fsync=False)
    try:
        return broker.get_info()
    except DatabaseNotFound:
        return None
    finally:
        broker.close()


def account_containers(path: str, marker: str, limit: int) -> list[str]:
    """Names of the containers the account database still lists, after ``marker``."""
    from swiftlike.storage.account_db import AccountBroker
    from swiftlike.storage.db import DatabaseNotFound

    broker = AccountBroker(path, fsync=False)
    try:
        entries = broker.list_containers(limit, marker=marker)
    except DatabaseNotFound:
        return []
    finally:
        broker.close()
    return [entry["name"] for entry in entries if "name" in entry]


def is_reapable(info: dict[str, Any], now: float, delay_reaping: float) -> bool:
    """Deleted by a DELETE at least ``delay_reaping`` seconds ago."""
    put = Timestamp(info.get("put_timestamp") or 0)
    delete = Timestamp(info.get("delete_timestamp") or 0)
    return delete > put and now - float(delete) >= delay_reaping


def container_shard(name: str, shards: int) -> int:
    """Which of an account's primaries reaps this container (stable across processes)."""
    return zlib.crc32(name.encode("utf-8", "surrogateescape")) % max(1, shards)


class AccountReaper(Daemon):
    """Deletes the data of deleted accounts: :meth:`run_once`."""

    name = "reaper"
    section = "reaper"
    default_interval = 3600.0
    pass_failed = "reaper pass failed"

    def __init__(self, ctx: DaemonContext, conf: dict[str, Any] | None = None) -> None:
        super().__init__(ctx, conf)
        self.delay_reaping = float(self.conf.get("delay_reaping", 0))
        self.budget = NodeBudget(int(self.conf.get("node_failures_per_pass", 10)))

    async def run_once(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        self.budget = NodeBudget(self.budget.limit)  # a new pass tries every node again
        results = {}
        for dev in self.ctx.local_devices():
            device_path = self.ctx.device_path(dev["device"])
            stats = PassStats(self.name, dev["device"])
            databases = await self.ctx.run_io(list_databases, device_path, "accounts")
            for part, _hash, path in databases:
                try:
                    await self._consider(dev, int(part), path, now, stats)
                except Exception as err:
                    LOG.exception("reaping %s failed", path)
                    stats.error(f"{path}: {err!r}")
            results[dev["device"]] = await self.ctx.run_io(stats.save, device_path)
        return results

    async def _consider(self, dev: dict[str, Any], part: int, path: str, now: float,
                        stats: PassStats) -> None:
        primaries = self.ctx.ring.get_part_nodes(part)
        shard = next((i for i, node in enumerate(primaries) if node["id"] == dev["id"]), None)
        if shard is None:
            return  # a handoff copy: its primaries reap the account
        info = await self.ctx.run_io(read_account, path)
        if info is None or not is_reapable(info, now, self.delay_reaping):
            return
        stats.add("accounts_reaping")
        account = info["account"]
        left = 0
        marker = ""
        while True:
            names = await self.ctx.run_io(account_containers, path, marker, LISTING_LIMIT)
            if not names:
                break
            for container in names:
                if container_shard(container, len(primaries)) != shard:
                    continue
                if not await self.reap_container(account, container, stats):
                    left += 1
            marker = names[-1]
        if left:
            stats.add("containers_remaining", left)
        else:
            stats.add("accounts_done")

    async def reap_container(self, account: str, container: str, stats: PassStats) -> bool:
        """Delete every object the container lists, then the container; True once every
        container primary has deleted it (or never had it)."""
        ring = self.ctx.ring
        cpart, cnodes = ring.get_nodes(account, container)
        semaphore = asyncio.Semaphore(self.concurrency)
        marker = ""
        complete = True
        while True:
            names = await self._list_objects(cpart, cnodes, account, container, marker)
            if names is None:
                stats.add("container_listing_failures")
                return False
            if not names:
                break

            async def guarded(obj: str) -> bool:
                async with semaphore:
                    return await self.reap_object(account, container, obj, stats)

            results = await asyncio.gather(*(guarded(name) for name in names))
            complete = complete and all(results)
            marker = names[-1]
        if not complete:
            return False  # its rows would make the container DELETE answer 409 anyway
        return await self._delete_container(account, container, cpart, cnodes, stats)

    async def reap_object(self, account: str, container: str, obj: str, stats: PassStats
                          ) -> bool:
        """``DELETE`` on every primary of the object; True when all of them settled."""
        statuses = await delete_object_everywhere(self.ctx, account, container, obj,
                                                  {"X-Timestamp": Timestamp.now().internal},
                                                  self.budget)
        if all_settled(statuses, OBJECT_SETTLED):
            stats.add("objects_deleted")
            return True
        stats.add("object_failures")
        return False

    async def _list_objects(self, cpart: int, cnodes: list[dict[str, Any]], account: str,
                            container: str, marker: str) -> list[str] | None:
        """One page of object names: the union of what every container primary lists
        (a replica that missed rows, or got them late, must not hide an object), deleted
        databases included (rows can reach one after its deletion). [] when none holds
        any; None when a primary could not answer (its rows wait for the next pass)."""
        headers = {"X-Backend-Server-Type": "container", "X-Backend-Include-Deleted": "true"}
        query = {"format": "json", "limit": str(LISTING_LIMIT)}
        if marker:
            query["marker"] = marker
        names: set[str] = set()
        cut: str | None = None
        for node in cnodes:
            if self.budget.exhausted(node):
                return None
            try:
                async with self.ctx.client.request(
                        node, "GET", node_path(node, cpart, account, container),
                        headers=headers, query=query) as resp:
                    body = await resp.read()
                    status = resp.status
                listed = json.loads(body) if status == 200 else []
            except (*NODE_ERRORS, ValueError) as err:
                LOG.info("reaper listing from %s:%s failed: %r", node["ip"], node["port"],
                         err)
                self.budget.failed(node)
                return None
            if status not in (200, 204, 404):
                return None
            page = [entry["name"] for entry in listed
                    if isinstance(entry, dict) and "name" in entry]
            names.update(page)
            if len(listed) >= LISTING_LIMIT and page:
                # a full page: this primary has more past its last name, so the union is
                # complete only up to the smallest such name
                cut = page[-1] if cut is None else min(cut, page[-1])
        return sorted(name for name in names if cut is None or name <= cut)

    async def _delete_container(self, account: str, container: str, cpart: int,
                                cnodes: list[dict[str, Any]], stats: PassStats) -> bool:
        apart, anodes = self.ctx.ring.get_nodes(account)
        timestamp = Timestamp.now().internal

        statuses = await asyncio.gather(*(
            self.ctx.node_status(node, "DELETE", node_path(node, cpart, account, container),
                                 {"X-Backend-Server-Type": "container", "X-Timestamp": timestamp,
                                  **update_headers_for("Account", index, apart, anodes)},
                                 self.budget)
            for index, node in enumerate(cnodes)))
        deleted = sum(1 for status in statuses if status is not None and 200 <= status < 300)
        missing = sum(1 for status in statuses if status == 404)
        if deleted + missing < len(cnodes):
            # a 409 (rows still arriving) or no answer: a quorum is not enough here, the
            # replica that still has rows would keep them (and their objects) for ever
            stats.add("container_failures")
            return False
        if not deleted and not await self._report_gone(account, container, apart, anodes,
                                                        timestamp):
            # no replica had the container to report its deletion: the account still
            # lists it until told directly
            stats.add("container_failures")
            return False
        stats.add("containers_deleted")
        return True

    async def _report_gone(self, account: str, container: str, apart: int,
                           anodes: list[dict[str, Any]], timestamp: str) -> bool:
        """Tell the account servers a container none of its primaries holds is deleted."""
        headers = {"X-Backend-Server-Type": "account", "X-Timestamp": timestamp,
                   "X-Put-Timestamp": "0", "X-Delete-Timestamp": timestamp,
                   "X-Object-Count": "0", "X-Bytes-Used": "0"}

        statuses = await asyncio.gather(*(
            self.ctx.node_status(node, "PUT", node_path(node, apart, account, container),
                                 headers, self.budget) for node in anodes))
        return all(status is not None and (200 <= status < 300 or status == 404)
                   for status in statuses)
