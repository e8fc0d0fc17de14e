"""The storage node's own HTTP/1.1 server: the node-side twin of ``common.backend_http``.

Why not aiohttp's server (``make_app`` still serves the same dispatcher with it, for
embedding and for ``[node] http_server = "aiohttp"``): perf and py-spy on a node put
aiohttp's request machinery (protocol, parser callbacks, request objects, the
per-connection task and its response bookkeeping) at about 30% of a node's CPU on
small GETs, and on 16 MiB PUTs every body byte was copied twice in user space (out of
the loop's read buffer, then out of the parser's) before it reached the file. A node's
clients are our proxies, daemons and other nodes speaking plain HTTP/1.1, so this
server is an :class:`asyncio.BufferedProtocol` that does only that:

* request heads are parsed by :mod:`.node_http_parse` (strict: what aiohttp refuses,
  this refuses too, with 400/414/431/501 and a closed connection);
* bodies framed by Content-Length or chunked encoding. A big Content-Length body is
  read by the kernel straight into 1 MiB buffers ("arenas") and handed to the
  handler as memoryview pieces (no copy); an arena is reused once no piece of it is
  referenced any more, since a fresh one costs a page fault per 4 KiB and a memset
  (perf: 11% of a node's CPU on 16 MiB PUTs). Heads, small and chunked bodies go
  through one reused buffer per connection;
* handlers get a :class:`NodeRequest`, a small subset of aiohttp's request (the one
  the node's servers use), and return aiohttp ``web.Response``/``StreamResponse``
  objects as before: plain responses are written here in one piece, stream
  responses through aiohttp's own payload writer;
* keep-alive: a body the handler left unread is drained (up to ``linger`` seconds)
  so the client reads the answer instead of a reset; idle connections close after
  ``idle_timeout``. The socket stops being read while a handler has more than
  :data:`.node_http_body.HIGH_WATER` body bytes waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import re
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote

from aiohttp import web
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_writer import StreamWriter
from multidict import CIMultiDictProxy, MultiDict, MultiDictProxy
from yarl import URL

from swiftlike.storage.direct_write import ALIGNMENT
from swiftlike.storage.node_http_body import ChunkDecoder, RequestBody
from swiftlike.storage.node_http_parse import CONTROL_CHARS, MAX_HEAD, BadRequest, parse_head

LOG = logging.getLogger(__name__)

SMALL_READ = 64 * 1024  # the reused buffer for heads, small bodies and chunked bodies
ARENA_SIZE = 1024 * 1024  # buffer a big Content-Length body is received into
POOLED_ARENAS = 64  # arenas a server keeps for reuse (64 MiB)
DIRECT_BODY = 64 * 1024  # a Content-Length body with this much left skips the copy
LINGER_SECONDS = 10.0
IDLE_SECONDS = 75.0
BODY_STALL_SECONDS = 60.0  # a body with no new byte for this long fails (Swift's client_timeout)
_UNSAFE_HEADER_CHARS = re.compile(CONTROL_CHARS)

Handler = Callable[["NodeRequest"], Awaitable[web.StreamResponse]]
_EMPTY_STATUS = frozenset((204, 304))


class NodeRequest:
    """What a node handler reads of a request: aiohttp's names, only those in use."""

    __slots__ = (
        "_conn",
        "_writer",
        "content",
        "content_length",
        "headers",
        "keep_alive",
        "method",
        "raw_path",
        "transport",
        "version",
    )

    def __init__(self, conn: NodeConnection, method: str, raw_path: str, minor: int,
                 headers: CIMultiDictProxy[str], content: RequestBody,
                 content_length: int | None) -> None:
        self._conn = conn
        self.method = method
        self.raw_path = raw_path
        self.version = HttpVersion11 if minor else HttpVersion10
        self.headers = headers
        self.content = content
        self.content_length = content_length
        tokens = {t.strip() for t in headers.get("Connection", "").lower().split(",")}
        self.keep_alive = "close" not in tokens if minor else "keep-alive" in tokens
        self.transport = conn.transport
        self._writer: StreamWriter | None = None

    @property
    def path(self) -> str:
        return unquote(self.raw_path.partition("?")[0])

    @property
    def query(self) -> MultiDictProxy[str]:
        raw_query = self.raw_path.partition("?")[2]
        return MultiDictProxy(MultiDict(parse_qsl(raw_query, keep_blank_values=True)))

    @property
    def rel_url(self) -> URL:
        return URL(self.raw_path, encoded=True)

    async def read(self) -> bytes:
        return await self.content.read()

    # what aiohttp's StreamResponse.prepare() asks of a request
    @property
    def _payload_writer(self) -> StreamWriter:
        if self._writer is None:
            self._writer = StreamWriter(self._conn, self._conn.loop)  # type: ignore[arg-type]
        return self._writer

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        return None


