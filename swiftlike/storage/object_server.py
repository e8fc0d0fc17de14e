"""Object verbs of a storage node: PUT, GET, HEAD, POST, DELETE on one device's disk.

Small objects take a single worker-thread hop (write, fsync, rename, fsync dir); big
ones stream through a temp file chunk by chunk, so memory stays flat. A full GET checks
the body while streaming (its xxh3 stamp when it has one, else the md5) and holds back the
last chunk until it matches: a damaged file is quarantined and the connection cut, so the
proxy never mistakes it for a clean answer.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Awaitable, Callable

from aiohttp import web

from ring.hashing import hash_path_hex, suffix_of
from swiftlike.common.body_footer import FOOTER_HEADER, FOOTER_LEN, FOOTER_VERSION
from swiftlike.common.http_util import (
    RangeNotSatisfiable,
    content_range,
    evaluate_conditions,
    multipart_closing,
    multipart_length,
    multipart_part_header,
    new_boundary,
    parse_range_header,
    quote_etag,
    ranges_for_length,
    wants_whole,
)
from swiftlike.common.timestamp import Timestamp
from swiftlike.storage import body_io, diskfile
from swiftlike.storage.direct_read import AlignedBuffers
from swiftlike.storage.direct_write import ALIGNMENT
from swiftlike.storage.expiring_queue import enqueue_expiring
from swiftlike.storage.hashes import invalidate_object_dir
from swiftlike.storage.node import StorageNode, error_response, request_timestamp
from swiftlike.storage.object_headers import (
    CONTENT_TYPE_STAMP,
    INTERNAL_KEYS,
    POST_HEADERS,
    POST_PREFIXES,
    STORED_HEADERS,
    STORED_PREFIXES,
    delete_at_error,
    row_fields,
    title_header,
)
from swiftlike.storage.obsolete_files import remove_files, remove_small_obsolete
from swiftlike.storage.routing import Route
from swiftlike.storage.streamed_put import receive_streamed_body
from swiftlike.storage.updates import (
    UpdateBatcher,
    UpdateTarget,
    failed_targets,
    object_row,
    pending_record,
    targets_in_headers,
    write_async_pending,
)

LOG = logging.getLogger(__name__)

READ_BATCH = 1024 * 1024  # bytes per read (and, when not cached, thread hop) of a GET
#: A whole-object GET of at least this many bytes that misses the page cache reads the
#: rest with O_DIRECT (with [node] direct_io): see direct_read.
DIRECT_READ_MIN = 4 * 1024 * 1024


class ObjectServer:
    """The object verbs; ``node`` supplies settings, pools and the update session."""

    def __init__(self, node: StorageNode) -> None:
        self.node = node
        # container rows of concurrent writes share PATCH requests (see updates.py)
        self.updates = UpdateBatcher(lambda: node.client)
        # for GETs of big objects the page cache does not hold (see direct_read)
        self.read_buffers = AlignedBuffers(READ_BATCH + 2 * ALIGNMENT)

    def object_dir(self, device_path: str, route: Route) -> str:
        object_hash = hash_path_hex(route.account, route.container, route.obj,
                                    prefix=self.node.hash_prefix, suffix=self.node.hash_suffix)
        return os.path.join(device_path, "objects", route.partition, suffix_of(object_hash),
                            object_hash)

    async def handle(self, request: web.Request, route: Route, device_path: str
                     ) -> web.StreamResponse:
        method = request.method
        if method == "PUT":
            return await self.put(request, route, device_path)
        if method in ("GET", "HEAD"):
            return await self.get_or_head(request, route, device_path)
        if method == "POST":
            return await self.post(request, route, device_path)
        if method == "DELETE":
            return await self.delete(request, route, device_path)
        return error_response(405, f"{method} not allowed on objects")

    # ---- PUT ---------------------------------------------------------------------------
    async def put(self, request: web.Request, route: Route, device_path: str
                  ) -> web.StreamResponse:
        timestamp = request_timestamp(request)
        if timestamp is None:
            return error_response(400, "Missing or invalid X-Timestamp")
        length = request.content_length
        chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        if length is None and not chunked:
            return error_response(411, "Content-Length or chunked transfer required")
        problem = delete_at_error(request.headers.get("X-Delete-At"))
        if problem:
            return error_response(400, problem)
        if_none_match = request.headers.get("If-None-Match")
        if if_none_match is not None and if_none_match.strip() != "*":
            return error_response(400, "If-None-Match only supports *")
        object_dir = self.object_dir(device_path, route)
        state = await self.node.run_lookup(diskfile.gather_ondisk_files, object_dir)
        if state.newest_durable is not None and timestamp <= state.newest_durable:
            return await self._newer_here(device_path, state.newest_durable)
        if if_none_match is not None and state.data_file is not None:
            _, opened = await self.node.run_lookup(diskfile.open_object, device_path,
                                                   object_dir, -1)
            if opened is not None and not diskfile.is_expired(opened.metadata):
                return await self._once_flushed(device_path, error_response(
                    412, "Object exists (If-None-Match: *)"))
        if not self.node.has_space_for(device_path, length or 0):
            return error_response(507, "Not enough free space on device")
        metadata = {"name": f"/{route.account}/{route.container}/{route.obj}",
                    "X-Timestamp": timestamp.internal}
        for key, value in request.headers.items():
            lowered = key.lower()
            if lowered in STORED_HEADERS or lowered.startswith(STORED_PREFIXES):
                metadata[title_header(key)] = value
        metadata.setdefault("Content-Type", "application/octet-stream")
        expected_etag = request.headers.get("ETag", "").strip('"').lower() or None
        targets = targets_in_headers(request.headers, "Container")
        parked: list[UpdateTarget] = []

        async def park_rows(object_file: str) -> None:
            assert route.container is not None and route.obj is not None
            row = object_row("PUT", route.obj, timestamp, row_fields(metadata))
            parked.extend(await self.updates.park_before_flush(
                targets, route.account, route.container, row, device_path, object_file))

        try:
            if length is not None and length <= self.node.small_object_limit and \
                    FOOTER_HEADER not in request.headers:
                result = await self._put_small(request, device_path, object_dir, length,
                                               expected_etag, timestamp, metadata,
                                               park_rows if targets else None)
            else:
                result = await self._put_streaming(request, device_path, object_dir, length,
                                                   expected_etag, timestamp, metadata)
        except diskfile.DiskFull:
            return error_response(507, "Device full")
        if isinstance(result, web.StreamResponse):
            return result
        await self._queue_expiry(route, device_path, metadata, timestamp)
        await self.container_update(request, "PUT", route, device_path, timestamp,
                                    row_fields(metadata), skip=parked, targets=targets)
        return web.Response(status=201, headers={"ETag": quote_etag(result)})

    async def _put_small(self, request: web.Request, device_path: str, object_dir: str,
                         length: int, expected_etag: str | None, timestamp: Timestamp,
                         metadata: dict[str, str],
                         before_flush: Callable[[str], Awaitable[None]] | None = None
                         ) -> str | web.StreamResponse:
        try:
            body = await request.content.readexactly(length) if length else b""
        except Exception:  # client went away or sent fewer bytes than promised
            return error_response(499, "Client disconnected before sending the whole body")
        etag = hashlib.md5(body, usedforsecurity=False).hexdigest()
        if expected_etag is not None and expected_etag != etag:
            return error_response(422, "ETag does not match the body's md5")
        metadata["ETag"] = etag
        metadata["Content-Length"] = str(length)
        # every GET of a small object checks its body: against this, not the md5
        metadata[body_io.BODY_CHECKSUM_KEY] = body_io.body_stamp(body)
        await self.write_small(device_path, object_dir, body, timestamp, ".data", metadata,
                               before_flush)
        return etag

    async def write_small(self, device_path: str, object_dir: str, body: bytes,
                          timestamp: Timestamp, ext: str, metadata: dict[str, str],
                          before_flush: Callable[[str], Awaitable[None]] | None = None
                          ) -> None:
        """Write a small .data/.ts/.meta durably: group commit or per-file fsyncs.

        ``before_flush(path)``: under group commit, called once the file is published
        at ``path`` and before the flush that makes the name durable (what it writes on
        this device rides that flush).
        """
        node = self.node
        if not node.group_commit:
            await node.run_io(diskfile.write_whole_object, device_path, object_dir, body,
                              timestamp, ext, metadata, fsync=node.fsync,
                              use_xattr=node.use_xattr)
            return
        flusher = node.flusher(device_path)
        # Staging (a page-cache write) and publishing (a rename) cost less than a thread
        # hop; with inline_lookups they run on the loop and only the flush leaves it.
        writer = await node.run_lookup(diskfile.stage_whole_object, device_path, object_dir,
                                       body, timestamp, ext, metadata,
                                       use_xattr=node.use_xattr,
                                       compute_md5=False)  # the caller has the md5
        try:
            await flusher.barrier()  # temp file's bytes + xattr durable, still invisible
        except BaseException:
            await node.run_io(writer.abort)
            raise
        if await node.run_lookup(writer.publish, invalidate=False, defer_cleanup=True):
            big = await node.run_lookup(remove_small_obsolete, object_dir)
            if big:
                await node.run_io(remove_files, object_dir, big)
        # last, after the cleanup: a rehash (a peer's REPLICATE) that ran between the
        # publish and the unlinks counted the old file, and must not have the last word
        await node.run_lookup(invalidate_object_dir, object_dir)
        if before_flush is not None:
            await before_flush(writer.final_path)
        await flusher.barrier()  # the rename and new directories durable: may ack now

    async def _put_streaming(self, request: web.Request, device_path: str, object_dir: str,
                             length: int | None, expected_etag: str | None,
                             timestamp: Timestamp, metadata: dict[str, str]
                             ) -> str | web.StreamResponse:
        """A body streamed to a temp file (see :mod:`swiftlike.storage.streamed_put`).

        With a body footer (the proxy's md5 after the last byte) this node hashes only
        with xxh3; either way nothing is committed unless the whole body arrived.
        """
        node = self.node
        footer = request.headers.get(FOOTER_HEADER)
        if footer is not None and footer.strip().lower() != FOOTER_VERSION:
            return error_response(400, f"Unsupported {FOOTER_HEADER}: {footer}")
        writer = diskfile.ObjectWriter(device_path, object_dir, fsync=node.fsync,
                                       use_xattr=node.use_xattr,
                                       compute_md5=footer is None,
                                       direct_io=node.direct_io)
        body_length = length - FOOTER_LEN if footer is not None and length else length
        await node.run_io(writer.open, max(body_length or 0, 0))
        committed = False
        try:
            got = await receive_streamed_body(node, request, writer, device_path, length,
                                              footer is not None)
            if isinstance(got, web.StreamResponse):
                return got
            if expected_etag is not None and expected_etag != got.etag:
                return error_response(422, "ETag does not match the body's md5")
            metadata["ETag"] = got.etag
            metadata["Content-Length"] = str(got.length)
            stamp = writer.body_checksum_hex()
            if stamp is not None:
                metadata[body_io.BODY_CHECKSUM_KEY] = stamp
            await node.run_io_to_end(writer.commit, timestamp, ".data", metadata)
            committed = True
            if node.group_commit and not writer.made_dir:
                # a small write's name is visible before the flush that makes it durable
                # (see diskfile), and this commit's cleanup may just have removed our file
                # in favour of such a newer one: answer once a flush has made it durable
                await node.flusher(device_path).barrier()
            return got.etag
        finally:
            if not committed:
                await node.run_io_to_end(writer.abort)

    # ---- GET / HEAD ----------------------------------------------------------------------
    def _object_headers(self, opened: diskfile.OpenedObject) -> dict[str, str]:
        headers = {key: value for key, value in opened.metadata.items()
                   if key not in INTERNAL_KEYS}
        headers["Content-Length"] = str(opened.size)
        headers["ETag"] = quote_etag(opened.metadata.get("ETag", ""))
        headers["Last-Modified"] = opened.newest_timestamp.http_date
        headers["X-Timestamp"] = opened.data_timestamp.normal
        headers["X-Backend-Timestamp"] = opened.newest_timestamp.internal
        headers["X-Backend-Data-Timestamp"] = opened.data_timestamp.internal
        headers["Accept-Ranges"] = "bytes"
        return headers

    async def get_or_head(self, request: web.Request, route: Route, device_path: str
                          ) -> web.StreamResponse:
        node = self.node
        is_get = request.method == "GET"
        object_dir = self.object_dir(device_path, route)
        try:
            state, opened = await node.run_lookup(
                diskfile.open_object, device_path, object_dir,
                node.small_object_limit if is_get else -1, keep_fd=is_get)
        except diskfile.DiskFileQuarantined:
            return error_response(404, "Not found (quarantined)")
        fd = opened.fd if opened is not None else None
        try:
            return await self._answer_read(request, device_path, state, opened, is_get)
        finally:
            if fd is not None:
                await node.run_io(diskfile.close_fd, fd)

    async def _answer_read(self, request: web.Request, device_path: str,
                           state: diskfile.OnDiskState,
                           opened: diskfile.OpenedObject | None, is_get: bool
                           ) -> web.StreamResponse:
        if opened is None or diskfile.is_expired(opened.metadata):
            headers = {}
            stamp = opened.newest_timestamp if opened else state.ts_timestamp
            if stamp is not None:
                headers["X-Backend-Timestamp"] = stamp.internal
            status = 412 if "If-Match" in request.headers else 404
            return web.Response(status=status, headers=headers)
        whole = wants_whole(request.headers, opened.metadata)
        if opened.corrupt and (whole or not request.headers.get("Range")):
            return await self._abort_response(request, opened)
        headers = self._object_headers(opened)
        if whole:
            return await self._send_whole(request, device_path, opened, headers, is_get)
        last_modified = math.ceil(opened.newest_timestamp.timestamp)
        verdict = evaluate_conditions(request.headers, opened.metadata.get("ETag"),
                                      last_modified)
        # as Swift's: a refusal still describes the object, with every header a GET
        # would have (metadata too) but the length (a cache revalidating, or a client
        # that asked for the wrong range, learns what is there)
        described = {k: v for k, v in headers.items() if k != "Content-Length"}
        if verdict == 304:
            return web.Response(status=304, headers=described)
        if verdict == 412:
            return web.Response(status=412, headers=described)
        spans = None
        parsed = parse_range_header(request.headers.get("Range"))
        if parsed is not None:
            try:
                spans = ranges_for_length(parsed, opened.size)
            except RangeNotSatisfiable:
                return web.Response(status=416, headers={
                    **described, "Content-Range": f"bytes */{opened.size}"})
            if opened.corrupt:
                return error_response(404, "Not found (quarantined)")
        if spans is None:
            return await self._send_whole(request, device_path, opened, headers, is_get)
        if len(spans) == 1:
            start, stop = spans[0]
            headers["Content-Range"] = content_range(start, stop, opened.size)
            headers["Content-Length"] = str(stop - start)
            return await self._send_spans(request, opened, headers, 206, spans, None, is_get)
        boundary = new_boundary()
        content_type = headers.get("Content-Type", "application/octet-stream")
        headers["Content-Type"] = f"multipart/byteranges;boundary={boundary}"
        headers["Content-Length"] = str(
            multipart_length(boundary, content_type, spans, opened.size))
        return await self._send_spans(request, opened, headers, 206, spans,
                                      (boundary, content_type), is_get)

    async def _abort_response(self, request: web.Request, opened: diskfile.OpenedObject
                              ) -> web.StreamResponse:
        """Headers, then a cut connection: the body was corrupt (already quarantined)."""
        LOG.error("quarantined corrupt object %s", opened.path)
        response = web.StreamResponse(status=200, headers=self._object_headers(opened))
        await response.prepare(request)
        _cut_connection(request)
        raise ConnectionResetError("object quarantined mid-GET")

    async def _send_whole(self, request: web.Request, device_path: str,
                          opened: diskfile.OpenedObject, headers: dict[str, str],
                          is_get: bool) -> web.StreamResponse:
        if not is_get:
            # headers only; they carry the Content-Length a GET would have. A plain
            # Response is written in one piece, a prepared stream takes aiohttp's writer
            return web.Response(status=200, headers=headers)
        if opened.body is not None:
            return web.Response(status=200, body=opened.body, headers=headers)
        response = web.StreamResponse(status=200, headers=headers)
        await response.prepare(request)
        assert opened.fd is not None
        hasher, expected = body_io.body_verifier(opened.metadata)
        offset = 0
        pending: bytes | None = None
        pieces = body_io.BodyPieces(self.node, opened.fd, opened.size, hasher, self.read_buffers,
                             direct=opened.size >= DIRECT_READ_MIN and self.node.direct_io)
        try:
            while offset < opened.size:
                chunk = await pieces.read(offset, min(READ_BATCH, opened.size - offset))
                if not chunk:
                    break
                offset += len(chunk)
                if pending is not None:
                    await response.write(pending)
                pending = chunk
        finally:
            pieces.close()
        if offset != opened.size or hasher.hexdigest() != expected:  # type: ignore[attr-defined]
            # hold back the last chunk: the client must not see a complete body
            object_dir = os.path.dirname(opened.path)
            await self.node.run_io(diskfile.quarantine_object_dir, device_path, object_dir)
            LOG.error("md5 mismatch, quarantined %s", opened.path)
            _cut_connection(request)
            raise ConnectionResetError("object quarantined mid-GET")
        if pending is not None:
            await response.write(pending)
        await response.write_eof()
        return response

    async def _send_spans(self, request: web.Request, opened: diskfile.OpenedObject,
                          headers: dict[str, str], status: int, spans: list[tuple[int, int]],
                          multipart: tuple[str, str] | None, is_get: bool
                          ) -> web.StreamResponse:
        length = int(headers.pop("Content-Length"))
        if is_get and opened.body is not None and multipart is None:
            start, stop = spans[0]
            return web.Response(status=status, body=opened.body[start:stop], headers=headers)
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = length
        await response.prepare(request)
        if not is_get:
            await response.write_eof()
            return response
        for index, (start, stop) in enumerate(spans):
            if multipart is not None:
                boundary, content_type = multipart
                if index:
                    await response.write(b"\r\n")
                await response.write(multipart_part_header(boundary, content_type, start,
                                                           stop, opened.size))
            await self._write_span(response, opened, start, stop)
        if multipart is not None:
            await response.write(b"\r\n" + multipart_closing(multipart[0]))
        await response.write_eof()
        return response

    async def _write_span(self, response: web.StreamResponse, opened: diskfile.OpenedObject,
                          start: int, stop: int) -> None:
        if opened.body is not None:
            await response.write(opened.body[start:stop])
            return
        assert opened.fd is not None
        pieces = body_io.BodyPieces(self.node, opened.fd, stop, None, self.read_buffers,
                                    direct=False)
        offset = start
        while offset < stop:
            chunk = await pieces.read(offset, min(READ_BATCH, stop - offset))
            if not chunk:
                raise ConnectionResetError("object shorter than expected")
            await response.write(chunk)
            offset += len(chunk)

    # ---- POST / DELETE -----------------------------------------------------------------
    async def post(self, request: web.Request, route: Route, device_path: str
                   ) -> web.StreamResponse:
        timestamp = request_timestamp(request)
        if timestamp is None:
            return error_response(400, "Missing or invalid X-Timestamp")
        problem = delete_at_error(request.headers.get("X-Delete-At"))
        if problem:
            return error_response(400, problem)
        object_dir = self.object_dir(device_path, route)
        try:
            state, opened = await self.node.run_lookup(diskfile.open_object, device_path,
                                                   object_dir, -1)
        except diskfile.DiskFileQuarantined:
            return error_response(404, "Not found (quarantined)")
        if opened is None or diskfile.is_expired(opened.metadata):
            headers = {}
            if state.ts_timestamp is not None:
                headers["X-Backend-Timestamp"] = state.ts_timestamp.internal
            return web.Response(status=404, headers=headers)
        if timestamp <= opened.newest_timestamp:
            return await self._newer_here(device_path, opened.newest_timestamp)
        metadata = {"X-Timestamp": timestamp.internal}
        for key, value in request.headers.items():
            lowered = key.lower()
            if lowered in POST_HEADERS or lowered.startswith(POST_PREFIXES):
                metadata[title_header(key)] = value
        if "Content-Type" in metadata:
            metadata[CONTENT_TYPE_STAMP] = timestamp.internal
        elif CONTENT_TYPE_STAMP in opened.metadata:  # an earlier POST set it: keep it
            metadata["Content-Type"] = opened.metadata["Content-Type"]
            metadata[CONTENT_TYPE_STAMP] = opened.metadata[CONTENT_TYPE_STAMP]
        try:
            await self.write_small(device_path, object_dir, b"", timestamp, ".meta",
                                   metadata)
        except diskfile.DiskFull:
            return error_response(507, "Device full")
        await self._queue_expiry(route, device_path, metadata, timestamp)
        if metadata.get(CONTENT_TYPE_STAMP) == timestamp.internal:
            # this POST set the type: the listing's type follows (Swift's fast-POST)
            await self.container_update(request, "POST", route, device_path, timestamp, {
                "X-Content-Type": metadata["Content-Type"]})
        return web.Response(status=202)

    async def delete(self, request: web.Request, route: Route, device_path: str
                     ) -> web.StreamResponse:
        timestamp = request_timestamp(request)
        if timestamp is None:
            return error_response(400, "Missing or invalid X-Timestamp")
        object_dir = self.object_dir(device_path, route)
        try:
            state, opened = await self.node.run_lookup(diskfile.open_object, device_path,
                                                   object_dir, -1)
        except diskfile.DiskFileQuarantined:
            state, opened = diskfile.OnDiskState(), None
        if_delete_at = request.headers.get("X-If-Delete-At")
        if if_delete_at is not None:
            if not if_delete_at.isdigit():
                return error_response(400, "Bad X-If-Delete-At header value")
            if opened is None or opened.metadata.get("X-Delete-At") != if_delete_at:
                # the expirer drops its queue entry on this answer
                return await self._once_flushed(device_path, error_response(
                    412, "X-If-Delete-At mismatch"))
        if state.newest_durable is not None and timestamp <= state.newest_durable:
            return await self._newer_here(device_path, state.newest_durable)
        existed = opened is not None and not diskfile.is_expired(opened.metadata)
        try:
            await self.write_small(device_path, object_dir, b"", timestamp, ".ts", {
                "X-Timestamp": timestamp.internal,
                "name": f"/{route.account}/{route.container}/{route.obj}"})
        except diskfile.DiskFull:
            return error_response(507, "Device full")
        await self.container_update(request, "DELETE", route, device_path, timestamp, {})
        headers = {"X-Backend-Timestamp": timestamp.internal}
        return web.Response(status=204 if existed else 404, headers=headers)

    async def _newer_here(self, device_path: str, newest: Timestamp) -> web.StreamResponse:
        """409: a version as new or newer than the request's is here (answered after a
        flush, see :meth:`_once_flushed`)."""
        return await self._once_flushed(device_path, error_response(
            409, "A newer or equal version exists", {"X-Backend-Timestamp": newest.internal}))

    async def _once_flushed(self, device_path: str, response: web.StreamResponse
                            ) -> web.StreamResponse:
        """``response`` once a device flush that began now has ended.

        For verdicts judged against the files of a hash directory (409: a newer version
        is here, 412: the object exists): under group commit a small write's name is
        visible before the flush that makes it durable (see diskfile), and the proxy
        turns a 409 into "accepted, superseded". The flush makes sure the file that
        decided is one a crash keeps.
        """
        if self.node.group_commit:
            await self.node.flusher(device_path).barrier()
        return response

    async def _queue_expiry(self, route: Route, device_path: str, metadata: dict[str, str],
                            timestamp: Timestamp) -> None:
        """Record X-Delete-At in the node's expiring queue for the expirer daemon."""
        delete_at = metadata.get("X-Delete-At")
        if not delete_at:
            return
        assert route.container is not None and route.obj is not None
        await self.node.run_io(enqueue_expiring, device_path, route.account, route.container,
                               route.obj, delete_at, timestamp.internal,
                               self.node.hash_prefix, self.node.hash_suffix, self.node.fsync)

    # ---- container updates -------------------------------------------------------------
    async def close(self) -> None:
        """Stop batches still in flight (their rows count as failed)."""
        await self.updates.close()

    async def container_update(self, request: web.Request, method: str, route: Route,
                               device_path: str, timestamp: Timestamp,
                               extra: dict[str, str],
                               skip: list[UpdateTarget] | None = None,
                               targets: list[UpdateTarget] | None = None) -> None:
        """Tell the container servers (but those in ``skip``, already told); queue what
        fails in async_pending. ``targets``: the request's, when the caller parsed them."""
        if targets is None:
            targets = targets_in_headers(request.headers, "Container")
        if skip:
            targets = [target for target in targets if target not in skip]
        if not targets:
            return
        headers = {"X-Backend-Server-Type": "container", "X-Timestamp": timestamp.internal,
                   **extra}
        assert route.container is not None and route.obj is not None
        row = object_row(method, route.obj, timestamp, extra)
        timeout = self.node.update_timeout
        failed = await failed_targets(targets, lambda target: self.updates.send(
            target, route.account, route.container, row, timeout))
        if failed:
            record = pending_record(method, route.account, route.container, route.obj,
                                    "container", headers, failed)
            await self.node.run_io(write_async_pending, device_path, record,
                                   timestamp.internal, self.node.hash_prefix,
                                   self.node.hash_suffix, self.node.fsync)


def _cut_connection(request: web.Request) -> None:
    """Abort the TCP connection so the client sees a broken body, never a clean end."""
    transport = request.transport
    if transport is not None:
        transport.abort()
