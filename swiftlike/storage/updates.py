"""Updates one server sends another after a write, and the on-disk queue when they fail.

The object server tells container servers about each PUT/DELETE; the container server
tells account servers about container changes. They are sent concurrently with a short
timeout; any target that fails is written to ``<device>/async_pending`` (msgpack,
fsynced, atomically renamed) for the updater daemon to retry.

Async pending record (msgpack map):
``{"op": "PUT"|"DELETE", "account", "container", "obj" (None for account updates),
"server_type": "container"|"account", "headers": {...},
"targets": [{"host": "ip:port", "partition": "p", "device": "d"}, ...]}``
``targets`` lists only the targets that failed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp

from ring.hashing import hash_path_hex, suffix_of
from swiftlike.storage.diskfile import makedirs_durable, write_record_atomic

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpdateTarget:
    host: str
    partition: str
    device: str


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


async def send_one_update(session: aiohttp.ClientSession, target: UpdateTarget, method: str,
                          path: str, headers: dict[str, str], timeout_s: float) -> bool:
    """One backend update; True on 2xx. 404 counts as failure (retry later)."""
    url = f"http://{target.host}{path}"
    try:
        async with session.request(method, url, headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            await resp.read()
            if 200 <= resp.status < 300:
                return True
            LOG.warning("update %s %s answered %s", method, url, resp.status)
            return False
    except (TimeoutError, aiohttp.ClientError, OSError) as err:
        LOG.warning("update %s %s failed: %r", method, url, err)
        return False


async def send_updates(session: aiohttp.ClientSession, targets: list[UpdateTarget],
                       method: str, account: str, container: str, obj: str | None,
                       headers: dict[str, str], timeout_s: float) -> list[UpdateTarget]:
    """Send to every target concurrently; returns the targets that failed."""
    if not targets:
        return []
    if len(targets) == 1:  # the usual case (one container replica per object replica):
        # await directly, no task and gathering future per update
        target = targets[0]
        ok = await send_one_update(session, target, method,
                                   backend_path(target, account, container, obj), headers,
                                   timeout_s)
        return [] if ok else [target]
    results = await asyncio.gather(*(
        send_one_update(session, target, method,
                        backend_path(target, account, container, obj), headers, timeout_s)
        for target in targets))
    return [target for target, ok in zip(targets, results, strict=True) if not ok]


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
