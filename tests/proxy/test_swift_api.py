"""End to end: python-swiftclient and raw aiohttp against real nodes and the proxy."""

from __future__ import annotations

import asyncio
import hashlib
import json

import aiohttp
import pytest
from swiftclient import client as swift
from swiftclient.exceptions import ClientException
from yarl import URL

pytestmark = pytest.mark.asyncio(loop_scope="module")


def connect(cluster, user="test:tester", key="testing") -> swift.Connection:
    return swift.Connection(authurl=cluster.auth_url, user=user, key=key, retries=0)


async def run(func, *args, **kwargs):
    return await asyncio.to_thread(func, *args, **kwargs)


async def auth(cluster, user="test:tester", key="testing") -> tuple[str, str]:
    async with aiohttp.ClientSession() as s, s.get(
            cluster.auth_url, headers={"X-Auth-User": user, "X-Auth-Key": key}) as r:
        assert r.status == 200
        return r.headers["X-Storage-Url"], r.headers["X-Auth-Token"]


async def test_object_lifecycle_with_swiftclient(cluster):
    conn = connect(cluster)
    await run(conn.put_container, "life", headers={"X-Container-Meta-Color": "blue"})
    headers = await run(conn.head_container, "life")
    assert headers["x-container-meta-color"] == "blue"
    etag = await run(conn.put_object, "life", "a.txt", b"hello world",
                     headers={"X-Object-Meta-Kind": "greeting"})
    assert etag == hashlib.md5(b"hello world").hexdigest()

    def chunks():
        for i in range(5):
            yield bytes([65 + i]) * 100000
    expected = b"".join(chunks())
    await run(conn.put_object, "life", "dir/big.bin", chunks(), chunk_size=65536)
    hdrs, body = await run(conn.get_object, "life", "dir/big.bin")
    assert body == expected
    assert hdrs["etag"] == hashlib.md5(expected).hexdigest()
    hdrs, body = await run(conn.get_object, "life", "a.txt")
    assert body == b"hello world"
    assert hdrs["content-type"] == "text/plain"  # guessed from the name
    assert hdrs["x-object-meta-kind"] == "greeting"
    await run(conn.post_object, "life", "a.txt", headers={"X-Object-Meta-New": "1"})
    hdrs = await run(conn.head_object, "life", "a.txt")
    assert hdrs["x-object-meta-new"] == "1" and "x-object-meta-kind" not in hdrs
    # a POSTed Content-Type outlives later POSTs that do not name one (their metadata
    # replaces the earlier POST's, the type stays), and its bookkeeping is not shown
    await run(conn.post_object, "life", "a.txt", headers={"Content-Type": "text/css",
                                                          "X-Object-Meta-New": "2"})
    await run(conn.post_object, "life", "a.txt", headers={"X-Object-Meta-New": "3"})
    hdrs = await run(conn.head_object, "life", "a.txt")
    assert hdrs["content-type"] == "text/css" and hdrs["x-object-meta-new"] == "3"
    assert not [h for h in hdrs if "timestamp" in h and h != "x-timestamp"], hdrs
    # ... and the listing shows the POSTed type too (asked thrice: any replica may answer)
    for _ in range(3):
        _, listing = await run(conn.get_container, "life", prefix="a.txt")
        assert [(o["content_type"], o["bytes"]) for o in listing] == [("text/css", 11)]
    await run(conn.post_object, "life", "a.txt", headers={"Content-Type": "text/plain",
                                                          "X-Object-Meta-New": "1"})
    # listings: prefix, delimiter
    _, listing = await run(conn.get_container, "life")
    assert [o["name"] for o in listing] == ["a.txt", "dir/big.bin"]
    _, listing = await run(conn.get_container, "life", delimiter="/")
    assert [o.get("name") or o.get("subdir") for o in listing] == ["a.txt", "dir/"]
    # full_listing pages on with the last entry, here a subdir, as the marker: it must end
    _, listing = await asyncio.wait_for(
        run(conn.get_container, "life", delimiter="/", full_listing=True), 30)
    assert [o.get("name") or o.get("subdir") for o in listing] == ["a.txt", "dir/"]
    _, listing = await run(conn.get_container, "life", prefix="dir/")
    assert [o["name"] for o in listing] == ["dir/big.bin"]
    # copy, with metadata carried and with fresh metadata
    await run(conn.copy_object, "life", "a.txt", "/life/b.txt")
    hdrs, body = await run(conn.get_object, "life", "b.txt")
    assert body == b"hello world" and hdrs["x-object-meta-new"] == "1"
    await run(conn.put_object, "life", "c.txt", b"", headers={
        "X-Copy-From": "/life/a.txt", "X-Fresh-Metadata": "true"})
    hdrs, body = await run(conn.get_object, "life", "c.txt")
    assert body == b"hello world" and "x-object-meta-new" not in hdrs
    # container not empty -> 409, then empty it and delete
    with pytest.raises(ClientException) as err:
        await run(conn.delete_container, "life")
    assert err.value.http_status == 409
    for name in ("a.txt", "b.txt", "c.txt", "dir/big.bin"):
        await run(conn.delete_object, "life", name)
    with pytest.raises(ClientException) as err:
        await run(conn.get_object, "life", "a.txt")
    assert err.value.http_status == 404
    await run(conn.delete_container, "life")
    with pytest.raises(ClientException) as err:
        await run(conn.head_container, "life")
    assert err.value.http_status == 404
    # account listing and metadata
    await run(conn.post_account, {"X-Account-Meta-Owner": "me"})
    hdrs, containers = await run(conn.get_account)
    assert hdrs["x-account-meta-owner"] == "me"
    assert "life" not in [c["name"] for c in containers]


