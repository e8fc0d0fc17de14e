"""Updates one server sends another after a write, and the on-disk queue when they fail.

The object server tells container servers about each PUT/DELETE; the container server
tells account servers about container changes. They are sent concurrently with a short
timeout; any target that fails is written to ``<device>/async_pending`` (msgpack,
fsynced, atomically renamed) for the updater daemon to retry.

Object rows travel through an :class:`UpdateBatcher`: under load many object writes of
one node name the same container replica, and one ``PATCH`` request carrying all their
rows costs the two nodes one HTTP exchange instead of one per object. A row still
succeeds or fails on its own deadline, and a failed row is queued exactly as before.

Async pending record (msgpack map):
``{"op": "PUT"|"POST"|"DELETE", "account", "container", "obj" (None for account updates),
"server_type": "container"|"account", "headers": {...},
"targets": [{"host": "ip:port", "partition": "p", "device": "d"}, ...]}``
``targets`` lists only the targets that failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp

from ring.hashing import hash_path_hex, suffix_of
from swiftlike.common.backend_http import UnsafeHeader
from swiftlike.common.node_client import NodeClient
from swiftlike.common.nodes import host_port
from swiftlike.common.timestamp import Timestamp
from swiftlike.storage.container_db import content_type_row
from swiftlike.storage.durable_io import makedirs_durable, write_record_atomic

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpdateTarget:
    host: str
    partition: str
    device: str

    @classmethod
    def of_nodes(cls, partition: int | str, nodes: list[dict[str, Any]]
                 ) -> list[UpdateTarget]:
        """The targets of a partition's ring nodes (``ring.get_nodes``' answer)."""
        return [cls(host_port(n["ip"], n["port"]), str(partition), n["device"])
                for n in nodes]

    @property
    def node(self) -> dict[str, Any]:
        """``host`` ("ip:port", "[v6]:port") as the ``ip``/``port`` a NodeClient takes."""
        ip, _, port = self.host.rpartition(":")
        return {"ip": ip.strip("[]"), "port": int(port)}


def parse_update_targets(hosts: str | None, partition: str | None,
                         devices: str | None) -> list[UpdateTarget]:
    """X-*-Host / X-*-Partition / X-*-Device (comma-separated) as targets."""
    if not hosts or partition is None or not devices:
        return []
    host_list = [h.strip() for h in hosts.split(",") if h.strip()]
    device_list = [d.strip() for d in devices.split(",") if d.strip()]
    partitions = [p.strip() for p in partition.split(",")]
    targets = []
    for index, host in enumerate(host_list):
        device = device_list[index] if index < len(device_list) else device_list[-1]
        part = partitions[index] if index < len(partitions) else partitions[-1]
        targets.append(UpdateTarget(host, part, device))
    return targets


def targets_in_headers(headers: Mapping[str, str], server: str) -> list[UpdateTarget]:
    """The update targets a backend request names for ``server`` ("Container" or
    "Account"): its ``X-<server>-Host`` / ``-Partition`` / ``-Device`` headers."""
    return parse_update_targets(headers.get(f"X-{server}-Host"),
                                headers.get(f"X-{server}-Partition"),
                                headers.get(f"X-{server}-Device"))


def write_async_pending(device_path: str, record: dict, timestamp: str, hash_prefix: bytes,
                        hash_suffix: bytes, fsync: bool = True) -> str:
    """Queue a failed update durably under ``async_pending/<suffix>/<hash>-<timestamp>``."""
    object_hash = hash_path_hex(record["account"], record["container"], record.get("obj"),
                                prefix=hash_prefix, suffix=hash_suffix)
    directory = os.path.join(device_path, "async_pending", suffix_of(object_hash))
    makedirs_durable(directory, fsync)
    final = os.path.join(directory, f"{object_hash}-{timestamp}")
    write_record_atomic(device_path, final, record, fsync, "async")
    return final


def backend_path(target: UpdateTarget, account: str, container: str,
                 obj: str | None = None) -> str:
    parts = [target.device, target.partition, account, container]
    if obj is not None:
        parts.append(obj)
    return "/" + "/".join(quote(part, safe="") if i < 4 else quote(part, safe="/")
                          for i, part in enumerate(parts))


#: what a failed update raises: no answer in time, a refused or broken connection, or a
#: header the client refuses to send (queued like any failure, so the row is not lost;
#: any other ValueError is a bug and propagates)
UPDATE_ERRORS = (TimeoutError, aiohttp.ClientError, OSError, UnsafeHeader)


#: What :func:`update_status` reports for an account server's "this account is deleted"
#: (404 with ``X-Account-Status: Deleted``).
ACCOUNT_DELETED = 410


def settled(status: int | None) -> bool:
    """An update that needs no retry: taken (2xx), or a container report the account
    refused because it is deleted. Such a report must not wait in async_pending: the
    account's containers go with the reaper (whose deletions it does take), and after
    the account database is removed a re-created account would take the stale report
    and list the old container again. The container's own database still reports its
    current state on the updater's sweeps."""
    return status is not None and (200 <= status < 300 or status == ACCOUNT_DELETED)


