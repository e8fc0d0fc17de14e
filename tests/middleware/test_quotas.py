"""Container and account quotas through a real cluster (python-swiftclient + aiohttp)."""

from __future__ import annotations

import asyncio
import time

import pytest
import swiftclient
from swiftclient import ClientException

from tests.middleware.helpers import Account


async def test_info_advertises_quotas(swift_cluster, http) -> None:
    async with http.get(swift_cluster.proxy_url + "/info") as resp:
        info = await resp.json()
    assert info["container_quotas"] == {}
    assert info["account_quotas"] == {}


def test_container_quota_bytes_and_count(account: Account, unique_name: str) -> None:
    conn = account.conn()
    conn.put_container(unique_name, headers={"X-Container-Meta-Quota-Bytes": "100",
                                             "X-Container-Meta-Quota-Count": "3"})
    conn.put_object(unique_name, "a", b"x" * 60)
    with pytest.raises(ClientException) as err:
        conn.put_object(unique_name, "b", b"x" * 41)
    assert err.value.http_status == 413
    assert err.value.http_response_content == b"Upload exceeds quota."
    # a chunked upload (no Content-Length) is counted as it streams
    with pytest.raises(ClientException) as err:
        conn.put_object(unique_name, "chunked", iter([b"x" * 30, b"x" * 30]))
    assert err.value.http_status == 413
    conn.put_object(unique_name, "b", b"x" * 40)  # exactly at the quota is fine
    conn.post_container(unique_name, headers={"X-Container-Meta-Quota-Bytes": ""})
    conn.put_object(unique_name, "c", b"x")
    with pytest.raises(ClientException) as err:
        conn.put_object(unique_name, "d", b"x")
    assert err.value.http_status == 413
    names = [o["name"] for o in conn.get_container(unique_name)[1]]
    assert names == ["a", "b", "c"]


def test_copy_into_full_container_is_refused(account: Account, unique_name: str) -> None:
    conn = account.conn()
    conn.put_container(unique_name + "-src")
    conn.put_object(unique_name + "-src", "big", b"y" * 50)
    conn.put_container(unique_name, headers={"X-Container-Meta-Quota-Bytes": "20"})
    with pytest.raises(ClientException) as err:
        conn.put_object(unique_name, "copy", b"", headers={
            "X-Copy-From": f"/{unique_name}-src/big", "Content-Length": "0"})
    assert err.value.http_status == 413
    with pytest.raises(ClientException) as err:
        conn.copy_object(unique_name + "-src", "big", destination=f"/{unique_name}/copy2")
    assert err.value.http_status == 413
    assert conn.get_container(unique_name)[1] == []


def test_invalid_container_quota_values(account: Account, unique_name: str) -> None:
    conn = account.conn()
    for header in ("X-Container-Meta-Quota-Bytes", "X-Container-Meta-Quota-Count"):
        with pytest.raises(ClientException) as err:
            conn.put_container(unique_name, headers={header: "lots"})
        assert err.value.http_status == 400


@pytest.fixture
def reseller(swift_cluster) -> Account:
    url, token = swiftclient.get_auth(swift_cluster.auth_url, "admin:admin", "admin")
    return Account(url, token, swift_cluster.auth_url, "admin:admin", "admin")


def reseller_on(account: Account, reseller: Account) -> swiftclient.Connection:
    """The reseller admin, acting on ``account`` (which only it may give a quota)."""
    return swiftclient.Connection(preauthurl=account.url, preauthtoken=reseller.token,
                                  retries=0)


@pytest.fixture
def other_account(swift_cluster) -> Account:
    """test2's account, so a quota never gets in the way of other tests in AUTH_test."""
    url, token = swiftclient.get_auth(swift_cluster.auth_url, "test2:tester2", "testing2")
    return Account(url, token, swift_cluster.auth_url, "test2:tester2", "testing2")


async def wait_for_bytes(conn: swiftclient.Connection, at_least: int) -> int:
    return await wait_for_stat(conn, "x-account-bytes-used", at_least)


