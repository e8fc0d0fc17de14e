"""Streaming proofs (flat memory, aborted uploads store nothing) and smaller API details."""

from __future__ import annotations

import asyncio
import hashlib
import resource

import aiohttp
import pytest

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def auth(cluster, user="test:tester", key="testing") -> tuple[str, str]:
    async with aiohttp.ClientSession() as s, s.get(
            cluster.auth_url, headers={"X-Auth-User": user, "X-Auth-Key": key}) as r:
        return r.headers["X-Storage-Url"], r.headers["X-Auth-Token"]


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.slow
async def test_large_upload_and_download_stream_with_flat_memory(cluster):
    url, token = await auth(cluster)
    h = {"X-Auth-Token": token}
    chunk = bytes(range(256)) * 4096  # 1 MiB
    total_mib = 96
    md5 = hashlib.md5()
    peak = [rss_mib()]
    start = peak[0]

    async def body():
        for _ in range(total_mib):
            md5.update(chunk)
            peak[0] = max(peak[0], rss_mib())
            yield chunk

    async with aiohttp.ClientSession() as s:
        async with s.put(url + "/big", headers=h) as r:
            assert r.status in (201, 202)
        async with s.put(url + "/big/o", headers={**h, "Content-Length": str(total_mib << 20)},
                         data=body()) as r:
            assert r.status == 201, await r.text()
            assert r.headers["ETag"] == md5.hexdigest()
        got = hashlib.md5()
        async with s.get(url + "/big/o", headers=h) as r:
            assert r.status == 200
            async for piece in r.content.iter_chunked(1 << 20):
                got.update(piece)
                peak[0] = max(peak[0], rss_mib())
        assert got.hexdigest() == md5.hexdigest()
    # proxy, three nodes and the client share this process: far below the 288 MiB
    # that buffering three replicas (or even one 96 MiB copy) would need
    assert peak[0] - start < 64, (start, peak[0])


async def test_client_disconnect_mid_upload_stores_nothing(cluster):
    url, token = await auth(cluster)
    async with aiohttp.ClientSession() as s:
        async with s.put(url + "/abort", headers={"X-Auth-Token": token}) as r:
            assert r.status in (201, 202)
    before = cluster.object_file_count()
    path = url.split("127.0.0.1:", 1)[1].split("/", 1)[1]
    for size in (1000, 1 << 20):  # the buffered path and the streamed path
        _reader, writer = await asyncio.open_connection("127.0.0.1", cluster.proxy_port)
        writer.write((f"PUT /{path}/abort/o{size} HTTP/1.1\r\nHost: x\r\n"
                      f"X-Auth-Token: {token}\r\nContent-Length: {size}\r\n\r\n").encode())
        writer.write(b"x" * (size // 2))
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.transport.abort()
    await asyncio.sleep(0.5)
    async with aiohttp.ClientSession() as s:
        for size in (1000, 1 << 20):
            async with s.get(f"{url}/abort/o{size}", headers={"X-Auth-Token": token}) as r:
                assert r.status == 404
    assert cluster.object_file_count() == before


async def test_listing_formats_and_head_lengths(cluster):
    url, token = await auth(cluster)
    h = {"X-Auth-Token": token}
    async with aiohttp.ClientSession() as s:
        async with s.put(url + "/fmt", headers=h) as r:
            assert r.status in (201, 202)
        for name in ("a", "b/1", "b/2", "c"):
            async with s.put(f"{url}/fmt/{name}", headers=h, data=b"12345") as r:
                assert r.status == 201
        async with s.get(url + "/fmt", headers=h) as r:
            assert (await r.text()).split() == ["a", "b/1", "b/2", "c"]
        async with s.get(url + "/fmt?format=json&delimiter=/&marker=a", headers=h) as r:
            rows = await r.json()
            assert [x.get("name", x.get("subdir")) for x in rows] == ["b/", "c"]
        async with s.get(url + "/fmt?limit=2&reverse=true", headers=h) as r:
            assert (await r.text()).split() == ["c", "b/2"]
        async with s.get(url + "/fmt", headers={**h, "Accept": "application/xml"}) as r:
            assert (await r.text()).startswith("<?xml")
        async with s.get(url + "?format=json&prefix=fm", headers=h) as r:
            assert [x["name"] for x in await r.json()] == ["fmt"]
        async with s.head(url + "/fmt/a", headers=h) as r:
            assert r.status == 200 and r.headers["Content-Length"] == "5"
            assert r.headers["X-Trans-Id"] == r.headers["X-Openstack-Request-Id"]
            assert "Date" in r.headers
            assert not any(k.lower().startswith("x-backend") for k in r.headers)


async def test_token_introspection_for_sibling_services(cluster):
    url, token = await auth(cluster)
    async with aiohttp.ClientSession() as s:
        async with s.get(cluster.auth_url, headers={"X-Auth-Token": token}) as r:
            assert r.status == 200
            assert r.headers["X-Storage-Url"] == url
            assert "AUTH_test" in r.headers["X-Auth-Groups"].split(",")
        async with s.get(cluster.auth_url, headers={"X-Auth-Token": token + "x"}) as r:
            assert r.status == 401


async def test_object_file_count_sees_stored_objects(cluster):
    """Guard for the 'stored nothing' checks: the counter does see real writes."""
    url, token = await auth(cluster)
    before = cluster.object_file_count()
    async with aiohttp.ClientSession() as s:
        async with s.put(url + "/fmt/counted", headers={"X-Auth-Token": token},
                         data=b"x") as r:
            assert r.status == 201
    assert cluster.object_file_count() == before + 3


async def test_x_newest_container_head(cluster):
    url, token = await auth(cluster)
    async with aiohttp.ClientSession() as s:
        async with s.head(url + "/fmt", headers={"X-Auth-Token": token,
                                                 "X-Newest": "true"}) as r:
            assert r.status == 204
            assert int(r.headers["X-Container-Object-Count"]) >= 4
        async with s.head(url + "/nope", headers={"X-Auth-Token": token,
                                                  "X-Newest": "true"}) as r:
            assert r.status == 404


async def test_stalled_client_upload_times_out_with_408(tmp_path):
    from tests.proxy.cluster import start_cluster, stop_cluster
    c = await start_cluster(tmp_path, proxy_conf={"client_timeout": 0.5})
    try:
        url, token = await auth(c)
        async with aiohttp.ClientSession() as s:
            async with s.put(url + "/slow", headers={"X-Auth-Token": token}) as r:
                assert r.status in (201, 202)
        path = url.split(f"127.0.0.1:{c.proxy_port}", 1)[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", c.proxy_port)
        writer.write((f"PUT {path}/slow/o HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {token}\r\n"
                      "Content-Length: 100\r\n\r\nhalf").encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        assert b" 408 " in status_line
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/slow/o", headers={"X-Auth-Token": token}) as r:
                assert r.status == 404
    finally:
        await stop_cluster(c)
