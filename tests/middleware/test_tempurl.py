"""Temporary URLs through a real cluster, signed with python-swiftclient's generate_temp_url."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import aiohttp
import pytest
from swiftclient.utils import generate_temp_url

from tests.middleware.helpers import Account, swift_cli


@pytest.fixture
def container_with_key(account: Account, unique_name: str) -> tuple[str, str]:
    """A container with its own Temp-URL key and an object ``obj`` in it."""
    key = f"ckey-{unique_name}"
    conn = account.conn()
    conn.put_container(unique_name, headers={"X-Container-Meta-Temp-URL-Key": key})
    conn.put_object(unique_name, "obj", b"temp url body", headers={
        "X-Object-Meta-Secret": "hidden", "X-Object-Meta-Public-Color": "blue",
        "Content-Type": "text/plain"})
    return unique_name, key


def url_for(cluster, signed: str) -> str:
    return cluster.proxy_url + signed


async def test_info_advertises_tempurl(swift_cluster, http: aiohttp.ClientSession) -> None:
    async with http.get(swift_cluster.proxy_url + "/info") as resp:
        info = await resp.json()
    section = info["tempurl"]
    assert section["methods"] == ["GET", "HEAD", "PUT", "POST", "DELETE"]
    # Swift 2.38's defaults: sha1 allowed, and flagged as deprecated
    assert section["allowed_digests"] == ["sha1", "sha256", "sha512"]
    assert section["deprecated_digests"] == ["sha1"]
    assert section["outgoing_remove_headers"] == ["x-object-meta-*"]
    assert section["outgoing_allow_headers"] == ["x-object-meta-public-*"]
    assert section["incoming_remove_headers"] == ["x-timestamp", "x-open-expired"]


async def test_account_key_set_by_swift_post(swift_cluster, account: Account,
                                             unique_name: str, http) -> None:
    key = f"akey-{unique_name}"
    swift_cli(account, "post", "-m", f"Temp-URL-Key-2:{key}")
    conn = account.conn()
    conn.put_container(unique_name)
    conn.put_object(unique_name, "o", b"account-key")
    path = f"{account.path}/{unique_name}/o"
    signed = generate_temp_url(path, 60, key, "GET")
    async with http.get(url_for(swift_cluster, signed)) as resp:
        assert resp.status == 200
        assert await resp.read() == b"account-key"
        assert resp.headers["Content-Disposition"].startswith('attachment; filename="o"')
        assert resp.headers["Expires"].endswith(" GMT")  # as Swift: when the URL ends
    head_signed = generate_temp_url(path, 60, key, "HEAD")
    async with http.head(url_for(swift_cluster, head_signed)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Disposition"].startswith('attachment; filename="o"')
    # the same signature does not open another object of the account
    other = signed.replace("/o?", "/other?")
    async with http.get(url_for(swift_cluster, other)) as resp:
        assert resp.status == 401
    swift_cli(account, "post", "-m", "Temp-URL-Key-2:")
    async with http.get(url_for(swift_cluster, signed)) as resp:
        assert resp.status == 401, "a removed key must stop working"


async def test_get_head_and_header_filtering(swift_cluster, account, container_with_key,
                                             http) -> None:
    container, key = container_with_key
    path = f"{account.path}/{container}/obj"
    signed = generate_temp_url(path, 60, key, "GET")
    async with http.get(url_for(swift_cluster, signed)) as resp:
        assert resp.status == 200
        assert await resp.read() == b"temp url body"
        assert "X-Object-Meta-Secret" not in resp.headers
        assert resp.headers["X-Object-Meta-Public-Color"] == "blue"
    # HEAD is allowed by a GET (or PUT) signature, like Swift
    async with http.head(url_for(swift_cluster, signed)) as resp:
        assert resp.status == 200
    put_signed = generate_temp_url(path, 60, key, "PUT")
    async with http.head(url_for(swift_cluster, put_signed)) as resp:
        assert resp.status == 200
    # but a GET signature does not allow DELETE
    async with http.delete(url_for(swift_cluster, signed)) as resp:
        assert resp.status == 401
        # Swift 2.38.3's 401, body and challenge alike
        assert await resp.text() == "401 Unauthorized: Temp URL invalid\n"
        assert resp.headers["Www-Authenticate"] == 'Swift realm="unknown"'
    async with http.head(url_for(swift_cluster, signed.replace("temp_url_sig=",
                                                               "temp_url_sig=0"))) as resp:
        assert resp.status == 401 and resp.headers["Content-Length"] == "0"


async def test_put_and_delete(swift_cluster, account, container_with_key, http) -> None:
    container, key = container_with_key
    path = f"{account.path}/{container}/uploaded"
    put = generate_temp_url(path, 60, key, "PUT")
    async with http.put(url_for(swift_cluster, put), data=b"via temp url",
                        headers={"X-Timestamp": "1"}) as resp:
        assert resp.status == 201
    assert account.conn().get_object(container, "uploaded")[1] == b"via temp url"
    delete = generate_temp_url(path, 60, key, "DELETE")
    async with http.delete(url_for(swift_cluster, delete)) as resp:
        assert resp.status == 204
    async with http.get(url_for(swift_cluster, generate_temp_url(path, 60, key, "GET"))
                        ) as resp:
        assert resp.status == 404


async def test_invalid_signatures_are_401(swift_cluster, account, container_with_key,
                                          http) -> None:
    container, key = container_with_key
    path = f"{account.path}/{container}/obj"
    good = generate_temp_url(path, 60, key, "GET")
    base, _, query = good.partition("?")
    params = dict(p.split("=", 1) for p in query.split("&"))
    cases = {
        "tampered": {**params, "temp_url_sig": "0" * 64},
        "wrong key": {**params, "temp_url_sig": hmac.new(
            b"nope", f"GET\n{params['temp_url_expires']}\n{path}".encode(),
            hashlib.sha256).hexdigest()},
        "missing expires": {"temp_url_sig": params["temp_url_sig"]},
        "garbage expires": {**params, "temp_url_expires": "soon"},
    }
    for name, case in cases.items():
        async with http.get(swift_cluster.proxy_url + base, params=case) as resp:
            assert resp.status == 401, name
    expired = generate_temp_url(path, int(time.time()) - 10, key, "GET", absolute=True)
    async with http.get(url_for(swift_cluster, expired)) as resp:
        assert resp.status == 401
    # sha1 works, as on Swift's defaults: openstacksdk signs with nothing else
    sha1 = generate_temp_url(path, 60, key, "GET", digest="sha1")
    async with http.get(url_for(swift_cluster, sha1)) as resp:
        assert resp.status == 200
    sdk_url = _openstacksdk_temp_url(path, key)
    if sdk_url is not None:
        async with http.get(swift_cluster.proxy_url + sdk_url) as resp:
            assert resp.status == 200
    # a signature for another container's key does not open this one
    async with http.get(url_for(swift_cluster, good.replace(container, container + "x"))
                        ) as resp:
        assert resp.status == 401


async def test_sha512_base64_iso8601_prefix_and_ip(swift_cluster, account, container_with_key,
                                                   http) -> None:
    container, key = container_with_key
    path = f"{account.path}/{container}/obj"
    expires = int(time.time()) + 60
    raw = hmac.new(key.encode(), f"GET\n{expires}\n{path}".encode(), hashlib.sha512).digest()
    sig = "sha512:" + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    async with http.get(swift_cluster.proxy_url + path,
                        params={"temp_url_sig": sig, "temp_url_expires": str(expires)}) as resp:
        assert resp.status == 200
    iso = generate_temp_url(path, 60, key, "GET", iso8601=True)
    assert "temp_url_expires=20" in iso
    async with http.get(url_for(swift_cluster, iso)) as resp:
        assert resp.status == 200
    prefixed = generate_temp_url(f"{account.path}/{container}/ob", 60, key, "GET", prefix=True)
    _base, _, query = prefixed.partition("?")
    async with http.get(f"{swift_cluster.proxy_url}{account.path}/{container}/obj?{query}"
                        ) as resp:
        assert resp.status == 200
    async with http.get(f"{swift_cluster.proxy_url}{account.path}/{container}/xobj?{query}"
                        ) as resp:
        assert resp.status == 401
    allowed = generate_temp_url(path, 60, key, "GET", ip_range="127.0.0.0/8")
    async with http.get(url_for(swift_cluster, allowed)) as resp:
        assert resp.status == 200
    refused = generate_temp_url(path, 60, key, "GET", ip_range="10.0.0.0/8")
    async with http.get(url_for(swift_cluster, refused)) as resp:
        assert resp.status == 401


async def test_inline_and_filename(swift_cluster, account, container_with_key, http) -> None:
    container, key = container_with_key
    signed = generate_temp_url(f"{account.path}/{container}/obj", 60, key, "GET")
    async with http.get(url_for(swift_cluster, signed) + "&inline") as resp:
        assert resp.headers["Content-Disposition"] == "inline"
    async with http.get(url_for(swift_cluster, signed) + "&filename=report.txt") as resp:
        assert resp.headers["Content-Disposition"].startswith(
            'attachment; filename="report.txt"')
    async with http.get(url_for(swift_cluster, signed) + "&inline&filename=a.txt") as resp:
        assert resp.headers["Content-Disposition"].startswith('inline; filename="a.txt"')


async def test_container_key_is_scoped_to_its_container(swift_cluster, account,
                                                        container_with_key, http) -> None:
    container, key = container_with_key
    other = container + "-other"
    conn = account.conn()
    conn.put_container(other)
    conn.put_object(other, "obj", b"other")
    signed = generate_temp_url(f"{account.path}/{other}/obj", 60, key, "GET")
    async with http.get(url_for(swift_cluster, signed)) as resp:
        assert resp.status == 401


def test_container_key_hidden_from_acl_users(swift_cluster, account, container_with_key
                                             ) -> None:
    import swiftclient

    container, key = container_with_key
    conn = account.conn()
    conn.post_container(container, headers={"X-Container-Read": "test:tester3"})
    assert conn.head_container(container)["x-container-meta-temp-url-key"] == key
    url, token = swiftclient.get_auth(swift_cluster.auth_url, "test:tester3", "testing3")
    reader = swiftclient.Connection(preauthurl=url, preauthtoken=token, retries=0)
    headers = reader.head_container(container)
    assert "x-container-meta-temp-url-key" not in headers
    assert reader.get_object(container, "obj")[1] == b"temp url body"


def _openstacksdk_temp_url(path: str, key: str) -> str | None:
    """openstacksdk's own temp URL of ``path`` (None when the SDK is not installed)."""
    try:
        from openstack.object_store.v1._proxy import Proxy
    except ImportError:
        return None
    proxy = Proxy.__new__(Proxy)  # generate_temp_url needs no session with a key given
    return proxy.generate_temp_url(path, 60, "GET", temp_url_key=key)