async def test_ranges_conditionals_and_expiry(cluster):
    url, token = await auth(cluster)
    h = {"X-Auth-Token": token}
    data = bytes(range(256)) * 1000
    async with aiohttp.ClientSession() as s:
        async with s.put(url + "/rng", headers=h) as r:
            assert r.status in (201, 202)
        async with s.put(url + "/rng/o", headers=h, data=data) as r:
            assert r.status == 201
            etag = r.headers["ETag"]
        async with s.get(url + "/rng/o", headers={**h, "Range": "bytes=10-19"}) as r:
            assert r.status == 206 and await r.read() == data[10:20]
        async with s.get(url + "/rng/o", headers={**h, "Range": "bytes=-5"}) as r:
            assert r.status == 206 and await r.read() == data[-5:]
        async with s.get(url + "/rng/o", headers={**h, "Range": "bytes=0-1,5-6"}) as r:
            assert r.status == 206
            assert r.headers["Content-Type"].startswith("multipart/byteranges")
        async with s.get(url + "/rng/o", headers={**h, "Range": "bytes=999999-"}) as r:
            assert r.status == 416
        # an empty object: a suffix range is satisfiable but names no bytes, so the
        # whole (empty) object is the answer, never 206 "bytes 0--1/0"; from 0 is 416
        async with s.put(url + "/rng/empty", headers=h, data=b"") as r:
            assert r.status == 201
        async with s.get(url + "/rng/empty", headers={**h, "Range": "bytes=-5"}) as r:
            assert r.status == 200 and await r.read() == b""
            assert "Content-Range" not in r.headers
        async with s.get(url + "/rng/empty", headers={**h, "Range": "bytes=0-"}) as r:
            assert r.status == 416 and r.headers["Content-Range"] == "bytes */0"
        async with s.get(url + "/rng/o", headers={**h, "If-None-Match": etag}) as r:
            assert r.status == 304
        async with s.get(url + "/rng/o", headers={**h, "If-Match": "nope"}) as r:
            assert r.status == 412
        async with s.put(url + "/rng/gone", headers={**h, "X-Delete-After": "2"},
                         data=b"x") as r:
            assert r.status == 201
        async with s.head(url + "/rng/gone", headers=h) as r:
            assert r.status == 200 and "X-Delete-At" in r.headers
        await asyncio.sleep(2.2)
        async with s.get(url + "/rng/gone", headers=h) as r:
            assert r.status == 404


