"""The node's own HTTP/1.1 server, driven over raw sockets for what clients rarely do:
keep-alive and pipelining, HTTP/1.0, chunked bodies, 100-continue, early answers to a
body nobody reads, malformed heads, clients that vanish mid-body, idle connections.

Each test serves a real node (``start_node_server``) on a free port, whatever
``SWIFTLIKE_NODE_HTTP`` chose for the other tests.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import socket
import sys

import pytest
from aiohttp import web

from swiftlike.storage.direct_write import ALIGNMENT, buffer_address
from swiftlike.storage.server import start_node_server
from tests.storage.conftest import make_conf
from tests.storage.test_body_footer_put import eventually_stored_nothing
from tests.storage.test_object_server import OBJ, object_files

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def lean(tmp_path):
    for device in ("sda", "sdb"):
        os.makedirs(tmp_path / "devs" / device)
    running = await start_node_server(make_conf(str(tmp_path / "devs")), "127.0.0.1", 0)
    running.devices = str(tmp_path / "devs")
    yield running
    await running.cleanup()


class Raw:
    """One client connection, reading answers by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Raw:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> tuple[int, dict[str, str], bytes]:
        """One response: status, headers (lower-cased names), body by Content-Length."""
        async with asyncio.timeout(10):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            body = await self.reader.readexactly(length) if length else b""
            return status, headers, body

    async def closed(self) -> bool:
        async with asyncio.timeout(10):
            return await self.reader.read(1) == b""

    def close(self) -> None:
        self.writer.transport.abort()


def put_head(ts: str, length: int | None = None, extra: str = "") -> bytes:
    framing = f"Content-Length: {length}" if length is not None else \
        "Transfer-Encoding: chunked"
    return (f"PUT {OBJ} HTTP/1.1\r\nHost: n\r\nX-Timestamp: {ts}\r\n"
            f"Content-Type: a/b\r\n{framing}\r\n{extra}\r\n").encode()


def get(path: str = OBJ, version: str = "1.1", extra: str = "") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: n\r\n{extra}\r\n".encode()


async def test_keep_alive_and_pipelined_requests(lean, ts):
    conn = await Raw.open(lean.port)
    body = os.urandom(5000)
    await conn.send(put_head(ts(), len(body)) + body)
    status, headers, _ = await conn.answer()
    assert status == 201 and headers["etag"] == f'"{hashlib.md5(body).hexdigest()}"'
    # three requests in one write: three answers, in order, on the same connection
    await conn.send(get() + get("/sda/1/a/c/missing") + get(extra="Range: bytes=0-9\r\n"))
    first, second, third = [await conn.answer() for _ in range(3)]
    assert first[0] == 200 and first[2] == body
    assert second[0] == 404
    assert third[0] == 206 and third[2] == body[:10]
    conn.close()


async def test_http_1_0_closes_unless_keep_alive(lean):
    conn = await Raw.open(lean.port)
    await conn.send(get("/healthcheck", "1.0"))
    status, headers, body = await conn.answer()
    assert (status, body) == (200, b"OK") and headers.get("connection") != "keep-alive"
    assert await conn.closed()
    conn = await Raw.open(lean.port)
    await conn.send(get("/healthcheck", "1.0", "Connection: keep-alive\r\n"))
    _, headers, _ = await conn.answer()
    assert headers["connection"] == "keep-alive"
    await conn.send(get("/healthcheck", "1.1", "Connection: close\r\n"))
    _, headers, _ = await conn.answer()
    assert headers["connection"] == "close"
    assert await conn.closed()


async def test_chunked_put_with_extensions_and_trailers(lean, ts):
    body = os.urandom(300_000)
    pieces = [body[:1], body[1:70_000], body[70_000:]]
    encoded = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces)
    encoded += b"0\r\nX-Trailer: ignored\r\n\r\n"
    conn = await Raw.open(lean.port)
    head = put_head(ts())
    # dribble it in odd pieces, so sizes and CRLFs straddle reads
    await conn.send(head + encoded[:5])
    for start in range(5, len(encoded), 65_537):
        await conn.send(encoded[start:start + 65_537])
    status, headers, _ = await conn.answer()
    assert status == 201 and headers["etag"] == f'"{hashlib.md5(body).hexdigest()}"'
    await conn.send(get())
    assert (await conn.answer())[2] == body


