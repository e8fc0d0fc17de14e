"""The object replicator: keeps every partition's replicas identical, and handoffs empty.

One pass per local device, batched per peer device rather than per partition:

1. The cached suffix hashes of every local partition (one thread hop per slice), while
2. one ``REPLICATE`` per peer device carries all the partitions this device shares with
   it and returns all their suffix hashes (1 and 2 run at once).
3. Per partition, the suffixes that differ from a peer are rehashed locally once unless
   step 1 just did (the cache may be stale) and their files listed once (old tombstones
   are reclaimed here).
   If a peer lacks a suffix that several primaries hold identically, the suffix's value
   picks which of them pushes it; so a wiped device is rebuilt with one push per object,
   spread over the surviving primaries.
4. Per peer: one ``SSYNC missing_check`` for the suffixes it has but that differ (a
   suffix it lacks entirely needs no question), then one streamed ``SSYNC updates`` with
   every wanted file of every partition (split every ``batch_files`` files).
5. A primary that answers 507 is replaced by the next handoff (primary jobs only).
6. A partition on a handoff device is pushed to all primaries; each primary's hashes for
   the synced suffixes are fetched again (one batched ``REPLICATE``), and the partition is
   deleted once all match ours and ours did not change meanwhile.

A failing peer fails only its own partitions; a partition a peer reports as failed on
its side fails only that partition. ``concurrency`` bounds the requests in flight,
``max_bytes_per_second`` the bytes pushed (token bucket, per process).

Config ``[replicator]``: interval (s, 30), concurrency (16), max_bytes_per_second (0 =
unlimited), reclaim_age (s, 604800), batch_bytes (4 MiB per read hop), batch_files (4096
files per updates request), streams_per_peer (4 parallel updates requests per peer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from swiftlike.common.nodes import node_key
from swiftlike.daemons import replication_local as on_disk
from swiftlike.daemons.base import Daemon, DaemonContext, PassStats, RateLimiter
from swiftlike.daemons.replication_http import ReplicationHTTP
from swiftlike.daemons.replication_peer import (
    DeviceGone,
    PeerFailed,
    PeerSession,
    PushFile,
)
from swiftlike.storage import replication_store as store

LOG = logging.getLogger(__name__)
LOCAL_SLICE = 16  # partitions per thread hop for local hashing and listing (hops run at once)

STREAM_MIN_FILES = 64  # fewer files than this go in one updates request

__all__ = ["DeviceGone", "ObjectReplicator", "PeerFailed"]


@dataclass
class PartJob:
    """One local partition in this pass."""

    part: str
    hashes: dict[str, str]
    primaries: list[dict[str, Any]]
    is_primary: bool
    #: peer device id -> the peer's suffix hashes (filled by REPLICATE)
    remote: dict[int, dict[str, str]] = field(default_factory=dict)
    #: peer device id -> True when the peer matches (or got everything it lacked)
    done: dict[int, bool] = field(default_factory=dict)
    offers: dict[str, list[store.OfferedObject]] = field(default_factory=dict)
    #: suffixes this pass already rehashed (a stale cache is impossible for them: writes
    #: since are in the journal, which every read folds in)
    fresh: set[str] = field(default_factory=set)
    #: suffixes whose content changed between the plan and their listing (a write
    #: landed meanwhile): a peer that was not sent them has not got it
    changed: set[str] = field(default_factory=set)


@dataclass
class Target:
    """Work for one peer device: partition -> suffixes to sync."""

    node: dict[str, Any]
    suffixes: dict[str, list[str]] = field(default_factory=dict)
    verify: set[str] = field(default_factory=set)  # handoff parts: confirm afterwards


class ObjectReplicator(Daemon):
    """One replication pass over every local device: :meth:`run_once`."""

    name = "replication"
    section = "replicator"
    pass_failed = "replication pass failed"

    def __init__(self, ctx: DaemonContext, conf: dict[str, Any] | None = None) -> None:
        super().__init__(ctx, conf)
        conf = self.conf
        self.reclaim_age = float(conf.get("reclaim_age", 7 * 24 * 3600))
        self.batch_bytes = int(conf.get("batch_bytes", 4 * 1024 * 1024))
        self.batch_files = max(1, int(conf.get("batch_files", 4096)))
        self.streams_per_peer = max(1, int(conf.get("streams_per_peer", 4)))
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
        try:
            await self._replicate_device(dev, device_path, partitions, stats)
        except Exception as err:  # a broken device must not stop the daemon
            LOG.exception("replicating %s failed", dev["device"])
            stats.error(f"device {dev['device']}: {err!r}")
        return await self.ctx.run_io(stats.save, device_path)

    async def _replicate_device(self, dev: dict[str, Any], device_path: str,
                                partitions: list[int] | None, stats: PassStats) -> None:
        ring = self.ctx.ring
        parts = await self.ctx.run_io(store.local_partitions, device_path)
        if partitions is not None:
            parts = [p for p in parts if int(p) in partitions]
        beyond = [p for p in parts if int(p) >= ring.partition_count]
        for part in beyond:
            stats.error(f"partition {part} is beyond the ring")
        parts = [p for p in parts if int(p) < ring.partition_count]
        if not parts:
            return
        candidates: list[PartJob] = []
        for part in parts:
            primaries = ring.get_part_nodes(int(part))
            candidates.append(PartJob(part, {}, primaries,
                                      any(n["id"] == dev["id"] for n in primaries)))
        peers: dict[int, dict[str, Any]] = {}
        for job in candidates:
            for node in job.primaries:
                if node["id"] != dev["id"]:
                    peers[node["id"]] = node
        semaphore = asyncio.Semaphore(self.concurrency)
        sessions: dict[int, PeerSession] = {}
        daemons = self.ctx.section("daemons")
        client = ReplicationHTTP(float(daemons.get("conn_timeout", 1.0)),
                                 float(daemons.get("node_timeout", 20.0)))

        def session(node: dict[str, Any]) -> PeerSession:
            if node["id"] not in sessions:
                sessions[node["id"]] = PeerSession(client, node, semaphore, self.limiter,
                                                   self.ctx.run_io)
            return sessions[node["id"]]

        try:
            clock = time.monotonic()
            # 1 + 2 at once: the peers' hashes do not depend on ours, and both sides
            # mostly wait on their disks (or on each other's rehash)
            remote = asyncio.ensure_future(self._fetch_remote(dev, candidates, peers,
                                                              session, stats))
            try:
                local, fresh = await self._local_hashes(device_path, parts, stats)
            except BaseException:
                remote.cancel()
                await asyncio.gather(remote, return_exceptions=True)
                raise
            hashed = time.monotonic()
            gone = await remote
            LOG.info("%s: local hashes of %d partitions %.2fs, peers' hashes %.2fs",
                     dev["device"], len(parts), hashed - clock, time.monotonic() - clock)
            jobs: list[PartJob] = []
            empty_handoffs = []
            for job in candidates:
                if job.part not in local:
                    continue
                stats.add("partitions")
                if not job.is_primary:
                    stats.add("handoff_partitions")
                    if not local[job.part]:
                        empty_handoffs.append(job.part)
                        continue
                if local[job.part]:
                    job.hashes = local[job.part]
                    job.fresh = fresh.get(job.part, set())
                    jobs.append(job)
            if empty_handoffs:
                removed = await self.ctx.run_io(on_disk.remove_if_delivered, device_path,
                                                {part: {} for part in empty_handoffs})
                stats.add("handoffs_removed", len(removed))
            if jobs:
                await self._sync_jobs(dev, device_path, jobs, peers, gone, session, stats)
        finally:
            await client.close()

    async def _sync_jobs(self, dev: dict[str, Any], device_path: str, jobs: list[PartJob],
                         peers: dict[int, dict[str, Any]], gone: set[int], session: Any,
                         stats: PassStats) -> None:
        clock = time.monotonic()
        # 3. what differs, rehashed and listed once per partition
        targets = self._plan(dev, jobs, peers, gone, stats)
        await self._prepare_offers(device_path, jobs, targets, stats)
        listed = time.monotonic()
        # 4. missing check + push per peer, all peers at once
        await asyncio.gather(*(self._sync_target(device_path, jobs, t, session(t.node),
                                                 stats) for t in targets.values()))
        LOG.info("%s: rehash+list %.2fs, missing check+push %.2fs", dev["device"],
                 listed - clock, time.monotonic() - listed)
        # 5. primaries whose device is gone: the next handoff stands in
        if gone:
            await self._sync_to_handoffs(dev, device_path, jobs, gone, session, stats)
        # 6. handoff partitions every primary now holds are removed
        await self._remove_delivered(dev, device_path, jobs, stats)

    async def _local_hashes(self, device_path: str, parts: list[str], stats: PassStats
                            ) -> tuple[dict[str, dict[str, str]], dict[str, set[str]]]:
        """Every partition's suffix hashes, and per partition the suffixes rehashed now."""
        found: dict[str, dict[str, str]] = {}
        fresh: dict[str, set[str]] = {}
        answers = await asyncio.gather(*(
            self.ctx.run_io(on_disk.hashes_of, device_path,
                            {p: [] for p in parts[start:start + LOCAL_SLICE]}, fresh)
            for start in range(0, len(parts), LOCAL_SLICE)))
        for hashes, errors in answers:
            found.update(hashes)
            for part, err in errors.items():
                stats.error(f"partition {part}: local hashes: {err}")
        return found, fresh

    async def _fetch_remote(self, dev: dict[str, Any], jobs: list[PartJob],
                            peers: dict[int, dict[str, Any]], session: Any,
                            stats: PassStats) -> set[int]:
        """Fill ``job.remote`` from one batched REPLICATE per peer; returns gone peers."""
        gone: set[int] = set()

        async def ask(peer_id: int) -> None:
            node = peers[peer_id]
            shared = [j for j in jobs if any(n["id"] == peer_id for n in j.primaries)]
            try:
                hashes, errors = await session(node).suffix_hashes({j.part: []
                                                                    for j in shared})
            except DeviceGone:
                stats.add("peer_devices_unavailable")
                gone.add(peer_id)
                return
            except PeerFailed as err:
                LOG.warning("replicating %s to %s failed: %s", dev["device"],
                            node_key(node), err)
                stats.error(str(err))
                for job in shared:
                    job.done[peer_id] = False
                return
            for job in shared:
                if job.part in hashes:
                    job.remote[peer_id] = hashes[job.part]
                else:
                    stats.error(f"REPLICATE {node_key(node)} {job.part}: "
                                f"{errors.get(job.part)}")
                    job.done[peer_id] = False

        await asyncio.gather(*(ask(p) for p in peers))
        return gone

    def _plan(self, dev: dict[str, Any], jobs: list[PartJob],
              peers: dict[int, dict[str, Any]], gone: set[int], stats: PassStats
              ) -> dict[int, Target]:
        """Per peer, the suffixes of each partition it needs from us."""
        targets: dict[int, Target] = {}
        for job in jobs:
            order = [n["id"] for n in job.primaries]
            for peer_id, remote in job.remote.items():
                differing = [s for s, h in job.hashes.items() if remote.get(s) != h]
                if job.is_primary:
                    skip = _covered_by_others(dev["id"], peer_id, order, job.remote,
                                              job.hashes)
                    if skip:
                        stats.add("suffixes_left_to_other_primary",
                                  len(set(differing) & skip))
                        differing = [s for s in differing if s not in skip]
                if not differing:
                    job.done[peer_id] = True
                    continue
                target = targets.setdefault(peer_id, Target(peers[peer_id]))
                target.suffixes[job.part] = differing
                if not job.is_primary:
                    target.verify.add(job.part)
            for peer_id in gone:
                if any(n["id"] == peer_id for n in job.primaries):
                    job.done[peer_id] = False
        return targets

    async def _prepare_offers(self, device_path: str, jobs: list[PartJob],
                              targets: dict[int, Target], stats: PassStats) -> None:
        """Rehash the differing suffixes once per partition, list their files once.

        A suffix whose fresh hash now matches the peer's is dropped from its target.
        """
        by_part = {j.part: j for j in jobs}
        wanted: dict[str, set[str]] = {}
        for target in targets.values():
            for part, suffixes in target.suffixes.items():
                wanted.setdefault(part, set()).update(suffixes)
        listed = await self._list(device_path, wanted, by_part, stats)
        planned = {peer_id: {part: set(suffixes) for part, suffixes in t.suffixes.items()}
                   for peer_id, t in targets.items()}
        for peer_id, target in targets.items():
            for part in list(target.suffixes):
                job = by_part[part]
                remote = job.remote.get(peer_id, {})
                still = [s for s in target.suffixes[part]
                         if s in job.hashes and remote.get(s) != job.hashes[s]]
                if part not in listed:
                    job.done[peer_id] = False  # listing failed: retried next pass
                    del target.suffixes[part]
                elif still:
                    target.suffixes[part] = still
                    stats.add("suffixes_synced", len(still))
                else:
                    job.done[peer_id] = True
                    del target.suffixes[part]
        # last, so nothing above sets it back: a suffix that changed since the plan
        # and was not meant for a peer (it matched then) has not reached that peer
        for job in jobs:
            for peer_id in job.remote if job.changed else ():
                if job.changed - planned.get(peer_id, {}).get(job.part, set()):
                    job.done[peer_id] = False  # delivered next pass, not removed now

    async def _list(self, device_path: str, wanted: dict[str, set[str]],
                    by_part: dict[str, PartJob], stats: PassStats) -> set[str]:
        """Rehash and list ``wanted`` suffixes into the jobs; the partitions that worked."""
        parts = sorted(wanted, key=int)
        listed: set[str] = set()
        chunks = [{p: sorted(wanted[p]) for p in parts[start:start + LOCAL_SLICE]}
                  for start in range(0, len(parts), LOCAL_SLICE)]
        answers = await asyncio.gather(*(
            self.ctx.run_io(on_disk.rehash_and_list, device_path, chunk, self.reclaim_age,
                            {p: by_part[p].fresh for p in chunk})
            for chunk in chunks))
        for chunk, (fresh, offers, errors) in zip(chunks, answers, strict=True):
            for part, err in errors.items():
                stats.error(f"partition {part}: listing: {err}")
            for part in chunk:
                job = by_part[part]
                if part in fresh:
                    # only the suffixes listed: a write that landed since the plan in
                    # another suffix was offered to nobody, and must keep the partition
                    now = fresh[part]
                    for suffix in chunk[part]:
                        if now.get(suffix) != job.hashes.get(suffix):
                            job.changed.add(suffix)
                        if suffix in now:
                            job.hashes[suffix] = now[suffix]
                        else:
                            job.hashes.pop(suffix, None)
                if part in offers:
                    job.offers.update(offers[part])
                    listed.add(part)
        return listed

    async def _sync_target(self, device_path: str, jobs: list[PartJob], target: Target,
                           peer: PeerSession, stats: PassStats) -> None:
        """Missing check, push and (handoff parts) verify for one peer; marks job.done."""
        by_part = {j.part: j for j in jobs if j.part in target.suffixes}
        peer_id = target.node["id"]
        if not by_part:
            return
        try:
            absent: dict[str, dict[str, str]] = {}
            asked: dict[str, list[store.OfferedObject]] = {}
            for part, suffixes in target.suffixes.items():
                remote = by_part[part].remote.get(peer_id, {})
                for suffix in suffixes:
                    for offer in by_part[part].offers.get(suffix, []):
                        if suffix not in remote:  # lacks it all: wants everything
                            absent.setdefault(part, {})[offer.object_hash] = (
                                store.WANT_DURABLE + (store.WANT_META if offer.meta else ""))
                        else:
                            asked.setdefault(part, []).append(offer)
            wanted, errors = await peer.missing_check(asked) if asked else ({}, {})
            for part, err in errors.items():
                stats.error(f"missing_check {peer.key} {part}: {err}")
                if part in by_part:
                    by_part[part].done[peer_id] = False
            for part, want in absent.items():
                wanted.setdefault(part, {}).update(want)
            files = _files_to_push(by_part, target.suffixes, wanted, errors)
            # a few streams at once: the receiver's flushes and thread hops overlap
            size = max(STREAM_MIN_FILES, min(self.batch_files,
                                             -(-len(files) // self.streams_per_peer)))
            chunks = _split_by_partition(files, size)
            pushed = await asyncio.gather(*(self._push(device_path, peer, chunk, stats)
                                            for chunk in chunks), return_exceptions=True)
            failed = set(errors)
            for chunk, outcome in zip(chunks, pushed, strict=True):
                if isinstance(outcome, BaseException):
                    if not isinstance(outcome, PeerFailed):
                        raise outcome
                    LOG.warning("replicating to %s failed: %s", peer.key, outcome)
                    stats.error(str(outcome))
                    failed.update(part for part, _, _ in chunk)
            ok = {p for p in by_part if p not in failed}
            if target.verify:
                ok -= await self._unconfirmed(peer, target, by_part)
            for part in by_part:
                by_part[part].done.setdefault(peer_id, part in ok)
        except PeerFailed as err:
            LOG.warning("replicating to %s failed: %s", peer.key, err)
            stats.error(str(err))
            for job in by_part.values():
                job.done[peer_id] = False

    async def _push(self, device_path: str, peer: PeerSession, files: list[PushFile],
                    stats: PassStats) -> None:
        result = await peer.push(device_path, files, self.batch_bytes)
        stats.add("files_pushed", int(result.get("written", 0)))
        stats.add("files_stale", int(result.get("stale", 0)))
        stats.add("bytes_pushed", int(result["sent"]))
        for item in result.get("corrupt", []):
            # the receiver found our bytes disagree with our own ETag: ours is bad
            if not (isinstance(item, list) and len(item) == 2):
                raise PeerFailed(f"updates {peer.key}: bad corrupt entry {item!r}")
            part, object_hash = item
            stats.add("quarantined_by_peer")
            LOG.warning("peer %s rejected %s/%s as corrupt; quarantining ours", peer.key,
                        part, object_hash)
            await self.ctx.run_io(store.quarantine_hash, device_path, str(part),
                                  str(object_hash))

    async def _unconfirmed(self, peer: PeerSession, target: Target,
                           by_part: dict[str, PartJob]) -> set[str]:
        """Handoff partitions of which the peer still wants something after the push.

        A second missing check over everything offered in the synced suffixes: each
        object must now be on the peer or superseded there by something newer. Equal
        suffix hashes would be the wrong test: a handoff copy the primaries have since
        overwritten or deleted never hashes like theirs, and would never be removed.
        """
        asked = {p: [o for s in target.suffixes[p] for o in by_part[p].offers.get(s, [])]
                 for p in target.verify if p in by_part}
        wanted, errors = await peer.missing_check({p: o for p, o in asked.items() if o})
        return set(errors) | {p for p in asked if wanted.get(p)}

    async def _sync_to_handoffs(self, dev: dict[str, Any], device_path: str,
                                jobs: list[PartJob], gone: set[int], session: Any,
                                stats: PassStats) -> None:
        """Primary jobs whose peer answered 507: push to the next handoff instead."""
        targets: dict[int, Target] = {}
        ring = self.ctx.ring
        for job in jobs:
            if not job.is_primary:
                continue  # a handoff job keeps its data until the real primary is back
            missing = [p for p in job.primaries if p["id"] in gone]
            if not missing:
                continue
            used = {n["id"] for n in job.primaries}
            for node in ring.get_more_nodes(int(job.part)):
                if not missing:
                    break
                if node["id"] in used or node["id"] in gone or node["id"] == dev["id"]:
                    continue
                missing.pop()
                target = targets.setdefault(node["id"], Target(node))
                target.suffixes[job.part] = list(job.hashes)
        for peer_id, target in targets.items():
            peer = session(target.node)
            try:
                remote, errors = await peer.suffix_hashes({p: [] for p in target.suffixes})
            except PeerFailed as err:
                stats.error(str(err))
                continue
            subset = {}
            for job in jobs:
                if job.part not in target.suffixes or job.part in errors:
                    continue
                theirs = remote.get(job.part, {})
                job.remote[peer_id] = theirs
                differing = [s for s, h in job.hashes.items() if theirs.get(s) != h]
                if differing:
                    subset[job.part] = differing
            by_part = {j.part: j for j in jobs if j.part in subset}
            listed = await self._list(device_path, {p: set(s) for p, s in subset.items()},
                                      by_part, stats)
            target.suffixes = {p: s for p, s in subset.items() if p in listed}
            stats.add("suffixes_synced", sum(len(s) for s in target.suffixes.values()))
            await self._sync_target(device_path, list(by_part.values()), target, peer,
                                    stats)

    async def _remove_delivered(self, dev: dict[str, Any], device_path: str,
                                jobs: list[PartJob], stats: PassStats) -> None:
        handoffs = [j for j in jobs if not j.is_primary]
        if not handoffs:
            return
        delivered = [j for j in handoffs
                     if all(j.done.get(n["id"]) for n in j.primaries)]
        if not delivered:
            return
        removed = await self.ctx.run_io(on_disk.remove_if_delivered, device_path,
                                        {j.part: j.hashes for j in delivered})
        stats.add("handoffs_changed_meanwhile", len(delivered) - len(removed))
        if removed:
            stats.add("handoffs_removed", len(removed))
            LOG.info("handoff partitions %s on %s delivered to their primaries and removed",
                     removed, dev["device"])



def _covered_by_others(me: int, peer_id: int, order: list[int],
                       known: dict[int, dict[str, str]], local: dict[str, str]) -> set[str]:
    """Suffixes ``peer`` lacks that another primary holding them identically will push.

    Every primary that holds a suffix the same way (ours and the hashes REPLICATE
    returned) computes the same holder list in ring order, and the suffix's own value
    picks one of them: each object is pushed once, and a rebuild's pushes are spread
    over all the holders instead of falling on the first one.
    """
    lacking = known.get(peer_id)
    if lacking is None or me not in order:
        return set()
    covered = set()
    for suffix, digest in local.items():
        if lacking.get(suffix) == digest:
            continue
        holders = [n for n in order if n != peer_id and
                   (n == me or known.get(n, {}).get(suffix) == digest)]
        if holders[int(suffix, 16) % len(holders)] != me:
            covered.add(suffix)
    return covered


def _files_to_push(by_part: dict[str, PartJob], suffixes: dict[str, list[str]],
                   wanted: dict[str, dict[str, str]], errors: dict[str, str]
                   ) -> list[PushFile]:
    files: list[PushFile] = []
    for part, part_suffixes in suffixes.items():
        if part in errors:
            continue
        want_of = wanted.get(part, {})
        for suffix in part_suffixes:
            for offer in by_part[part].offers.get(suffix, []):
                want = want_of.get(offer.object_hash, "")
                if store.WANT_DURABLE in want and offer.durable:
                    files.append((part, offer.object_hash, offer.durable))
                if store.WANT_META in want and offer.meta:
                    files.append((part, offer.object_hash, offer.meta))
    return files


def _split_by_partition(files: list[PushFile], size: int) -> list[list[PushFile]]:
    """Chunks of about ``size`` files; one partition's files always share a chunk.

    Streams run in parallel, so a ``.meta`` must travel with its ``.data`` (the receiver
    links files of one stream in order, and drops a .meta whose data is not there).
    """
    chunks: list[list[PushFile]] = [[]]
    for index, item in enumerate(files):
        if len(chunks[-1]) >= size and item[0] != files[index - 1][0]:
            chunks.append([])
        chunks[-1].append(item)
    return [c for c in chunks if c]
