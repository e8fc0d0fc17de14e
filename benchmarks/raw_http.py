"""A minimal HTTP/1.1 keep-alive client for the load generator's measured requests.

Why not aiohttp's client: on a 2-core machine the load client shares the cores with
the servers it measures, and aiohttp's client cost about 0.15 ms of CPU per small GET
here, a quarter of the whole machine during a small-GET phase. Whatever the client
burns is taken from the server, and it weighs more against the faster one: a server
that needs 0.4 ms per GET loses a quarter of its rate to the client, one that needs
5 ms loses a few percent. The load needs far less than a general client, so this one
does only that:

* one connection per load worker, one request at a time on it (no pipelining);
* a request is a head written in one piece, plus an optional body of bytes;
* a response body framed by Content-Length, chunked encoding or the end of the
  connection is counted and dropped (the load checks lengths, never contents);
  its first bytes are kept for error messages;
* anything it does not understand fails the request and closes the connection, so
  a broken answer is counted as an error rather than misread.

``--client aiohttp`` in ``load.py`` still measures with aiohttp's client.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024  # response heads larger than this fail the request
KEPT_BODY = 512  # body bytes kept for error messages


class ResponseError(Exception):
    """The server's answer broke HTTP/1.1 framing, or the connection ended early."""


class ClosedBeforeAnswer(ResponseError):
    """The connection ended before any byte of the answer: on a reused keep-alive
    connection, most likely closed by the server while idle (the request is retried)."""


_HEX = frozenset(b"0123456789abcdefABCDEF")


@dataclass
class RawResponse:
    """What the load looks at: status, headers (names lowercased), body length."""

    status: int
    headers: dict[str, str]
    body_length: int = 0
    body_start: bytes = b""
    keep_alive: bool = True
    _kept: bytearray = field(default_factory=bytearray, repr=False)


class _ChunkCounter:
    """Counts the data bytes of a chunked body; knows when its last chunk ended."""

    def __init__(self) -> None:
        self.line = bytearray()
        self.remaining = 0  # data bytes left in the current chunk
        self.state = "size"  # size | data | data-end | trailer
        self.done = False

    def feed(self, data: bytes, pos: int, response: RawResponse) -> int:
        """Consume ``data[pos:]``; returns where this body ended (or ``len(data)``)."""
        end = len(data)
        while pos < end and not self.done:
            if self.state == "data":
                take = min(self.remaining, end - pos)
                _count(response, data, pos, pos + take)
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self.state = "data-end"
                continue
            newline = data.find(b"\n", pos, end)
            if newline < 0:
                self.line += data[pos:end]
                if len(self.line) > MAX_HEAD:
                    raise ResponseError("chunk header line too long")
                return end
            self.line += data[pos:newline]
            pos = newline + 1
            line = bytes(self.line).rstrip(b"\r")
            self.line.clear()
            if self.state == "size":
                size_text = line.split(b";", 1)[0].strip()
                # int(x, 16) alone would take "-2", "+5", "0x5" and "1_0"
                if not size_text or not _HEX.issuperset(size_text) or len(size_text) > 15:
                    raise ResponseError(f"bad chunk size {size_text[:20]!r}")
                self.remaining = int(size_text, 16)
                self.state = "data" if self.remaining else "trailer"
            elif self.state == "data-end":
                if line:
                    raise ResponseError("chunk data longer than its size")
                self.state = "size"
            elif not line:  # trailer: ends with an empty line
                self.done = True
        return pos


def _count(response: RawResponse, data: bytes, start: int, stop: int) -> None:
    response.body_length += stop - start
    room = KEPT_BODY - len(response._kept)
    if room > 0:
        response._kept += data[start:min(stop, start + room)]


