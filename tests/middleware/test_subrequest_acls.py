"""Reads that go through a symlink, an SLO or a DLO are authorized on their own targets.

The link, manifest or listing being readable (a public container, a container ACL, an
account ACL) says nothing about the objects it points at: every target is checked
against its own container's ACL and its own account, as in Swift.
"""

from __future__ import annotations

import json

import pytest
import swiftclient

from tests.middleware.helpers import Account

SECRET = b"private bytes, never to leak"


def other_account(swift_cluster, user: str, key: str) -> Account:
    url, token = swiftclient.get_auth(swift_cluster.auth_url, user, key)
    return Account(url, token, swift_cluster.auth_url, user, key)


@pytest.fixture
def private_object(account, unique_name) -> str:
    """``<name>-priv/secret`` in AUTH_test, in a container with no ACL."""
    conn = account.conn()
    conn.put_container(f"{unique_name}-priv")
    conn.put_object(f"{unique_name}-priv", "secret", SECRET)
    return f"{unique_name}-priv/secret"


async def assert_not_leaked(http, url: str, headers: dict[str, str], expected: set[int]):
    async with http.get(url, headers=headers) as resp:
        body = await resp.read()
        assert SECRET not in body, (resp.status, url)
        assert resp.status in expected, (resp.status, body[:200])


async def test_symlink_in_public_container_does_not_open_a_private_target(
        account, unique_name, private_object, http) -> None:
    conn = account.conn()
    conn.put_container(f"{unique_name}-pub", headers={"X-Container-Read": ".r:*"})
    conn.put_object(f"{unique_name}-pub", "link", b"",
                    headers={"X-Symlink-Target": private_object})
    conn.put_object(f"{unique_name}-pub", "open", b"public")
    base = f"{account.url}/{unique_name}-pub"
    async with http.get(f"{base}/open") as resp:
        assert resp.status == 200  # the container really is public
    await assert_not_leaked(http, f"{base}/link", {}, {401})
    # the owner still follows it
    async with http.get(f"{base}/link", headers=account.headers()) as resp:
        assert resp.status == 200 and await resp.read() == SECRET


async def test_container_acl_user_cannot_read_through_own_symlink(
        swift_cluster, account, unique_name, private_object, http) -> None:
    conn = account.conn()
    conn.put_container(f"{unique_name}-shared", headers={
        "X-Container-Read": "test:tester3", "X-Container-Write": "test:tester3"})
    tester3 = other_account(swift_cluster, "test:tester3", "testing3")
    shared = f"{account.url}/{unique_name}-shared"
    async with http.put(f"{shared}/link", data=b"", headers=tester3.headers(**{
            "X-Symlink-Target": private_object})) as resp:
        assert resp.status == 201
    async with http.get(f"{account.url}/{private_object}",
                        headers=tester3.headers()) as resp:
        assert resp.status == 403
    await assert_not_leaked(http, f"{shared}/link", tester3.headers(), {403})


async def test_cross_account_symlink_does_not_open_a_private_target(
        swift_cluster, account, unique_name, private_object, http) -> None:
    test2 = other_account(swift_cluster, "test2:tester2", "testing2")
    conn = test2.conn()
    conn.put_container(f"{unique_name}-pub2", headers={"X-Container-Read": ".r:*"})
    conn.put_object(f"{unique_name}-pub2", "link", b"", headers={
        "X-Symlink-Target": private_object,
        "X-Symlink-Target-Account": account.path.rsplit("/", 1)[1]})
    await assert_not_leaked(http, f"{test2.url}/{unique_name}-pub2/link", {}, {401})
    # test2 itself has no rights in AUTH_test either
    await assert_not_leaked(http, f"{test2.url}/{unique_name}-pub2/link",
                            test2.headers(), {403})


async def test_account_acl_of_the_link_does_not_reach_another_account(
        swift_cluster, account, unique_name, private_object, http) -> None:
    test2 = other_account(swift_cluster, "test2:tester2", "testing2")
    tester3 = other_account(swift_cluster, "test:tester3", "testing3")
    conn = test2.conn()
    conn.put_container(f"{unique_name}-links")
    conn.put_object(f"{unique_name}-links", "link", b"", headers={
        "X-Symlink-Target": private_object,
        "X-Symlink-Target-Account": account.path.rsplit("/", 1)[1]})
    conn.put_object(f"{unique_name}-links", "plain", b"readable")
    conn.post_account(headers={"X-Account-Access-Control": json.dumps(
        {"read-only": ["test:tester3"]})})
    try:
        base = f"{test2.url}/{unique_name}-links"
        async with http.get(f"{base}/plain", headers=tester3.headers()) as resp:
            assert resp.status == 200  # the account ACL works where it is set
        await assert_not_leaked(http, f"{base}/link", tester3.headers(), {403})
    finally:
        conn.post_account(headers={"X-Account-Access-Control": "{}"})


async def test_public_slo_does_not_serve_a_private_segment(
        swift_cluster, account, unique_name, private_object, http) -> None:
    conn = account.conn()
    conn.put_container(f"{unique_name}-pub", headers={"X-Container-Read": ".r:*"})
    manifest = json.dumps([{"path": f"/{private_object}"}])
    conn.put_object(f"{unique_name}-pub", "slo", manifest,
                    query_string="multipart-manifest=put")
    url = f"{account.url}/{unique_name}-pub/slo"
    async with http.get(url, headers=account.headers()) as resp:
        assert resp.status == 200 and await resp.read() == SECRET
    await assert_not_leaked(http, url, {}, {401, 409})
    tester3 = other_account(swift_cluster, "test:tester3", "testing3")
    await assert_not_leaked(http, url, tester3.headers(), {403, 409})


async def test_public_dlo_does_not_serve_private_segments(
        account, unique_name, private_object, http) -> None:
    conn = account.conn()
    conn.put_container(f"{unique_name}-pub", headers={
        "X-Container-Read": ".r:*,.rlistings"})
    conn.put_object(f"{unique_name}-pub", "dlo", b"", headers={
        "X-Object-Manifest": f"{unique_name}-priv/sec"})
    url = f"{account.url}/{unique_name}-pub/dlo"
    async with http.get(url, headers=account.headers()) as resp:
        assert resp.status == 200 and await resp.read() == SECRET
    async with http.get(url) as resp:
        body = await resp.read()
        assert SECRET not in body
        assert resp.status != 200 or body == b"", resp.status
