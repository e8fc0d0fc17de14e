"""A request body on a node's HTTP connection: what the handler reads, how chunks decode.

Split from :mod:`.node_http` (the connection and server) to keep both small; the
connection feeds a :class:`RequestBody` and the handler reads it with the part of
aiohttp's StreamReader the node's servers use.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from aiohttp import web

from swiftlike.storage.node_http_parse import (
    MAX_HEAD,
    MAX_LINE,
    BadRequest,
    check_trailer_field,
    parse_chunk_size,
)

HIGH_WATER = 2 * 1024 * 1024  # body bytes waiting for the handler before reads pause
LOW_WATER = 256 * 1024  # ... and when they resume
MAX_READ_BODY = 1024 * 1024  # request.read()'s limit (aiohttp's client_max_size default)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class BodyOwner(Protocol):
    """What a body needs of its connection: flow control and a way to say 100."""

    loop: asyncio.AbstractEventLoop

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def write(self, data: bytes) -> None: ...


class RequestBody:
    """A request body as it arrives: the part of aiohttp's StreamReader nodes use."""

    __slots__ = (
        "_buffered",
        "_conn",
        "_continue",
        "_discard",
        "_exc",
        "_pieces",
        "_waiter",
        "done",
    )

    def __init__(self, conn: BodyOwner, done: bool, expect_continue: bool) -> None:
        self._conn = conn
        self._pieces: deque[bytes | memoryview] = deque()
        self._buffered = 0
        self.done = done  # every byte has arrived
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._continue = expect_continue and not done
        self._discard = False

    # ---- fed by the connection -----------------------------------------------------------
    def feed(self, piece: bytes | memoryview) -> None:
        if self._discard:
            return
        self._pieces.append(piece)
        self._buffered += len(piece)
        if self._buffered > HIGH_WATER:
            self._conn.pause_reading()
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if not self.done:
            self._exc = exc
        self._wake()

    @property
    def awaiting_continue(self) -> bool:
        """The client waits for a 100 Continue it was never sent: no body is coming."""
        return self._continue and not self.done

    def discard(self) -> None:
        """The handler is finished: drop what waits and whatever still arrives."""
        self._discard = True
        self._pieces.clear()
        self._buffered = 0
        self._conn.resume_reading()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # ---- read by the handler -------------------------------------------------------------
    async def _next(self) -> bytes | memoryview:
        while not self._pieces:
            if self._exc is not None:
                raise self._exc
            if self.done:
                return b""
            if self._continue:
                self._continue = False
                self._conn.write(_CONTINUE)
            self._waiter = self._conn.loop.create_future()
            await self._waiter
        piece = self._pieces.popleft()
        self._buffered -= len(piece)
        if self._buffered < LOW_WATER:
            self._conn.resume_reading()
        return piece

    async def readany(self) -> bytes | memoryview:
        """The next piece as it arrived; empty at the end of the body."""
        return await self._next()

    async def readchunk(self) -> tuple[bytes | memoryview, bool]:
        """aiohttp's spelling of readany: (piece, False); (b"", False) at the end."""
        return await self._next(), False

    async def readexactly(self, count: int) -> bytes:
        parts: list[bytes | memoryview] = []
        need = count
        while need > 0:
            piece = await self._next()
            if not piece:
                raise asyncio.IncompleteReadError(b"".join(parts), count)
            if len(piece) > need:
                self._pieces.appendleft(piece[need:])
                self._buffered += len(piece) - need
                piece = piece[:need]
            parts.append(piece)
            need -= len(piece)
        return parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)

    async def read(self, limit: int = MAX_READ_BODY) -> bytes:
        """The whole body; 413 (raised as aiohttp's HTTPException) beyond ``limit``."""
        parts: list[bytes | memoryview] = []
        size = 0
        while True:
            piece = await self._next()
            if not piece:
                return b"".join(parts)
            size += len(piece)
            if size > limit:
                raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
            parts.append(piece)


class ChunkDecoder:
    """Chunked transfer coding: sizes, data, the CRLF after each, trailers (checked, not kept)."""

    SIZE, DATA, DATA_END, TRAILER = range(4)

    def __init__(self) -> None:
        self.state = self.SIZE
        self.left = 0
        self.line = bytearray()
        self.finished = False
        self.trailer_bytes = 0

    def feed(self, data: bytes, body: RequestBody) -> bytes:
        """Decode ``data`` into ``body``; returns the bytes after the body's end."""
        pos = 0
        size = len(data)
        while pos < size:
            if self.state == self.DATA:
                take = min(size - pos, self.left)
                body.feed(data[pos:pos + take])
                pos += take
                self.left -= take
                if self.left == 0:
                    self.state = self.DATA_END
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                self.line += data[pos:]
                if len(self.line) > MAX_LINE:
                    raise BadRequest(400, "chunk line too long")
                return b""
            self.line += data[pos:end + 1]
            pos = end + 1
            line = bytes(self.line)
            self.line.clear()
            if not line.endswith(b"\r\n") or len(line) > MAX_LINE:
                raise BadRequest(400, "chunk line without CRLF")
            line = line[:-2]
            if self.state == self.SIZE:
                self.left = parse_chunk_size(line)
                self.state = self.DATA if self.left else self.TRAILER
            elif self.state == self.DATA_END:
                if line:
                    raise BadRequest(400, "chunk data longer than its size")
                self.state = self.SIZE
            elif not line:  # the blank line after the trailers: the body's end
                self.finished = True
                return data[pos:]
            else:
                check_trailer_field(line)
                self.trailer_bytes += len(line)
                if self.trailer_bytes > MAX_HEAD:
                    raise BadRequest(400, "chunked body trailers too large")
        return b""
