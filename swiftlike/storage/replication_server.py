"""The storage node's object replication verbs: REPLICATE (suffix hashes) and SSYNC (push).

On the wire each verb is ``POST`` with ``X-Backend-Replication: REPLICATE|SSYNC`` (aiohttp
cannot parse unknown methods); below, "REPLICATE /x" means that. Object replication is
per device, many partitions per request, so a replication pass costs a handful of round
trips per peer instead of several per partition:

* ``REPLICATE /<dev>`` takes ``{part: [suffix, ...]}`` and answers
  ``{"hashes": {part: {suffix: hash}}, "errors": {part: reason}}``, rehashing the listed
  suffixes of each partition first (the sender names the ones it just synced to confirm
  they now match); a partition this device lacks answers ``{}``.
* ``SSYNC /<dev>`` with ``X-Ssync-Phase: missing_check`` takes
  ``{part: {hash: [durable, meta]}}`` and answers ``{"wanted": {part: {hash: "d"|"m"|"dm"}},
  "errors": {part: reason}}``.
* ``SSYNC /<dev>`` with ``X-Ssync-Phase: updates`` takes a framed stream of files of any
  partitions (:mod:`swiftlike.storage.replication_wire`) and answers only once every
  written file and its directory are durable.

A partition that fails on its own (an unreadable directory) is reported in ``errors``
and does not fail the others. Database REPLICATE requests (server type
account/container, path ``/<dev>/<part>/<hash>``) go to
:mod:`swiftlike.storage.db_replication_server`. See docs/replication.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from swiftlike.common.timestamp import Timestamp
from swiftlike.storage import replication_store as store
from swiftlike.storage import replication_wire as wire
from swiftlike.storage.diskfile import DiskFull
from swiftlike.storage.hashes import get_suffix_hashes, is_suffix
from swiftlike.storage.node import DeviceUnavailable, StorageNode, error_response

LOG = logging.getLogger(__name__)
REPLICATION_METHODS = frozenset({"REPLICATE", "SSYNC"})
VERB_HEADER = wire.VERB_HEADER


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
MAX_BATCHES_IN_FLIGHT = 4  # per updates stream: bounds the bytes held in memory


def _segments(request: web.Request) -> list[str]:
    return [unquote(s) for s in request.rel_url.raw_path.split("/")[1:]]


async def handle_replication(request: web.Request, node: StorageNode) -> web.StreamResponse:
    """Entry point the node's dispatcher calls for REPLICATE and SSYNC requests."""
    verb = replication_verb(request)
    if verb is None:
        return error_response(405, f"not a replication request (set {VERB_HEADER})")
    segments = _segments(request)
    if not segments or not segments[0]:
        return error_response(400, "replication path must start with /<device>")
    device = segments[0]
    server_type = request.headers.get("X-Backend-Server-Type", "object").lower()
    if server_type not in ("object", "account", "container"):
        return error_response(400, f"unknown server type {server_type}")
    if server_type == "object" and len(segments) != 1:
        return error_response(400, "object replication path is /<device>: the partitions "
                                   "travel in the body")
    if server_type != "object" and (len(segments) < 2 or not segments[1].isdigit()):
        return error_response(400, "database replication path is /<device>/<partition>/...")
    try:
        device_path = node.device_path(device)
    except DeviceUnavailable:
        return error_response(507, f"device {device} is not available")
    if server_type != "object":
        from swiftlike.storage.db_replication_server import handle_db_replicate

        return await handle_db_replicate(request, node, device_path, server_type,
                                         segments[1], segments[2:], verb)
    try:
        if verb == "REPLICATE":
            return await _replicate(request, node, device_path)
        phase = request.headers.get(wire.PHASE_HEADER, "")
        if phase == wire.PHASE_MISSING:
            return await _missing_check(request, node, device_path)
        if phase == wire.PHASE_UPDATES:
            return await _receive_updates(request, node, device_path)
        return error_response(400, f"{wire.PHASE_HEADER} must be missing_check or updates")
    except DiskFull as err:
        return error_response(507, f"device {device} is full: {err}")


async def _read_part_map(request: web.Request) -> dict[str, Any]:
    """The msgpack ``{part: ...}`` body of a batch request; ValueError when malformed."""
    try:
        body = wire.unpack(await request.read())
    except Exception as err:  # msgpack raises several unrelated types
        raise ValueError(f"not msgpack: {err}") from err
    if not isinstance(body, dict):
        raise ValueError("body must be a map of partitions")
    for part in body:
        if not wire.is_partition(part):
            raise ValueError(f"bad partition {part!r}")
    return body


def _per_partition(verb: str, device_path: str, requests: dict[str, Any],
                   answer: Callable[[str, str, Any], Any], keep_empty: bool
                   ) -> tuple[dict[str, Any], dict[str, str]]:
    """One answer per requested partition; a partition whose disk I/O fails is reported
    in the second map and does not fail the others."""
    answers: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for part, request in requests.items():
        try:
            found = answer(device_path, part, request)
        except OSError as err:
            LOG.warning("%s %s/%s: %s", verb, device_path, part, err)
            errors[part] = f"{type(err).__name__}: {err}"
            continue
        if found or keep_empty:
            answers[part] = found
    return answers, errors


