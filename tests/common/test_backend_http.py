"""The lean node client (swiftlike.common.backend_http) against real servers on loopback.

An aiohttp server plays the node where its behaviour is what we want to see; a raw
asyncio server plays a node that misbehaves (closes early, truncates, stalls).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest
import uvloop
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from swiftlike.common.backend_http import (
    HIGH_WATER,
    BackendHTTPError,
    BackendPool,
    NodeResponse,
    UnsafeHeader,
)
from tests.cluster_harness import free_port

BIG = 8 * 1024 * 1024
# pytest-asyncio 1.x deprecates overriding event_loop_policy in favour of a hook that
# 0.23 (our floor) lacks; the override works on both.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestDeprecationWarning")


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request):
    """Every test on both loops: the servers run uvloop, whose buffered reads differ
    (it holds a read buffer until ``buffer_updated`` returns)."""
    if request.param == "uvloop":
        return uvloop.EventLoopPolicy()
    return asyncio.DefaultEventLoopPolicy()


async def start_node(port: int, peers: list) -> web.AppRunner:
    """An aiohttp app that records each request's client port (one per connection)."""

    async def echo(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername")[1])
        body = await request.read()
        if request.path == "/chunked":
            resp = web.StreamResponse(status=200, headers={"X-Kind": "chunked"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for size in (10, 1, 70000, 3):
                await resp.write(b"c" * size)
            await resp.write_eof()
            return resp
        if request.path == "/big":
            data = bytes(range(256)) * (BIG // 256)
            return web.Response(body=data)
        if request.path == "/empty":
            return web.Response(status=204)
        return web.Response(body=body[::-1] or b"hello", headers={
            "X-Meta": request.headers.get("X-Meta", ""),
            "X-Length-Seen": request.headers.get("Content-Length", "none")})

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def start_raw(port: int, answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter,
                                                   int], Awaitable[None]]
                    ) -> asyncio.AbstractServer:
    """A hand-written node: ``answer(reader, writer, n)`` for the n-th connection."""
    count = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1
        try:
            await answer(reader, writer, count)
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", port)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


@contextlib.asynccontextmanager
async def raw_node(answer, read_timeout: float = 2.0):
    """A pool and the port of a raw node that answers with ``answer``."""
    port = free_port()
    server = await start_raw(port, answer)
    pool = BackendPool(conn_timeout=1, read_timeout=read_timeout)
    try:
        yield pool, port
    finally:
        await pool.close()
        server.close()


@pytest.fixture
async def node():
    port, peers = free_port(), []
    runner = await start_node(port, peers)
    pool = BackendPool(conn_timeout=1, read_timeout=5)
    yield pool, port, peers
    await pool.close()
    await runner.cleanup()


async def test_bodies_headers_and_one_reused_connection(node):
    pool, port, peers = node
    resp = await pool.request("127.0.0.1", port, "PUT", "/a/b", {"X-Meta": "m",
                              "Content-Length": "999"}, b"abc")
    assert (resp.status, resp.reason) == (200, "OK")
    assert resp.headers["X-Meta"] == "m" and resp.headers["X-Length-Seen"] == "3"
    assert resp.content_length == 3 and await resp.read() == b"cba"
    head = await pool.request("127.0.0.1", port, "HEAD", "/a/b", {})
    assert head.status == 200 and head.content_length == 5
    head.release()
    chunked = await pool.request("127.0.0.1", port, "GET", "/chunked", {})
    assert chunked.content_length is None
    assert await chunked.read() == b"c" * 70014
    empty = await pool.request("127.0.0.1", port, "DELETE", "/empty", {})
    assert empty.status == 204 and await empty.read() == b""
    assert len(set(peers)) == 1  # every request on the same keep-alive connection


async def test_non_ascii_header_values_round_trip(node):
    pool, port, _ = node
    value = "caf\u00e9 \u2603"
    async with await pool.request("127.0.0.1", port, "GET", "/x", {"X-Meta": value}) as resp:
        assert resp.headers["X-Meta"] == value


async def test_cr_or_lf_in_a_header_is_refused_before_sending(node):
    pool, port, peers = node
    for bad in ({"X-Meta": "a\r\nX-Evil: 1"}, {"X-Meta\n": "a"}):
        with pytest.raises(UnsafeHeader, match="CR or LF"):
            await pool.request("127.0.0.1", port, "GET", "/x", bad)
    with pytest.raises(UnsafeHeader, match="CR or LF"):
        await pool.request("127.0.0.1", port, "GET", "/x\r\nHost: evil", {})
    assert peers == []


async def test_a_large_body_streams_with_bounded_buffering(node):
    pool, port, _ = node
    resp = await pool.request("127.0.0.1", port, "GET", "/big", {})
    await asyncio.sleep(0.3)  # consume nothing: the socket must stop being read
    assert resp._buffered <= HIGH_WATER + 1024 * 1024
    digest, pieces = hashlib.md5(), 0
    async for piece, _ in resp.content.iter_chunks():
        digest.update(piece)
        pieces += 1
    expected = hashlib.md5(bytes(range(256)) * (BIG // 256)).hexdigest()
    assert digest.hexdigest() == expected and pieces > 1
    resp.release()


async def test_releasing_an_unread_body_closes_its_connection(node):
    pool, port, peers = node
    resp = await pool.request("127.0.0.1", port, "GET", "/big", {})
    resp.release()
    again = await pool.request("127.0.0.1", port, "GET", "/x", {})
    assert await again.read() == b"hello"
    assert len(set(peers)) == 2


async def test_an_idle_connection_the_node_dropped_is_retried_on_a_new_one():
    async def answer(reader, writer, n):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        if n == 1:
            await read_request(reader)  # take the second request, then hang up

    async with raw_node(answer) as (pool, port):
        first = await pool.request("127.0.0.1", port, "GET", "/x", {})
        assert await first.read() == b"ok"
        second = await pool.request("127.0.0.1", port, "GET", "/x", {})
        assert await second.read() == b"ok"


async def test_a_new_connection_reset_before_the_request_is_a_connection_error():
    """The node resets it right after accepting; by the time the request is written the
    transport is closed (uvloop then raises RuntimeError on write): a node error."""

    async def answer(reader, writer, n):
        writer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    async with raw_node(answer) as (pool, port):
        connect = pool._acquire

        async def connect_then_wait(*args):  # type: ignore[no-untyped-def]
            conn = await connect(*args)
            await asyncio.sleep(0.2)  # the reset arrives meanwhile
            return conn

        pool._acquire = connect_then_wait  # type: ignore[method-assign]
        with pytest.raises(ConnectionResetError):
            await pool.request("127.0.0.1", port, "GET", "/x", {})


@pytest.mark.parametrize("reply, error", [
    (b"", "closed the connection before its answer"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", "inside the body"),
    (b"HTTP/1.1 2000 OK\r\n\r\n", "bad status line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n", "bad Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
     "unsupported body framing"),
])
async def test_broken_answers_are_errors(reply, error):
    async def answer(reader, writer, n):
        await read_request(reader)
        writer.write(reply)
        await writer.drain()

    async with raw_node(answer) as (pool, port):
        with pytest.raises(BackendHTTPError, match=error):
            resp = await pool.request("127.0.0.1", port, "GET", "/x", {})
            await resp.read()


async def test_informational_answers_and_bodies_read_to_eof():
    async def answer(reader, writer, n):
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\nX-A: 1\r\n\r\nto the end")
        await writer.drain()

    async with raw_node(answer) as (pool, port):
        resp = await pool.request("127.0.0.1", port, "GET", "/x", {})
        assert resp.status == 200 and resp.headers["X-A"] == "1"
        assert await resp.read() == b"to the end"
        assert pool._idle.get(("127.0.0.1", port), []) == []  # never reused


async def test_a_silent_node_times_out_and_a_closed_port_refuses():
    async def answer(reader, writer, n):
        await read_request(reader)
        await asyncio.sleep(5)

    async with raw_node(answer, read_timeout=0.2) as (pool, port):
        with pytest.raises(TimeoutError):
            await pool.request("127.0.0.1", port, "GET", "/x", {})
        with pytest.raises(OSError):
            await pool.request("127.0.0.1", free_port(), "GET", "/x", {})


class _FakeTransport:
    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class _FakeConnection:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.transport = _FakeTransport()
        self.reused = False
        self.response = None


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=3000), chunk_sizes=st.lists(st.integers(1, 700), min_size=1),
       cuts=st.lists(st.integers(1, 400), min_size=1), extension=st.booleans())
def test_chunked_bodies_decode_however_they_are_framed_and_fragmented(
        body, chunk_sizes, cuts, extension):
    wire, at, i = bytearray(), 0, 0
    while at < len(body):
        size = chunk_sizes[i % len(chunk_sizes)]
        piece = body[at:at + size]
        wire += b"%x%s\r\n%s\r\n" % (len(piece), b";ext=1" if extension else b"", piece)
        at, i = at + size, i + 1
    wire += b"0\r\nX-Trailer: t\r\n\r\n"
    stream = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + bytes(wire)
    conn = _FakeConnection()
    try:
        resp = NodeResponse(conn, False, 1.0)  # type: ignore[arg-type]
        pos, i = 0, 0
        while pos < len(stream):
            step = cuts[i % len(cuts)]
            resp._feed(stream[pos:pos + step])
            pos, i = pos + step, i + 1
        assert resp._error is None and resp.status == 200
        assert b"".join(piece[:size] for piece, size in resp._pieces) == body
        assert resp._reusable
    finally:
        conn.loop.close()


async def test_a_node_of_this_host_is_reached_by_its_unix_socket(tmp_path):
    """With a socket directory the pool connects to ``<ip>_<port>.sock`` there; with no
    one listening on it (a node gone, its file left) or a path too long for a socket
    address, it goes to the port."""
    from swiftlike.common.backend_http import local_socket_path

    port = free_port()

    def answering(word: bytes):
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(word), word))
            await writer.drain()
            writer.close()
        return handle

    tcp = await asyncio.start_server(answering(b"tcp"), "127.0.0.1", port)
    path = local_socket_path(str(tmp_path), "127.0.0.1", port)
    assert path is not None
    unix = await asyncio.start_unix_server(answering(b"unix"), path)

    async def via(socket_dir: str | None) -> bytes:
        pool = BackendPool(socket_dir=socket_dir)
        try:
            response = await pool.request("127.0.0.1", port, "GET", "/x", {})
            return await response.read()
        finally:
            await pool.close()

    try:
        assert await via(str(tmp_path)) == b"unix"
        assert await via(None) == b"tcp"
        unix.close()
        await unix.wait_closed()
        if not (tmp_path / f"127.0.0.1_{port}.sock").exists():  # left, as by a dead node
            socket.socket(socket.AF_UNIX).bind(path)
        assert await via(str(tmp_path)) == b"tcp"
        assert local_socket_path("/" + "d" * 120, "127.0.0.1", port) is None
    finally:
        tcp.close()
        await tcp.wait_closed()


async def test_a_unix_socket_with_a_full_queue_sends_the_pool_to_the_port(tmp_path):
    """A Unix connect to a listener whose queue is full fails at once (EAGAIN) where TCP
    would wait: a burst of new connections to a busy node must go to its port, not
    fail (and count against the node)."""
    from swiftlike.common.backend_http import local_socket_path

    port = free_port()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntcp")
        await writer.drain()
        writer.close()

    tcp = await asyncio.start_server(answer, "127.0.0.1", port)
    path = local_socket_path(str(tmp_path), "127.0.0.1", port)
    assert path is not None
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)  # and never accepts
    queued = []
    with contextlib.suppress(BlockingIOError):
        for _ in range(16):
            client = socket.socket(socket.AF_UNIX)
            client.setblocking(False)
            queued.append(client)
            client.connect(path)
    pool = BackendPool(socket_dir=str(tmp_path))
    try:
        response = await pool.request("127.0.0.1", port, "GET", "/x", {})
        assert await response.read() == b"tcp"
    finally:
        await pool.close()
        for sock in (listener, *queued):
            sock.close()
        tcp.close()
        await tcp.wait_closed()