@pytest.mark.parametrize("encoded", [
    b"zz\r\nabc\r\n0\r\n\r\n",  # not a size
    b"3\r\nabcdef\r\n0\r\n\r\n",  # more data than the size said
    b"3\nabc\r\n0\r\n\r\n",  # bare LF
    b" 3\r\nabc\r\n0\r\n\r\n",  # whitespace before the size
    b"3;a=\x00\r\nabc\r\n0\r\n\r\n",  # a control character in an extension
    # a request line where a trailer field belongs (smuggling): refused, not skipped
    b"3\r\nabc\r\n0\r\nGET /sda/1/a/c/smuggled HTTP/1.1\r\n\r\n",
    b"3\r\nabc\r\n0\r\nX-T: a\x00b\r\n\r\n",  # NUL in a trailer
])
async def test_malformed_chunked_body_stores_nothing_and_closes(lean, ts, encoded):
    conn = await Raw.open(lean.port)
    await conn.send(put_head(ts()) + encoded)
    # the handler sees a broken body (499 here), the connection is not reused
    status, _, _ = await conn.answer()
    assert status == 499
    assert await conn.closed()
    assert object_files(lean) == []


@pytest.mark.parametrize("direct_io", [False, True])
async def test_big_content_length_body_in_odd_pieces(tmp_path, ts, direct_io):
    """The body goes into the server's own receive buffers: every byte must land once
    (written through the page cache, or with O_DIRECT straight from those buffers)."""
    os.makedirs(tmp_path / "devs" / "sda")
    lean = await start_node_server(make_conf(str(tmp_path / "devs"), direct_io=direct_io),
                                   "127.0.0.1", 0)
    lean.devices = str(tmp_path / "devs")
    try:
        await _put_in_odd_pieces(lean, ts)
    finally:
        await lean.cleanup()


async def _put_in_odd_pieces(lean, ts) -> None:
    body = os.urandom(3 * 1024 * 1024 + 12_345)
    conn = await Raw.open(lean.port)
    await conn.send(put_head(ts(), len(body)))
    for start in range(0, len(body), 777_777):
        await conn.send(body[start:start + 777_777])
        await asyncio.sleep(0)
    status, headers, _ = await conn.answer()
    assert status == 201 and headers["etag"] == f'"{hashlib.md5(body).hexdigest()}"'
    await conn.send(get())
    assert (await conn.answer())[2] == body


async def test_body_pieces_sit_at_addresses_agreeing_with_their_offsets(lean, monkeypatch):
    """What lets the object writer use O_DIRECT: every receive-buffer piece of a big body
    lies at an address congruent to its offset in the body, modulo the page size."""
    seen: list[tuple[int, int, int | None]] = []

    async def recorder(request):
        offset = 0
        while True:
            piece, _ = await request.content.readchunk()
            if not piece:
                break
            address = buffer_address(piece) if isinstance(piece, memoryview) else None
            seen.append((offset, len(piece), address))
            offset += len(piece)
        return web.Response(status=201, text=str(offset))

    monkeypatch.setattr(lean.server, "handler", recorder)
    body = os.urandom(2 * 1024 * 1024 + 999)
    conn = await Raw.open(lean.port)
    await conn.send(b"PUT /x HTTP/1.1\r\nHost: n\r\nContent-Length: %d\r\n\r\n" % len(body)
                    + body[:5000])
    for start in range(5000, len(body), 333_333):
        await conn.send(body[start:start + 333_333])
    status, _, answer = await conn.answer()
    assert status == 201 and int(answer) == len(body)
    views = [(offset, address) for offset, _, address in seen if address is not None]
    assert sum(size for _, size, address in seen if address is not None) > len(body) // 2
    assert all(address % ALIGNMENT == offset % ALIGNMENT for offset, address in views)


async def test_early_answer_drains_the_unread_body_and_keeps_the_connection(lean, ts):
    """A 409 sent before the body is read: the client still gets to send its body and
    read the answer (no reset), and the connection carries the next request."""
    newer, older = ts(), ts()
    older, newer = newer, older
    conn = await Raw.open(lean.port)
    await conn.send(put_head(newer, 10) + b"0123456789")
    assert (await conn.answer())[0] == 201
    big = os.urandom(4 * 1024 * 1024)
    await conn.send(put_head(older, len(big)))
    status, _, _ = await conn.answer()
    assert status == 409
    await conn.send(big)  # sent after the answer: taken in and dropped
    await conn.send(get())
    status, _, body = await conn.answer()
    assert (status, body) == (200, b"0123456789")


async def test_expect_100_continue(lean, ts):
    conn = await Raw.open(lean.port)
    await conn.send(put_head(ts(), 4, "Expect: 100-continue\r\n"))
    async with asyncio.timeout(10):
        assert await conn.reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    await conn.send(b"abcd")
    assert (await conn.answer())[0] == 201


