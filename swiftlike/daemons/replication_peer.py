"""The replicator's side of the batch verbs: one peer device, many partitions per request.

:class:`PeerSession` wraps the three object replication calls a pass makes to one peer
device (see :mod:`swiftlike.storage.replication_server`): ``REPLICATE`` for the suffix
hashes of many partitions, ``SSYNC missing_check`` for what the peer lacks, and one
streamed ``SSYNC updates`` body carrying the wanted files of all those partitions. Every
call goes through the pass's pooled :class:`~swiftlike.daemons.replication_http.ReplicationHTTP`
(keep-alive connections per peer) and the pass-wide concurrency semaphore.

A whole-request failure raises :class:`PeerFailed` (or :class:`DeviceGone` for a 507);
a partition the peer could not handle on its own comes back in the answer's ``errors``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from swiftlike.common.nodes import node_key
from swiftlike.daemons.base import RateLimiter
from swiftlike.daemons.replication_http import HTTP_ERRORS, ReplicationHTTP
from swiftlike.storage import replication_store as store
from swiftlike.storage import replication_wire as wire

VERB_HEADER = wire.VERB_HEADER
READ_BATCH_FILES = 128
#: a node reads batch bodies whole under a 1 MiB cap: partitions / offers per request
REPLICATE_SLICE = 2048
MISSING_CHECK_SLICE = 4000


class PeerFailed(Exception):
    """A peer did not complete a step: its partitions stay (if handoff) and are retried."""


class DeviceGone(PeerFailed):
    """The peer answered 507: its device is unmounted or full."""


#: one file to push: (partition, object hash, file name)
PushFile = tuple[str, str, str]


class PeerSession:
    """Batch replication calls to one peer device."""

    def __init__(self, client: ReplicationHTTP, peer: dict[str, Any],
                 semaphore: asyncio.Semaphore, limiter: RateLimiter, run_io: Any) -> None:
        self.client = client
        self.peer = peer
        self.semaphore = semaphore
        self.limiter = limiter
        self.run_io = run_io
        self.key = node_key(peer)

    async def _call(self, what: str, body: Any, headers: dict[str, str]) -> Any:
        """POST one verb to ``/<device>``; the msgpack answer, or PeerFailed/DeviceGone."""
        headers = {"X-Backend-Server-Type": "object", **headers}
        try:
            async with self.semaphore:
                status, raw = await self.client.post(
                    self.peer, "/" + quote(self.peer["device"], safe=""), headers, body)
        except HTTP_ERRORS as err:
            raise PeerFailed(f"{what} {self.key}: {err!r}") from err
        if status == 507:
            raise DeviceGone(f"{what} {self.key}: 507")
        if status != 200:
            raise PeerFailed(f"{what} {self.key}: {status} {raw[:200]!r}")
        try:
            answer = wire.unpack(raw)
        except Exception as err:  # msgpack raises several unrelated types
            raise PeerFailed(f"{what} {self.key}: bad answer") from err
        if not isinstance(answer, dict):
            raise PeerFailed(f"{what} {self.key}: bad answer")
        return answer

    async def suffix_hashes(self, requested: dict[str, list[str]]
                            ) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
        """{part: {suffix: hash}} and {part: error} for every requested partition.

        ``requested`` maps each partition to the suffixes the peer must rehash first.
        """
        hashes: dict[str, dict[str, str]] = {}
        errors: dict[str, str] = {}
        parts = sorted(requested, key=int)
        for start in range(0, len(parts), REPLICATE_SLICE):
            chunk = {p: sorted(requested[p]) for p in parts[start:start + REPLICATE_SLICE]}
            answer = await self._call("REPLICATE", wire.pack(chunk),
                                      {VERB_HEADER: "REPLICATE",
                                       "Content-Type": wire.MSGPACK_TYPE})
            got, failed = answer.get("hashes"), answer.get("errors", {})
            if not isinstance(got, dict) or not isinstance(failed, dict):
                raise PeerFailed(f"REPLICATE {self.key}: bad answer")
            for part in chunk:
                if part in failed:
                    errors[part] = str(failed[part])
                elif isinstance(got.get(part), dict):
                    hashes[part] = got[part]
                else:
                    errors[part] = "missing from the answer"
        return hashes, errors

    async def missing_check(self, offers: dict[str, list[store.OfferedObject]]
                            ) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
        """{part: {hash: want}} of what the peer lacks, and {part: error}."""
        wanted: dict[str, dict[str, str]] = {}
        errors: dict[str, str] = {}
        for chunk in _slices(offers, MISSING_CHECK_SLICE):
            body = {part: {o.object_hash: o.as_wire() for o in items}
                    for part, items in chunk.items()}
            answer = await self._call("missing_check", wire.pack(body),
                                      {VERB_HEADER: "SSYNC",
                                       wire.PHASE_HEADER: wire.PHASE_MISSING,
                                       "Content-Type": wire.MSGPACK_TYPE})
            got, failed = answer.get("wanted", {}), answer.get("errors", {})
            if not isinstance(got, dict) or not isinstance(failed, dict):
                raise PeerFailed(f"missing_check {self.key}: bad answer")
            for part, want in got.items():
                if isinstance(want, dict):
                    wanted.setdefault(part, {}).update(want)
            errors.update({p: str(e) for p, e in failed.items()})
        return wanted, errors

    async def push(self, device_path: str, files: list[PushFile], batch_bytes: int
                   ) -> dict[str, Any]:
        """Stream ``files`` in one updates request; the peer's answer once all are durable.

        Answer: ``{written, stale, corrupt: [[part, hash]...], bytes}`` plus ``sent``
        (bytes this side streamed).
        """
        sent = {"bytes": 0}
        answer = await self._call(
            "updates", self._stream(device_path, files, batch_bytes, sent),
            {VERB_HEADER: "SSYNC", wire.PHASE_HEADER: wire.PHASE_UPDATES,
             "Content-Type": "application/octet-stream"})
        answer["sent"] = sent["bytes"]
        return answer

    async def _stream(self, device_path: str, files: list[PushFile], limit: int,
                      sent: dict[str, int]) -> AsyncIterator[bytes]:
        """Frames of every file, read in batches off the loop, large files in chunks."""
        index = 0
        while index < len(files):
            batch, index, big = await self.run_io(read_small_batch, device_path, files,
                                                  index, limit)
            if batch:
                await self.limiter.consume(len(batch))
                sent["bytes"] += len(batch)
                yield batch
            if big is not None:
                part, object_hash, name, meta, size, fd = big
                try:
                    yield wire.frame_header(part, object_hash, name, meta, size)
                    offset = 0
                    while offset < size:
                        chunk = await self.run_io(os.pread, fd, min(1 << 20, size - offset),
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


def _slices(offers: dict[str, list[store.OfferedObject]], limit: int
            ) -> list[dict[str, list[store.OfferedObject]]]:
    """Split {part: offers} into maps of at most ``limit`` offers (a part may straddle)."""
    out: list[dict[str, list[store.OfferedObject]]] = [{}]
    count = 0
    for part, items in offers.items():
        start = 0
        while start < len(items):
            if count >= limit:
                out.append({})
                count = 0
            take = items[start:start + limit - count]
            out[-1].setdefault(part, []).extend(take)
            count += len(take)
            start += len(take)
    return [chunk for chunk in out if chunk]


def read_small_batch(device_path: str, files: list[PushFile], index: int, limit: int
                     ) -> tuple[bytes, int, tuple | None]:
    """Frames for consecutive small files from ``index``; stops at a large one.

    Returns (framed bytes, next index, large file to stream or None). A file that
    vanished or changed size meanwhile is skipped (the next pass sees the new state).
    """
    out = bytearray()
    count = 0
    while index < len(files) and count < READ_BATCH_FILES:
        part, object_hash, name = files[index]
        index += 1
        opened = store.read_object_file(device_path, part, object_hash, name)
        if opened is None:
            continue
        meta, size, fd = opened
        if size > limit // 4:
            return bytes(out), index, (part, object_hash, name, meta, size, fd)
        try:
            body = os.pread(fd, size, 0) if size else b""
        finally:
            os.close(fd)
        if len(body) != size:
            continue
        out += wire.frame_header(part, object_hash, name, meta, size)
        out += body
        count += 1
        if len(out) >= limit:
            break
    return bytes(out), index, None
