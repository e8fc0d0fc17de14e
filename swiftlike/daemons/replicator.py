"""The object replicator: keeps every partition's replicas identical, and handoffs empty.

Per local partition it compares its cached suffix hashes with each other primary's
(``REPLICATE``), and for the suffixes that differ runs a missing check (``SSYNC``
missing_check) and pushes only the newer ``.data``/``.ts``/``.meta`` files in one
framed, streamed request (``SSYNC`` updates) on a keep-alive connection. A partition on
a device that is not one of its primaries (a handoff) is pushed to all primaries and
deleted once each of them confirms matching hashes. Many partitions run at once
(``concurrency``); bytes pushed are limited by ``max_bytes_per_second``.
Tombstones older than ``reclaim_age`` are deleted on the way.

Config ``[replicator]``: interval (s, 30), concurrency (16), max_bytes_per_second (0 =
unlimited), reclaim_age (s, 604800), batch_bytes (4 MiB per read hop).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from swiftlike.common.node_client import NODE_ERRORS, node_key
from swiftlike.daemons.base import DaemonContext, PassStats, RateLimiter
from swiftlike.storage import replication_store as store
from swiftlike.storage import replication_wire as wire
from swiftlike.storage.hashes import get_suffix_hashes
from swiftlike.storage.replication_server import VERB_HEADER

LOG = logging.getLogger(__name__)
READ_BATCH_FILES = 128
MISSING_CHECK_SLICE = 4000


class PeerFailed(Exception):
    """A peer did not complete a step: the partition stays (if handoff) and is retried."""


class ObjectReplicator:
    """One replication pass over every local device: :meth:`run_once`."""

    name = "replication"

    def __init__(self, ctx: DaemonContext, conf: dict[str, Any] | None = None) -> None:
        conf = conf if conf is not None else ctx.section("replicator")
        self.ctx = ctx
        self.interval = float(conf.get("interval", 30))
        self.concurrency = max(1, int(conf.get("concurrency", 16)))
        self.reclaim_age = float(conf.get("reclaim_age", 7 * 24 * 3600))
        self.batch_bytes = int(conf.get("batch_bytes", 4 * 1024 * 1024))
        self.limiter = RateLimiter(float(conf.get("max_bytes_per_second", 0)))

    async def run_once(self, devices: list[str] | None = None,
                       partitions: list[int] | None = None) -> dict[str, Any]:
        """Replicate every partition of every local device; returns stats per device."""
        results = {}
        for dev in self.ctx.local_devices():
            if devices and dev["device"] not in devices:
                continue
            results[dev["device"]] = await self.replicate_device(dev, partitions)
        return results

    async def replicate_device(self, dev: dict[str, Any],
                               partitions: list[int] | None = None) -> dict[str, Any]:
        stats = PassStats(self.name, dev["device"])
        device_path = self.ctx.device_path(dev["device"])
        parts = await self.ctx.run_io(store.local_partitions, device_path)
        if partitions is not None:
            parts = [p for p in parts if int(p) in partitions]
        semaphore = asyncio.Semaphore(self.concurrency)

        async def guarded(part: str) -> None:
            async with semaphore:
                try:
                    await self.replicate_partition(dev, device_path, part, stats)
                except Exception as err:  # one bad partition must not stop the pass
                    LOG.exception("replicating %s/%s failed", dev["device"], part)
                    stats.error(f"partition {part}: {err!r}")

        await asyncio.gather(*(guarded(p) for p in parts))
        return await self.ctx.run_io(stats.save, device_path)

    async def replicate_partition(self, dev: dict[str, Any], device_path: str, part: str,
                                  stats: PassStats) -> None:
        ring = self.ctx.ring
        if int(part) >= ring.partition_count:
            stats.error(f"partition {part} is beyond the ring")
            return
        primaries = ring.get_part_nodes(int(part))
        is_primary = any(n["id"] == dev["id"] for n in primaries)
        local_hashes = await self.ctx.run_io(get_suffix_hashes, device_path, part)
        stats.add("partitions")
        if not is_primary:
            stats.add("handoff_partitions")
            if not local_hashes:
                await self.ctx.run_io(store.remove_partition, device_path, part)
                stats.add("handoffs_removed")
                return
        if not local_hashes:
            return
        peers = [n for n in primaries if n["id"] != dev["id"]]
        used = {n["id"] for n in primaries}
        handoffs = ring.get_more_nodes(int(part))
        # Ask every peer first: what the others hold lets two healthy primaries avoid
        # pushing the same suffix to a third that lacks it (the earlier one in ring
        # order does it), which halves the work of rebuilding a wiped device.
        remote = await asyncio.gather(*(self._remote_hashes(p, part) for p in peers),
                                      return_exceptions=True)
        known = {p["id"]: r for p, r in zip(peers, remote, strict=True)
                 if isinstance(r, dict)}
        order = [n["id"] for n in primaries]
        outcomes = await asyncio.gather(*(
            self._sync_with_fallback(device_path, part, local_hashes, peer, handoffs, used,
                                     dev, stats, verify=not is_primary,
                                     remote=remote[i],
                                     skip=self._covered_by_others(
                                         dev, peer, order, known, local_hashes)
                                     if is_primary else set())
            for i, peer in enumerate(peers)))
        if is_primary:
            return
        if all(outcomes):
            now_hashes = await self.ctx.run_io(get_suffix_hashes, device_path, part)
            if now_hashes == local_hashes:
                await self.ctx.run_io(store.remove_partition, device_path, part)
                stats.add("handoffs_removed")
                LOG.info("handoff partition %s on %s delivered to %s and removed", part,
                         dev["device"], [node_key(p) for p in peers])
            else:
                stats.add("handoffs_changed_meanwhile")

    @staticmethod
    def _covered_by_others(dev: dict[str, Any], peer: dict[str, Any], order: list[int],
                           known: dict[int, dict[str, str]],
                           local_hashes: dict[str, str]) -> set[str]:
        """Suffixes ``peer`` lacks that an earlier primary holds identically: its job."""
        lacking = known.get(peer["id"])
        if lacking is None:
            return set()
        mine = order.index(dev["id"])
        covered = set()
        for suffix, digest in local_hashes.items():
            if lacking.get(suffix) == digest:
                continue
            for other in order[:mine]:
                if other != peer["id"] and known.get(other, {}).get(suffix) == digest:
                    covered.add(suffix)
                    break
        return covered

    async def _sync_with_fallback(self, device_path: str, part: str,
                                  local_hashes: dict[str, str], peer: dict[str, Any],
                                  handoffs: Any, used: set[int], dev: dict[str, Any],
                                  stats: PassStats, verify: bool,
                                  remote: Any = None, skip: set[str] | None = None) -> bool:
        """Sync to ``peer``; if its device is unavailable (507) use the next handoff."""
        try:
            if isinstance(remote, BaseException):
                raise remote
            return await self.sync_partition(device_path, part, local_hashes, peer, stats,
                                             verify, remote, skip or set())
        except DeviceGone:
            stats.add("peer_devices_unavailable")
            if verify:  # a handoff job keeps its data until the real primary is back
                return False
            for node in handoffs:
                if node["id"] in used or node["id"] == dev["id"]:
                    continue
                used.add(node["id"])
                try:
                    return await self.sync_partition(device_path, part, local_hashes, node,
                                                     stats, verify)
                except (DeviceGone, PeerFailed):
                    continue
            return False
        except PeerFailed as err:
            LOG.warning("replicating %s/%s to %s failed: %s", dev["device"], part,
                        node_key(peer), err)
            stats.error(str(err))
            return False

    async def _remote_hashes(self, peer: dict[str, Any], part: str,
                             suffixes: list[str] | None = None) -> dict[str, str]:
        path = f"/{peer['device']}/{part}"
        if suffixes:
            path += "/" + "-".join(sorted(suffixes))
        try:
            async with self.ctx.client.request(
                    peer, "POST", path,
                    headers={"X-Backend-Server-Type": "object", VERB_HEADER: "REPLICATE"}) as resp:
                body = await resp.read()
                if resp.status == 507:
                    raise DeviceGone(node_key(peer))
                if resp.status != 200:
                    raise PeerFailed(f"REPLICATE {node_key(peer)} {part}: {resp.status}")
        except NODE_ERRORS as err:
            raise PeerFailed(f"REPLICATE {node_key(peer)} {part}: {err!r}") from err
        hashes = wire.unpack(body)
        if not isinstance(hashes, dict):
            raise PeerFailed(f"REPLICATE {node_key(peer)}: bad answer")
        return hashes

    async def sync_partition(self, device_path: str, part: str, local_hashes: dict[str, str],
                             peer: dict[str, Any], stats: PassStats, verify: bool,
                             remote: dict[str, str] | None = None,
                             skip: set[str] | frozenset[str] = frozenset()) -> bool:
        """Bring ``peer``'s copy of ``part`` up to date with ours; True when it matches."""
        if remote is None:
            remote = await self._remote_hashes(peer, part)
        differing = [s for s, h in local_hashes.items() if remote.get(s) != h]
        if skip:
            stats.add("suffixes_left_to_earlier_primary", len(set(differing) & skip))
            differing = [s for s in differing if s not in skip]
        if not differing:
            return True
        # our cache may be stale (e.g. a file quarantined under us): rehash those first
        fresh = await self.ctx.run_io(get_suffix_hashes, device_path, part, differing)
        differing = [s for s in differing if s in fresh and remote.get(s) != fresh[s]]
        if not differing:
            return True
        stats.add("suffixes_synced", len(differing))
        offers = await self.ctx.run_io(store.list_partition_offers, device_path, part,
                                       differing, self.reclaim_age)
        if offers:
            # a suffix the peer lacks entirely needs no question: it wants everything
            absent = {o.object_hash: store.WANT_DURABLE + (store.WANT_META if o.meta else "")
                      for o in offers if o.suffix not in remote}
            asked = [o for o in offers if o.object_hash not in absent]
            wanted = await self._missing_check(peer, part, asked) if asked else {}
            wanted.update(absent)
            if wanted:
                await self._push(device_path, part, peer, offers, wanted, stats)
        if not verify:
            return True
        after = await self._remote_hashes(peer, part, differing)
        mine = await self.ctx.run_io(get_suffix_hashes, device_path, part)
        return all(after.get(s) == mine.get(s) for s in differing)

    async def _missing_check(self, peer: dict[str, Any], part: str,
                             offers: list[store.OfferedObject]) -> dict[str, str]:
        """Ask in slices: the node reads a missing_check body whole (1 MiB cap)."""
        wanted: dict[str, str] = {}
        for start in range(0, len(offers), MISSING_CHECK_SLICE):
            wanted.update(await self._missing_check_slice(
                peer, part, offers[start:start + MISSING_CHECK_SLICE]))
        return wanted

    async def _missing_check_slice(self, peer: dict[str, Any], part: str,
                                   offers: list[store.OfferedObject]) -> dict[str, str]:
        body = wire.pack({o.object_hash: o.as_wire() for o in offers})
        try:
            async with self.ctx.client.request(
                    peer, "POST", f"/{peer['device']}/{part}", body=body,
                    headers={"X-Backend-Server-Type": "object", VERB_HEADER: "SSYNC",
                             wire.PHASE_HEADER: wire.PHASE_MISSING,
                             "Content-Type": wire.MSGPACK_TYPE}) as resp:
                raw = await resp.read()
                if resp.status == 507:
                    raise DeviceGone(node_key(peer))
                if resp.status != 200:
                    raise PeerFailed(f"missing_check {node_key(peer)} {part}: {resp.status}")
        except NODE_ERRORS as err:
            raise PeerFailed(f"missing_check {node_key(peer)} {part}: {err!r}") from err
        wanted = wire.unpack(raw)
        return wanted if isinstance(wanted, dict) else {}

    async def _push(self, device_path: str, part: str, peer: dict[str, Any],
                    offers: list[store.OfferedObject], wanted: dict[str, str],
                    stats: PassStats) -> None:
        files: list[tuple[str, str]] = []
        for offer in offers:
            want = wanted.get(offer.object_hash, "")
            if store.WANT_DURABLE in want and offer.durable:
                files.append((offer.object_hash, offer.durable))
            if store.WANT_META in want and offer.meta:
                files.append((offer.object_hash, offer.meta))
        if not files:
            return
        sent = {"bytes": 0}
        try:
            async with self.ctx.client.request(
                    peer, "POST", f"/{peer['device']}/{part}",
                    body=self._stream_files(device_path, part, files, sent),
                    headers={"X-Backend-Server-Type": "object", VERB_HEADER: "SSYNC",
                             wire.PHASE_HEADER: wire.PHASE_UPDATES,
                             "Content-Type": "application/octet-stream"}) as resp:
                raw = await resp.read()
                if resp.status == 507:
                    raise DeviceGone(node_key(peer))
                if resp.status != 200:
                    raise PeerFailed(f"updates {node_key(peer)} {part}: {resp.status} "
                                     f"{raw[:200]!r}")
        except NODE_ERRORS as err:
            raise PeerFailed(f"updates {node_key(peer)} {part}: {err!r}") from err
        result = wire.unpack(raw)
        stats.add("files_pushed", int(result.get("written", 0)))
        stats.add("files_stale", int(result.get("stale", 0)))
        stats.add("bytes_pushed", sent["bytes"])
        for object_hash in result.get("corrupt", []):
            # the receiver found our bytes disagree with our own ETag: ours is bad
            stats.add("quarantined_by_peer")
            LOG.warning("peer %s rejected %s/%s as corrupt; quarantining ours",
                        node_key(peer), part, object_hash)
            await self.ctx.run_io(store.quarantine_hash, device_path, part, object_hash)

    async def _stream_files(self, device_path: str, part: str, files: list[tuple[str, str]],
                            sent: dict[str, int]) -> AsyncIterator[bytes]:
        """Frames of every file, read in batches off the loop, large files in chunks."""
        index = 0
        while index < len(files):
            batch, index, big = await self.ctx.run_io(
                _read_small_batch, device_path, part, files, index, self.batch_bytes)
            if batch:
                await self.limiter.consume(len(batch))
                sent["bytes"] += len(batch)
                yield batch
            if big is not None:
                object_hash, name, meta, size, fd = big
                try:
                    yield wire.frame_header(object_hash, name, meta, size)
                    offset = 0
                    while offset < size:
                        chunk = await self.ctx.run_io(os.pread, fd, min(1 << 20, size - offset),
                                                      offset)
                        if not chunk:
                            raise PeerFailed(f"{name} shrank while being sent")
                        offset += len(chunk)
                        await self.limiter.consume(len(chunk))
                        sent["bytes"] += len(chunk)
                        yield chunk
                finally:
                    os.close(fd)
        yield wire.END_OF_STREAM

    async def run_forever(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.run_once()
            except Exception:
                LOG.exception("replication pass failed")
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))


class DeviceGone(PeerFailed):
    """The peer answered 507: its device is unmounted or full."""


def _read_small_batch(device_path: str, part: str, files: list[tuple[str, str]], index: int,
                      limit: int) -> tuple[bytes, int, tuple | None]:
    """Frames for consecutive small files from ``index``; stops at a large one.

    Returns (framed bytes, next index, large file to stream or None).
    """
    out = bytearray()
    count = 0
    while index < len(files) and count < READ_BATCH_FILES:
        object_hash, name = files[index]
        index += 1
        opened = store.read_object_file(device_path, part, object_hash, name)
        if opened is None:
            continue
        meta, size, fd = opened
        if size > limit // 4:
            return bytes(out), index, (object_hash, name, meta, size, fd)
        try:
            body = os.pread(fd, size, 0) if size else b""
        finally:
            os.close(fd)
        if len(body) != size:
            continue
        out += wire.frame_header(object_hash, name, meta, size)
        out += body
        count += 1
        if len(out) >= limit:
            break
    return bytes(out), index, None
