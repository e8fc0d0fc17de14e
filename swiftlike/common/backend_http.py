"""A lean keep-alive HTTP/1.1 client for requests to our own storage nodes.

Why not aiohttp's client, which the rest of the stack uses: py-spy on a proxy worker
serving small GETs put about a third of its Python time in aiohttp's client (session,
request and response objects, connector, timers, URL handling), while what a node
exchange needs is one write of a request head and the parse of one response head. The
nodes are ours and speak plain HTTP/1.1 on keep-alive connections; they never need
TLS, proxies, redirects, cookies, compression, authentication or ``100-continue``.
So this client does only that, on an :class:`asyncio.BufferedProtocol` (no stream
objects):

* request bodies are ``bytes`` or absent; streamed uploads stay on aiohttp, where a
  1 MiB chunk dwarfs the per-request cost;
* answers framed by ``Content-Length``, chunked, or read to EOF; the socket is read
  straight into a fresh ``bytearray`` per read (a buffered protocol: no copy out of
  the loop's own read buffer, which perf put at 17% of a proxy's CPU on 16 MiB GETs),
  and a body is handed out in those pieces (no joins). The socket stops being read
  while more than :data:`HIGH_WATER` bytes wait, so a slow client of the proxy slows
  the node instead of growing memory;
* ``conn_timeout`` to connect, ``read_timeout`` for every wait on the node;
* one pool of idle connections per node; a request whose *reused* connection turns
  out closed before any answer byte (the node dropped it while idle) is sent again on
  a new one. That repeat is safe: it is the same request the node never answered, and
  every write carries its ``X-Timestamp``.

Errors are :class:`BackendHTTPError` (a :class:`ConnectionError`), :class:`TimeoutError`
and :class:`OSError` from connecting; node clients already treat all three as "this
node did not answer properly".
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from swiftlike.common.buffers import read_buffer
from swiftlike.common.nodes import host_port

MAX_SOCKET_PATH = 100  # bytes of a Unix socket path (the kernel's limit is 107)
MAX_HEAD = 64 * 1024  # a response's status line and headers together
READ_SIZE = 256 * 1024  # most bytes one socket read takes into a body piece
HEAD_READ = 16 * 1024  # a read while no body size is known: headers, small answers
HIGH_WATER = 2 * 1024 * 1024  # body bytes waiting before the socket stops being read
LOW_WATER = 256 * 1024  # ... and when it is read again
_BODYLESS_STATUS = frozenset((204, 304))
_FRAMING = frozenset(("content-length", "transfer-encoding", "host", "connection"))

# response states
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _TO_EOF, _DONE = range(8)


class BackendHTTPError(ConnectionError):
    """The node's answer broke HTTP/1.1, or its connection closed before the end."""


class UnsafeHeader(ValueError):
    """A request line or header value holds CR or LF: sent, it would forge another header.

    Refused before any byte goes out. A ValueError, since the caller passed bad input.
    """


class StaleConnection(BackendHTTPError):
    """A reused keep-alive connection was closed by the node before it answered."""