async def test_repeated_temp_url_parameters_take_their_first_value(swift_cluster, account,
                                                                   container_with_key, http
                                                                   ) -> None:
    """As Swift's tempurl reads them (every other parameter takes its last value)."""
    container, key = container_with_key
    signed = url_for(swift_cluster, generate_temp_url(
        f"{account.path}/{container}/obj", 60, key, "GET"))
    async with http.get(signed + "&temp_url_sig=" + "0" * 64 + "&filename=b.txt"
                        + "&filename=c.txt") as resp:
        assert resp.status == 200
        assert 'filename="b.txt"' in resp.headers["Content-Disposition"]
    base, _, query = signed.partition("?")
    forged_first = f"{base}?temp_url_sig={'0' * 64}&{query}"
    async with http.get(forged_first) as resp:
        assert resp.status == 401


def test_a_subrequest_does_not_inherit_the_first_values():
    """The environ (with the client's first values) is copied into subrequests made
    above tempurl, their query is not: a parameter the request lacks reads as absent."""
    from swiftlike.proxy.pipeline import FIRST_QUERY_VALUES, SwiftRequest
    from swiftlike.proxy.tempurl import _first

    parent = SwiftRequest("GET", "/v1/AUTH_a/c/o", query={"temp_url_sig": "last"},
                          environ={FIRST_QUERY_VALUES: {"temp_url_sig": "first"}})
    assert _first(parent, "temp_url_sig") == "first"
    sub = parent.make_subrequest("DELETE", "/v1/AUTH_a/c/other")
    assert sub.environ.get(FIRST_QUERY_VALUES) == {"temp_url_sig": "first"}
    assert _first(sub, "temp_url_sig") is None
