"""Swift behaviours the proxy core matches, proved against real storage nodes.

X-Remove-* metadata removal, X-Newest object reads, 202 for a PUT superseded by a
newer version, COPY Destination forms and Destination-Account. Some tests write to a
node directly (like a replica that missed an update) to build the state Swift's
rule is about.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

import aiohttp
import pytest
import swiftclient

from swiftlike.common.node_client import node_path
from swiftlike.common.timestamp import Timestamp
from swiftlike.proxy.server import CONTEXT_KEY

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def auth(cluster, user="test:tester", key="testing") -> tuple[str, str]:
    async with aiohttp.ClientSession() as s, s.get(
            cluster.auth_url, headers={"X-Auth-User": user, "X-Auth-Key": key}) as r:
        assert r.status == 200
        return r.headers["X-Storage-Url"], r.headers["X-Auth-Token"]


async def call(s, method, url, token, headers=None, data=None):
    hdrs = {"X-Auth-Token": token, **(headers or {})}
    async with s.request(method, url, headers=hdrs, data=data) as r:
        return r.status, r.headers.copy(), await r.read()


async def direct_object(cluster, node, method, obj_path, timestamp, data=b""):
    """A request straight to one storage node (bypassing the proxy)."""
    ring = cluster.proxy_app[CONTEXT_KEY].ring
    account, container, obj = obj_path
    part = ring.get_part(account, container, obj)
    url = f"http://{node['ip']}:{node['port']}" + node_path(node, part, account, container,
                                                             obj)
    headers = {"X-Backend-Server-Type": "object", "X-Timestamp": timestamp.internal}
    if method == "PUT":
        headers.update({"Content-Type": "application/octet-stream",
                        "Content-Length": str(len(data))})
    async with aiohttp.ClientSession() as s, s.request(method, url, headers=headers,
                                                       data=data if method == "PUT" else None
                                                       ) as r:
        await r.read()
        return r.status


async def test_x_remove_headers_delete_container_metadata(cluster):
    url, token = await auth(cluster)
    c = url + "/rm-meta"
    async with aiohttp.ClientSession() as s:
        assert (await call(s, "PUT", c, token, {
            "X-Container-Meta-Color": "red", "X-Container-Meta-Shape": "round",
            "X-Container-Meta-Keep": "yes", "X-Container-Read": ".r:*",
            "X-Container-Write": "test:tester3", "X-Versions-Location": "archive"}))[0] \
            in (201, 202)
        status, h, _ = await call(s, "HEAD", c, token)
        assert h["X-Container-Meta-Color"] == "red" and h["X-Versions-Location"] == "archive"
        # a non-admin may not remove ACLs either
        _, tok3 = await auth(cluster, "test:tester3", "testing3")
        assert (await call(s, "POST", c, tok3, {"X-Remove-Container-Read": "x"}))[0] == 403
        assert (await call(s, "POST", c, token, {
            "X-Remove-Container-Meta-Color": "x", "X-Remove-Container-Read": "yes",
            "X-Remove-Container-Write": "1", "X-Remove-Versions-Location": "x",
            # an explicit value wins over the removal of the same key
            "X-Remove-Container-Meta-Shape": "x", "X-Container-Meta-Shape": "square"}))[0] \
            == 204
        status, h, _ = await call(s, "HEAD", c, token)
        assert status == 204
        for gone in ("X-Container-Meta-Color", "X-Container-Read", "X-Container-Write",
                     "X-Versions-Location"):
            assert gone not in h, gone
        assert h["X-Container-Meta-Shape"] == "square"
        assert h["X-Container-Meta-Keep"] == "yes"
        # X-History-Location too
        assert (await call(s, "POST", c, token, {"X-History-Location": "hist"}))[0] == 204
        assert (await call(s, "HEAD", c, token))[1]["X-History-Location"] == "hist"
        assert (await call(s, "POST", c, token, {"X-Remove-History-Location": "x"}))[0] == 204
        assert "X-History-Location" not in (await call(s, "HEAD", c, token))[1]

    # python-swiftclient's `swift post -m "Keep:"` sends an empty value: removed too
    def swiftclient_removes() -> dict:
        conn = swiftclient.Connection(authurl=cluster.auth_url, user="test:tester",
                                      key="testing", retries=0)
        conn.post_container("rm-meta", {"X-Container-Meta-Keep": ""})
        return conn.head_container("rm-meta")

    headers = await asyncio.to_thread(swiftclient_removes)
    assert "x-container-meta-keep" not in headers
    assert headers["x-container-meta-shape"] == "square"


async def test_x_remove_headers_delete_account_metadata(cluster):
    url, token = await auth(cluster)
    async with aiohttp.ClientSession() as s:
        assert (await call(s, "POST", url, token, {"X-Account-Meta-Team": "blue",
                                                   "X-Account-Meta-Stay": "1"}))[0] == 204
        h = (await call(s, "HEAD", url, token))[1]
        assert h["X-Account-Meta-Team"] == "blue"
        assert (await call(s, "POST", url, token,
                           {"X-Remove-Account-Meta-Team": "x"}))[0] == 204
        h = (await call(s, "HEAD", url, token))[1]
        assert "X-Account-Meta-Team" not in h
        assert h["X-Account-Meta-Stay"] == "1"
        # a non-admin may not remove account metadata
        _, tok3 = await auth(cluster, "test:tester3", "testing3")
        assert (await call(s, "POST", url, tok3,
                           {"X-Remove-Account-Meta-Stay": "x"}))[0] == 403
        assert (await call(s, "HEAD", url, token))[1]["X-Account-Meta-Stay"] == "1"


async def test_x_newest_serves_the_newest_replica(ring_read_order):
    cluster = ring_read_order
    url, token = await auth(cluster)
    ring = cluster.proxy_app[CONTEXT_KEY].ring
    path = ("AUTH_test", "newest", "obj")
    _, primaries = ring.get_nodes(*path)
    async with aiohttp.ClientSession() as s:
        assert (await call(s, "PUT", url + "/newest", token))[0] in (201, 202)
        assert (await call(s, "PUT", url + "/newest/obj", token, data=b"version one"))[0] \
            == 201
        # one replica (not the first asked) got a newer write the others missed
        assert await direct_object(cluster, primaries[2], "PUT", path,
                                   Timestamp(time.time() + 1), b"version two") == 201
        status, _, body = await call(s, "GET", url + "/newest/obj", token)
        assert status == 200 and body == b"version one"  # first primary (ring order) answers
        status, h, body = await call(s, "GET", url + "/newest/obj", token,
                                     {"X-Newest": "true"})
        assert status == 200 and body == b"version two"
        status, h, _ = await call(s, "HEAD", url + "/newest/obj", token, {"X-Newest": "True"})
        assert status == 200 and h["ETag"] == hashlib.md5(b"version two").hexdigest()
        # a newer tombstone on another replica: X-Newest says it is gone
        assert await direct_object(cluster, primaries[1], "DELETE", path,
                                   Timestamp(time.time() + 2)) == 204
        status, _, _ = await call(s, "GET", url + "/newest/obj", token, {"X-Newest": "yes"})
        assert status == 404
        # a node down: X-Newest still answers from the others
        await cluster.faults[[f.port for f in cluster.faults].index(primaries[0]["port"])
                             ].set_down(True)
        try:
            status, _, _ = await call(s, "HEAD", url + "/newest/obj", token,
                                      {"X-Newest": "true"})
            assert status == 404
        finally:
            await cluster.faults[[f.port for f in cluster.faults].index(
                primaries[0]["port"])].set_down(False)


async def test_put_superseded_by_newer_version_is_202(cluster):
    url, token = await auth(cluster)
    ring = cluster.proxy_app[CONTEXT_KEY].ring
    async with aiohttp.ClientSession() as s:
        assert (await call(s, "PUT", url + "/superseded", token))[0] in (201, 202)
        for name, chunked in (("small", False), ("streamed", True)):
            path = ("AUTH_test", "superseded", name)
            _, primaries = ring.get_nodes(*path)
            future = Timestamp(time.time() + 100)
            for node in primaries:
                assert await direct_object(cluster, node, "PUT", path, future,
                                           b"from the future") == 201
            if chunked:
                async def body():
                    for _ in range(4):
                        yield b"x" * 100000
                data = body()
            else:
                data = b"older write"
            status, _, _ = await call(s, "PUT", f"{url}/superseded/{name}", token, data=data)
            assert status == 202, name
            status, _, got = await call(s, "GET", f"{url}/superseded/{name}", token)
            assert status == 200 and got == b"from the future"
        # If-None-Match: * against an existing object is still 412, not 202 / 503
        assert (await call(s, "PUT", url + "/superseded/plain", token, data=b"one"))[0] == 201
        status, _, _ = await call(s, "PUT", url + "/superseded/plain", token,
                                  {"If-None-Match": "*"}, data=b"again")
        assert status == 412

        async def streamed():
            yield b"y" * 300000

        status, _, _ = await call(s, "PUT", url + "/superseded/plain", token,
                                  {"If-None-Match": "*"}, data=streamed())
        assert status == 412
        assert (await call(s, "GET", url + "/superseded/plain", token))[2] == b"one"


async def test_copy_destination_forms_and_destination_account(cluster):
    url, token = await auth(cluster)
    admin_url, admin_token = await auth(cluster, "admin:admin", "admin")
    url2, token2 = await auth(cluster, "test2:tester2", "testing2")
    async with aiohttp.ClientSession() as s:
        for c in ("copy-src", "copy-dst"):
            assert (await call(s, "PUT", f"{url}/{c}", token))[0] in (201, 202)
        assert (await call(s, "PUT", url + "/copy-src/a%20b", token,
                           {"X-Object-Meta-Kind": "orig"}, data=b"payload"))[0] == 201
        # leading slash and URL-encoded names
        status, h, _ = await call(s, "COPY", url + "/copy-src/a%20b", token,
                                  {"Destination": "/copy-dst/n%C3%A9w%20name"})
        assert status == 201
        assert h["X-Copied-From"] == "copy-src/a%20b"
        status, h, body = await call(s, "GET", url + "/copy-dst/n%C3%A9w%20name", token)
        assert status == 200 and body == b"payload" and h["X-Object-Meta-Kind"] == "orig"
        # without a slash, and not encoded
        assert (await call(s, "COPY", url + "/copy-src/a%20b", token,
                           {"Destination": "copy-dst/plain"}))[0] == 201
        assert (await call(s, "GET", url + "/copy-dst/plain", token))[2] == b"payload"
        # bad Destination forms: 412
        for bad in ("copy-dst", "/copy-dst/", "/"):
            assert (await call(s, "COPY", url + "/copy-src/a%20b", token,
                               {"Destination": bad}))[0] == 412, bad
        # Destination-Account: into another account (the caller may write there)
        assert (await call(s, "PUT", url2 + "/inbox", token2))[0] in (201, 202)
        status, h, _ = await call(s, "COPY", admin_url.replace("AUTH_admin", "AUTH_test")
                                  + "/copy-src/a%20b", admin_token,
                                  {"Destination": "/inbox/from-test",
                                   "Destination-Account": "AUTH_test2"})
        assert status == 201 and h["X-Copied-From-Account"] == "AUTH_test"
        status, _, body = await call(s, "GET", url2 + "/inbox/from-test", token2)
        assert status == 200 and body == b"payload"
        # ... and a caller without write access there is refused, nothing is written
        status, _, _ = await call(s, "COPY", url + "/copy-src/a%20b", token,
                                  {"Destination": "/inbox/sneaky",
                                   "Destination-Account": "AUTH_test2"})
        assert status == 403
        assert (await call(s, "HEAD", url2 + "/inbox/sneaky", token2))[0] == 404

    # python-swiftclient's copy_object sends an encoded Destination with a leading slash
    def swiftclient_copy() -> bytes:
        conn = swiftclient.Connection(authurl=cluster.auth_url, user="test:tester",
                                      key="testing", retries=0)
        conn.copy_object("copy-src", "a b", destination="/copy-dst/sc copy ü")
        return conn.get_object("copy-dst", "sc copy ü")[1]

    assert await asyncio.to_thread(swiftclient_copy) == b"payload"


async def test_storage_policy_is_reported_and_checked(cluster):
    """swift list --long reads X-Storage-Policy (it printed ??? without it); an account
    with containers reports per-policy counts; an unknown policy name is 400 (Swift's
    answer), the one we have is accepted in any case."""
    url, token = await auth(cluster)
    async with aiohttp.ClientSession() as s:
        status, _, body = await call(s, "PUT", f"{url}/pol-bad", token,
                                     {"X-Storage-Policy": "nonexistent"})
        assert status == 400 and b"X-Storage-Policy" in body
        status, _, _ = await call(s, "HEAD", f"{url}/pol-bad", token)
        assert status == 404
        status, _, _ = await call(s, "PUT", f"{url}/pol-ok", token,
                                  {"X-Storage-Policy": "policy-0"})
        assert status in (201, 202)
        await call(s, "PUT", f"{url}/pol-ok/o", token, data=b"12345")
        status, headers, _ = await call(s, "HEAD", f"{url}/pol-ok", token)
        assert status == 204 and headers["X-Storage-Policy"] == "Policy-0"
        status, headers, _ = await call(s, "HEAD", url, token)
        prefix = "X-Account-Storage-Policy-Policy-0-"
        for what in ("Container-Count", "Object-Count", "Bytes-Used"):
            assert headers[prefix + what] == headers[f"X-Account-{what}"], what
