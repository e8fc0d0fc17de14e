"""Account and container database replication.

For every database on a local device and each other primary of its partition: one
``sync`` request merges put/delete timestamps and metadata (creating the database on a
peer that has none) and answers how far the peer has this database's rows, by the
peer's own record (kept in its file, so a peer restored from a backup or short of
commits is refilled from where it really is); then the rows past that point are sent
in batches of ``per_diff`` through ``merge_items``, each recording its last ROWID on the
peer. (With a peer of an older release, which keeps no record, the per-peer point in
``<db>.sync`` next to the database is used, reset when the peer's file changes.)
A database on a handoff is deleted once every primary has taken all of its rows.
Each pass also clears the device's ``tmp/`` of what a crash left there longer than
``reclaim_age`` ago (:func:`~swiftlike.storage.db_files.remove_stale_tmp`).
A peer that has no copy at all of a database with more than ``ship_min_rows`` rows gets
the whole file instead (:mod:`swiftlike.storage.db_ship`, as Swift rsyncs it), then
the rows written since the snapshot.

Before it ships anything, a pass reclaims: a container database deleted (and emptied,
and its last state reported to its account) more than ``reclaim_age`` ago is removed,
as is a deleted account database the reaper has emptied,
and deleted rows older than that are dropped, at most once per ``reclaim_interval`` per database
(the scan reads the whole table). Every removal re-checks its reason under the locks
that keep writers out (``DatabaseBroker.remove_if``), so a row or a re-creation that
lands meanwhile is never acknowledged and then lost.

Config ``[db_replicator]``: interval (30), concurrency (8), per_diff (1000),
ship_min_rows (10000), reclaim_age (604800 s, Swift's week), reclaim_interval (3600 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from swiftlike.common.nodes import node_key
from swiftlike.common.timestamp import Timestamp
from swiftlike.daemons.base import Daemon, DaemonContext, PassStats
from swiftlike.storage import replication_wire as wire
from swiftlike.storage.replication_wire import VERB_HEADER

# The storage-side modules (aiohttp.web, SQLite brokers) and the aiohttp node client are
# imported only when a device holds databases: a ``replicate --once`` process on an
# object-only device then starts without them.
KIND_DIR_NAMES = ("accounts", "containers")
SHIP_CHUNK = 1024 * 1024  # bytes of a shipped database read per thread hop

LOG = logging.getLogger(__name__)


def list_databases(device_path: str, kind_dir: str) -> list[tuple[str, str, str]]:
    """(partition, hash, path) of every database file on a device."""
    found = []
    root = os.path.join(device_path, kind_dir)
    with contextlib.suppress(FileNotFoundError):
        for part in os.listdir(root):
            if not part.isdigit():
                continue
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                for suffix in os.listdir(os.path.join(root, part)):
                    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                        for db_hash in os.listdir(os.path.join(root, part, suffix)):
                            path = os.path.join(root, part, suffix, db_hash, f"{db_hash}.db")
                            if os.path.exists(path):
                                found.append((part, db_hash, path))
    return found


def _load_points(path: str) -> dict[str, Any]:
    try:
        with open(path + ".sync", encoding="utf-8") as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) else {}
    except (FileNotFoundError, ValueError):
        return {}


def _save_points(path: str, points: dict[str, Any]) -> None:
    tmp = path + ".sync.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(points, handle)
    os.rename(tmp, path + ".sync")


def _holds_databases(device_path: str) -> bool:
    return any(os.path.isdir(os.path.join(device_path, d)) for d in KIND_DIR_NAMES)


def read_db(server_type: str, path: str, start: int, count: int
            ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The stat row (with ``sync_id``, the file's own id, ``max_row``, its highest item
    ROWID, and ``clone_of``, see :func:`~swiftlike.storage.db_ship.clone_of`) and up to
    ``count`` rows past ``start``."""
    from swiftlike.storage.db_replication_server import open_broker
    from swiftlike.storage.db_ship import clone_of, max_row

    broker = open_broker(server_type, path, fsync=False)
    try:
        info = broker.get_info()
        info["sync_id"] = broker.sync_id()
        info["max_row"] = max_row(broker)
        info["clone_of"] = clone_of(broker)
        return info, broker.get_items_since(start, count)
    finally:
        broker.close()


