"""The object updater: replays container updates that failed when the object was written.

The object server writes a failed update to ``<device>/async_pending/<suffix>/<hash>-<ts>``
(see :mod:`swiftlike.storage.updates`). Each pass sends every pending record to the
targets that had failed (or, after a rebalance, to the current primaries, see
:func:`current_targets`); a record whose targets all answered 2xx is deleted, one that
partly succeeded is rewritten (atomically) with only the targets still failing, so no
update is ever sent twice to a server that took it and none is dropped. Container rows
merge by timestamp, so replaying late or out of order converges. Each pass then sends
the container reports the accounts have not heard (see
:mod:`swiftlike.daemons.container_reports`).

A record every one of whose failing targets answers 404, older than ``reclaim_age``, is
dropped: its database was deleted and reclaimed (see :meth:`ObjectUpdater._database_gone`).

Config ``[updater]``: interval (s, 30), concurrency (16), update_timeout (s, 5),
reclaim_age (s, 604800).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

import msgpack

from swiftlike.common.timestamp import Timestamp
from swiftlike.daemons.base import Daemon, DaemonContext, PassStats
from swiftlike.daemons.container_reports import report_containers
from swiftlike.storage.durable_io import write_sidecar
from swiftlike.storage.updates import (
    UpdateTarget,
    backend_path,
    failed_targets,
    settled,
    update_status,
)

LOG = logging.getLogger(__name__)


def list_pending(device_path: str) -> list[str]:
    root = os.path.join(device_path, "async_pending")
    found = []
    with contextlib.suppress(FileNotFoundError):
        for suffix in sorted(os.listdir(root)):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                found.extend(os.path.join(root, suffix, name)
                             for name in sorted(os.listdir(os.path.join(root, suffix))))
    return found


def load_pending(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as handle:
            record = msgpack.unpackb(handle.read(), raw=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, msgpack.UnpackException):
        return {}
    return record if isinstance(record, dict) else {}


def rewrite_pending(path: str, record: dict[str, Any], fsync: bool) -> None:
    """Replace a pending record in place: a temp name beside it, renamed over it."""
    write_sidecar(path, msgpack.packb(record, use_bin_type=True), fsync)


def remove_pending(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(path))


def current_targets(ring: Any, server_type: str, account: str, container: str,
                    targets: list[UpdateTarget]) -> list[UpdateTarget]:
    """Where a queued update goes now: its targets, unless the ring has changed since.

    A record names the database replicas that were primaries when the update failed.
    After a rebalance some of them may hold that database no longer (replication moved
    it), and would refuse the update for ever. Then the update goes to the targets that
    are still primaries and to every other current primary (rows merge by timestamp, so
    a replica that already has the row changes nothing), as Swift's updater, which looks
    the ring up at every replay.
    """
    try:
        part, nodes = ring.get_nodes(account, container if server_type == "container" else None)
    except Exception as err:  # a ring that cannot answer: keep the record's own targets
        LOG.warning("ring lookup for %s/%s failed: %r", account, container, err)
        return targets
    primaries = UpdateTarget.of_nodes(part, nodes)
    kept = [t for t in targets if t in primaries]
    if len(kept) == len(targets):
        return targets
    return kept + [p for p in primaries if p not in kept]


class ObjectUpdater(Daemon):
    """Replays async pending container updates: :meth:`run_once`."""

    name = "updater"
    section = "updater"
    pass_failed = "updater pass failed"

    def __init__(self, ctx: DaemonContext, conf: dict[str, Any] | None = None) -> None:
        super().__init__(ctx, conf)
        self.update_timeout = float(self.conf.get("update_timeout", 5))
        self.reclaim_age = float(self.conf.get("reclaim_age", 7 * 24 * 3600))

    def _database_gone(self, headers: dict[str, str],
                       statuses: dict[UpdateTarget, int | None]) -> bool:
        """Whether a record that keeps failing is for a database that no longer exists:
        every target that failed answered 404, and the update is older than
        ``reclaim_age``. Within that age a primary missing the database gets it by
        replication (a new ring, a rebuilt disk); past it, a deleted container or
        account has been reclaimed (see db_replicator), and the row has nowhere to go.
        Retrying it every pass for ever would only grow the queue."""
        failed = [s for s in statuses.values() if s is None or not 200 <= s < 300]
        if not failed or any(s != 404 for s in failed):
            return False
        try:
            stamp = float(Timestamp(headers.get("X-Timestamp") or ""))
        except ValueError:
            return False
        return stamp < time.time() - self.reclaim_age

    async def run_once(self) -> dict[str, Any]:
        results = {}
        for dev in self.ctx.local_devices():
            device_path = self.ctx.device_path(dev["device"])
            stats = PassStats(self.name, dev["device"])
            pending = await self.ctx.run_io(list_pending, device_path)
            semaphore = asyncio.Semaphore(self.concurrency)

            async def guarded(path: str, stats: PassStats = stats,
                              semaphore: Any = semaphore) -> None:
                async with semaphore:
                    try:
                        await self.replay(path, stats)
                    except Exception as err:
                        LOG.exception("replaying %s failed", path)
                        stats.error(f"{path}: {err!r}")

            await asyncio.gather(*(guarded(p) for p in pending))
            await report_containers(self.ctx, dev, device_path, stats, self.concurrency,
                                    self.update_timeout)
            results[dev["device"]] = await self.ctx.run_io(stats.save, device_path)
        return results

    async def replay(self, path: str, stats: PassStats) -> None:
        record = await self.ctx.run_io(load_pending, path)
        if record is None:
            return
        stats.add("pending_seen")
        try:
            targets = [UpdateTarget(t["host"], str(t["partition"]), t["device"])
                       for t in record["targets"]]
            method = record["op"]
            headers = dict(record["headers"])
            account, container, obj = record["account"], record["container"], record.get("obj")
        except (KeyError, TypeError):
            LOG.error("unreadable async pending %s: quarantining", path)
            await self.ctx.run_io(_quarantine_pending, path)
            stats.add("unreadable")
            return
        headers.setdefault("X-Backend-Server-Type", record.get("server_type", "container"))
        targets = current_targets(self.ctx.ring, headers["X-Backend-Server-Type"], account,
                                  container, targets)
        statuses: dict[UpdateTarget, int | None] = {}

        async def send(target: UpdateTarget) -> bool:
            status = await update_status(
                self.ctx.client, target, method,
                backend_path(target, account, container, obj), headers, self.update_timeout)
            statuses[target] = status
            return settled(status)

        failed = await failed_targets(targets, send)
        if not failed:
            await self.ctx.run_io(remove_pending, path)
            stats.add("successes")
            return
        if self._database_gone(headers, statuses):
            LOG.info("dropping %s: every database it updates has been gone for longer "
                     "than reclaim_age", path)
            await self.ctx.run_io(remove_pending, path)
            stats.add("dropped_gone")
            return
        stats.add("failures")
        if len(failed) < len(targets):
            record["targets"] = [{"host": t.host, "partition": t.partition,
                                  "device": t.device} for t in failed]
            await self.ctx.run_io(rewrite_pending, path, record, self.ctx.fsync)



def _quarantine_pending(path: str) -> None:
    device_path = os.path.dirname(os.path.dirname(os.path.dirname(path)))
    target = os.path.join(device_path, "quarantined", "async_pending")
    os.makedirs(target, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.rename(path, os.path.join(target, os.path.basename(path)))
