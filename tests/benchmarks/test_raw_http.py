"""benchmarks/raw_http.py: the load's own HTTP client reads every framing right, and
turns every broken answer into an error instead of a misread, against scripted servers."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.raw_http import RawClient, ResponseError


class ScriptedServer:
    """Answers each request on a connection with the next scripted reply (raw bytes,
    sent in the given pieces); records the requests' heads and bodies."""

    def __init__(self, replies: list[list[bytes]], close_after: bool = False) -> None:
        self.replies = list(replies)
        self.close_after = close_after
        self.requests: list[bytes] = []
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1/AUTH_t"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.replies:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                for piece in self.replies.pop(0):
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0)
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def _exchange(replies, requests, close_after=False):
    server = ScriptedServer(replies, close_after)
    url = await server.start()
    client = RawClient(url, "tok", 5.0)
    lane = client.lane()
    results = []
    try:
        for method, path, body in requests:
            try:
                results.append(await lane.request(method, path, body=body))
            except (ResponseError, TimeoutError, OSError) as err:
                results.append(err)
    finally:
        client.close()
        await server.stop()
    return server, results


def test_content_length_chunked_and_close_delimited_bodies():
    body = bytes(range(256)) * 40
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:7], body[7:5000],
                                                                 body[5000:])) + b"0\r\n\r\n"
    replies = [
        [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body],
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked],
        [b"HTTP/1.1 204 No Content\r\n\r\n"],
        [b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"],  # HEAD: no body follows
        [b"HTTP/1.0 200 OK\r\n\r\n" + body],  # ends with the connection
    ]
    requests = [("GET", "/c/o", None), ("GET", "/c/o", None), ("DELETE", "/c/o", None),
                ("HEAD", "/c/o", None), ("GET", "/c/o", None)]
    server, results = asyncio.run(_exchange(replies, requests))
    assert [r.status for r in results] == [200, 200, 204, 200, 200]
    assert [r.body_length for r in results] == [len(body), len(body), 0, 0, len(body)]
    assert results[3].headers["content-length"] == "99"
    assert results[0].body_start == body[:512]
    assert server.connections == 1  # all on one keep-alive connection
    assert server.requests[0].startswith(b"GET /v1/AUTH_t/c/o HTTP/1.1\r\n")
    assert b"X-Auth-Token: tok\r\n" in server.requests[0]


def test_put_sends_its_body_with_its_length():
    replies = [[b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"],
               [b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"]]
    big = random.Random(1).randbytes(3 * 1024 * 1024)
    server, results = asyncio.run(_exchange(replies, [("PUT", "/c/a", b"x" * 10),
                                                      ("PUT", "/c/b", big)]))
    assert [r.status for r in results] == [201, 201]
    assert server.requests[0].endswith(b"Content-Length: 10\r\n\r\n" + b"x" * 10)
    assert server.requests[1].endswith(big)


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345",          # cut short
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n12345",            # more than framed
    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",                 # bad length
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk size
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
    b"SPDY/3 200 OK\r\n\r\n",                                         # not HTTP/1.x
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\n0\r\n\r\n",  # size < 0
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nabcde\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n",            # not an ASCII digit
    b"HTTP/1.1 \xb2\xb2\xb2 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 2\r\n\r\nok",
])
def test_broken_answers_are_errors_and_the_next_request_reconnects(reply):
    replies = [[reply], [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]]
    server, results = asyncio.run(_exchange(replies, [("GET", "/c/o", None)] * 2,
                                            close_after=True))
    assert isinstance(results[0], ResponseError)
    assert results[1].status == 200 and results[1].body_length == 2
    assert server.connections == 2


def test_a_silent_server_times_out():
    async def run():
        async def mute(reader, writer):
            await reader.read(100)
            await asyncio.sleep(5)
            writer.close()
        server = await asyncio.start_server(mute, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = RawClient(f"http://127.0.0.1:{port}/v1/a", "t", 0.3)
        try:
            with pytest.raises(TimeoutError):
                await client.lane().request("GET", "/c")
        finally:
            client.close()
            server.close()
    asyncio.run(run())


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=6),
       cuts=st.lists(st.integers(1, 500), min_size=1, max_size=30),
       extension=st.booleans())
def test_chunked_bodies_cut_anywhere_count_exactly(sizes, cuts, extension):
    """However the chunked answer is split into TCP pieces, the count is the body's."""
    ext = b";name=value" if extension else b""
    encoded = b"".join(b"%x%s\r\n%s\r\n" % (n, ext, b"a" * n) for n in sizes if n) + \
        b"0\r\nX-Trailer: 1\r\n\r\n"
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + encoded
    pieces, pos = [], 0
    for cut in cuts:
        if pos >= len(answer):
            break
        pieces.append(answer[pos:pos + cut])
        pos += cut
    if pos < len(answer):
        pieces.append(answer[pos:])
    tail = [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]
    _, results = asyncio.run(_exchange([pieces, tail], [("GET", "/c", None)] * 2))
    assert results[0].body_length == sum(sizes)
    assert results[1].status == 200


def test_a_keep_alive_connection_closed_while_idle_is_retried_once():
    """The server closes an idle connection; the client only notices when it sends."""
    async def run():
        connections = []

        async def serve(reader, writer):
            connections.append(writer)
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            writer.close()  # idle timeout of zero: gone after one answer

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = RawClient(f"http://127.0.0.1:{port}/v1/a", "t", 5.0)
        lane = client.lane()
        try:
            first = await lane.request("GET", "/c")
            # blocking on purpose: the loop does not run, so the FIN waits unread, as it
            # does between two phases of the load
            time.sleep(0.2)  # noqa: ASYNC251
            second = await lane.request("GET", "/c")
        finally:
            client.close()
            server.close()
        assert (first.status, second.status) == (200, 200)
        assert len(connections) == 2
    asyncio.run(run())


def test_a_close_delimited_body_cut_by_a_reset_is_an_error():
    async def run():
        async def serve(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial")
            await writer.drain()
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # linger 0: a reset, not a clean end

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = RawClient(f"http://127.0.0.1:{port}/v1/a", "t", 5.0)
        try:
            with pytest.raises((ResponseError, ConnectionError)):
                await client.lane().request("GET", "/c")
        finally:
            client.close()
            server.close()
    asyncio.run(run())
