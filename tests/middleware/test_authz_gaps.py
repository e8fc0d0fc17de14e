"""Authorization holes a security pass found, each driven as the attacker would.

- ``/v1.0/`` is the same API as ``/v1/`` (Swift accepts both) and must be as guarded.
- A temp URL that writes may not make a symlink or a DLO: a GET temp URL of the upload
  would otherwise read whatever it points at.
- Owner-only container settings (temp URL keys, sync target and key) are neither set by
  nor shown to users who are not the owner, whatever the path that answers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import swiftclient

from tests.middleware.helpers import Account

SECRET = b"owner's eyes only"


def user(swift_cluster, name: str, key: str) -> Account:
    url, token = swiftclient.get_auth(swift_cluster.auth_url, name, key)
    return Account(url, token, swift_cluster.auth_url, name, key)


def temp_url(path: str, method: str, key: str) -> str:
    expires = int(time.time()) + 300
    body = f"{method}\n{expires}\n{path}".encode()
    sig = hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
    return f"{path}?temp_url_sig={sig}&temp_url_expires={expires}"


async def test_v1_0_paths_are_authorized_like_v1(swift_cluster, account, unique_name,
                                                 http) -> None:
    conn = account.conn()
    conn.put_container(unique_name)
    conn.put_object(unique_name, "secret", SECRET)
    base = swift_cluster.proxy_url + account.path.replace("/v1/", "/v1.0/", 1)
    for method, path in (("GET", f"/{unique_name}/secret"), ("GET", ""),
                         ("HEAD", f"/{unique_name}"), ("PUT", f"/{unique_name}/planted"),
                         ("DELETE", f"/{unique_name}/secret"),
                         ("POST", "")):
        async with http.request(method, base + path, data=b"x" if method == "PUT" else None,
                                headers={"X-Account-Access-Control": "{}"}) as resp:
            body = await resp.read()
            assert resp.status == 401, (method, path, resp.status)
            assert SECRET not in body
    assert conn.get_object(unique_name, "secret")[1] == SECRET
    # with a token /v1.0/ works, as in Swift
    async with http.get(f"{base}/{unique_name}/secret", headers=account.headers()) as resp:
        assert resp.status == 200 and await resp.read() == SECRET


async def test_write_temp_urls_cannot_make_links_or_manifests(swift_cluster, account,
                                                              unique_name, http) -> None:
    conn = account.conn()
    key = "tempurl-key-" + unique_name
    conn.put_container(f"{unique_name}-priv")
    conn.put_object(f"{unique_name}-priv", "secret", SECRET)
    conn.put_container(unique_name, headers={"X-Container-Meta-Temp-URL-Key": key})
    conn.put_object(unique_name, "upload", b"mine")
    path = f"{account.path}/{unique_name}/upload"
    root = swift_cluster.proxy_url
    for method, header, value in (
            ("PUT", "X-Symlink-Target", f"{unique_name}-priv/secret"),
            ("PUT", "X-Object-Manifest", f"{unique_name}-priv/sec"),
            ("POST", "X-Object-Manifest", f"{unique_name}-priv/sec"),
            ("POST", "X-Symlink-Target", f"{unique_name}-priv/secret")):
        async with http.request(method, root + temp_url(path, method, key),
                                data=b"" if method == "PUT" else None,
                                headers={header: value}) as resp:
            assert resp.status == 400, (method, header, resp.status)
    async with http.get(root + temp_url(path, "GET", key)) as resp:
        assert resp.status == 200 and await resp.read() == b"mine"


async def test_non_owners_neither_set_nor_see_owner_only_container_settings(
        swift_cluster, account, unique_name, http) -> None:
    conn = account.conn()
    tester3 = user(swift_cluster, "test:tester3", "testing3")
    conn.put_container(unique_name, headers={"X-Container-Meta-Temp-URL-Key": "owners",
                                             "X-Versions-Enabled": "true"})
    conn.put_object(unique_name, "doc", b"doc")
    owner_only = ("X-Container-Meta-Temp-URL-Key", "X-Container-Meta-Temp-URL-Key-2",
                  "X-Container-Sync-Key", "X-Container-Sync-To")
    conn.post_account(headers={"X-Account-Access-Control": json.dumps(
        {"read-write": ["test:tester3"]})})
    try:
        url = f"{account.url}/{unique_name}"
        async with http.post(url, headers=tester3.headers(**{
                "X-Container-Meta-Temp-URL-Key": "planted",
                "X-Container-Meta-Temp-URL-Key-2": "planted",
                "X-Container-Sync-To": "//evil/cluster/AUTH_x/c",
                "X-Container-Sync-Key": "planted",
                "X-Container-Meta-Color": "blue"})) as resp:
            assert resp.status == 204
        async with http.put(f"{url}-new", headers=tester3.headers(**{
                "X-Container-Meta-Temp-URL-Key": "planted"})) as resp:
            assert resp.status in (201, 202)
        headers = conn.head_container(unique_name)
        assert headers["x-container-meta-color"] == "blue"  # the rest of the POST applied
        assert headers["x-container-meta-temp-url-key"] == "owners"
        for name in ("x-container-meta-temp-url-key-2", "x-container-sync-key",
                     "x-container-sync-to"):
            assert name not in headers
        assert "x-container-meta-temp-url-key" not in conn.head_container(f"{unique_name}-new")
        # and what a non-owner reads never shows them, the versions listing included
        for query in ("", "?versions", "?format=json"):
            async with http.get(url + query, headers=tester3.headers()) as resp:
                assert resp.status in (200, 204), (query, resp.status)
                shown = {k.lower() for k in resp.headers}
                assert not shown & {h.lower() for h in owner_only}, (query, shown)
    finally:
        conn.post_account(headers={"X-Account-Access-Control": "{}"})


async def test_a_container_made_again_does_not_inherit_the_old_ones_settings(
        account, unique_name, http) -> None:
    """Deleting a container deletes its ACLs and metadata: one created again under the
    name starts private and bare, as in Swift."""
    conn = account.conn()
    conn.put_container(unique_name, headers={"X-Container-Read": ".r:*,.rlistings",
                                             "X-Container-Meta-Secret": "old"})
    conn.delete_container(unique_name)
    conn.put_container(unique_name)
    conn.put_object(unique_name, "private", SECRET)
    headers = conn.head_container(unique_name)
    assert "x-container-read" not in headers
    assert "x-container-meta-secret" not in headers
    async with http.get(f"{account.url}/{unique_name}/private") as resp:
        assert resp.status == 401 and SECRET not in await resp.read()
    async with http.get(f"{account.url}/{unique_name}") as resp:
        assert resp.status == 401