async def wait_for_stat(conn: swiftclient.Connection, header: str, at_least: int) -> int:
    """Account stats follow object writes within about a second; wait for them."""
    deadline = time.monotonic() + 15
    while True:
        value = int(conn.head_account()[header])
        if value >= at_least or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.2)


async def test_account_quota_set_only_by_reseller_and_enforced(
        reseller: Account, other_account: Account, unique_name: str) -> None:
    owner = other_account.conn()
    with pytest.raises(ClientException) as err:
        owner.post_account(headers={"X-Account-Meta-Quota-Bytes": "10"})
    assert err.value.http_status == 403
    admin = reseller_on(other_account, reseller)
    with pytest.raises(ClientException) as err:
        admin.post_account(headers={"X-Account-Meta-Quota-Bytes": "ten"})
    assert err.value.http_status == 400
    owner.put_container(unique_name)
    used = await wait_for_bytes(owner, 0)
    admin.post_account(headers={"X-Account-Meta-Quota-Bytes": str(used + 100)})
    try:
        assert owner.head_account()["x-account-meta-quota-bytes"] == str(used + 100)
        owner.put_object(unique_name, "fits", b"z" * 80)
        with pytest.raises(ClientException) as err:
            owner.put_object(unique_name, "too-big", b"z" * 101)
        assert err.value.http_status == 413
        assert err.value.http_response_content == b"Upload exceeds quota."
        await wait_for_bytes(owner, used + 80)
        with pytest.raises(ClientException) as err:
            owner.put_object(unique_name, "second", b"z" * 30)
        assert err.value.http_status == 413
        # the owner cannot lift the quota either
        with pytest.raises(ClientException) as err:
            owner.post_account(headers={"X-Remove-Account-Meta-Quota-Bytes": "x"})
        assert err.value.http_status == 403
    finally:
        admin.post_account(headers={"X-Remove-Account-Meta-Quota-Bytes": "x"})
    owner.put_object(unique_name, "second", b"z" * 30)


async def wait_for_count(conn: swiftclient.Connection, at_least: int) -> int:
    return await wait_for_stat(conn, "x-account-object-count", at_least)


async def test_account_quota_headers_of_current_swift(
        reseller: Account, other_account: Account, unique_name: str) -> None:
    """X-Account-Quota-Bytes / -Count (Swift 2.38's names): set by a reseller only, kept
    where no user header reaches, shown on the account, and enforced."""
    owner = other_account.conn()
    for header in ("X-Account-Quota-Bytes", "X-Account-Quota-Count",
                   "X-Remove-Account-Quota-Count"):
        with pytest.raises(ClientException) as err:
            owner.post_account(headers={header: "10"})
        assert err.value.http_status == 403
    admin = reseller_on(other_account, reseller)
    with pytest.raises(ClientException) as err:
        admin.post_account(headers={"X-Account-Quota-Count": "-1"})
    assert err.value.http_status == 400
    owner.put_container(unique_name)
    count = await wait_for_count(owner, 0)
    used = await wait_for_bytes(owner, 0)
    admin.post_account(headers={"X-Account-Quota-Count": str(count + 1),
                                "X-Account-Quota-Bytes": str(used + 1000)})
    try:
        headers = owner.head_account()
        assert headers["x-account-quota-count"] == str(count + 1)
        assert headers["x-account-quota-bytes"] == str(used + 1000)
        assert not any("sysmeta" in name for name in headers)
        owner.put_object(unique_name, "one", b"z")
        await wait_for_count(owner, count + 1)
        with pytest.raises(ClientException) as err:
            owner.put_object(unique_name, "two", b"z")
        assert err.value.http_status == 413
        with pytest.raises(ClientException) as err:
            owner.put_object(unique_name, "one", b"z" * 2000)  # over the bytes as well
        assert err.value.http_status == 413
    finally:
        admin.post_account(headers={"X-Remove-Account-Quota-Count": "x",
                                    "X-Remove-Account-Quota-Bytes": "x"})
    assert "x-account-quota-count" not in owner.head_account()
    owner.put_object(unique_name, "two", b"z")
