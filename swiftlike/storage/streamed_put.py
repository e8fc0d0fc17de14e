"""Receiving a streamed (large) object PUT body on a node: socket -> temp file.

Pieces are taken from the request as the socket delivered them and written in batches
of about :data:`STREAM_WRITE_BATCH` bytes by a worker thread (write syscalls, xxh3 and,
without a footer, md5 all run with the GIL released) while the next batch arrives. At
most one batch is in flight, so the file is written in order.

With ``X-Backend-Body-Footer`` (see :mod:`swiftlike.common.body_footer`) the md5 comes
from the proxy at the end of the body and this node does not hash with md5 at all; the
footer is held back from the file and checked against what arrived.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiohttp import web

from swiftlike.common.body_footer import FooterSplitter
from swiftlike.storage import diskfile
from swiftlike.storage.node import StorageNode, error_response

LOG = logging.getLogger(__name__)
STREAM_WRITE_BATCH = 1024 * 1024
SPACE_CHECK_INTERVAL = 8 * 1024 * 1024
_DISCONNECTED = "Client disconnected before sending the whole body"


@dataclass
class ReceivedBody:
    """What arrived: the md5 ETag (the footer's or our own) and the body length."""

    etag: str
    length: int


async def receive_streamed_body(node: StorageNode, request: web.Request,
                                writer: diskfile.ObjectWriter, device_path: str,
                                length: int | None, footer: bool
                                ) -> ReceivedBody | web.Response:
    """Write the request body into ``writer``'s temp file; never commits.

    ``length`` is the request's Content-Length (body plus footer when ``footer``). Returns
    an error response when the body was cut short, too long, or (with ``footer``) does
    not end in a valid footer; the caller then aborts the writer. DiskFull propagates.
    """
    splitter = FooterSplitter() if footer else None
    inflight: asyncio.Future | None = None
    batch: list[bytes | memoryview] = []
    batch_size = 0
    received = 0
    next_space_check = SPACE_CHECK_INTERVAL
    try:
        try:
            while True:
                # readchunk hands over each received piece as it is (readany would
                # join what is buffered: one more copy of every byte)
                chunk, end_of_http_chunk = await request.content.readchunk()
                if not chunk:
                    if end_of_http_chunk:
                        continue  # a chunked-encoding boundary, not the end
                    break
                received += len(chunk)
                if length is not None and received > length:
                    return error_response(400, "Body longer than Content-Length")
                if splitter is None:
                    batch.append(chunk)
                    batch_size += len(chunk)
                else:
                    for piece in splitter.feed(chunk):
                        batch.append(piece)
                        batch_size += len(piece)
                if batch_size >= STREAM_WRITE_BATCH:
                    if inflight is not None:
                        await inflight
                    inflight = asyncio.ensure_future(node.run_io(writer.write_chunks, batch))
                    batch = []
                    batch_size = 0
                if length is None and received >= next_space_check:
                    next_space_check += SPACE_CHECK_INTERVAL
                    if not node.has_space_for(device_path, 0):
                        raise diskfile.DiskFull("fallocate_reserve reached")
            if inflight is not None:
                await inflight
                inflight = None
        except diskfile.DiskFull:
            raise
        except Exception as err:
            LOG.info("PUT body read failed: %r", err)
            return error_response(499, _DISCONNECTED)
        if length is not None and received != length:
            return error_response(499, _DISCONNECTED)
        if batch:
            await node.run_io_to_end(writer.write_chunks, batch)
    finally:
        if inflight is not None:
            # never let the caller abort (close the fd) under a write still running
            await asyncio.wait([inflight])
            if not inflight.cancelled():
                inflight.exception()  # seen: a failed write cleaned up after itself
    if splitter is None:
        assert writer.md5 is not None
        return ReceivedBody(writer.md5.hexdigest(), writer.bytes_written)
    try:
        etag, body_length = splitter.finish()
    except ValueError as err:
        return error_response(400, f"Bad body footer: {err}")
    if body_length != writer.bytes_written:  # cannot happen unless a write went astray
        return error_response(500, "Body length written disagrees with the footer")
    return ReceivedBody(etag, body_length)