class NodeResponse:
    """One answer from a node: status and headers at once, the body as it arrives.

    Read it whole (:meth:`read`) or piece by piece (``content.iter_chunks()``, the
    spelling aiohttp's response uses, so callers handle both alike), then
    :meth:`release` it (``async with`` does): a finished answer gives its connection
    back to the pool, an unfinished one closes it.
    """

    def __init__(self, conn: _Connection, head_only: bool, read_timeout: float) -> None:
        self._conn: _Connection | None = conn
        self._loop = conn.loop
        self._head_only = head_only
        self._read_timeout = read_timeout
        self._state = _HEAD
        self._raw = bytearray()  # unparsed head or chunked framing
        self._pieces: deque[tuple[bytearray | bytes, int]] = deque()  # (piece, its size)
        self._buffered = 0
        self._remaining = 0
        self._paused = False
        self._reusable = True
        self._got_bytes = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self.content_length: int | None = None
        self.content = self

    # -- fed by the protocol -----------------------------------------------------------
    def _read_size(self) -> int:
        """How big the next socket read may be: never past this answer's body."""
        if self._state == _LENGTH:
            return min(self._remaining, READ_SIZE)
        return READ_SIZE if self._state == _TO_EOF else HEAD_READ

    def _feed_read(self, buffer: bytearray, nbytes: int) -> None:
        """A socket read of ``nbytes`` into ``buffer`` (still exported by the loop).

        A body read becomes a piece as it is; it is cut to ``nbytes`` when taken,
        because the loop holds the buffer until this returns. Anything else is parsed
        from a copy of the bytes read (a head or chunk framing: small).
        """
        state = self._state
        if state == _LENGTH and nbytes <= self._remaining:
            self._got_bytes = True
            self._take_length(buffer, nbytes)
        elif state == _TO_EOF:
            self._got_bytes = True
            self._push(buffer, nbytes)
        else:
            self._feed(buffer[:nbytes])

    def _feed(self, data: bytearray | bytes) -> None:
        self._got_bytes = True
        try:
            if self._state == _HEAD:
                self._feed_head(data)
            elif self._state == _LENGTH:
                self._feed_length(data)
            elif self._state == _TO_EOF:
                self._push(data)
            elif self._state == _DONE:
                self._reusable = False  # bytes past the end of the answer
            else:
                self._raw += data
                self._feed_chunked()
        except ValueError as err:
            self._fail(BackendHTTPError(f"bad answer from node: {err}"))

    def _feed_head(self, data: bytearray | bytes) -> None:
        raw = self._raw
        raw += data
        end = _find_end(raw, b"\r\n\r\n", "status line and headers")
        if end < 0:
            return
        head = bytes(raw[:end])
        rest = raw[end + 4:]
        raw.clear()
        self._parse_head(head)
        if self._state == _HEAD:  # an informational 1xx: the real answer follows
            if rest:
                self._feed_head(rest)
            return
        self._wake()
        if rest:
            self._feed(rest)

    def _parse_head(self, head: bytes) -> None:
        lines = head.decode("utf-8", "surrogateescape").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise ValueError(f"bad status line {lines[0][:100]!r}")
        status = int(code)
        if status < 200:
            return
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name[-1] in " \t" or line[0] in " \t":
                raise ValueError(f"bad header line {line[:100]!r}")
            headers.add(name, value.strip(" \t"))
        self.status, self.reason = status, reason
        self.headers = CIMultiDictProxy(headers)
        self._reusable = version == "HTTP/1.1" and \
            headers.get("Connection", "").lower() != "close"
        length = headers.get("Content-Length")
        if length is not None:
            if not length.isdigit():
                raise ValueError(f"bad Content-Length {length[:40]!r}")
            self.content_length = int(length)
        chunked = "Transfer-Encoding" in headers
        if chunked and (length is not None or
                        headers["Transfer-Encoding"].lower() != "chunked"):
            raise ValueError("unsupported body framing")
        if self._head_only or status in _BODYLESS_STATUS:
            self._state = _DONE
        elif chunked:
            self._state = _CHUNK_SIZE
        elif self.content_length is not None:
            self._remaining = self.content_length
            self._state = _LENGTH if self._remaining else _DONE
        else:
            self._state = _TO_EOF
            self._reusable = False

    def _feed_length(self, data: bytearray | bytes) -> None:
        if len(data) > self._remaining:
            data = data[:self._remaining]
            self._reusable = False  # the node sent more than it announced
        self._take_length(data, len(data))

    def _take_length(self, piece: bytearray | bytes, size: int) -> None:
        """``size`` bytes of a Content-Length body (never more than it still owes)."""
        self._remaining -= size
        if not self._remaining:
            self._state = _DONE
        self._push(piece, size)

    def _feed_chunked(self) -> None:
        raw = self._raw
        while raw:
            if self._state == _CHUNK_SIZE or self._state == _TRAILERS:
                end = _find_end(raw, b"\r\n", "chunk size line")
                if end < 0:
                    return
                line = bytes(raw[:end])
                del raw[:end + 2]
                if self._state == _TRAILERS:
                    if not line:
                        self._state = _DONE
                        self._reusable = self._reusable and not raw
                        self._wake()
                        return
                    continue
                size_text = line.split(b";", 1)[0].strip()
                if not size_text or size_text.strip(b"0123456789abcdefABCDEF"):
                    raise ValueError(f"bad chunk size {line[:40]!r}")
                self._remaining = int(size_text, 16)
                self._state = _CHUNK_DATA if self._remaining else _TRAILERS
            elif self._state == _CHUNK_DATA:
                take = min(self._remaining, len(raw))
                piece = raw[:take]
                del raw[:take]
                self._remaining -= take
                if not self._remaining:
                    self._state = _CHUNK_END
                self._push(piece)
            else:  # _CHUNK_END
                if len(raw) < 2:
                    return
                if raw[:2] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
                del raw[:2]
                self._state = _CHUNK_SIZE

    def _push(self, piece: bytearray | bytes, size: int | None = None) -> None:
        size = len(piece) if size is None else size
        if size:
            self._pieces.append((piece, size))
            self._buffered += size
            if self._buffered > HIGH_WATER and not self._paused and self._conn is not None:
                self._paused = True
                self._conn.transport.pause_reading()
        self._wake()

    def _lost(self, exc: BaseException | None) -> None:
        """The connection closed: the natural end of a to-EOF body, else an error."""
        if self._state == _TO_EOF:
            self._state = _DONE
        elif self._state != _DONE and self._error is None:
            conn = self._conn
            if self._state == _HEAD and not self._got_bytes and conn is not None and \
                    conn.reused:
                self._error = StaleConnection("node closed an idle connection")
            else:
                where = "before its answer" if self._state == _HEAD else "inside the body"
                self._error = BackendHTTPError(f"node closed the connection {where}")
        self._reusable = False
        self._conn = None
        self._wake()

    def _fail(self, err: BaseException) -> None:
        if self._error is None:
            self._error = err
        self._reusable = False
        self.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(self._read_timeout, self._timed_out, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _timed_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            self._fail(TimeoutError(f"node sent nothing for {self._read_timeout:g} s"))

    async def _head_arrived(self) -> None:
        while self._state == _HEAD:
            if self._error is not None:
                raise self._error
            await self._wait()

    # -- the caller's side -------------------------------------------------------------
    async def readany(self) -> bytearray | bytes:
        """The next piece of the body as the socket delivered it; ``b""`` at its end.

        Pieces are ``bytearray`` objects nobody else holds: bytes-like for every
        consumer (writes, hashes, joins), without a copy into ``bytes``.
        """
        while not self._pieces:
            if self._error is not None:
                raise self._error
            if self._state == _DONE:
                return b""
            await self._wait()
        piece, size = self._pieces.popleft()
        if size != len(piece):
            del piece[size:]  # type: ignore[union-attr]  (a short read: see _feed_read)
        self._buffered -= size
        if self._paused and self._buffered < LOW_WATER:
            self._paused = False
            if self._conn is not None:
                self._conn.transport.resume_reading()
        return piece

    async def read(self) -> bytes:
        """The whole body; the connection goes back to the pool."""
        pieces = []
        while piece := await self.readany():
            pieces.append(piece)
        self.release()
        return bytes(pieces[0]) if len(pieces) == 1 else b"".join(pieces)

    async def iter_chunks(self) -> AsyncIterator[tuple[bytearray | bytes, bool]]:
        """Body pieces as ``(piece, False)`` pairs, like aiohttp's ``StreamReader``."""
        while piece := await self.readany():
            yield piece, False

    def release(self) -> None:
        """Done with the answer: pool the connection if the answer is complete."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.response = None
        if self._state == _DONE and self._reusable and self._error is None:
            if self._paused:
                conn.transport.resume_reading()
            conn.pool.put_back(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Drop the connection whatever state the answer is in."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.response = None
            conn.close()

    async def __aenter__(self) -> NodeResponse:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


class _Connection(asyncio.BufferedProtocol):
    """One keep-alive TCP connection to a node, carrying one answer at a time."""

    def __init__(self, pool: BackendPool, address: tuple[str, int]) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.address = address
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.response: NodeResponse | None = None
        self.reused = False
        self.closed = False
        self.idle_since = 0.0
        self._buffer: bytearray | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> bytearray:
        response = self.response
        # not zero-filled: the read fills it and only the bytes read are ever taken
        self._buffer = read_buffer(response._read_size() if response is not None
                                   else HEAD_READ)
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        buffer, self._buffer = self._buffer, None
        assert buffer is not None, "buffer_updated without get_buffer"
        response = self.response
        if response is None:
            self.close()  # bytes nobody asked for: this connection cannot be trusted
        else:
            response._feed_read(buffer, nbytes)

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.pool.forget(self)
        response, self.response = self.response, None
        if response is not None:
            response._lost(exc)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()
            self.pool.forget(self)


def local_socket_path(socket_dir: str, ip: str, port: int) -> str | None:
    """Where a node of this host listens on a Unix socket beside ``ip:port``, if the path
    fits in a socket address (else the node has none and clients use TCP)."""
    path = os.path.join(socket_dir, f"{ip}_{port}.sock")
    return path if len(os.fsencode(path)) <= MAX_SOCKET_PATH else None


class BackendPool:
    """Keep-alive connections to nodes, by ``(ip, port)``; create it in a running loop.

    ``socket_dir``: where nodes of this host also listen on Unix sockets
    (:func:`local_socket_path`). A connection to such a node goes there instead of
    through loopback TCP: on 16 MiB GETs through ``swiftlike serve`` that took about 7%
    less CPU per GET and gave 10-15% more GETs per second. A node without one (not
    local, not started yet, gone) is reached over TCP as usual.
    """

    def __init__(self, conn_timeout: float = 0.5, read_timeout: float = 10.0,
                 idle_per_node: int = 64, keepalive: float = 30.0,
                 socket_dir: str | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.socket_dir = socket_dir
        self.conn_timeout = conn_timeout
        self.read_timeout = read_timeout
        self.idle_per_node = idle_per_node
        self.keepalive = keepalive
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()

    async def request(self, ip: str, port: int, method: str, target: str,
                      headers: Mapping[str, str], body: bytes | None = None, *,
                      read_timeout: float | None = None, conn_timeout: float | None = None
                      ) -> NodeResponse:
        """Send ``method target``; returns once the answer's status and headers are in.

        ``target`` is the percent-encoded path with its query string, if any.
        """
        host = host_port(ip, port)
        head = _request_head(method, target, host, headers, body)
        address = (ip, port)
        while True:
            conn = await self._acquire(address, conn_timeout)
            response = conn.response = NodeResponse(conn, method == "HEAD",
                                                    read_timeout or self.read_timeout)
            try:
                # a new connection the node reset at once is closed by now, and writing
                # to it raises RuntimeError: report it as the node error it is
                if conn.closed:
                    raise ConnectionResetError(f"{host} closed the connection")
                if body:
                    conn.transport.writelines((head, body))
                else:
                    conn.transport.write(head)
            except (ConnectionResetError, RuntimeError) as err:
                response.close()
                raise ConnectionResetError(f"{host} closed the connection: {err}") from err
            try:
                await response._head_arrived()
            except StaleConnection:
                response.close()
                continue  # only a reused connection goes stale; the next one is new
            except BaseException:
                response.close()
                raise
            return response

    async def _acquire(self, address: tuple[str, int], conn_timeout: float | None
                       ) -> _Connection:
        idle = self._idle.get(address)
        if idle:
            oldest_usable = self.loop.time() - self.keepalive
            while idle:
                conn = idle.pop()
                if conn.closed:
                    continue
                if conn.idle_since < oldest_usable:
                    conn.close()
                    continue
                conn.reused = True
                return conn
        conn = _Connection(self, address)
        try:
            if not await self._connect_local(conn, conn_timeout):
                await asyncio.wait_for(
                    self.loop.create_connection(lambda: conn, address[0], address[1]),
                    conn_timeout or self.conn_timeout)
        except BaseException:
            if conn.transport is not None:
                conn.close()
            raise
        self._open.add(conn)
        return conn

    async def _connect_local(self, conn: _Connection, conn_timeout: float | None) -> bool:
        """Connect ``conn`` by the node's Unix socket; False when it has none listening."""
        if self.socket_dir is None:
            return False
        path = local_socket_path(self.socket_dir, *conn.address)
        if path is None:
            return False
        # connected by hand: a Unix connect answers at once, and whatever it answers
        # (no file, a file left by a node that is gone, a listen queue full: EAGAIN,
        # where TCP would have waited) means "use the port", on every event loop
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            return False
        try:
            await self.loop.create_unix_connection(lambda: conn, sock=sock)
        except BaseException:
            sock.close()
            raise
        return True

    def put_back(self, conn: _Connection) -> None:
        if conn.closed:
            return
        idle = self._idle.setdefault(conn.address, [])
        if len(idle) >= self.idle_per_node:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        self._open.discard(conn)

    async def close(self) -> None:
        """Close every connection, idle or busy."""
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()


def _find_end(raw: bytearray, separator: bytes, what: str) -> int:
    """Where ``separator`` starts in ``raw``; -1 while more bytes may still bring it."""
    end = raw.find(separator)
    if end < 0 and len(raw) > MAX_HEAD:
        raise ValueError(f"{what} too long")
    return end


def _request_head(method: str, target: str, host: str, headers: Mapping[str, str],
                  body: bytes | None) -> bytes:
    """The request line and headers; the body's length is ours, never the caller's."""
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    for name, value in headers.items():
        if name.lower() not in _FRAMING:
            lines.append(f"{name}: {value}\r\n")
    if body or method in ("PUT", "POST", "PATCH"):
        lines.append(f"Content-Length: {len(body) if body else 0}\r\n")
    lines.append("\r\n")
    text = "".join(lines)
    # one CR and one LF per line: anything else would let a value start a new header
    if text.count("\n") != len(lines) + 1 or text.count("\r") != len(lines) + 1:
        raise UnsafeHeader("CR or LF in a request line or header")
    return text.encode("utf-8", "surrogateescape")


def has_plain_body(body: Any) -> bool:
    """Whether :class:`BackendPool` can send ``body`` (bytes or none at all)."""
    return body is None or isinstance(body, bytes)
