"""Bulk delete and archive extraction through a real cluster."""

from __future__ import annotations

import io
import json
import tarfile
from urllib.parse import quote

import aiohttp
import pytest
from swiftclient.service import SwiftService

from tests.middleware.helpers import Account

JSON_PLAIN = {"Accept": "application/json", "Content-Type": "text/plain"}


def make_tar(files: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def test_info_advertises_bulk(swift_cluster, http: aiohttp.ClientSession) -> None:
    async with http.get(swift_cluster.proxy_url + "/info") as resp:
        info = await resp.json()
    assert info["bulk_delete"] == {"max_deletes_per_request": 10000, "max_failed_deletes": 1000}
    assert info["bulk_upload"] == {"max_containers_per_extraction": 10000,
                                   "max_failed_extractions": 1000}


async def test_bulk_delete_formats_and_errors(swift_cluster, account: Account, unique_name,
                                              http) -> None:
    conn = account.conn()
    conn.put_container(unique_name)
    for name in ("a", "b", "dir/c d"):
        conn.put_object(unique_name, name, b"x")
    body = "\n".join(quote(f"/{unique_name}/{n}") for n in ("a", "b", "dir/c d", "missing"))
    async with http.post(f"{account.url}?bulk-delete", data=body.encode(),
                         headers=account.headers(**{"Accept": "application/json",
                                                    "Content-Type": "text/plain"})) as resp:
        assert resp.status == 200
        report = json.loads(await resp.read())
    assert report["Number Deleted"] == 3
    assert report["Number Not Found"] == 1
    assert report["Response Status"] == "200 OK"
    assert report["Errors"] == []
    # a non-empty container cannot go: listed as an error with its status
    conn.put_object(unique_name, "keep", b"x")
    async with http.delete(f"{account.url}?bulk-delete", data=f"/{unique_name}\n".encode(),
                           headers=account.headers(Accept="application/xml",
                                                   **{"Content-Type": "text/plain"})) as resp:
        text = await resp.text()
    assert "<response_status>400 Bad Request</response_status>" in text
    assert f"<name>/{unique_name}</name><status>409 Conflict</status>" in text
    async with http.post(f"{account.url}?bulk-delete", data=f"/{unique_name}/keep\n".encode(),
                         headers=account.headers(**{"Content-Type": "text/plain"})) as resp:
        text = await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert "Number Deleted: 1\n" in text
    # nothing to delete at all
    async with http.post(f"{account.url}?bulk-delete", data=b"\n",
                         headers=account.headers(**JSON_PLAIN)) as resp:
        report = await resp.json(content_type=None)
    assert report["Response Status"] == "400 Bad Request"
    assert report["Response Body"] == "Invalid bulk delete."


async def test_bulk_delete_limits_and_auth(swift_cluster, account, http) -> None:
    names = "\n".join(f"/c/o{i}" for i in range(10001)).encode()
    async with http.post(f"{account.url}?bulk-delete", data=names,
                         headers=account.headers(**JSON_PLAIN)) as resp:
        report = await resp.json(content_type=None)
    assert report["Response Status"] == "413 Request Entity Too Large"
    assert report["Response Body"] == "Maximum Bulk Deletes: 10000 per request"
    async with http.post(f"{account.url}?bulk-delete", data=b"/c/o\n",
                         headers=JSON_PLAIN) as resp:
        report = await resp.json(content_type=None)
    assert report["Number Deleted"] == 0
    assert report["Errors"] == [["/c/o", "401 Unauthorized"]]
    async with http.post(f"{account.url}?bulk-delete", data=b"/c/o\n",
                         headers=account.headers(Accept="image/png",
                                                 **{"Content-Type": "text/plain"})) as resp:
        assert "406 Not Acceptable" in await resp.text()


def test_swift_service_deletes_with_bulk_delete(account: Account, unique_name: str) -> None:
    conn = account.conn()
    conn.put_container(unique_name)
    # swiftclient deletes one by one up to 2 * object_dd_threads (20) objects
    names = [f"obj{i}" for i in range(25)]
    for name in names:
        conn.put_object(unique_name, name, b"x")
    options = {"os_storage_url": account.url, "os_auth_token": account.token}
    with SwiftService(options=options) as service:
        results = list(service.delete(container=unique_name, objects=names))
    assert results and all(r["success"] for r in results)
    assert any(r["action"] == "bulk_delete" for r in results), results
    assert conn.get_container(unique_name)[1] == []


@pytest.mark.parametrize(("kind", "mode"), [("tar", "w"), ("tar.gz", "w:gz"),
                                            ("tar.bz2", "w:bz2")])
async def test_extract_archive(swift_cluster, account, unique_name, http, kind, mode) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB, several chunks
    archive = make_tar({f"{unique_name}/big.bin": big, f"{unique_name}/d/small.txt": b"hi",
                        "top-level-file": b"ignored", f"{unique_name}-2/x": b"x"}, mode)
    async with http.put(f"{account.url}?extract-archive={kind}", data=archive,
                        headers=account.headers(Accept="application/json")) as resp:
        assert resp.status == 200
        report = json.loads(await resp.read())
    assert report["Number Files Created"] == 3, report
    assert report["Response Status"] == "201 Created"
    conn = account.conn()
    assert conn.get_object(unique_name, "big.bin")[1] == big
    assert conn.get_object(unique_name, "d/small.txt")[1] == b"hi"
    assert conn.get_object(f"{unique_name}-2", "x")[1] == b"x"


async def test_extract_archive_into_container_with_chunked_body(swift_cluster, account,
                                                                unique_name, http) -> None:
    account.conn().put_container(unique_name)
    archive = make_tar({"a/1.txt": b"1", "b.txt": b"2"})

    async def chunks():
        for i in range(0, len(archive), 1000):
            yield archive[i:i + 1000]

    async with http.put(f"{account.url}/{unique_name}?extract-archive=tar", data=chunks(),
                        headers=account.headers(Accept="text/plain")) as resp:
        text = await resp.text()
    assert "Number Files Created: 2\n" in text
    names = sorted(o["name"] for o in account.conn().get_container(unique_name)[1])
    assert names == ["a/1.txt", "b.txt"]


async def test_extract_archive_errors(swift_cluster, account, unique_name, http) -> None:
    async with http.put(f"{account.url}?extract-archive=zip", data=b"x",
                        headers=account.headers()) as resp:
        assert resp.status == 400
        assert await resp.text() == "Unsupported archive format"
    async with http.put(f"{account.url}?extract-archive=tar.gz", data=b"not a tarball" * 50,
                        headers=account.headers(Accept="application/json")) as resp:
        report = json.loads(await resp.read())
    assert report["Response Status"] == "400 Bad Request"
    assert report["Response Body"].startswith("Invalid Tar File")
    empty = make_tar({"only-top-level": b"x"})
    async with http.put(f"{account.url}?extract-archive=tar", data=empty,
                        headers=account.headers(Accept="application/json")) as resp:
        report = json.loads(await resp.read())
    assert report["Response Body"] == "Invalid Tar File: No Valid Files"
    # per-file errors are listed: an over-long object name is refused by the proxy
    long_name = f"{unique_name}/" + "n" * 1100
    archive = make_tar({long_name: b"x", f"{unique_name}/fine": b"ok"})
    async with http.put(f"{account.url}?extract-archive=tar", data=archive,
                        headers=account.headers(Accept="application/json")) as resp:
        report = json.loads(await resp.read())
    assert report["Number Files Created"] == 1
    assert report["Response Status"] == "400 Bad Request"
    assert report["Errors"][0][1] == "400 Bad Request"
    assert report["Errors"][0][0].startswith(f"{unique_name}/nnn")
    # without a token nothing is created
    archive = make_tar({f"{unique_name}-anon/x": b"x"})
    async with http.put(f"{account.url}?extract-archive=tar", data=archive,
                        headers={"Accept": "application/json"}) as resp:
        report = json.loads(await resp.read())
    assert report["Response Status"] == "401 Unauthorized"
    assert report["Number Files Created"] == 0


async def test_archive_is_streamed_not_buffered() -> None:
    """The tar reader hands out a member's bytes while most of the body is unread."""
    from swiftlike.proxy.bulk import TarStreamReader

    payload = b"z" * (8 * 1024 * 1024)
    archive = make_tar({"c/big": payload, "c/after": b"tail"})
    pulled = 0

    async def body():
        nonlocal pulled
        for i in range(0, len(archive), 64 * 1024):
            pulled += 1
            yield archive[i:i + 64 * 1024]

    total_chunks = -(-len(archive) // (64 * 1024))
    reader = TarStreamReader(body(), "")
    try:
        seen = []
        async for member in reader.members():
            size = 0
            async for chunk in reader.member_body():
                if size == 0 and member.name == "c/big":
                    # the first bytes arrive after a handful of body chunks, not all 128+
                    assert pulled < total_chunks // 4, (pulled, total_chunks)
                size += len(chunk)
            seen.append((member.name, size))
    finally:
        await reader.close()
    assert seen == [("c/big", len(payload)), ("c/after", 4)]
    assert pulled == total_chunks


async def test_bulk_delete_without_auth_reports_401_and_deletes_nothing(
        account: Account, unique_name, http) -> None:
    conn = account.conn()
    conn.put_container(unique_name)
    for name in ("a", "b"):
        conn.put_object(unique_name, name, b"x")
    body = "\n".join(f"/{unique_name}/{n}" for n in ("a", "b"))
    async with http.post(f"{account.url}?bulk-delete", data=body.encode(), headers={
            "Accept": "application/json", "Content-Type": "text/plain"}) as resp:
        report = json.loads(await resp.read())
    assert report["Response Status"] == "401 Unauthorized"
    assert report["Number Deleted"] == 0
    # it stops at the first refusal, as Swift does (the deletes already in flight, one
    # per worker, are refused too)
    assert 1 <= len(report["Errors"]) <= 2
    assert {status for _, status in report["Errors"]} == {"401 Unauthorized"}
    assert sorted(o["name"] for o in conn.get_container(unique_name)[1]) == ["a", "b"]