def _suffix_hashes_of(device_path: str, requested: dict[str, list[str]]
                      ) -> dict[str, dict[str, Any]]:
    # an empty map is an answer too: the partition holds nothing in those suffixes
    hashes, errors = _per_partition("REPLICATE", device_path, requested,
                                    get_suffix_hashes, keep_empty=True)
    return {"hashes": hashes, "errors": errors}


async def _replicate(request: web.Request, node: StorageNode, device_path: str
                     ) -> web.Response:
    try:
        requested = await _read_part_map(request)
        for suffixes in requested.values():
            if not isinstance(suffixes, list) or not all(
                    isinstance(s, str) and is_suffix(s) for s in suffixes):
                raise ValueError("suffixes must be lists of 3 hex digits")
    except ValueError as err:
        return error_response(400, f"bad REPLICATE body: {err}")
    answer = await node.run_io(_suffix_hashes_of, device_path, requested)
    await _names_durable(node, device_path)
    return web.Response(body=wire.pack(answer), content_type=wire.MSGPACK_TYPE)


async def _names_durable(node: StorageNode, device_path: str) -> None:
    """Under group commit, wait for a device flush that began after the look just taken.

    A small write's name is in its hash directory before the flush that makes it
    durable (see ``diskfile``). A sender that hears "in sync" (equal suffix hashes) or
    "not wanted" (something newer is here) may delete its handoff copy on that answer,
    so the names it was judged against must survive a crash first: one shared flush
    per request.
    """
    if node.group_commit:
        await node.flusher(device_path).barrier()


def _wanted_of(device_path: str, offers: dict[str, dict]) -> dict[str, dict[str, Any]]:
    wanted, errors = _per_partition("missing_check", device_path, offers,
                                    store.wanted_parts, keep_empty=False)
    return {"wanted": wanted, "errors": errors}


async def _missing_check(request: web.Request, node: StorageNode, device_path: str
                         ) -> web.Response:
    try:
        offers = await _read_part_map(request)
        for part_offers in offers.values():
            if not isinstance(part_offers, dict) or not all(
                    isinstance(v, list) and len(v) == 2 and
                    all(n is None or isinstance(n, str) for n in v)
                    for v in part_offers.values()):
                raise ValueError("offers must be {hash: [durable, meta]} per partition")
    except ValueError as err:
        return error_response(400, f"bad missing_check body: {err}")
    answer = await node.run_io(_wanted_of, device_path, offers)
    await _names_durable(node, device_path)
    return web.Response(body=wire.pack(answer), content_type=wire.MSGPACK_TYPE)

class _BufferedBody:
    """``readexactly`` over a request body, refilled with whatever the socket delivered.

    An updates stream is mostly frames of a few KiB: reading each 4-byte length, header
    and body straight from aiohttp's stream costs three awaits and buffer hops per file;
    here they are sliced out of the chunks already received.
    """

    def __init__(self, content: Any) -> None:
        self.content = content
        self.buffer = bytearray()
        self.position = 0

    async def readexactly(self, count: int) -> bytes:
        while len(self.buffer) - self.position < count:
            chunk = await self.content.readany()
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(self.buffer[self.position:]), count)
            if self.position:
                del self.buffer[:self.position]
                self.position = 0
            self.buffer += chunk
        start = self.position
        self.position += count
        return bytes(self.buffer[start:self.position])