async def send_one_update(client: NodeClient, target: UpdateTarget, method: str,
                          path: str, headers: dict[str, str], timeout_s: float) -> bool:
    """One backend update; True once settled. 404 counts as failure (retry later)."""
    return settled(await update_status(client, target, method, path, headers, timeout_s))


async def update_status(client: NodeClient, target: UpdateTarget, method: str,
                        path: str, headers: dict[str, str], timeout_s: float) -> int | None:
    """One backend update's status; None when the node did not answer,
    :data:`ACCOUNT_DELETED` when a deleted account refused it. Anything but 2xx is
    logged."""
    try:
        async with asyncio.timeout(timeout_s):
            async with client.request(target.node, method, path, headers=headers) as resp:
                await resp.read()
    except UPDATE_ERRORS as err:
        LOG.warning("update %s %s%s failed: %r", method, target.host, path, err)
        return None
    if not 200 <= resp.status < 300:
        LOG.warning("update %s %s%s answered %s", method, target.host, path, resp.status)
    if resp.status == 404 and resp.headers.get("X-Account-Status", "").lower() == "deleted":
        return ACCOUNT_DELETED
    return int(resp.status)


async def failed_targets(targets: list[UpdateTarget],
                         send: Callable[[UpdateTarget], Awaitable[bool]]
                         ) -> list[UpdateTarget]:
    """Send to every target concurrently; returns the targets ``send`` reported failed."""
    if len(targets) == 1:  # the usual case (one container replica per object replica):
        # await directly, no task and gathering future per update
        return [] if await send(targets[0]) else list(targets)
    results = await asyncio.gather(*(send(target) for target in targets))
    return [target for target, ok in zip(targets, results, strict=True) if not ok]


async def send_updates(client: NodeClient, targets: list[UpdateTarget],
                       method: str, account: str, container: str, obj: str | None,
                       headers: dict[str, str], timeout_s: float) -> list[UpdateTarget]:
    """One-row requests to every target concurrently; returns the targets that failed."""
    return await failed_targets(targets, lambda target: send_one_update(
        client, target, method, backend_path(target, account, container, obj), headers,
        timeout_s))


def pending_record(method: str, account: str, container: str, obj: str | None,
                   server_type: str, headers: dict[str, str],
                   failed: list[UpdateTarget]) -> dict:
    return {
        "op": method,
        "account": account,
        "container": container,
        "obj": obj,
        "server_type": server_type,
        "headers": headers,
        "targets": [{"host": t.host, "partition": t.partition, "device": t.device}
                    for t in failed],
    }


#: The verb of a batch of object rows. Swift's container server calls it UPDATE; aiohttp's
#: HTTP parser accepts only registered methods, so ours is PATCH (and an older node that
#: does not know it answers 405, never a silent success).
BATCH_METHOD = "PATCH"

#: Most rows one PATCH carries (keeps the body well under the node's 1 MiB body limit
#: even with 1024-byte non-ASCII object names).
BATCH_MAX_ROWS = 128


def object_row(method: str, obj: str, timestamp: Timestamp,
               extra: Mapping[str, str]) -> dict[str, Any]:
    """The container row an object PUT (with X-Size/-Etag/-Content-Type), a POST that set
    a Content-Type (X-Content-Type) or a DELETE makes."""
    if method == "POST":
        return content_type_row(obj, extra.get("X-Content-Type") or "", timestamp.internal)
    if method == "PUT":
        return {"name": obj, "created_at": timestamp.internal,
                "size": int(extra.get("X-Size") or 0),
                "content_type": extra.get("X-Content-Type") or "application/octet-stream",
                "etag": (extra.get("X-Etag") or "").strip('"'), "deleted": 0}
    return {"name": obj, "created_at": timestamp.internal, "size": 0, "content_type": "",
            "etag": "", "deleted": 1}