async def test_client_gone_mid_body_commits_nothing(lean, ts):
    conn = await Raw.open(lean.port)
    await conn.send(put_head(ts(), 2 * 1024 * 1024) + os.urandom(1024 * 1024))
    await asyncio.sleep(0.1)
    conn.close()
    assert await eventually_stored_nothing(lean)
    other = await Raw.open(lean.port)  # the node serves on
    await other.send(get("/healthcheck"))
    assert (await other.answer())[0] == 200


@pytest.mark.parametrize(("raw", "status"), [
    (b"GET /x HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),  # space in a name
    (b"GET /x HTTP/1.1\r\nName : x\r\n\r\n", 400),  # space before the colon
    (b"GET /x HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400),  # obs-fold
    (b"GET /x HTTP/1.1\r\nA: b\nC: d\r\n\r\n", 400),  # bare LF
    (b"GET /x HTTP/1.1\r\nA: b\x00c\r\n\r\n", 400),  # NUL in a value
    (b"GET /x HTTP/2.0\r\n\r\n", 400),
    (b"GET  /x HTTP/1.1\r\n\r\n", 400),
    (b"PUT /x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"PUT /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
    (b"PUT /x HTTP/1.1\r\nContent-Length: -3\r\n\r\n", 400),
    (b"PUT /x HTTP/1.1\r\nContent-Length: " + b"9" * 25 + b"\r\n\r\n", 400),
    (b"PUT /x HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", 400),
    (b"PUT /x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"PUT /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET /x HTTP/1.1\r\nA: " + b"b" * 20_000 + b"\r\n\r\n", 431),
    (b"GET /x HTTP/1.1\r\n" + b"A: b\r\n" * 20_000 + b"\r\n", 431),
])
async def test_malformed_heads_get_the_right_status_and_a_closed_connection(lean, raw, status):
    conn = await Raw.open(lean.port)
    await conn.send(raw)
    got, headers, body = await conn.answer()
    assert got == status and headers["connection"] == "close" and body
    assert await conn.closed()


async def test_idle_connections_are_closed(tmp_path):
    os.makedirs(tmp_path / "sda")
    running = await start_node_server(make_conf(str(tmp_path), idle_timeout=0.2),
                                      "127.0.0.1", 0)
    try:
        conn = await Raw.open(running.port)
        await conn.send(get("/healthcheck"))
        assert (await conn.answer())[0] == 200
        assert await conn.closed()
    finally:
        await running.cleanup()


async def test_handler_error_is_a_500_and_the_node_serves_on(lean, monkeypatch):
    async def broken(request):
        raise RuntimeError("boom")

    monkeypatch.setattr(lean.server, "handler", broken)
    conn = await Raw.open(lean.port)
    await conn.send(get("/healthcheck"))
    status, _, body = await conn.answer()
    assert status == 500 and b"Internal" in body


async def test_an_arena_is_reused_only_when_no_piece_refers_to_it():
    from swiftlike.storage.node_http import NodeHTTPServer

    server = NodeHTTPServer(None)  # type: ignore[arg-type]
    first = server.take_arena()
    piece = memoryview(first)[100:200]  # what a handler may still hold
    del first
    second = server.take_arena()
    assert second is not piece.obj
    second[100:200] = b"x" * 100  # must never show through the held piece
    del second
    assert bytes(piece) == bytes(100)
    del piece
    assert server.take_arena() is server._arenas[0]  # now free: reused


async def test_expect_100_continue_answered_early_closes(lean, ts):
    """A 409 before the body was asked for: the client never sends it, so the server
    must not read what comes next as that body; it says close and closes."""
    newer, older = ts(), ts()
    conn = await Raw.open(lean.port)
    await conn.send(put_head(older, 4) + b"abcd")
    assert (await conn.answer())[0] == 201
    await conn.send(put_head(newer, 1000, "Expect: 100-continue\r\n").replace(
        newer.encode(), str(float(newer) - 100).encode()))
    status, headers, _ = await conn.answer()
    assert status == 409 and headers["connection"] == "close"
    assert await conn.closed()


async def test_stalled_body_fails_and_frees_the_connection(tmp_path, ts):
    os.makedirs(tmp_path / "sda")
    running = await start_node_server(make_conf(str(tmp_path), client_timeout=0.3),
                                      "127.0.0.1", 0)
    try:
        conn = await Raw.open(running.port)
        await conn.send(put_head(ts(), 3 * 1024 * 1024) + os.urandom(100_000))
        (server_side,) = running.server.connections
        sock = server_side.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        # then nothing more: the node gives up on the body and closes the connection
        async with asyncio.timeout(10):
            await conn.reader.read()
        assert not running.server.connections
        running.devices = str(tmp_path)
        assert await eventually_stored_nothing(running)
    finally:
        await running.cleanup()


async def test_close_shuts_idle_connections_at_once_and_lets_handlers_finish(lean):
    idle = await Raw.open(lean.port)
    await idle.send(get("/healthcheck"))
    assert (await idle.answer())[0] == 200
    started = asyncio.get_running_loop().time()
    await lean.server.close(grace=5.0)
    assert asyncio.get_running_loop().time() - started < 2.0
    assert await idle.closed()


async def test_connection_tokens_and_leading_empty_lines(lean):
    conn = await Raw.open(lean.port)
    await conn.send(b"\r\n\r\n" + get("/healthcheck"))  # empty lines first: ignored
    assert (await conn.answer())[0] == 200
    await conn.send(get("/healthcheck", extra="Connection: TE, close\r\n"))
    _, headers, _ = await conn.answer()
    assert headers["connection"] == "close"
    assert await conn.closed()


async def test_a_refused_oversized_read_leaves_no_arena_pinned(lean, ts):
    """request.read() over its limit raises 413; the exception must not keep the body's
    pieces (and their arenas) alive until some later garbage collection."""
    gc.disable()
    try:
        conn = await Raw.open(lean.port)
        await conn.send(f"PUT /sda/1/a/c HTTP/1.1\r\nHost: n\r\nX-Timestamp: {ts()}\r\n"
                        "Content-Length: 0\r\n\r\n".encode())
        assert (await conn.answer())[0] == 201
        body = b"x" * (3 * 1024 * 1024)
        await conn.send(f"PATCH /sda/1/a/c HTTP/1.1\r\nHost: n\r\nX-Timestamp: {ts()}\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert (await conn.answer())[0] == 413
        await conn.send(get("/healthcheck"))
        assert (await conn.answer())[0] == 200
        # references: the pool, the loop variable, the call
        pinned = [a for a in lean.server._arenas if sys.getrefcount(a) > 3]
        assert lean.server._arenas and not pinned
    finally:
        gc.enable()


async def test_handler_failing_mid_answer_cuts_the_connection(lean, monkeypatch):
    """Headers and part of a body went out, then the handler failed: the client must
    see a broken answer at once (no clean end, no 10 s of lingering)."""
    from aiohttp import web

    async def half(request):
        response = web.StreamResponse(status=200)
        response.content_length = 100
        await response.prepare(request)
        await response.write(b"x" * 10)
        raise RuntimeError("disk gone")

    monkeypatch.setattr(lean.server, "handler", half)
    conn = await Raw.open(lean.port)
    await conn.send(put_head("1.00000", 10_000_000))  # a body still to come, unread
    async with asyncio.timeout(3):
        head = await conn.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        rest = await conn.reader.read()  # ends without the promised 100 bytes
    assert rest == b"x" * 10


async def test_handler_raising_connection_error_is_a_500(lean, monkeypatch):
    """A ConnectionError from the handler's own work (another node unreachable) is not
    this client's disconnection: it gets a 500 like any other failure."""
    async def unreachable(request):
        raise ConnectionRefusedError("peer node down")

    monkeypatch.setattr(lean.server, "handler", unreachable)
    conn = await Raw.open(lean.port)
    await conn.send(get("/healthcheck"))
    assert (await conn.answer())[0] == 500


async def test_a_nodes_unix_socket_is_named_by_its_configured_address(tmp_path):
    """Clients look for ``<ring ip>_<port>.sock``: a node bound by a name (localhost)
    must use that name, not the address its socket reports. A directory it cannot use
    costs only the shortcut."""
    from aiohttp import web

    from swiftlike.storage.node_http import NodeHTTPServer
    from swiftlike.storage.server import _listen_locally

    async def handler(request):
        return web.Response(text="ok")

    server = NodeHTTPServer(handler)
    await server.start("localhost", 0)
    try:
        await _listen_locally(server, str(tmp_path / "sockets"), "localhost")
        assert os.listdir(tmp_path / "sockets") == [f"localhost_{server.port}.sock"]
        (tmp_path / "blocked").write_text("a file where the directory should be")
        other = NodeHTTPServer(handler)
        await other.start("127.0.0.1", 0)
        try:
            await _listen_locally(other, str(tmp_path / "blocked"), "127.0.0.1")  # no raise
        finally:
            await other.close()
    finally:
        await server.close()
    assert os.listdir(tmp_path / "sockets") == []  # removed when the node stops