def snapshot_db(server_type: str, path: str, tmp_dir: str) -> tuple[str, int]:
    """A consistent copy of the database to ship, and its highest item ROWID."""
    from swiftlike.storage.db_replication_server import open_broker
    from swiftlike.storage.db_ship import snapshot

    broker = open_broker(server_type, path, fsync=False)
    try:
        return snapshot(broker, tmp_dir)
    finally:
        broker.close()


def _reclaimable_db(server_type: str, info: dict[str, Any], cutoff: Timestamp) -> bool:
    """Deleted before ``cutoff`` and empty: a container with its deletion reported to its
    account (which would otherwise list it for ever); an account that lists no live
    container (the reaper has emptied it, :mod:`swiftlike.daemons.reaper`).

    Account servers answer 404 to a report for an account they do not hold, so a late
    report cannot bring a removed account back to life.
    """
    put, delete = Timestamp(info["put_timestamp"] or 0), Timestamp(info["delete_timestamp"] or 0)
    if not put < delete < cutoff:
        return False
    if server_type == "account":
        return not info.get("container_count")
    return server_type == "container" and not info.get("object_count") and \
        Timestamp(info.get("reported_delete_timestamp") or 0) >= delete


def reclaim_db(server_type: str, path: str, now: float, reclaim_age: float,
               reclaim_interval: float) -> tuple[bool, int]:
    """(whether the whole database was removed, how many deleted rows were dropped)."""
    from swiftlike.storage.db_replication_server import open_broker

    cutoff = Timestamp(now - reclaim_age)
    broker = open_broker(server_type, path, fsync=False)
    try:
        if _reclaimable_db(server_type, broker.get_info(), cutoff) and broker.remove_if(
                lambda conn: _reclaimable_db(server_type, broker.info_in(conn), cutoff)):
            return True, 0
        if now - broker.last_reclaim() < reclaim_interval:
            return False, 0
        return False, broker.reclaim(cutoff.internal, Timestamp(now).internal)
    finally:
        broker.close()


def remove_delivered(server_type: str, path: str, shipped: dict[str, Any],
                     point: int) -> bool:
    """Remove a handoff database whose rows up to ``point`` and whose timestamps and
    metadata (as in ``shipped``) every primary has taken, unless it changed since."""
    from swiftlike.storage.db_replication_server import open_broker

    broker = open_broker(server_type, path, fsync=False)

    def unchanged(conn: Any) -> bool:
        info = broker.info_in(conn)
        if any(info.get(key) != shipped.get(key)
               for key in ("put_timestamp", "delete_timestamp", "metadata")):
            return False
        return conn.execute(f"SELECT 1 FROM {broker.item_table} WHERE ROWID > ? LIMIT 1",
                            (point,)).fetchone() is None

    try:
        return broker.remove_if(unchanged)
    finally:
        broker.close()


