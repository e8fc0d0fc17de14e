"""The object auditor: finds damaged objects before a client does, and has them rebuilt.

It walks every hash directory of every local device at a bounded rate (``files_per_second``
and ``bytes_per_second``) and checks the winning ``.data``: its metadata must be readable
and its size equal ``Content-Length`` (the quick pass); the full pass also recomputes the
md5 of the content against ``ETag`` and, for streamed objects, the xxh3 body stamp the
node took while writing. Both are checked because since the body footer
(``swiftlike/common/body_footer.py``) the two come from different places: the stamp from
the bytes this node wrote, the ETag from the proxy's md5 of what the client sent; either
disagreeing with the file means clients would be served something wrong. A bad object
is moved to ``<device>/quarantined/`` and its suffix is invalidated, so the replicators
of the other primaries see a different suffix hash and push a good copy back. On the
way it (re)queues objects that carry X-Delete-At in the node's expiring queue, so expiry
survives lost queue entries.

The full pass reads bodies with O_DIRECT (falling back to ordinary reads where the file
system refuses it), for two reasons. It checks what is on the disk, not a copy the page
cache may still hold after the disk went bad. And reading every object of a device
through the page cache would push out the objects clients are reading, for bytes the
auditor never reads again (Swift's auditor drops its reads from the cache for the
second reason).

Config ``[auditor]``: interval (s, 300, full passes), quick_interval (s, 60),
files_per_second (200; 0 = unlimited), bytes_per_second (10 MiB; 0 = unlimited).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import xxhash

from swiftlike.daemons.base import Daemon, DaemonContext, PassStats
from swiftlike.storage.direct_read import AlignedBuffers, DirectReader
from swiftlike.storage.direct_write import ALIGNMENT
from swiftlike.storage.diskfile import (
    BODY_CHECKSUM_KEY,
    gather_ondisk_files,
    quarantine_object_dir,
    read_metadata,
)
from swiftlike.storage.expiring_queue import enqueue_expiring

LOG = logging.getLogger(__name__)
CHUNK = 1 << 20


class SyncRateLimiter:
    """Blocking token bucket for the auditor's worker thread."""

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.allowance = max(self.rate, 1.0)
        self.updated = time.monotonic()

    def consume(self, amount: float) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        self.allowance = min(max(self.rate, 1.0),
                             self.allowance + (now - self.updated) * self.rate)
        self.updated = now
        self.allowance -= amount
        if self.allowance < 0:
            time.sleep(-self.allowance / self.rate)


def read_body_uncached(fd: int, size: int, buffers: AlignedBuffers) -> Iterator[bytes]:
    """The file's first ``size`` bytes in pieces of up to CHUNK, from the disk with
    O_DIRECT (see the module docstring); through the page cache where the file system
    refuses O_DIRECT. Ends early only at the end of the file."""
    reader = DirectReader.open(fd, buffers)
    offset = 0
    try:
        while offset < size:
            # a read never spans more than one buffer, whatever a short read left
            want = min(CHUNK - offset % ALIGNMENT, size - offset)
            if reader is not None:
                try:
                    chunk = reader.read(offset, want)
                except OSError as err:
                    if err.errno != errno.EINVAL:
                        raise
                    reader.close()
                    reader = None
                    continue
            else:
                chunk = os.pread(fd, want, offset)
            if not chunk:
                return
            offset += len(chunk)
            yield chunk
    finally:
        if reader is not None:
            reader.close()


def _content_problem(fd: int, size: int, metadata: dict[str, Any], limiter: SyncRateLimiter,
                     stats: PassStats, buffers: AlignedBuffers) -> str | None:
    """Read the whole body once: md5 against ETag, xxh3 against the body stamp if any."""
    md5 = hashlib.md5(usedforsecurity=False)
    stamp = str(metadata.get(BODY_CHECKSUM_KEY, ""))
    xxh3 = xxhash.xxh3_128() if stamp else None
    for chunk in read_body_uncached(fd, size, buffers):
        md5.update(chunk)
        if xxh3 is not None:
            xxh3.update(chunk)
        limiter.consume(len(chunk))
        stats.add("bytes_audited", len(chunk))
    if xxh3 is not None and xxh3.hexdigest() != stamp:
        return f"xxh3 {xxh3.hexdigest()} != body stamp {stamp}"
    etag = str(metadata.get("ETag", "")).strip('"')
    if etag and md5.hexdigest() != etag:
        return f"md5 {md5.hexdigest()} != ETag {etag}"
    return None


