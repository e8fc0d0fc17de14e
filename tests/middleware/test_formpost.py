"""Form POST uploads through a real cluster, with raw multipart bodies as browsers send."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from tests.middleware.helpers import Account

BOUNDARY = "----swiftlikeFormBoundary7MA4YWxk"


def signature(key: str, path: str, redirect: str, max_size: int, max_count: int,
              expires: int, digest: str = "sha256") -> str:
    message = f"{path}\n{redirect}\n{max_size}\n{max_count}\n{expires}"
    return hmac.new(key.encode(), message.encode(), digest).hexdigest()


def form_body(fields: dict[str, str], files: list[tuple[str, bytes]]) -> bytes:
    out = []
    for name, value in fields.items():
        out.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                   f"{value}\r\n".encode())
    for index, (filename, data) in enumerate(files):
        out.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file{index}"; '
                   f'filename="{filename}"\r\nContent-Type: text/plain\r\n\r\n'.encode()
                   + data + b"\r\n")
    out.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(out)


HEADERS = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


@pytest.fixture
def keyed_container(account: Account, unique_name: str) -> tuple[str, str]:
    key = f"form-{unique_name}"
    account.conn().put_container(unique_name, headers={"X-Container-Meta-Temp-URL-Key": key})
    return unique_name, key


def fields_for(key: str, path: str, *, redirect: str = "", max_size: int = 1024,
               max_count: int = 5, expires: int | None = None, **extra: str
               ) -> dict[str, str]:
    expires = expires if expires is not None else int(time.time()) + 60
    fields = {"redirect": redirect, "max_file_size": str(max_size),
              "max_file_count": str(max_count), "expires": str(expires),
              "signature": signature(key, path, redirect, max_size, max_count, expires)}
    fields.update(extra)
    return fields


async def test_info_advertises_formpost(swift_cluster, http) -> None:
    """With the digests a signature may use, as Swift 2.38's /info does."""
    async with http.get(swift_cluster.proxy_url + "/info") as resp:
        assert (await resp.json())["formpost"] == {
            "allowed_digests": ["sha1", "sha256", "sha512"], "deprecated_digests": ["sha1"]}


async def test_upload_with_redirect(swift_cluster, account, keyed_container,
                                    http: aiohttp.ClientSession) -> None:
    container, key = keyed_container
    path = f"{account.path}/{container}/uploads/"
    fields = fields_for(key, path, redirect="https://example.com/done?x=1", max_size=10000)
    body = form_body(fields, [("a.txt", b"first file"), ("b.txt", b"second" * 1000)])
    async with http.post(swift_cluster.proxy_url + path, data=body, headers=HEADERS,
                         allow_redirects=False) as resp:
        assert resp.status == 303
        location = resp.headers["Location"]
    query = parse_qs(urlsplit(location).query, keep_blank_values=True)
    assert location.startswith("https://example.com/done?x=1&")
    assert query["status"] == ["201"] and query["message"] == [""]
    conn = account.conn()
    assert conn.get_object(container, "uploads/a.txt")[1] == b"first file"
    headers, data = conn.get_object(container, "uploads/b.txt")
    assert data == b"second" * 1000
    assert headers["content-type"] == "text/plain"


async def test_upload_without_redirect_sha512_base64_and_expiry(swift_cluster, account,
                                                               keyed_container, http) -> None:
    container, key = keyed_container
    path = f"{account.path}/{container}"
    expires = int(time.time()) + 60
    raw = hmac.new(key.encode(), f"{path}\n\n10\n1\n{expires}".encode(), hashlib.sha512)
    fields = {"max_file_size": "10", "max_file_count": "1", "expires": str(expires),
              "signature": "sha512:" + base64.b64encode(raw.digest()).decode(),
              "x_delete_after": "3600"}
    async with http.post(swift_cluster.proxy_url + path, headers=HEADERS,
                         data=form_body(fields, [("plain.txt", b"tiny")])) as resp:
        assert resp.status == 201
        assert "201 Created" in await resp.text()
    headers = account.conn().head_object(container, "plain.txt")
    assert int(headers["x-delete-at"]) >= int(time.time()) + 3500


async def test_max_file_size_exceeded_stores_nothing(swift_cluster, account, keyed_container,
                                                     http) -> None:
    container, key = keyed_container
    path = f"{account.path}/{container}/"
    fields = fields_for(key, path, max_size=100)
    async with http.post(swift_cluster.proxy_url + path, headers=HEADERS,
                         data=form_body(fields, [("big.bin", b"x" * 5000)])) as resp:
        assert resp.status == 400
        assert await resp.text() == "FormPost: max_file_size exceeded"
    assert account.conn().get_container(container)[1] == []


async def test_max_file_count_and_signature_errors(swift_cluster, account, keyed_container,
                                                   http) -> None:
    container, key = keyed_container
    path = f"{account.path}/{container}/"
    fields = fields_for(key, path, redirect="http://r/", max_count=1)
    async with http.post(swift_cluster.proxy_url + path, headers=HEADERS, allow_redirects=False,
                         data=form_body(fields, [("1", b"1"), ("2", b"2")])) as resp:
        assert resp.status == 303
        query = parse_qs(urlsplit(resp.headers["Location"]).query)
    assert query["status"] == ["400"]
    assert query["message"] == ["max file count exceeded"]
    assert [o["name"] for o in account.conn().get_container(container)[1]] == ["1"]

    bad = dict(fields_for(key, path), signature="0" * 64)
    async with http.post(swift_cluster.proxy_url + path, headers=HEADERS,
                         data=form_body(bad, [("x", b"x")])) as resp:
        assert resp.status == 401
        assert await resp.text() == "FormPost: Invalid Signature"
    expired = fields_for(key, path, expires=int(time.time()) - 5)
    async with http.post(swift_cluster.proxy_url + path, headers=HEADERS,
                         data=form_body(expired, [("x", b"x")])) as resp:
        assert resp.status == 401
        assert await resp.text() == "FormPost: Form Expired"
    sha1 = fields_for(key, path)
    sha1["signature"] = hmac.new(
        key.encode(), f"{path}\n\n1024\n5\n{sha1['expires']}".encode(), "sha1").hexdigest()
    async with http.post(swift_cluster.proxy_url + path, headers=HEADERS,
                         data=form_body(sha1, [("x", b"x")])) as resp:
        assert resp.status in (201, 303)  # sha1 is allowed, as on Swift's defaults
    not_int = fields_for(key, path, x_delete_at="tomorrow")
    async with http.post(swift_cluster.proxy_url + path, headers=HEADERS,
                         data=form_body(not_int, [("x", b"x")])) as resp:
        assert resp.status == 400
        assert "x_delete_at not an integer" in await resp.text()
    async with http.post(swift_cluster.proxy_url + path, headers=HEADERS,
                         data=form_body(fields_for(key, path), [])) as resp:
        assert resp.status == 400
        assert "no files to process" in await resp.text()
    # a signature for another container's path is refused
    other = fields_for(key, f"{account.path}/{container}-other/")
    async with http.post(swift_cluster.proxy_url + path, headers=HEADERS,
                         data=form_body(other, [("x", b"x")])) as resp:
        assert resp.status == 401
    # the first file, and the sha1-signed form's (sha1 is allowed, as on Swift); asked
    # by HEAD, as a listing replica may not have the newest row yet
    conn = account.conn()
    assert conn.head_object(container, "1") and conn.head_object(container, "x")
    assert {o["name"] for o in conn.get_container(container)[1]} <= {"1", "x"}