class DatabaseReplicator(Daemon):
    """One pass over every local account and container database: :meth:`run_once`."""

    name = "replication"
    section = "db_replicator"
    default_concurrency = 8
    pass_failed = "database replication pass failed"

    def __init__(self, ctx: DaemonContext, conf: dict[str, Any] | None = None) -> None:
        super().__init__(ctx, conf)
        self.per_diff = max(1, int(self.conf.get("per_diff", 1000)))
        self.ship_min_rows = int(self.conf.get("ship_min_rows", 10000))
        self.reclaim_age = float(self.conf.get("reclaim_age", 7 * 24 * 3600))
        self.reclaim_interval = float(self.conf.get("reclaim_interval", 3600))

    async def run_once(self, stats_by_device: dict[str, PassStats] | None = None
                       ) -> dict[str, Any]:
        results = {}
        for dev in self.ctx.local_devices():
            stats = (stats_by_device or {}).get(dev["device"]) or PassStats(
                "db_replication", dev["device"])
            await self.replicate_device(dev, stats)
            if stats_by_device is None:
                results[dev["device"]] = await self.ctx.run_io(
                    stats.save, self.ctx.device_path(dev["device"]))
        return results

    async def replicate_device(self, dev: dict[str, Any], stats: PassStats) -> None:
        device_path = self.ctx.device_path(dev["device"])
        from swiftlike.storage.db_files import remove_stale_tmp

        stale = await self.ctx.run_io(remove_stale_tmp, device_path,
                                      time.time() - self.reclaim_age)
        if stale:
            stats.add("tmp_entries_removed", stale)
        if not await self.ctx.run_io(_holds_databases, device_path):
            return
        from swiftlike.storage.db_replication_server import KIND_DIRS

        semaphore = asyncio.Semaphore(self.concurrency)
        for server_type, kind_dir in KIND_DIRS.items():
            dbs = await self.ctx.run_io(list_databases, device_path, kind_dir)

            async def guarded(part: str, db_hash: str, path: str,
                              server_type: str = server_type) -> None:
                async with semaphore:
                    try:
                        await self.replicate_db(dev, server_type, part, db_hash, path, stats)
                    except Exception as err:
                        LOG.exception("replicating %s failed", path)
                        stats.error(f"{server_type} db {db_hash}: {err!r}")

            await asyncio.gather(*(guarded(*db) for db in dbs))

    async def replicate_db(self, dev: dict[str, Any], server_type: str, part: str,
                           db_hash: str, path: str, stats: PassStats) -> None:
        ring = self.ctx.ring
        primaries = ring.get_part_nodes(int(part))
        is_primary = any(n["id"] == dev["id"] for n in primaries)
        peers = [n for n in primaries if n["id"] != dev["id"]]
        stats.add(f"{server_type}_dbs")
        removed, reclaimed = await self.ctx.run_io(
            reclaim_db, server_type, path, time.time(), self.reclaim_age,
            self.reclaim_interval)
        if reclaimed:
            stats.add(f"{server_type}_rows_reclaimed", reclaimed)
        if removed:
            stats.add(f"{server_type}_dbs_reclaimed")
            return
        shipped, _ = await self.ctx.run_io(read_db, server_type, path, 0, 0)
        points = await self.ctx.run_io(_load_points, path)
        results = await asyncio.gather(*(
            self._sync_peer(server_type, part, db_hash, path, peer, shipped, points, stats,
                            self.ctx.device_path(dev["device"]))
            for peer in peers), return_exceptions=True)
        current = {node_key(peer) for peer in peers}
        for stale in [key for key in points if key not in current]:
            del points[stale]  # a peer the ring no longer names: its point means nothing
        await self.ctx.run_io(_save_points, path, points)
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures:
            stats.error(f"{server_type} db {db_hash}: {failure}")
        if not is_primary and not failures:
            # every primary has all our rows: the handoff copy has done its job, unless
            # something arrived since (checked again under the writers' locks). The
            # current primaries' points only: a node a rebalance took away kept its last
            # point in the file, and held the handoff here for ever.
            point = min(int(points.get(node_key(peer), {}).get("row", 0)) for peer in peers)
            if await self.ctx.run_io(remove_delivered, server_type, path, shipped, point):
                stats.add(f"{server_type}_handoffs_removed")

    async def _request(self, peer: dict[str, Any], server_type: str, part: str,
                       db_hash: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._post(peer, server_type, part, db_hash, body["op"],
                                wire.pack(body), {"Content-Type": wire.MSGPACK_TYPE})

    async def _post(self, peer: dict[str, Any], server_type: str, part: str, db_hash: str,
                    what: str, body: bytes | AsyncIterator[bytes], headers: dict[str, str]
                    ) -> dict[str, Any]:
        """One REPLICATE to ``peer``; its msgpack answer (RuntimeError unless 200)."""
        from swiftlike.common.node_client import NODE_ERRORS

        try:
            async with self.ctx.client.request(
                    peer, "POST", f"/{peer['device']}/{part}/{db_hash}", body=body,
                    headers={"X-Backend-Server-Type": server_type, VERB_HEADER: "REPLICATE",
                             **headers}) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{what} to {node_key(peer)}: {resp.status} "
                                       f"{raw[:200]!r}")
        except NODE_ERRORS as err:
            raise RuntimeError(f"{what} to {node_key(peer)}: {err!r}") from err
        return wire.unpack(raw)

    async def _sync_peer(self, server_type: str, part: str, db_hash: str, path: str,
                         peer: dict[str, Any], info: dict[str, Any], points: dict[str, Any],
                         stats: PassStats, device_path: str) -> None:
        """Push ``info`` (the stat row read once for every peer: what a handoff's removal
        is checked against), the whole file to a peer without one when it is big, and
        the rows past the peer's point."""
        key = node_key(peer)
        sync_info = {k: info.get(k) for k in ("account", "container", "put_timestamp",
                                               "delete_timestamp", "metadata")
                     if k in info}
        sender_id = info["sync_id"]
        sync = {"op": "sync", "info": sync_info, "sender_id": sender_id}
        if info.get("clone_of"):
            sync["clone_of"] = list(info["clone_of"])
        big = int(info.get("max_row") or 0) > self.ship_min_rows
        answer = await self._request(peer, server_type, part, db_hash,
                                     {**sync, "create": not big})
        if answer.get("missing"):
            answer = await self._ship(peer, server_type, part, db_hash, path, sender_id,
                                      device_path)
            if answer.get("installed"):
                stats.add(f"{server_type}_dbs_shipped")
            else:  # it got a database meanwhile: merge into that one, row by row
                answer = await self._request(peer, server_type, part, db_hash, sync)
        if answer.get("created"):
            stats.add(f"{server_type}_dbs_created_on_peer")
        point = points.get(key, {})
        if isinstance(answer.get("point"), int):
            # the peer's file says how far it has our rows: it went back with the file
            point = {"file_id": answer.get("file_id"), "row": answer["point"]}
        elif answer.get("created") or point.get("file_id") != answer.get("file_id"):
            point = {"file_id": answer.get("file_id"), "row": 0}  # an older peer
        start = int(point.get("row", 0))
        while True:
            _, rows = await self.ctx.run_io(read_db, server_type, path, start, self.per_diff)
            if not rows:
                break
            last = max(int(r["ROWID"]) for r in rows)
            result = await self._request(peer, server_type, part, db_hash,
                                         {"op": "merge_items", "rows": rows,
                                          "sender_id": sender_id, "point": last})
            stats.add(f"{server_type}_rows_pushed", len(rows))
            stats.add(f"{server_type}_rows_changed", int(result.get("changed", 0)))
            start = last
            point = {"file_id": result.get("file_id", point.get("file_id")), "row": start}
            points[key] = point
            if len(rows) < self.per_diff:
                break
        points[key] = point

    async def _ship(self, peer: dict[str, Any], server_type: str, part: str, db_hash: str,
                    path: str, sender_id: str, device_path: str) -> dict[str, Any]:
        """Send a snapshot of the whole database; the peer's answer (``installed``)."""
        from swiftlike.storage.db_files import remove_if_present
        from swiftlike.storage.db_replication_server import SHIP_HEADER

        snapshot, point = await self.ctx.run_io(snapshot_db, server_type, path,
                                                os.path.join(device_path, "tmp"))
        try:
            size = await self.ctx.run_io(os.path.getsize, snapshot)
            handle = await self.ctx.run_io(open, snapshot, "rb")
        except BaseException:
            await self.ctx.run_io(remove_if_present, snapshot)
            raise

        async def body() -> AsyncIterator[bytes]:
            while chunk := await self.ctx.run_io(handle.read, SHIP_CHUNK):
                yield chunk

        try:
            return await self._post(peer, server_type, part, db_hash, "ship", body(), {
                SHIP_HEADER: f"{sender_id} {point}", "Content-Length": str(size),
                "Content-Type": "application/octet-stream"})
        finally:
            await self.ctx.run_io(handle.close)
            await self.ctx.run_io(remove_if_present, snapshot)

