"""The replicator's small HTTP client against a real aiohttp server on loopback."""

from __future__ import annotations

import pytest
from aiohttp import web

from swiftlike.daemons.replication_http import HTTP_ERRORS, ReplicationHTTP
from tests.cluster_harness import free_port


async def start_server(port: int, seen: list) -> web.AppRunner:
    async def echo(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append((request.path, request.headers.get("X-Test"), len(body)))
        if request.path == "/chunked":
            resp = web.StreamResponse(status=200)
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            await resp.write(b"a" * 10)
            await resp.write(b"b" * 5)
            await resp.write_eof()
            return resp
        return web.Response(body=body[::-1])

    async def full(request: web.Request) -> web.Response:
        return web.Response(status=507, text="device full")  # body never read

    app = web.Application(client_max_size=1 << 30)
    app.router.add_post("/full", full)
    app.router.add_post("/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def chunks(count: int, size: int):
    for _ in range(count):
        yield b"x" * size


async def test_bytes_streams_and_chunked_answers_on_reused_connections():
    port, seen = free_port(), []
    runner = await start_server(port, seen)
    client = ReplicationHTTP(node_timeout=5)
    node = {"ip": "127.0.0.1", "port": port}
    try:
        assert await client.post(node, "/a", {"X-Test": "1"}, b"abc") == (200, b"cba")
        status, body = await client.post(node, "/b", {}, chunks(3, 1000))
        assert status == 200 and body == b"x" * 3000
        assert await client.post(node, "/chunked", {}, b"") == (200, b"a" * 10 + b"b" * 5)
        assert len(client._idle[("127.0.0.1", port)]) == 1  # one connection, kept
        assert seen == [("/a", "1", 3), ("/b", None, 3000), ("/chunked", None, 0)]
    finally:
        await client.close()
        await runner.cleanup()


async def test_a_pooled_connection_the_server_closed_is_retried_once():
    port, seen = free_port(), []
    runner = await start_server(port, seen)
    client = ReplicationHTTP(node_timeout=5)
    node = {"ip": "127.0.0.1", "port": port}
    try:
        assert (await client.post(node, "/a", {}, b"1"))[0] == 200
        await runner.cleanup()  # closes the idle keep-alive connection
        runner = await start_server(port, seen)
        assert await client.post(node, "/b", {}, b"xy") == (200, b"yx")
    finally:
        await client.close()
        await runner.cleanup()


async def test_an_early_answer_to_a_streamed_body_is_read():
    port, seen = free_port(), []
    runner = await start_server(port, seen)
    client = ReplicationHTTP(node_timeout=5)
    node = {"ip": "127.0.0.1", "port": port}
    try:
        try:
            status, body = await client.post(node, "/full", {}, chunks(64, 1 << 16))
        except HTTP_ERRORS:
            pytest.fail("the 507 the server sent was lost")
        assert status == 507 and b"device full" in body
    finally:
        await client.close()
        await runner.cleanup()


async def test_a_dead_peer_raises_a_peer_error():
    client = ReplicationHTTP(conn_timeout=1, node_timeout=1)
    with pytest.raises(HTTP_ERRORS):
        await client.post({"ip": "127.0.0.1", "port": free_port()}, "/x", {}, b"")
    await client.close()
