"""Streamed PUTs through the proxy: md5 once in the proxy, a footer to every node.

Real proxy, real nodes (behind TCP relays that can kill connections), real files. Each
test checks the disk: the right bytes with the right ETag on a quorum, and nothing
(no .data, no temp file) where a write was refused or broke.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import aiohttp
import pytest
import xxhash
from multidict import CIMultiDict

from swiftlike.proxy.base_controller import BackendResponse
from swiftlike.proxy.object_put import _etag_checked
from swiftlike.storage.diskfile import BODY_CHECKSUM_KEY, read_metadata
from tests.proxy.cluster import Cluster

pytestmark = pytest.mark.asyncio(loop_scope="module")

SIZE = 3 * 1024 * 1024 + 4321  # well above buffered_put_limit: the streamed path


async def auth(cluster: Cluster) -> tuple[str, str]:
    async with aiohttp.ClientSession() as s, s.get(
            cluster.auth_url, headers={"X-Auth-User": "test:tester",
                                       "X-Auth-Key": "testing"}) as r:
        return r.headers["X-Storage-Url"], r.headers["X-Auth-Token"]


def data_files(cluster: Cluster, body_size: int | None = None) -> list[Path]:
    files = sorted(cluster.root.glob("node*/*/objects/**/*.data"))
    if body_size is None:
        return files
    return [f for f in files if f.stat().st_size == body_size]


def temp_files(cluster: Cluster) -> list[Path]:
    return [p for p in cluster.root.glob("node*/*/tmp/*") if p.is_file()]


async def settled(cluster: Cluster, seconds: float = 5.0) -> list[Path]:
    """Temp files left once the nodes have finished with aborted uploads."""
    for _ in range(int(seconds / 0.05)):
        if not temp_files(cluster):
            break
        await asyncio.sleep(0.05)
    return temp_files(cluster)


async def slow_body(body: bytes, piece: int = 256 * 1024, on_piece=None):
    for start in range(0, len(body), piece):
        if on_piece is not None:
            await on_piece(start)
        yield body[start:start + piece]
        await asyncio.sleep(0.01)


def faults_of(cluster: Cluster, container: str, obj: str):
    from swiftlike.proxy.server import CONTEXT_KEY

    _, nodes = cluster.proxy_app[CONTEXT_KEY].ring.get_nodes("AUTH_test", container, obj)
    ports = [n["port"] for n in nodes]
    return [next(f for f in cluster.faults if f.port == port) for port in ports]


async def make_container(s: aiohttp.ClientSession, url: str, token: str, name: str) -> None:
    async with s.put(f"{url}/{name}", headers={"X-Auth-Token": token}) as r:
        assert r.status in (201, 202)


@pytest.mark.parametrize("chunked", [False, True])
async def test_streamed_put_stores_body_md5_and_stamp_on_every_replica(cluster, chunked):
    url, token = await auth(cluster)
    body = os.urandom(SIZE + (1 if chunked else 0))
    md5 = hashlib.md5(body).hexdigest()
    async with aiohttp.ClientSession() as s:
        await make_container(s, url, token, "footer")
        data = slow_body(body) if chunked else body
        async with s.put(f"{url}/footer/o-{chunked}", data=data,
                         headers={"X-Auth-Token": token}) as r:
            assert r.status == 201, await r.text()
            assert r.headers["ETag"] == md5
        async with s.get(f"{url}/footer/o-{chunked}", headers={"X-Auth-Token": token}) as r:
            assert r.status == 200 and await r.read() == body
    stored = data_files(cluster, len(body))
    assert len(stored) == 3  # the footer never became part of any copy
    for path in stored:
        meta = read_metadata(str(path))
        assert meta["ETag"] == md5
        assert meta[BODY_CHECKSUM_KEY] == xxhash.xxh3_128(body).hexdigest()
        assert path.read_bytes() == body
    assert await settled(cluster) == []


async def test_client_etag_mismatch_is_422_and_stores_nothing(cluster):
    url, token = await auth(cluster)
    body = os.urandom(SIZE)
    before = data_files(cluster)
    async with aiohttp.ClientSession() as s:
        await make_container(s, url, token, "footer")
        async with s.put(f"{url}/footer/bad-etag", data=body,
                         headers={"X-Auth-Token": token, "ETag": "0" * 32}) as r:
            assert r.status == 422
        async with s.get(f"{url}/footer/bad-etag", headers={"X-Auth-Token": token}) as r:
            assert r.status == 404
        assert await settled(cluster) == []
        assert data_files(cluster) == before
        # the right ETag, quoted as clients may send it, is accepted
        md5 = hashlib.md5(body).hexdigest()
        async with s.put(f"{url}/footer/bad-etag", data=slow_body(body),
                         headers={"X-Auth-Token": token, "ETag": f'"{md5}"'}) as r:
            assert r.status == 201
    assert sum(read_metadata(str(p))["ETag"] == md5 for p in data_files(cluster)) == 3


async def test_one_node_failing_mid_stream_still_makes_quorum(cluster):
    url, token = await auth(cluster)
    body = os.urandom(SIZE + 2)
    victim = faults_of(cluster, "footer", "one-fails")[0]

    async def cut(offset: int) -> None:
        if offset == 1024 * 1024:
            victim.kill_connections()

    async with aiohttp.ClientSession() as s:
        await make_container(s, url, token, "footer")
        async with s.put(f"{url}/footer/one-fails", data=slow_body(body, on_piece=cut),
                         headers={"X-Auth-Token": token,
                                  "Content-Length": str(len(body))}) as r:
            assert r.status == 201, await r.text()
            assert r.headers["ETag"] == hashlib.md5(body).hexdigest()
        async with s.get(f"{url}/footer/one-fails", headers={"X-Auth-Token": token}) as r:
            assert r.status == 200 and await r.read() == body
    assert len(data_files(cluster, len(body))) == 2  # the cut copy was never committed
    assert await settled(cluster) == []


async def test_two_nodes_failing_mid_stream_is_503_and_stores_nothing(cluster):
    url, token = await auth(cluster)
    body = os.urandom(SIZE + 3)
    victims = faults_of(cluster, "footer", "two-fail")[:2]

    async def cut(offset: int) -> None:
        if offset == 1024 * 1024:
            for victim in victims:
                victim.kill_connections()

    async with aiohttp.ClientSession() as s:
        await make_container(s, url, token, "footer")
        async with s.put(f"{url}/footer/two-fail", data=slow_body(body, on_piece=cut),
                         headers={"X-Auth-Token": token,
                                  "Content-Length": str(len(body))}) as r:
            assert r.status == 503
        assert await settled(cluster) == []
        assert data_files(cluster, len(body)) == []
        async with s.get(f"{url}/footer/two-fail", headers={"X-Auth-Token": token}) as r:
            assert r.status == 404


async def test_client_going_away_before_the_end_stores_nothing(cluster):
    url, token = await auth(cluster)
    body = os.urandom(SIZE + 4)
    host, port = "127.0.0.1", cluster.proxy_port
    path = url.split(str(port), 1)[1]
    _, writer = await asyncio.open_connection(host, port)
    writer.write((f"PUT {path}/footer/gone HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {token}\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:-10])
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.transport.abort()
    assert await settled(cluster) == []
    await asyncio.sleep(0.2)
    assert data_files(cluster, len(body)) == []
    assert data_files(cluster, len(body) - 10) == []


async def test_a_node_reporting_another_etag_is_no_success():
    """A node that ignored the footer header would hash body + footer: not a success."""
    node = {"ip": "127.0.0.1", "port": 1, "device": "d"}
    good = BackendResponse(201, CIMultiDict({"ETag": '"' + "a" * 32 + '"'}), b"", node)
    bad = BackendResponse(201, CIMultiDict({"ETag": "b" * 32}), b"", node)
    refused = BackendResponse(409, CIMultiDict(), b"", node)
    assert _etag_checked(good, "a" * 32) is good
    assert _etag_checked(bad, "a" * 32).status == 502
    assert _etag_checked(refused, "a" * 32) is refused
    assert _etag_checked(None, "a" * 32) is None


async def test_a_client_cannot_frame_its_own_footer(cluster):
    """A client's X-Backend-Body-Footer never reaches a node: its bytes stay body bytes."""
    from swiftlike.common.body_footer import FOOTER_HEADER, FOOTER_VERSION, make_footer

    url, token = await auth(cluster)
    for size in (1000, SIZE):  # the buffered and the streamed path
        body = os.urandom(size) + make_footer("e" * 32, size)
        async with aiohttp.ClientSession() as s:
            await make_container(s, url, token, "footer")
            async with s.put(f"{url}/footer/framed-{size}", data=body, headers={
                    "X-Auth-Token": token, FOOTER_HEADER: FOOTER_VERSION}) as r:
                assert r.status == 201
                assert r.headers["ETag"] == hashlib.md5(body).hexdigest()
            async with s.get(f"{url}/footer/framed-{size}",
                             headers={"X-Auth-Token": token}) as r:
                assert await r.read() == body
