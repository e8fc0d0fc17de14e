"""Security (tokens, ACLs, no leaks) and fault tolerance (dead node, broken GET body)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import aiohttp
import pytest

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def auth(cluster, user, key) -> tuple[str, str]:
    async with aiohttp.ClientSession() as s, s.get(
            cluster.auth_url, headers={"X-Auth-User": user, "X-Auth-Key": key}) as r:
        assert r.status == 200
        assert int(r.headers["X-Auth-Token-Expires"]) > 0
        return r.headers["X-Storage-Url"], r.headers["X-Auth-Token"]


async def status(s, method, url, token=None, **kwargs) -> tuple[int, bytes]:
    headers = dict(kwargs.pop("headers", {}))
    if token:
        headers["X-Auth-Token"] = token
    async with s.request(method, url, headers=headers, **kwargs) as r:
        return r.status, await r.read()


async def test_auth_rejects_bad_credentials_and_forged_tokens(cluster):
    async with aiohttp.ClientSession() as s:
        for user, key in (("test:tester", "wrong"), ("nobody:x", "testing"), ("test", "")):
            async with s.get(cluster.auth_url, headers={"X-Auth-User": user,
                                                        "X-Auth-Key": key}) as r:
                assert r.status == 401
        url, token = await auth(cluster, "test:tester", "testing")
        assert (await status(s, "HEAD", url, token))[0] in (200, 204)
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        for bad in (forged, "AUTH_tkdeadbeef", token + "x"):
            code, body = await status(s, "GET", url, bad)
            assert code == 401
            assert token.encode() not in body
        code, _ = await status(s, "GET", url)
        assert code == 401
        # the Swift all-in-one default users exist; admin:admin is a reseller admin
        aurl, atoken = await auth(cluster, "admin:admin", "admin")
        assert aurl.endswith("/v1/AUTH_admin")
        assert (await status(s, "GET", url, atoken))[0] in (200, 204)


async def test_expired_token_is_401(cluster, tmp_path):
    from swiftlike.proxy.tempauth import TokenSigner, parse_users
    users = parse_users({"test:tester": "testing .admin"})
    import time
    expired = TokenSigner(b"test-secret").make(users["test:tester"], time.time() - 5)
    fresh = TokenSigner(b"test-secret").make(users["test:tester"], time.time() + 60)
    async with aiohttp.ClientSession() as s:
        url = cluster.url + "/v1/AUTH_test"
        assert (await status(s, "GET", url, expired))[0] == 401
        # a token signed by another process with the shared secret works here
        assert (await status(s, "GET", url, fresh))[0] in (200, 204)


async def test_accounts_are_isolated_without_acls(cluster):
    url1, tok1 = await auth(cluster, "test:tester", "testing")
    url2, tok2 = await auth(cluster, "test2:tester2", "testing2")
    _url3, tok3 = await auth(cluster, "test:tester3", "testing3")
    async with aiohttp.ClientSession() as s:
        assert (await status(s, "PUT", url1 + "/private", tok1))[0] in (201, 202)
        assert (await status(s, "PUT", url1 + "/private/secret", tok1,
                             data=b"top secret"))[0] == 201
        for method, path in (("GET", ""), ("HEAD", ""), ("GET", "/private"),
                             ("GET", "/private/secret"), ("HEAD", "/private/secret"),
                             ("PUT", "/private/x"), ("DELETE", "/private/secret"),
                             ("POST", "/private/secret"), ("PUT", "/newcont"),
                             ("POST", "")):
            for tok in (tok2, tok3):
                code, body = await status(s, method, url1 + path, tok, data=b"")
                assert code == 403, (method, path, code)
                assert b"secret" not in body and b"private" not in body
        # anonymous: 401, nothing leaks
        code, body = await status(s, "GET", url1 + "/private/secret")
        assert code == 401 and b"top secret" not in body
        # a non-admin user cannot set ACLs, the owner can
        assert (await status(s, "POST", url1 + "/private", tok3,
                             headers={"X-Container-Read": "test2:tester2"}))[0] == 403
        assert (await status(s, "POST", url1 + "/private", tok1,
                             headers={"X-Container-Read": "test2:tester2"}))[0] == 204
        await asyncio.sleep(0)
        code, body = await status(s, "GET", url1 + "/private/secret", tok2)
        assert code == 200 and body == b"top secret"
        code, body = await status(s, "GET", url1 + "/private", tok2)
        assert code == 200 and b"secret" in body  # a group in the read ACL may list
        assert (await status(s, "PUT", url1 + "/private/w", tok2, data=b"x"))[0] == 403
        # the non-owner does not see the ACL headers
        async with s.head(url1 + "/private", headers={"X-Auth-Token": tok2}) as r:
            assert "X-Container-Read" not in r.headers
        # write ACL lets test:tester3 write objects but not change the container
        assert (await status(s, "POST", url1 + "/private", tok1,
                             headers={"X-Container-Write": "test:tester3"}))[0] == 204
        assert (await status(s, "PUT", url1 + "/private/w", tok3, data=b"x"))[0] == 201
        assert (await status(s, "DELETE", url1 + "/private", tok3))[0] == 403
        # invalid ACL -> 400
        assert (await status(s, "POST", url1 + "/private", tok1,
                             headers={"X-Container-Write": ".r:*"}))[0] == 400
        # public read: .r:* without .rlistings lets anyone GET objects but not list
        assert (await status(s, "POST", url1 + "/private", tok1,
                             headers={"X-Container-Read": ".r:*"}))[0] == 204
        code, body = await status(s, "GET", url1 + "/private/secret")
        assert code == 200 and body == b"top secret"
        assert (await status(s, "GET", url1 + "/private"))[0] == 401
        # account listings of test2 never show test's containers
        async with s.get(url2, headers={"X-Auth-Token": tok2}) as r:
            assert b"private" not in await r.read()


async def test_get_resumes_from_another_node_when_body_breaks(ring_read_order):
    cluster = ring_read_order  # the cut is armed on the first primary: ask it first
    url, token = await auth(cluster, "test:tester", "testing")
    data = os.urandom(3 * 1024 * 1024)
    async with aiohttp.ClientSession() as s:
        assert (await status(s, "PUT", url + "/resume", token))[0] in (201, 202)
        assert (await status(s, "PUT", url + "/resume/big", token, data=data))[0] == 201
        ctx = cluster.proxy_app[_context_key()]
        ring = ctx.ring
        _, nodes = ring.get_nodes("AUTH_test", "resume", "big")
        first = next(f for f in cluster.faults if f.port == nodes[0]["port"])
        first.arm_cut(1024 * 1024 + 123)
        code, body = await status(s, "GET", url + "/resume/big", token)
        assert first.cuts == 1, "the relay did not cut the first node's response"
        assert code == 200
        assert hashlib.md5(body).hexdigest() == hashlib.md5(data).hexdigest()
        # a ranged GET resumes inside its range too
        first.arm_cut(700000)
        code, body = await status(s, "GET", url + "/resume/big", token,
                                  headers={"Range": "bytes=100000-2999999"})
        assert first.cuts == 2
        assert code == 206 and body == data[100000:3000000]


async def test_node_down_puts_use_handoffs_and_gets_return_right_bytes(cluster):
    url, token = await auth(cluster, "test:tester", "testing")
    payloads = {f"obj{i}": os.urandom(1000 + i * 50000) for i in range(8)}
    async with aiohttp.ClientSession() as s:
        assert (await status(s, "PUT", url + "/ha", token))[0] in (201, 202)
        await cluster.faults[0].set_down(True)
        try:
            for name, data in payloads.items():
                async with s.put(url + "/ha/" + name, data=data,
                                 headers={"X-Auth-Token": token}) as r:
                    assert r.status == 201, await r.text()
                    assert r.headers["ETag"] == hashlib.md5(data).hexdigest()
            for name, data in payloads.items():
                code, body = await status(s, "GET", url + "/ha/" + name, token)
                assert code == 200 and body == data
        finally:
            await cluster.faults[0].set_down(False)
        # back up: still right bytes (from whichever node has them)
        for name, data in payloads.items():
            code, body = await status(s, "GET", url + "/ha/" + name, token)
            assert code == 200 and body == data


async def test_a_stalled_node_does_not_hold_writes_for_its_timeout(cluster):
    """One node takes connections and never answers (as when stopped): writes answer
    once a quorum has (plus post_quorum_timeout), not after the node timeout, and what
    they wrote reads back. The stalled node holds neither the account nor the container:
    a read asks one node at a time and waits for it, as Swift's does, until the node is
    error-limited."""
    url, token = await auth(cluster, "test:tester", "testing")
    node_timeout = cluster.conf["proxy"]["node_timeout"]
    ring = cluster.proxy_app[_context_key()].ring

    def ports(*names: str) -> set[int]:
        return {n["port"] for n in ring.get_nodes(*names)[1]}

    # a node that holds neither the account nor the container (reads of their info
    # would wait for it), but some objects
    container, fault = next(
        (c, f) for c in (f"stall-{i}" for i in range(100)) for f in cluster.faults
        if f.port not in ports("AUTH_test") | ports("AUTH_test", c))
    names = [name for name in (f"obj-{i}" for i in range(100))
             if fault.port in ports("AUTH_test", container, name)][:2]
    async with aiohttp.ClientSession() as s:
        assert (await status(s, "PUT", f"{url}/{container}", token))[0] in (201, 202)
        fault.stalled = True
        fault.kill_connections()  # pooled connections would still answer
        try:
            # buffered bodies: a streamed PUT waits for each node to take its body, as
            # Swift's waits for 100-continue, so a stalled node costs it the timeout
            for name, data in zip(names, (b"s" * 100, os.urandom(60_000)), strict=True):
                started = time.monotonic()
                async with s.put(f"{url}/{container}/{name}", data=data,
                                 headers={"X-Auth-Token": token}) as r:
                    assert r.status == 201, await r.text()
                assert time.monotonic() - started < node_timeout / 2, name
                code, body = await status(s, "GET", f"{url}/{container}/{name}", token)
                assert code == 200 and body == data
            for method, expected in (("POST", 202), ("DELETE", 204)):
                started = time.monotonic()
                assert (await status(s, method, f"{url}/{container}/{names[0]}", token))[0] \
                    == expected
                assert time.monotonic() - started < node_timeout / 2, method
        finally:
            fault.stalled = False
            fault.kill_connections()


def _context_key():
    from swiftlike.proxy.server import CONTEXT_KEY
    return CONTEXT_KEY


async def test_account_acls(cluster):
    url2, tok2 = await auth(cluster, "test2:tester2", "testing2")  # owner of AUTH_test2
    _, tok1 = await auth(cluster, "test:tester", "testing")
    _, tok3 = await auth(cluster, "test:tester3", "testing3")
    async with aiohttp.ClientSession() as s:
        assert (await status(s, "PUT", url2 + "/shared", tok2))[0] in (201, 202)
        assert (await status(s, "PUT", url2 + "/shared/o", tok2, data=b"v1"))[0] == 201
        # invalid ACL JSON -> 400; a stranger cannot set one
        assert (await status(s, "POST", url2, tok2,
                             headers={"X-Account-Access-Control": "{bad"}))[0] == 400
        assert (await status(s, "POST", url2, tok2, headers={
            "X-Account-Access-Control": '{"bogus": []}'}))[0] == 400
        acl = '{"read-only": ["test:tester3"], "read-write": ["test:tester"]}'
        assert (await status(s, "POST", url2, tok3,
                             headers={"X-Account-Access-Control": acl}))[0] == 403
        assert (await status(s, "POST", url2, tok2,
                             headers={"X-Account-Access-Control": acl}))[0] == 204
        # read-only: list and read, no writes
        assert (await status(s, "GET", url2, tok3))[0] == 200
        code, body = await status(s, "GET", url2 + "/shared/o", tok3)
        assert code == 200 and body == b"v1"
        assert (await status(s, "PUT", url2 + "/shared/o", tok3, data=b"no"))[0] == 403
        # read-write: objects and containers, but no ACL or account changes: an ACL
        # header from it is dropped unheard, as Swift does (the rest applies)
        assert (await status(s, "PUT", url2 + "/shared/o", tok1, data=b"v2"))[0] == 201
        assert (await status(s, "PUT", url2 + "/rw-made", tok1,
                             headers={"X-Container-Read": ".r:*"}))[0] in (201, 202)
        assert (await status(s, "POST", url2 + "/shared", tok1, headers={
            "X-Container-Read": ".r:*", "X-Container-Meta-Tag": "rw"}))[0] == 204
        for name in ("shared", "rw-made"):
            async with s.head(f"{url2}/{name}", headers={"X-Auth-Token": tok2}) as r:
                assert "X-Container-Read" not in r.headers
                assert r.headers.get("X-Container-Meta-Tag") == ("rw" if name == "shared"
                                                                 else None)
        assert (await status(s, "POST", url2, tok1,
                             headers={"X-Account-Meta-X": "y"}))[0] == 403
        # non-owners do not see the account ACL itself
        async with s.head(url2, headers={"X-Auth-Token": tok3}) as r:
            assert "X-Account-Access-Control" not in r.headers
        async with s.head(url2, headers={"X-Auth-Token": tok2}) as r:
            assert "tester3" in r.headers["X-Account-Access-Control"]