async def test_bad_requests_get_swift_statuses_and_store_nothing(cluster):
    url, token = await auth(cluster)
    h = {"X-Auth-Token": token}
    async with aiohttp.ClientSession() as s:
        async with s.put(url + "/bad", headers=h) as r:
            assert r.status in (201, 202)
        async with s.put(url + "/bad/keep", headers=h, data=b"original") as r:
            assert r.status == 201
        before = cluster.object_file_count()
        too_many = {f"X-Object-Meta-M{i}": "v" for i in range(91)}
        cases = [
            ("PUT", "/bad/keep", {"ETag": "0" * 32}, b"changed!", 422),
            ("PUT", "/bad/keep", {"X-Object-Meta-" + "n" * 129: "v"}, b"changed!", 400),
            ("PUT", "/bad/keep", {"X-Object-Meta-N": "v" * 257}, b"changed!", 400),
            ("PUT", "/bad/keep", too_many, b"changed!", 400),
            ("PUT", "/bad/keep", {"X-Delete-At": "1"}, b"changed!", 400),
            ("PUT", "/bad/keep", {"X-Delete-After": "soon"}, b"changed!", 400),
            ("PUT", "/bad/" + "o" * 1025, {}, b"x", 400),
            ("PUT", "/" + "c" * 257, {}, None, 400),
            ("PUT", "/nosuchcontainer/o", {}, b"x", 404),
            ("PUT", "/%2E%2E", {}, None, 400),
            ("PUT", "/%2E", {}, None, 400),
            ("PUT", "/bad/bad%FFname", {}, b"x", 412),
            ("PUT", "/bad/nul%00name", {}, b"x", 412),
            ("GET", "/bad?limit=10001", {}, None, 412),
            ("POST", "/bad/keep", {"X-Object-Meta-": "v"}, None, 400),
            ("POST", "/bad/missing", {}, None, 404),
            ("DELETE", "/bad/missing", {}, None, 404),
            ("COPY", "/bad/keep", {"Destination": "nocontainerslash"}, None, 412),
            ("PUT", "/bad/keep2", {"X-Copy-From": "/bad/missing"}, None, 404),
            ("PUT", "/bad", {"X-Container-Meta-": "v"}, None, 400),
        ]
        for method, path, headers, body, status in cases:
            kwargs = {"data": body} if body is not None else {}

            async with s.request(method, URL(url + path, encoded=True),
                                 headers={**h, **headers},
                                 skip_auto_headers=["Content-Type"], **kwargs) as r:
                text = await r.text()
                assert r.status == status, (method, path, headers.keys(), r.status, text)
                assert "Traceback" not in text
        async with aiohttp.ClientSession() as lone, lone.put(
                url + "/bad/keep", headers={**h, "Content-Length": str(5 * 1024**3 + 3)}) as r:
            assert r.status == 413  # refused before any byte of the body is read
        async with s.get(url + "/bad/keep", headers=h) as r:
            assert await r.read() == b"original"
        assert cluster.object_file_count() == before
        # chunked body larger than the limit is refused with 413 (limit made small here)
        async with s.put(url + "/bad/keep", headers=h,
                         data=_gen(b"abc")) as r:
            assert r.status == 201  # chunked uploads work
        async with s.get(url + "/bad/keep", headers=h) as r:
            assert await r.read() == b"abc" * 3
        async with s.put(url + "/bad/nolength", headers=h,
                         skip_auto_headers=["Content-Type"]) as r:
            assert r.status in (201, 411)


async def _gen(chunk: bytes):
    for _ in range(3):
        yield chunk


async def test_utf8_and_percent_encoded_names(cluster):
    conn = connect(cluster)
    name = "caf\u00e9 \u65e5\u672c/\u00fc ber%20?x"
    await run(conn.put_container, "\u00fcnicode")
    await run(conn.put_object, "\u00fcnicode", name, b"data")
    _, body = await run(conn.get_object, "\u00fcnicode", name)
    assert body == b"data"
    _, listing = await run(conn.get_container, "\u00fcnicode")
    assert [o["name"] for o in listing] == [name]


async def test_info_and_healthcheck(cluster):
    async with aiohttp.ClientSession() as s:
        async with s.get(cluster.url + "/info") as r:
            info = json.loads(await r.text())
        async with s.get(cluster.url + "/healthcheck") as r:
            assert r.status == 200 and await r.text() == "OK"
        async with s.options(cluster.url + "/info") as r:
            assert r.status == 200 and r.headers["Allow"] == "GET, HEAD, OPTIONS"
        async with s.post(cluster.url + "/info") as r:
            assert r.status == 405 and r.headers["Allow"] == "GET, HEAD, OPTIONS"
    assert info["swift"]["max_file_size"] == 5 * 1024**3 + 2
    assert info["swift"]["container_listing_limit"] == 10000
    assert "tempauth" in info
    assert "slo" not in info  # nothing advertised that we do not do