class NodeConnection(asyncio.BufferedProtocol):
    """One client connection: parse, dispatch, answer, one request at a time."""

    def __init__(self, server: NodeHTTPServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.last_active = time.monotonic()
        self._small = bytearray(SMALL_READ)
        self._small_view = memoryview(self._small)
        self._pending = bytearray()  # received bytes not yet parsed (the next head)
        self._body: RequestBody | None = None  # the body still arriving, if any
        self._remaining = 0  # Content-Length bytes of it still to come
        self._body_length = 0  # the whole Content-Length
        self._chunked: ChunkDecoder | None = None
        self._arena: memoryview | None = None
        self._arena_pos = 0
        self._direct = False  # the buffer handed out is the arena
        self._handling = False  # a handler runs, or its answer is being written
        self._keep_alive = True
        self._linger: asyncio.TimerHandle | None = None
        self._reading_paused = False
        self._paused = False  # writing paused by the transport (aiohttp's writer reads it)
        self._drain_waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task | None = None

    # ---- asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # a peer that vanished (host down, partition) is found by the kernel
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            except OSError:
                pass
        self.server.connections.add(self)
        if self.server.closing:
            self.close()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._remaining and (self._arena is not None or self._remaining >= DIRECT_BODY):
            arena = self._arena
            if arena is None or self._arena_pos >= len(arena):
                # Placed so that a byte's address and its offset in the body agree
                # modulo the page size: the object writer can then hand the arena to
                # the disk with O_DIRECT (see direct_write). Never longer than what is
                # left of the body: no byte of the next request can land in it.
                skew = (self._body_length - self._remaining) % ALIGNMENT
                arena = memoryview(self.server.take_arena())
                if self._remaining < ARENA_SIZE - skew:
                    arena = arena[:skew + self._remaining]
                self._arena = arena
                self._arena_pos = skew
            self._direct = True
            return arena[self._arena_pos:]
        self._direct = False
        return self._small_view

    def buffer_updated(self, nbytes: int) -> None:
        if self._direct:
            start = self._arena_pos
            self._arena_pos = start + nbytes
            assert self._arena is not None and self._body is not None
            piece = self._arena[start:start + nbytes]
            self._remaining -= nbytes
            self.last_active = time.monotonic()
            if self._remaining == 0:
                self._arena = None
            self._body.feed(piece)
            if self._remaining == 0:
                self._body_ended()
            return
        self._received(self._small_view[:nbytes].tobytes())

    def eof_received(self) -> bool:
        return False  # close: a half-closed client sends no more requests

    def connection_lost(self, exc: BaseException | None) -> None:
        self.server.connections.discard(self)
        if self._body is not None:
            self._body.fail(ConnectionResetError("client closed the connection mid-body"))
        if self._linger is not None:
            self._linger.cancel()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("connection lost"))
        self.transport = None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _drain_helper(self) -> None:
        """Wait until the transport takes writes again (aiohttp's StreamWriter calls it)."""
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("connection lost")
        if not self._paused:
            return
        if self._drain_waiter is None:
            self._drain_waiter = self.loop.create_future()
        await asyncio.shield(self._drain_waiter)

    # ---- flow control --------------------------------------------------------------------
    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def expire(self, now: float) -> None:
        """Fail a body that brought no byte for the server's body_timeout; close the
        connection when that happened or when it idled for idle_timeout."""
        if self._body is not None:
            if self.last_active < now - self.server.body_timeout:
                self._body.fail(TimeoutError(
                    f"no body byte for {self.server.body_timeout:g} s"))
                self._drop_body()
                self._keep_alive = False
                self.close()
        elif not self._handling and self.last_active < now - self.server.idle_timeout:
            self.close()

    # ---- request framing -----------------------------------------------------------------
    def _received(self, data: bytes) -> None:
        if self._body is not None:
            self.last_active = time.monotonic()
            try:
                if self._chunked is not None:
                    data = self._chunked.feed(data, self._body)
                    if self._chunked.finished:
                        self._body_ended()
                else:
                    take = min(len(data), self._remaining)
                    self._remaining -= take
                    self._body.feed(data[:take] if take < len(data) else data)
                    data = data[take:]
                    if self._remaining == 0:
                        self._body_ended()
            except BadRequest as err:
                self._body.fail(ConnectionResetError(f"malformed chunked body: {err}"))
                self._drop_body()
                self._keep_alive = False
                if not self._handling:
                    self.close()
                return
        if data:
            self._pending += data
            if self._handling and len(self._pending) > MAX_HEAD:
                self.pause_reading()  # a client sending ahead: parse it when it is its turn
        if not self._handling and self._body is None and self._pending:
            self._next_request()

    def _drop_body(self) -> None:
        """Stop receiving the current body: whatever follows is not read as body."""
        self._body = None
        self._chunked = None
        self._remaining = 0
        self._arena = None

    def _body_ended(self) -> None:
        body = self._body
        self._drop_body()
        if body is not None:
            body.finish()
        if not self._handling:  # the answer is out already: the drained body is done
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None
            self._after_request()

    def _next_request(self) -> None:
        if self.server.closing:
            self.close()
            return
        pending = self._pending
        while pending.startswith(b"\r\n"):  # empty lines before a request line are ignored
            del pending[:2]
        end = pending.find(b"\r\n\r\n")
        if end < 0 and len(pending) <= MAX_HEAD:
            return  # the head is still arriving
        if end < 0 or end > MAX_HEAD:
            self._refuse(BadRequest(431, "Request head too large"))
            return
        head = bytes(pending[:end + 2])
        rest = bytes(pending[end + 4:])
        self._pending = bytearray()
        try:
            parsed = parse_head(head)
        except BadRequest as err:
            self._refuse(err)
            return
        except ValueError as err:  # nothing the parser lets through should get here
            self._refuse(BadRequest(400, f"Bad request head: {err}"))
            return
        self.last_active = time.monotonic()
        has_body = parsed.chunked or bool(parsed.length)
        expect = parsed.headers.get("Expect", "").lower() == "100-continue"
        body = RequestBody(self, not has_body, expect)
        if has_body:
            self._body = body
            self._remaining = self._body_length = parsed.length or 0
            self._chunked = ChunkDecoder() if parsed.chunked else None
        request = NodeRequest(self, parsed.method, parsed.target, parsed.minor,
                              CIMultiDictProxy(parsed.headers), body, parsed.length)
        self._keep_alive = request.keep_alive
        self._handling = True
        self._task = self.loop.create_task(self._handle(request))
        if rest:
            self._received(rest)

    def _refuse(self, err: BadRequest) -> None:
        """Answer a request we cannot parse, then close: its framing is unknown."""
        text = (err.message + "\n").encode("utf-8", "replace")
        self.write(b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                   b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                   % (err.status, _reason(err.status).encode(), len(text), text))
        self._pending = bytearray()
        self.close()

    # ---- handling ------------------------------------------------------------------------
    async def _handle(self, request: NodeRequest) -> None:
        keep = False
        try:
            try:
                response = await self.server.handler(request)
            except web.HTTPException as exc:
                exc.__traceback__ = None  # the traceback would pin the body's pieces
                response = exc
            if request.content.awaiting_continue:
                # answered before asking for the body: the client never sends it, so
                # what follows on this connection is unknown; close after the answer
                request.keep_alive = False
                self._keep_alive = False
                self._drop_body()
            keep = await self._respond(request, response)
        except asyncio.CancelledError:
            keep = False
        except Exception as err:
            keep = False
            transport = self.transport
            gone = transport is None or transport.is_closing()
            if not (gone and isinstance(err, ConnectionError)):
                LOG.exception("error handling %s %s", request.method, request.raw_path[:200])
            if request._writer is not None and transport is not None:
                transport.abort()  # part of an answer went out: never a clean end
            elif not gone:
                try:
                    await self._respond(request, web.Response(
                        status=500, text="Internal server error\n"))
                except Exception:
                    pass
        finally:
            self._task = None
        self._handling = False
        self._keep_alive = keep and self._keep_alive
        body = self._body
        if body is not None and self.transport is not None and \
                not self.transport.is_closing():
            # the client is still sending a body nobody reads: take it in and drop it,
            # so our answer reaches it instead of a reset; give up after linger
            body.discard()
            self._linger = self.loop.call_later(self.server.linger, self._linger_expired)
            return
        self._after_request()

    def _after_request(self) -> None:
        if not self._keep_alive or self.transport is None or self.server.closing:
            self.close()
            return
        self.last_active = time.monotonic()
        self.resume_reading()
        if self._pending:
            self._next_request()

    def _linger_expired(self) -> None:
        self._linger = None
        self.close()

    async def _respond(self, request: NodeRequest, response: web.StreamResponse) -> bool:
        """Send the answer; whether the connection may carry another request."""
        if type(response) is web.Response and not response.prepared and \
                not response.chunked and not response._compression:
            body = response.body
            if body is None or isinstance(body, bytes | bytearray):
                return await self._write_plain(request, response, body)
        if not response.prepared:
            await response.prepare(request)  # type: ignore[arg-type]
        await response.write_eof()
        return bool(response.keep_alive)

    async def _write_plain(self, request: NodeRequest, response: web.Response,
                           body: bytes | bytearray | None) -> bool:
        """A whole answer in one write; the headers aiohttp would add, no more."""
        status = response.status
        method = request.method
        empty_status = status in _EMPTY_STATUS or status < 200  # never a body or a length
        no_body = method == "HEAD" or empty_status
        keep = request.keep_alive and response.keep_alive is not False
        headers = response.headers
        lines = [f"HTTP/1.{request.version.minor} {status} {response.reason}\r\n"]
        length = len(body) if body else 0
        if "Content-Length" in headers:
            if empty_status:
                headers = headers.copy()
                del headers["Content-Length"]
        elif not empty_status and (length or method != "HEAD"):
            lines.append(f"Content-Length: {length}\r\n")
        if length and not no_body and "Content-Type" not in headers:
            lines.append("Content-Type: application/octet-stream\r\n")
        fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        checked = "".join(f"{name}{value}" for name, value in headers.items())
        if _UNSAFE_HEADER_CHARS.search(checked):
            raise ValueError("control character in a response header")
        lines.append(fields)
        lines.append(f"Date: {self.server.date()}\r\n")
        if not keep and request.version.minor:
            lines.append("Connection: close\r\n")
        elif keep and not request.version.minor:
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("utf-8", "surrogateescape")
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("connection lost before the answer")
        if no_body or not body:
            transport.write(head)
        elif length <= SMALL_READ:
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)
        if self._paused:
            await self._drain_helper()
        return keep