def account_report_headers(info: dict[str, Any]) -> dict[str, str]:
    """What a container tells its account servers: its timestamps and counts, stamped
    now (the account keeps the counts of the newest report)."""
    return {"X-Backend-Server-Type": "account",
            "X-Timestamp": Timestamp.now().internal,
            "X-Put-Timestamp": info["put_timestamp"],
            "X-Delete-Timestamp": info["delete_timestamp"],
            "X-Object-Count": str(info["object_count"]),
            "X-Bytes-Used": str(info["bytes_used"])}


def row_headers(row: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """(method, headers) of the one-row request that carries ``row`` (the updater's form)."""
    headers = {"X-Backend-Server-Type": "container", "X-Timestamp": row["created_at"]}
    if row.get("ctype_timestamp") and Timestamp(row["created_at"]) == Timestamp(0):
        return "POST", {**headers, "X-Timestamp": row["ctype_timestamp"],
                        "X-Content-Type": row["content_type"]}
    if row["deleted"]:
        return "DELETE", headers
    headers.update({"X-Size": str(row["size"]), "X-Content-Type": row["content_type"],
                    "X-Etag": row["etag"]})
    return "PUT", headers


class LocalRows(Protocol):
    """The container server of this node, as the object server's updates see it."""

    def serves(self, target: UpdateTarget) -> bool:
        """Whether ``target`` is this node's own listening address."""

    async def merge(self, target: UpdateTarget, account: str, container: str,
                    rows: list[dict[str, Any]]) -> bool:
        """What a PATCH of ``rows`` would do; True once durable."""

    async def park_unflushed(self, target: UpdateTarget, account: str, container: str,
                             row: dict[str, Any], device_path: str) -> bool:
        """``row`` parked for the next flush of ``device_path``; False: send it."""


@dataclass
class _QueuedRow:
    row: dict[str, Any]
    deadline: float
    future: asyncio.Future[bool]


@dataclass
class _Queue:
    target: UpdateTarget
    account: str
    container: str
    rows: list[_QueuedRow] = field(default_factory=list)
    busy: bool = False


class UpdateBatcher:
    """Coalesces object-row updates headed to the same container database replica.

    One request per (container server, device, partition, container) is in flight at a
    time; rows that arrive meanwhile wait and leave together in the next ``PATCH``.
    An idle node therefore sends each row at once (no added latency), a busy one sends
    one request per round trip instead of one per object. Every row keeps its own
    deadline (the caller's timeout): a row whose deadline passes before its batch
    answers reports failure, so the caller queues it in async_pending, as Swift does
    with an update that does not finish in time. A container server that does not know
    ``PATCH`` (405/501) gets the rows one by one.
    """

    def __init__(self, client: Callable[[], NodeClient],
                 max_rows: int = BATCH_MAX_ROWS) -> None:
        self._client = client
        self.max_rows = max_rows
        #: set when this node serves container databases too (see :meth:`deliver_locally`)
        self.local: LocalRows | None = None
        self._queues: dict[tuple[str, str, str, str, str], _Queue] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._unbatched_hosts: set[str] = set()
        self.batches_sent = 0  # observability and tests
        self.rows_sent = 0
        self.rows_local = 0

    def deliver_locally(self, local: LocalRows) -> None:
        """Hand rows for a database of this very node to ``local`` instead of a PATCH.

        A small cluster (the all-in-one, a few boxes) keeps container replicas on the
        same nodes as objects, and the proxy gives each object write the container
        replica on its own node when there is one. Measured on the all-in-one: the
        container rows cost the nodes about a third of their CPU per small PUT, mostly
        the PATCH round trips (HTTP on both sides, JSON) and the commits of small batches.
        A local row joins the container server's next shared transaction directly.
        """
        self.local = local

    async def park_before_flush(self, targets: list[UpdateTarget], account: str,
                                container: str, row: dict[str, Any], device_path: str,
                                object_file: str) -> list[UpdateTarget]:
        """The targets whose row now rides the object's own next flush.

        Why: a row for a database on the object's device, parked before the flush that
        makes the object's name durable, needs no flush of its own; measured on the
        all-in-one, that third flush wait of a small PUT cost the servers about a tenth
        of their CPU. The row names ``object_file``: a crash inside the flush may keep
        the row without the name, and folding drops a row whose file is not there.
        """
        local = self.local
        if local is None:
            return []
        parked = []
        for target in targets:
            if local.serves(target) and await local.park_unflushed(
                    target, account, container, {**row, "check": object_file}, device_path):
                self.rows_local += 1
                parked.append(target)
        return parked

    async def send(self, target: UpdateTarget, account: str, container: str,
                   row: dict[str, Any], timeout_s: float) -> bool:
        """Deliver one row; True once a container server committed it in time."""
        local = self.local
        if local is not None and local.serves(target):
            self.rows_local += 1
            try:
                async with asyncio.timeout(timeout_s):
                    return await local.merge(target, account, container, [row])
            except TimeoutError:
                return False  # as a PATCH that did not answer in time: async_pending
        loop = asyncio.get_running_loop()
        key = (target.host, target.device, target.partition, account, container)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(target, account, container)
        future: asyncio.Future[bool] = loop.create_future()
        queue.rows.append(_QueuedRow(row, loop.time() + timeout_s, future))
        if not queue.busy:
            queue.busy = True
            task = loop.create_task(self._drain(key, queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self, key: tuple[str, str, str, str, str], queue: _Queue) -> None:
        loop = asyncio.get_running_loop()
        live: list[_QueuedRow] = []
        try:
            while queue.rows:
                batch = queue.rows[:self.max_rows]
                del queue.rows[:self.max_rows]
                now = loop.time()
                live = []
                for queued in batch:
                    if queued.future.done():
                        continue  # the caller went away
                    if queued.deadline <= now:
                        queued.future.set_result(False)
                    else:
                        live.append(queued)
                if not live:
                    continue
                budget = min(q.deadline for q in live) - now
                results = await self._deliver(queue, [q.row for q in live], budget)
                for queued, ok in zip(live, results, strict=True):
                    if not queued.future.done():
                        queued.future.set_result(ok)
                live = []
        finally:
            for queued in live:  # cancelled or crashed mid-batch: those rows failed
                if not queued.future.done():
                    queued.future.set_result(False)
            queue.busy = False
            if queue.rows:  # only when cancelled: fail what is left rather than hang
                for queued in queue.rows:
                    if not queued.future.done():
                        queued.future.set_result(False)
                queue.rows.clear()
            if self._queues.get(key) is queue:
                del self._queues[key]

    async def _deliver(self, queue: _Queue, rows: list[dict[str, Any]],
                       timeout_s: float) -> list[bool]:
        target = queue.target
        client = self._client()
        if target.host not in self._unbatched_hosts:
            status = await self._post_batch(client, queue, rows, timeout_s)
            if status not in (405, 501):
                return [status is not None and 200 <= status < 300] * len(rows)
            self._unbatched_hosts.add(target.host)
        return list(await asyncio.gather(*(
            _send_row(client, target, queue.account, queue.container, row, timeout_s)
            for row in rows)))

    async def _post_batch(self, client: NodeClient, queue: _Queue,
                          rows: list[dict[str, Any]], timeout_s: float) -> int | None:
        """``PATCH /<dev>/<part>/<a>/<c>`` with the rows; the status, None on failure."""
        target = queue.target
        path = backend_path(target, queue.account, queue.container)
        url = f"{target.host}{path}"
        headers = {"X-Backend-Server-Type": "container",
                   "X-Timestamp": Timestamp.now().internal,
                   "Content-Type": "application/json"}
        body = json.dumps(rows, ensure_ascii=False).encode("utf-8", "surrogateescape")
        self.batches_sent += 1
        self.rows_sent += len(rows)
        try:
            async with asyncio.timeout(timeout_s):
                async with client.request(target.node, BATCH_METHOD, path, headers=headers,
                                          body=body) as resp:
                    await resp.read()
            if not 200 <= resp.status < 300 and resp.status not in (405, 501):
                LOG.warning("update PATCH %s (%d rows) answered %s", url, len(rows),
                            resp.status)
            return resp.status
        except UPDATE_ERRORS as err:
            LOG.warning("update PATCH %s (%d rows) failed: %r", url, len(rows), err)
            return None

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def _send_row(client: NodeClient, target: UpdateTarget, account: str,
                    container: str, row: dict[str, Any], timeout_s: float) -> bool:
    """One row as its own PUT/DELETE (for container servers without ``PATCH``)."""
    method, headers = row_headers(row)
    return await send_one_update(client, target, method,
                                 backend_path(target, account, container, row["name"]),
                                 headers, timeout_s)