def _parse_head(head: bytes) -> RawResponse:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = parts[1] if len(parts) > 1 else ""
    if not parts[0].startswith("HTTP/1.") or len(status) != 3 or not status.isascii() \
            or not status.isdigit():
        raise ResponseError(f"bad status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ResponseError(f"bad header line {line[:80]!r}")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    connection = headers.get("connection", "").lower()
    keep_alive = parts[0] == "HTTP/1.1" and "close" not in connection
    return RawResponse(int(status), headers, keep_alive=keep_alive)


class RawConnection(asyncio.Protocol):
    """One keep-alive connection; :meth:`request` sends one request and awaits its answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._head = bytearray()
        self._response: RawResponse | None = None
        self._waiter: asyncio.Future[RawResponse] | None = None
        self._method = ""
        self._length: int | None = None  # body bytes left (Content-Length framing)
        self._chunks: _ChunkCounter | None = None
        self._to_close = False  # body ends with the connection
        self._closed = False
        self._answered = 0  # requests answered on this connection
        self._writable: asyncio.Future[None] | None = None

    @property
    def usable(self) -> bool:
        return not self._closed and self.transport is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(ConnectionResetError("connection lost"))
        if self._waiter is not None and not self._waiter.done():
            if self._to_close and self._response is not None and exc is None:
                self._finish()  # a close-delimited body ends with a clean close only
            elif self._response is None and not self._head:
                self._waiter.set_exception(ClosedBeforeAnswer(
                    f"connection closed before any byte of the answer ({exc})"))
            else:
                self._waiter.set_exception(
                    ResponseError(f"connection closed before the whole answer ({exc})"))

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data, 0)
        except (ResponseError, ValueError) as err:
            self._fail(err if isinstance(err, ResponseError) else ResponseError(str(err)))

    def _received(self, data: bytes, pos: int) -> None:
        if self._waiter is None or self._waiter.done():
            raise ResponseError("bytes arrived with no request waiting")
        if self._response is None:
            self._head += data[pos:] if pos else data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > MAX_HEAD:
                    raise ResponseError("response head too long")
                return
            data, pos = bytes(self._head), end + 4
            response = _parse_head(data[:end])
            self._head.clear()
            if 100 <= response.status < 200:  # 100 Continue and friends: skip them
                if pos < len(data):
                    self._received(data, pos)
                return
            self._response = response
            if self._frame(response):
                self._end_body(len(data) - pos)
                return
        response = self._response
        end = len(data)
        if self._chunks is not None:
            used = self._chunks.feed(data, pos, response)
            if self._chunks.done:
                self._end_body(end - used)
        elif self._length is not None:
            take = min(self._length, end - pos)
            _count(response, data, pos, pos + take)
            self._length -= take
            if not self._length:
                self._end_body(end - pos - take)
        else:
            _count(response, data, pos, end)

    def _frame(self, response: RawResponse) -> bool:
        """Set how the body is delimited; True when there is none."""
        headers = response.headers
        self._chunks = None
        self._length = None
        self._to_close = False
        coding = headers.get("transfer-encoding")
        if self._method == "HEAD" or response.status in (204, 304):
            self._length = 0
        elif coding is not None:
            # only chunked is understood; with another coding the length is unknown
            if coding.strip().lower() != "chunked":
                raise ResponseError(f"unsupported Transfer-Encoding {coding[:40]!r}")
            self._chunks = _ChunkCounter()
        elif "content-length" in headers:
            text = headers["content-length"]
            if not (text.isascii() and text.isdigit()):
                raise ResponseError(f"bad Content-Length {text[:20]!r}")
            self._length = int(text)
        else:
            self._to_close = True
            response.keep_alive = False
        return self._length == 0

    def _end_body(self, extra: int) -> None:
        if extra:
            raise ResponseError("more bytes than the answer's framing allows")
        self._finish()

    def _finish(self) -> None:
        response = self._response
        assert response is not None and self._waiter is not None
        response.body_start = bytes(response._kept)
        self._response = None
        self._answered += 1
        if not response.keep_alive and self.transport is not None:
            self._closed = True
            self.transport.close()
        if not self._waiter.done():
            self._waiter.set_result(response)

    def _fail(self, err: Exception) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.abort()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(err)

    async def request(self, head: bytes, body: bytes | None, method: str) -> RawResponse:
        """Send ``head`` (and ``body``); the response once its body has been read.

        Cancelling it (the caller's timeout) closes the connection: its next bytes
        would belong to the abandoned answer.
        """
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self._method = method
        self._head.clear()
        try:
            if body and len(body) <= 64 * 1024:
                self.transport.write(head + body)
            else:
                self.transport.write(head)
                if body:
                    self.transport.write(body)
            if self._writable is not None and not self._writable.done():
                await self._writable
            return await self._waiter
        except BaseException:
            self._fail(ResponseError("request abandoned"))
            waiter = self._waiter
            if waiter.done() and not waiter.cancelled():
                waiter.exception()  # ours to drop: the caller sees its own exception
            raise

    @property
    def reused(self) -> bool:
        """Has this connection answered a request before the current one?"""
        return self._answered > 0

    def close(self) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.close()


class RawClient:
    """Requests to one server (the storage URL's host); one lane per concurrent worker."""

    def __init__(self, base_url: str, token: str, timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http":
            raise ValueError(f"the raw client speaks plain http only, not {parts.scheme!r}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.base_path = parts.path.rstrip("/")
        self.timeout = timeout
        host_header = parts.netloc
        self._fixed = (f"Host: {host_header}\r\nX-Auth-Token: {token}\r\n"
                       "User-Agent: swiftlike-load\r\n").encode("latin-1")
        self._lanes: list[RawLane] = []

    def lane(self) -> RawLane:
        lane = RawLane(self)
        self._lanes.append(lane)
        return lane

    def head_bytes(self, method: str, path: str, headers: dict[str, str] | None,
                   body_length: int | None) -> bytes:
        lines = [f"{method} {self.base_path}{path} HTTP/1.1\r\n".encode("latin-1"), self._fixed]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        if body_length is not None:
            lines.append(f"Content-Length: {body_length}\r\n".encode("latin-1"))
        lines.append(b"\r\n")
        return b"".join(lines)

    def close(self) -> None:
        for lane in self._lanes:
            lane.close()


class RawLane:
    """One worker's connection, opened on first use and again after it closed."""

    def __init__(self, client: RawClient) -> None:
        self.client = client
        self._conn: RawConnection | None = None

    async def request(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                      body: bytes | None = None) -> RawResponse:
        """``path`` is below the base URL and already quoted (``/container/object?q``)."""
        client = self.client
        needs_length = body is not None or method in ("PUT", "POST")
        head = client.head_bytes(method, path, headers,
                                 len(body or b"") if needs_length else None)
        async with asyncio.timeout(client.timeout):
            conn = await self._connection()
            try:
                return await conn.request(head, body, method)
            except ClosedBeforeAnswer:
                # a keep-alive connection the server closed while it sat idle (its FIN
                # unread while this process's loop was not running between phases):
                # once more on a new one, as aiohttp's client does
                if not conn.reused:
                    raise
            conn = await self._connection()
            return await conn.request(head, body, method)

    async def _connection(self) -> RawConnection:
        if self._conn is None or not self._conn.usable:
            client = self.client
            _, self._conn = await asyncio.get_running_loop().create_connection(
                RawConnection, client.host, client.port)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