async def _receive_updates(request: web.Request, node: StorageNode, device_path: str
                           ) -> web.Response:
    """Write each pushed file; small files of any partitions are written in batches.

    A batch (256 files / 4 MiB) is one thread hop to stage, one shared device flush, one
    hop to link, one more flush: the cost of durability is per batch, not per file or
    per partition.
    """
    content = _BufferedBody(request.content)
    result: dict[str, Any] = {"written": 0, "stale": 0, "corrupt": [], "bytes": 0}
    touched: dict[str, set[str]] = {}  # part -> hash dirs to fsync, suffixes to invalidate
    batch: list[tuple[dict, bytes]] = []
    batch_bytes = 0
    committed_alone = False  # a big file was committed outside the batches

    def write_batch(items: list[tuple[dict, bytes]]) -> list[tuple[dict, str, str]]:
        """``durability = "fsync"``: each file fsynced before its rename, directories
        fsynced once at the end. The group-commit path is :func:`store_batch`."""
        outcomes = []
        for header, body in items:
            received = store.ReceivedFile(device_path, header["part"], header["hash"],
                                          header["name"], header["meta"], node.fsync,
                                          node.use_xattr)
            received.write(body)
            outcomes.append((header, received.commit(), received.object_dir))
        return outcomes

    def stage_batch(items: list[tuple[dict, bytes]]) -> list[store.StagedFile | tuple]:
        staged: list[store.StagedFile | tuple] = []
        staged_data: dict[tuple[str, str], Timestamp] = {}  # (part, hash) -> .data stamp
        try:
            for header, body in items:
                key = (header["part"], header["hash"])
                outcome = store.stage_received(device_path, header["part"], header["hash"],
                                               header["name"], header["meta"], body,
                                               node.use_xattr, staged_data.get(key))
                if isinstance(outcome, store.StagedFile):
                    staged.append((header, outcome))
                    if outcome.name.endswith(".data"):
                        stamp = outcome.timestamp
                        staged_data[key] = max(stamp, staged_data.get(key, stamp))
                else:
                    staged.append((header, outcome, ""))
        except BaseException:
            abort_staged(staged)
            raise
        return staged

    def abort_staged(staged: list) -> None:
        for item in staged:
            if len(item) == 2:
                item[1].writer.abort()

    def publish_batch(staged: list) -> list[tuple[dict, str, str]]:
        outcomes = []
        linked: list[str] = []
        try:
            for index, item in enumerate(staged):
                if len(item) == 3:
                    outcomes.append(item)
                    continue
                header, staged_file = item
                try:
                    outcome = store.publish_received(staged_file, invalidate=False)
                except BaseException:
                    abort_staged(staged[index + 1:])
                    raise
                if outcome == "written":
                    linked.append(staged_file.object_dir)
                # "": already durable and invalidated once the next flush ends
                outcomes.append((header, outcome, ""))
        finally:
            # one journal append per partition for the whole batch (also for the files
            # linked before a failure), before the flush that makes the links durable
            store.invalidate_written(linked)
        return outcomes

    async def store_batch(items: list[tuple[dict, bytes]], turn: asyncio.Future | None,
                          published: asyncio.Future) -> list[tuple[dict, str, str]]:
        """Durable per batch: stage all, one flush, link all, one more flush.

        Batches of one stream overlap (the next is read and staged while this one waits
        for its flush) but link in arrival order: ``turn`` is the previous batch's
        ``published``, so a ``.meta`` never lands before the ``.data`` it belongs to.
        """
        try:
            if not node.group_commit:
                if turn is not None:
                    await turn
                return await node.run_io(write_batch, items)
            flusher = node.flusher(device_path)
            staged = await node.run_io(stage_batch, items)
            try:
                await flusher.barrier()  # every staged file's bytes + xattr durable, unnamed
                if turn is not None:
                    await turn
            except BaseException:
                await node.run_io(abort_staged, staged)
                raise
            outcomes = await node.run_io(publish_batch, staged)
        finally:
            if not published.done():
                published.set_result(None)
        # the links, new directories and hashes.invalid records are durable after this
        # flush: the directories need no fsync of their own
        await flusher.barrier()
        return outcomes

    in_flight: list[tuple[asyncio.Task, int]] = []
    last_published: asyncio.Future | None = None

    async def start_batch(items: list[tuple[dict, bytes]], size: int) -> None:
        nonlocal last_published
        published = asyncio.get_running_loop().create_future()
        in_flight.append((asyncio.ensure_future(store_batch(items, last_published,
                                                            published)), size))
        last_published = published
        while len(in_flight) >= MAX_BATCHES_IN_FLIGHT:
            task, done_size = in_flight.pop(0)
            account(await task, done_size)

    def account(outcomes: list[tuple[dict, str, str]], size: int) -> None:
        for header, outcome, object_dir in outcomes:
            if outcome == "written":
                result["written"] += 1
                if object_dir:
                    touched.setdefault(header["part"], set()).add(object_dir)
            elif outcome == "corrupt":
                result["corrupt"].append([header["part"], header["hash"]])
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
                    await start_batch(batch, batch_bytes)
                    batch, batch_bytes = [], 0
                continue
            while in_flight:  # large files are written after every earlier batch
                task, done_size = in_flight.pop(0)
                account(await task, done_size)
            received = await node.run_io(store.ReceivedFile, device_path, header["part"],
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
            account([(header, outcome, received.object_dir)], size)
            committed_alone = True
        if batch:
            await start_batch(batch, batch_bytes)
        while in_flight:
            task, done_size = in_flight.pop(0)
            account(await task, done_size)
    except (ValueError, KeyError) as err:
        return error_response(400, f"bad updates stream: {err}")
    finally:
        for task, _ in in_flight:  # the stream failed: finish or drop what is staged
            task.cancel()
        if in_flight:
            await asyncio.gather(*(t for t, _ in in_flight), return_exceptions=True)
        for part, dirs in touched.items():
            await node.run_io(store.finish_received, device_path, part, dirs, node.fsync)
    if committed_alone:
        # a big file fsyncs only itself: its "stale" verdict or cleanup may have been
        # judged against a newer name that is not durable yet
        await _names_durable(node, device_path)
    return web.Response(body=wire.pack(result), content_type=wire.MSGPACK_TYPE)