def iter_object_dirs(device_path: str) -> Iterator[str]:
    root = os.path.join(device_path, "objects")
    with contextlib.suppress(FileNotFoundError):
        for part in sorted(os.listdir(root)):
            part_dir = os.path.join(root, part)
            if not part.isdigit():
                continue
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                for suffix in sorted(os.listdir(part_dir)):
                    if len(suffix) != 3:
                        continue
                    suffix_dir = os.path.join(part_dir, suffix)
                    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                        for object_hash in sorted(os.listdir(suffix_dir)):
                            yield os.path.join(suffix_dir, object_hash)


class ObjectAuditor(Daemon):
    """Quick and full audit passes over the local devices."""

    name = "auditor"
    section = "auditor"
    default_interval = 300.0

    def __init__(self, ctx: DaemonContext, conf: dict[str, Any] | None = None) -> None:
        super().__init__(ctx, conf)
        conf = self.conf
        self.quick_interval = float(conf.get("quick_interval", 60))
        self.files_per_second = float(conf.get("files_per_second", 200))
        self.bytes_per_second = float(conf.get("bytes_per_second", 10 * 1024 * 1024))
        # aligned read buffers, reused across objects (a fresh mapping faults per page)
        self.buffers = AlignedBuffers(CHUNK, keep=2)

    async def run_once(self, mode: str = "full") -> dict[str, Any]:
        """One pass (``mode`` "full" or "quick") over every local device."""
        results = {}
        for dev in self.ctx.local_devices():
            device_path = self.ctx.device_path(dev["device"])
            stats = PassStats(self.name, dev["device"])
            stats.counts["full_pass" if mode == "full" else "quick_pass"] = 1
            await asyncio.get_running_loop().run_in_executor(
                None, self.audit_device, device_path, mode == "full", stats)
            results[dev["device"]] = await self.ctx.run_io(stats.save, device_path)
        return results

    def audit_device(self, device_path: str, full: bool, stats: PassStats) -> None:
        """Blocking walk of one device (runs in a worker thread)."""
        files = SyncRateLimiter(self.files_per_second)
        data_bytes = SyncRateLimiter(self.bytes_per_second)
        for object_dir in iter_object_dirs(device_path):
            files.consume(1)
            try:
                self.audit_object(device_path, object_dir, full, data_bytes, stats)
            except Exception as err:
                LOG.exception("auditing %s failed", object_dir)
                stats.error(f"{object_dir}: {err!r}")

    def audit_object(self, device_path: str, object_dir: str, full: bool,
                     limiter: SyncRateLimiter, stats: PassStats) -> None:
        state = gather_ondisk_files(object_dir)
        if state.data_file is None:
            if state.ts_file:
                stats.add("tombstones")
            return
        stats.add("objects_audited")
        path = os.path.join(object_dir, state.data_file)
        problem = None
        try:
            with open(path, "rb") as handle:
                metadata = read_metadata(path, handle.fileno())
                size = os.fstat(handle.fileno()).st_size
                expected = int(metadata.get("Content-Length", -1))
                if expected != size:
                    problem = f"size {size} != Content-Length {expected}"
                elif full:
                    problem = _content_problem(handle.fileno(), size, metadata, limiter,
                                               stats, self.buffers)
        except FileNotFoundError:
            return  # replaced or deleted under us: nothing to judge
        except (OSError, ValueError, msgpack.UnpackException) as err:
            problem = f"unreadable: {err!r}"
        if problem:
            target = quarantine_object_dir(device_path, object_dir)
            stats.add("quarantined")
            LOG.warning("quarantined %s (%s) to %s", object_dir, problem, target)
            return
        self._requeue_expiring(device_path, metadata, state.data_file, stats)

    def _requeue_expiring(self, device_path: str, metadata: dict[str, Any], data_file: str,
                          stats: PassStats) -> None:
        delete_at = metadata.get("X-Delete-At")
        name = str(metadata.get("name", ""))
        if not delete_at or not str(delete_at).isdigit() or name.count("/") < 3:
            return
        _, account, container, obj = name.split("/", 3)
        timestamp = data_file.rpartition(".")[0]
        enqueue_expiring(device_path, account, container, obj, int(delete_at), timestamp,
                         self.ctx.hash_prefix, self.ctx.hash_suffix, self.ctx.fsync)
        stats.add("expiring_seen")

    async def run_forever(self) -> None:
        """Quick passes every quick_interval, a full pass every interval."""
        next_full = time.monotonic()
        while True:
            started = time.monotonic()
            mode = "full" if started >= next_full else "quick"
            if mode == "full":
                next_full = started + self.interval
            try:
                await self.run_once(mode)
            except Exception:
                LOG.exception("audit pass failed")
            await asyncio.sleep(max(0.0, self.quick_interval - (time.monotonic() - started)))
