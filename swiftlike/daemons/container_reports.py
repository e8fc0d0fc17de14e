"""Container reports: every container database tells its account what it holds, until the
account has heard it.

A container server reports to the account servers when it takes object rows, but not
when rows arrive by replication, and a database that replication created or rebuilt
does not even know where its account lives. So, as Swift's container updater does, each
updater pass walks the container databases this device is a primary for and reports
those whose timestamps or counts differ from what they last reported (``reported_*``):
once the container replicas converge, each sends its converged counts, and the newest
report is what the account keeps. The account servers are found by the ring.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from swiftlike.daemons.base import DaemonContext, PassStats
from swiftlike.daemons.db_replicator import list_databases
from swiftlike.storage.updates import UpdateTarget, account_report_headers, send_updates

LOG = logging.getLogger(__name__)

#: Stat-row fields of a report, and the reported_* field each is checked against.
REPORTED = {"put_timestamp": "reported_put_timestamp",
            "delete_timestamp": "reported_delete_timestamp",
            "object_count": "reported_object_count", "bytes_used": "reported_bytes_used"}


def read_unreported(path: str) -> dict[str, Any] | None:
    """The stat row of a container database when it has news for its account."""
    from swiftlike.storage.container_db import ContainerBroker

    broker = ContainerBroker(path, fsync=False)
    try:
        info = broker.get_info()
    finally:
        broker.close()
    if all(str(info[field]) == str(info[reported]) for field, reported in REPORTED.items()):
        return None
    return info


def mark_reported(path: str, info: dict[str, Any]) -> None:
    from swiftlike.storage.container_db import ContainerBroker

    broker = ContainerBroker(path, fsync=True)
    try:
        broker.mark_reported(info)
    finally:
        broker.close()


async def report_containers(ctx: DaemonContext, dev: dict[str, Any], device_path: str,
                            stats: PassStats, concurrency: int, timeout_s: float) -> None:
    """One sweep of a device's container databases (primaries only: a handoff copy is
    on its way home, and its counts may be partial)."""
    ring = ctx.ring
    semaphore = asyncio.Semaphore(concurrency)

    async def one(part: str, path: str) -> None:
        if not any(n["id"] == dev["id"] for n in ring.get_part_nodes(int(part))):
            return
        async with semaphore:
            info = await ctx.run_io(read_unreported, path)
            if info is None:
                return
            account, container = info["account"], info["container"]
            account_part, nodes = ring.get_nodes(account)
            targets = UpdateTarget.of_nodes(account_part, nodes)
            failed = await send_updates(ctx.client, targets, "PUT", account, container,
                                        None, account_report_headers(info), timeout_s)
            if failed:
                stats.add("container_reports_failed")
                return
            await ctx.run_io(mark_reported, path, info)
            stats.add("container_reports_sent")

    async def guarded(part: str, path: str) -> None:
        try:
            await one(part, path)
        except Exception as err:
            LOG.exception("reporting container %s failed", path)
            stats.error(f"container report {path}: {err!r}")

    databases = await ctx.run_io(list_databases, device_path, "containers")
    await asyncio.gather(*(guarded(part, path) for part, _hash, path in databases))

