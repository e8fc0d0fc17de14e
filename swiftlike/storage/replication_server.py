"""The storage node's replication verbs: REPLICATE (suffix hashes) and SSYNC (push).

On the wire each verb is ``POST`` with ``X-Backend-Replication: REPLICATE|SSYNC`` (aiohttp
cannot parse unknown methods); below, "REPLICATE /x" means that.
``REPLICATE /<dev>/<part>[/<suf>-<suf>...]`` (object) answers the partition's suffix
hashes as msgpack, rehashing the named suffixes first (the sender names the ones it just
synced to confirm they now match). ``SSYNC /<dev>/<part>`` with ``X-Ssync-Phase:
missing_check`` takes ``{hash: [durable, meta]}`` and answers what this node lacks;
with ``X-Ssync-Phase: updates`` it takes a framed stream of files
(:mod:`swiftlike.storage.replication_wire`) and answers only once every written file and
its directory are fsynced. Database REPLICATE requests (server type account/container)
go to :mod:`swiftlike.storage.db_replication_server`. See docs/replication.md.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote

from aiohttp import web

from swiftlike.storage import replication_store as store
from swiftlike.storage import replication_wire as wire
from swiftlike.storage.diskfile import DiskFull
from swiftlike.storage.hashes import get_suffix_hashes
from swiftlike.storage.node import DeviceUnavailable, StorageNode, error_response

LOG = logging.getLogger(__name__)
REPLICATION_METHODS = frozenset({"REPLICATE", "SSYNC"})
#: aiohttp's HTTP parser (llhttp) refuses methods it does not know, so on the wire the
#: verbs travel as ``POST`` with this header naming the verb.
VERB_HEADER = "X-Backend-Replication"


def replication_verb(request: web.Request) -> str | None:
    """REPLICATE / SSYNC when the request is a replication request, else None."""
    if request.method in REPLICATION_METHODS:
        return request.method
    if request.method == "POST":
        verb = request.headers.get(VERB_HEADER, "").strip().upper()
        if verb in REPLICATION_METHODS:
            return verb
    return None
SMALL_FILE = 256 * 1024
BATCH_BYTES = 4 * 1024 * 1024
BATCH_FILES = 256


def _segments(request: web.Request) -> list[str]:
    return [unquote(s) for s in request.rel_url.raw_path.split("/")[1:]]


async def handle_replication(request: web.Request, node: StorageNode) -> web.StreamResponse:
    """Entry point the node's dispatcher calls for REPLICATE and SSYNC requests."""
    verb = replication_verb(request)
    if verb is None:
        return error_response(405, f"not a replication request (set {VERB_HEADER})")
    segments = _segments(request)
    if len(segments) < 2 or not segments[1].isdigit():
        return error_response(400, "replication path must be /<device>/<partition>[/...]")
    device, partition = segments[0], segments[1]
    try:
        device_path = node.device_path(device)
    except DeviceUnavailable:
        return error_response(507, f"device {device} is not available")
    server_type = request.headers.get("X-Backend-Server-Type", "object").lower()
    if server_type in ("account", "container"):
        from swiftlike.storage.db_replication_server import handle_db_replicate

        return await handle_db_replicate(request, node, device_path, server_type,
                                         partition, segments[2:], verb)
    if server_type != "object":
        return error_response(400, f"unknown server type {server_type}")
    try:
        if verb == "REPLICATE":
            suffixes = segments[2].split("-") if len(segments) > 2 and segments[2] else []
            if any(len(s) != 3 for s in suffixes):
                return error_response(400, "suffixes must be 3 hex digits")
            hashes = await node.run_io(get_suffix_hashes, device_path, partition, suffixes)
            return web.Response(body=wire.pack(hashes), content_type=wire.MSGPACK_TYPE)
        phase = request.headers.get(wire.PHASE_HEADER, "")
        if phase == wire.PHASE_MISSING:
            return await _missing_check(request, node, device_path, partition)
        if phase == wire.PHASE_UPDATES:
            return await _receive_updates(request, node, device_path, partition)
        return error_response(400, f"{wire.PHASE_HEADER} must be missing_check or updates")
    except DiskFull as err:
        return error_response(507, f"device {device} is full: {err}")


async def _missing_check(request: web.Request, node: StorageNode, device_path: str,
                         partition: str) -> web.Response:
    try:
        offers = wire.unpack(await request.read())
        if not isinstance(offers, dict):
            raise ValueError("offers must be a map")
    except ValueError as err:
        return error_response(400, f"bad missing_check body: {err}")
    wanted = await node.run_io(store.wanted_parts, device_path, partition, offers)
    return web.Response(body=wire.pack(wanted), content_type=wire.MSGPACK_TYPE)