class NodeHTTPServer:
    """Listens and serves ``handler`` on every connection; ``close()`` stops it all."""

    def __init__(self, handler: Handler, *, linger: float = LINGER_SECONDS,
                 idle_timeout: float = IDLE_SECONDS,
                 body_timeout: float = BODY_STALL_SECONDS) -> None:
        self.handler = handler
        self.linger = linger
        self.idle_timeout = idle_timeout
        self.body_timeout = body_timeout
        self.closing = False
        self.loop = asyncio.get_running_loop()
        self.connections: set[NodeConnection] = set()
        self.host = ""
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task | None = None
        self._unix_server: asyncio.AbstractServer | None = None
        self.unix_path = ""
        self._date_second = -1
        self._date = ""
        self._arenas: list[mmap.mmap] = []

    async def start(self, host: str, port: int, *, backlog: int = 1024,
                    sock: socket.socket | None = None) -> None:
        if sock is not None:
            self._server = await self.loop.create_server(
                lambda: NodeConnection(self), sock=sock, backlog=backlog)
        else:
            self._server = await self.loop.create_server(
                lambda: NodeConnection(self), host, port, backlog=backlog,
                reuse_address=True)
        self.host, self.port = self._server.sockets[0].getsockname()[:2]
        self._sweeper = self.loop.create_task(self._sweep_idle())

    async def listen_unix(self, path: str) -> None:
        """Also serve on a Unix socket at ``path`` (a stale one is replaced): clients of
        this host reach the node there without loopback TCP (see
        ``common.backend_http.BackendPool``)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._unix_server = await self.loop.create_unix_server(
            lambda: NodeConnection(self), path, backlog=1024)  # as the TCP listener
        self.unix_path = path

    def take_arena(self) -> mmap.mmap:
        """A receive buffer of ARENA_SIZE bytes: a pooled one no piece refers to any
        more (its only references are the pool's, the loop's and the call's), else a
        new one, pooled while the pool has room. Anonymous mmap: page-aligned (what
        O_DIRECT needs) and not zeroed by us (the kernel maps zero pages on demand)."""
        for arena in self._arenas:
            if sys.getrefcount(arena) == 3:
                return arena
        arena = mmap.mmap(-1, ARENA_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if len(self._arenas) < POOLED_ARENAS:
            self._arenas.append(arena)
        return arena

    def date(self) -> str:
        """The Date header, formatted once a second."""
        now = time.time()
        second = int(now)
        if second != self._date_second:
            self._date_second = second
            self._date = formatdate(now, usegmt=True)
        return self._date

    async def _sweep_idle(self) -> None:
        """Close keep-alive connections idle for idle_timeout, and fail bodies that
        brought no byte for body_timeout (a peer that vanished without a FIN would
        otherwise hold its handler, file and connection forever)."""
        while True:
            await asyncio.sleep(max(min(self.idle_timeout, self.body_timeout) / 4, 0.05))
            now = time.monotonic()
            for conn in list(self.connections):
                conn.expire(now)

    async def close(self, grace: float = 5.0) -> None:
        """Stop listening and taking new requests; let running handlers finish for
        ``grace`` seconds (then cancel them), close every connection."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        if self._unix_server is not None:
            self._unix_server.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.unix_path)
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            if not conn._handling:
                conn.close()
        deadline = self.loop.time() + grace
        while True:
            tasks = [c._task for c in self.connections if c._task is not None]
            left = deadline - self.loop.time()
            if not tasks or left <= 0:
                break
            await asyncio.wait(tasks, timeout=left)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