async def _receive_updates(request: web.Request, node: StorageNode, device_path: str,
                           partition: str) -> web.Response:
    """Write each pushed file; small files are written in batches per thread hop."""
    content = request.content
    result = {"written": 0, "stale": 0, "corrupt": [], "bytes": 0}
    touched: set[str] = set()  # hash directories to fsync and suffixes to invalidate
    synced_dirs: set[str] = set()
    batch: list[tuple[dict, bytes]] = []
    batch_bytes = 0

    def write_batch(items: list[tuple[dict, bytes]]) -> list[tuple[str, str, str]]:
        """``durability = "fsync"``: each file fsynced before its rename, directories
        fsynced once at the end. The group-commit path is :func:`store_batch`."""
        outcomes = []
        for header, body in items:
            received = store.ReceivedFile(device_path, partition, header["hash"],
                                          header["name"], header["meta"], node.fsync,
                                          node.use_xattr)
            received.write(body)
            outcomes.append((header["hash"], received.commit(), received.object_dir))
        return outcomes

    def stage_batch(items: list[tuple[dict, bytes]]) -> list[store.StagedFile | tuple]:
        staged: list[store.StagedFile | tuple] = []
        try:
            for header, body in items:
                outcome = store.stage_received(device_path, partition, header["hash"],
                                               header["name"], header["meta"], body,
                                               node.use_xattr)
                staged.append(outcome if isinstance(outcome, store.StagedFile)
                              else (header["hash"], outcome, ""))
        except BaseException:
            abort_staged(staged)
            raise
        return staged

    def abort_staged(staged: list[store.StagedFile | tuple]) -> None:
        for item in staged:
            if isinstance(item, store.StagedFile):
                item.writer.abort()

    def publish_batch(staged: list[store.StagedFile | tuple]) -> list[tuple[str, str, str]]:
        outcomes = []
        for index, item in enumerate(staged):
            if not isinstance(item, store.StagedFile):
                outcomes.append(item)
                continue
            try:
                outcome = store.publish_received(item)
            except BaseException:
                abort_staged(staged[index + 1:])
                raise
            outcomes.append((item.object_hash, outcome, item.object_dir))
        return outcomes

    async def store_batch(items: list[tuple[dict, bytes]]) -> list[tuple[str, str, str]]:
        """Durable per batch: stage all, one flush, link all, one more flush."""
        if not node.group_commit:
            return await node.run_io(write_batch, items)
        flusher = node.flusher(device_path)
        staged = await node.run_io(stage_batch, items)
        try:
            await flusher.barrier()  # every staged file's bytes + xattr durable, unnamed
        except BaseException:
            await node.run_io(abort_staged, staged)
            raise
        outcomes = await node.run_io(publish_batch, staged)
        # the links, new directories and hashes.invalid records are durable after this
        # flush: the directories need no fsync of their own (the "" in each outcome)
        await flusher.barrier()
        return [(h, outcome, "") for h, outcome, _ in outcomes]

    def account(outcomes: list[tuple[str, str, str]], size: int, synced: bool = True
                ) -> None:
        for object_hash, outcome, object_dir in outcomes:
            if outcome == "written":
                result["written"] += 1
                if object_dir:  # "" = already durable and invalidated (group commit)
                    (synced_dirs if synced else touched).add(object_dir)
            elif outcome == "corrupt":
                result["corrupt"].append(object_hash)
            else:
                result["stale"] += 1
        result["bytes"] += size

    try:
        while True:
            raw_len = await content.readexactly(wire.FRAME_HEADER.size)
            (length,) = wire.FRAME_HEADER.unpack(raw_len)
            if length == 0:
                break
            if length > wire.MAX_HEADER:
                return error_response(400, "frame header too large")
            header = wire.parse_frame_header(await content.readexactly(length))
            size = header["size"]
            if size <= SMALL_FILE:
                body = await content.readexactly(size) if size else b""
                batch.append((header, body))
                batch_bytes += size
                if len(batch) >= BATCH_FILES or batch_bytes >= BATCH_BYTES:
                    account(await store_batch(batch), batch_bytes)
                    batch, batch_bytes = [], 0
                continue
            received = await node.run_io(store.ReceivedFile, device_path, partition,
                                         header["hash"], header["name"], header["meta"],
                                         node.fsync, node.use_xattr)
            try:
                remaining = size
                while remaining:
                    chunk = await content.readexactly(min(remaining, 1 << 20))
                    remaining -= len(chunk)
                    await node.run_io(received.write, chunk)
            except BaseException:
                await node.run_io(received.abort)
                raise
            outcome = await node.run_io(received.commit)
            account([(header["hash"], outcome, received.object_dir)], size, synced=False)
        if batch:
            account(await store_batch(batch), batch_bytes)
    except (ValueError, KeyError) as err:
        return error_response(400, f"bad updates stream: {err}")
    finally:
        if touched:
            await node.run_io(store.finish_received, device_path, partition, touched,
                              node.fsync)
        if synced_dirs:
            await node.run_io(store.finish_received, device_path, partition, synced_dirs,
                              node.fsync)
    return web.Response(body=wire.pack(result), content_type=wire.MSGPACK_TYPE)
