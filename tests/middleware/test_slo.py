"""Static Large Objects end to end: python-swiftclient segmented uploads and the raw API."""

from __future__ import annotations

import json
import os

import aiohttp
import pytest
from swiftclient.client import Connection
from swiftclient.service import SwiftService, SwiftUploadObject

from tests.middleware.lo_helpers import api_for, md5


@pytest.fixture
def api(swift_cluster):
    return api_for(swift_cluster)


def service(cluster, **options) -> SwiftService:
    return SwiftService(options={"auth": cluster.auth_url, "user": cluster.user,
                                 "key": cluster.key, "auth_version": "1.0", **options})


async def test_info_advertises_slo(swift_cluster):
    async with aiohttp.ClientSession() as session, session.get(
            f"{swift_cluster.proxy_url}/info") as resp:
        info = await resp.json()
    assert info["slo"]["max_manifest_segments"] == 1000
    assert info["slo"]["max_manifest_size"] == 8388608
    assert info["slo"]["min_segment_size"] == 1
    assert info["slo"]["yield_frequency"] == 10
    assert "allow_async_delete" not in info["slo"]  # we do not offer it


def test_swiftclient_slo_upload_and_download(swift_cluster, unique_name, tmp_path):
    data = os.urandom(300 * 1024 + 17)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    with service(swift_cluster, segment_size=64 * 1024, use_slo=True) as swift:
        results = list(swift.upload(unique_name, [SwiftUploadObject(str(src),
                                                                    object_name="big.bin")]))
    assert all(r["success"] for r in results), results
    conn = Connection(swift_cluster.auth_url, swift_cluster.user, swift_cluster.key)
    headers, body = conn.get_object(unique_name, "big.bin")
    assert body == data
    assert headers["x-static-large-object"].lower() == "true"
    assert int(headers["content-length"]) == len(data)
    # swiftclient sends no Content-Type with the manifest: guessed from its name, as in
    # Swift, not the segments' application/swiftclient-segment
    assert headers["content-type"] == "application/octet-stream"
    with service(swift_cluster, segment_size=64 * 1024, use_slo=True) as swift:
        results = list(swift.upload(unique_name, [SwiftUploadObject(str(src),
                                                                    object_name="big.txt")]))
    assert all(r["success"] for r in results), results
    assert conn.head_object(unique_name, "big.txt")["content-type"] == "text/plain"
    with service(swift_cluster) as swift:
        assert all(r["success"] for r in swift.delete(unique_name, ["big.txt"]))
    # the listing shows the object's size, not its manifest's (swift list --long)
    listed = {row["name"]: row for row in conn.get_container(unique_name)[1]}
    assert listed["big.bin"]["bytes"] == len(data)
    segments = conn.get_container(unique_name + "_segments")[1]
    assert len(segments) == 5
    expected = md5("".join(s["hash"] for s in segments).encode())
    assert headers["etag"].strip('"') == expected
    # swiftclient deletes an SLO with ?multipart-manifest=delete: segments go too
    with service(swift_cluster) as swift:
        assert all(r["success"] for r in swift.delete(unique_name, ["big.bin"]))
    assert conn.get_container(unique_name + "_segments")[1] == []


async def put_segments(api, container, parts):
    await api.request("PUT", container)
    manifest = []
    for i, part in enumerate(parts):
        status, _, _ = await api.request("PUT", f"{container}/seg{i:02d}", data=part)
        assert status == 201
        manifest.append({"path": f"{container}/seg{i:02d}", "etag": md5(part),
                         "size_bytes": len(part)})
    return manifest


async def test_manifest_get_range_and_conditions(api, unique_name):
    parts = [b"A" * 1000, b"B" * 1000, b"C" * 500]
    manifest = await put_segments(api, unique_name, parts)
    status, headers, _ = await api.request(
        "PUT", f"{unique_name}/lo", data=json.dumps(manifest).encode(),
        params={"multipart-manifest": "put"})
    assert status == 201
    slo_etag = md5("".join(m["etag"] for m in manifest).encode())
    assert headers["Etag"] == f'"{slo_etag}"'
    whole = b"".join(parts)
    status, headers, body = await api.request("GET", f"{unique_name}/lo")
    assert status == 200 and body == whole and headers["Etag"] == f'"{slo_etag}"'
    status, headers, _ = await api.request("HEAD", f"{unique_name}/lo")
    assert int(headers["Content-Length"]) == 2500
    status, headers, body = await api.request("GET", f"{unique_name}/lo",
                                              headers={"Range": "bytes=995-2004"})
    assert status == 206 and body == whole[995:2005]
    assert headers["Content-Range"] == "bytes 995-2004/2500"
    status, headers, body = await api.request("GET", f"{unique_name}/lo",
                                              headers={"Range": "bytes=0-1,-3"})
    assert status == 206 and headers["Content-Type"].startswith("multipart/byteranges")
    assert b"AA" in body and b"CCC" in body
    status, _, _ = await api.request("GET", f"{unique_name}/lo",
                                     headers={"Range": "bytes=9000-"})
    assert status == 416
    status, _, _ = await api.request("GET", f"{unique_name}/lo",
                                     headers={"If-Match": '"deadbeef"'})
    assert status == 412
    status, _, _ = await api.request("GET", f"{unique_name}/lo",
                                     headers={"If-None-Match": f'"{slo_etag}"'})
    assert status == 304
    status, headers, body = await api.request("GET", f"{unique_name}/lo",
                                              params={"multipart-manifest": "get"})
    stored = json.loads(body)
    assert [row["name"] for row in stored] == [f"/{m['path']}" for m in manifest]
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    status, headers, body = await api.request("GET", f"{unique_name}/lo",
                                              params={"multipart-manifest": "get",
                                                      "format": "raw"})
    # the PUT form keeps the object's own type (Swift 2.38.3)
    assert headers["Content-Type"] == "application/octet-stream"
    raw = json.loads(body)
    assert raw == [{**m, "path": "/" + m["path"]} for m in manifest]
    # a ranged segment and a nested manifest
    nested = [{"path": f"{unique_name}/lo", "etag": slo_etag, "size_bytes": 2500},
              {"path": f"{unique_name}/seg00", "range": "10-19"}]
    status, _, body = await api.request("PUT", f"{unique_name}/nested",
                                        data=json.dumps(nested).encode(),
                                        params={"multipart-manifest": "put"})
    assert status == 201, body
    status, _, body = await api.request("GET", f"{unique_name}/nested")
    assert body == whole + b"A" * 10


async def test_manifest_put_errors(api, unique_name):
    parts = [b"x" * 100, b"y" * 100]
    manifest = await put_segments(api, unique_name, parts)
    bad = [dict(manifest[0], etag="0" * 32), dict(manifest[1], size_bytes=99),
           {"path": f"{unique_name}/nope", "etag": None, "size_bytes": None}]
    status, _, body = await api.request("PUT", f"{unique_name}/bad",
                                        data=json.dumps(bad).encode(),
                                        params={"multipart-manifest": "put"})
    assert status == 400
    text = body.decode()
    assert f"/{unique_name}/seg00, Etag Mismatch" in text
    assert f"/{unique_name}/seg01, Size Mismatch" in text
    assert f"/{unique_name}/nope, 404 Not Found" in text
    status, _, body = await api.request("PUT", f"{unique_name}/bad",
                                        data=json.dumps(bad).encode(),
                                        params={"multipart-manifest": "put"},
                                        headers={"Accept": "application/json"})
    assert status == 400 and len(json.loads(body)["Errors"]) == 3
    status, _, _ = await api.request("PUT", f"{unique_name}/bad", data=b"{not json",
                                     params={"multipart-manifest": "put"})
    assert status == 400
    too_many = [manifest[0]] * 1001
    status, _, _ = await api.request("PUT", f"{unique_name}/bad",
                                     data=json.dumps(too_many).encode(),
                                     params={"multipart-manifest": "put"})
    assert status == 413
    status, _, _ = await api.request("PUT", f"{unique_name}/bad", data=b"x",
                                     headers={"X-Static-Large-Object": "true"})
    assert status == 400
    status, _, _ = await api.request("PUT", f"{unique_name}/bad",
                                     data=json.dumps(manifest).encode(),
                                     params={"multipart-manifest": "put"},
                                     headers={"ETag": "0" * 32})
    assert status == 422
    status, _, _ = await api.request("GET", f"{unique_name}/bad")
    assert status == 404  # nothing stored by any failed attempt


async def test_heartbeat_and_delete(api, unique_name):
    parts = [b"h" * 10, b"i" * 10]
    manifest = await put_segments(api, unique_name, parts)
    status, _, body = await api.request("PUT", f"{unique_name}/hb",
                                        data=json.dumps(manifest).encode(),
                                        params={"multipart-manifest": "put",
                                                "heartbeat": "on"},
                                        headers={"Accept": "application/json"})
    assert status == 202
    result = json.loads(body.strip())
    assert result["Response Status"] == "201 Created" and result["Errors"] == []
    slo_etag = md5("".join(m["etag"] for m in manifest).encode())
    assert result["Etag"].strip('"') == slo_etag
    bad = [dict(manifest[0], size_bytes=1)]
    status, _, body = await api.request("PUT", f"{unique_name}/hb2",
                                        data=json.dumps(bad).encode(),
                                        params={"multipart-manifest": "put",
                                                "heartbeat": "on"})
    assert status == 202
    assert b"Response Status: 400 Bad Request" in body and b"Size Mismatch" in body
    status, _, body = await api.request("DELETE", f"{unique_name}/hb",
                                        params={"multipart-manifest": "delete"})
    assert status == 200
    text = body.decode()
    assert "Number Deleted: 3" in text and "Response Status: 200 OK" in text
    status, _, body = await api.request("DELETE", f"{unique_name}/hb",
                                        params={"multipart-manifest": "delete"},
                                        headers={"Accept": "application/json"})
    result = json.loads(body)
    # nothing there any more: not found, yet not an error (Swift says 200 OK too)
    assert result["Number Not Found"] == 1 and result["Response Status"] == "200 OK"
    for i in range(2):
        status, _, _ = await api.request("GET", f"{unique_name}/seg{i:02d}")
        assert status == 404


async def test_copy_with_manifest_get_copies_the_manifest(api, unique_name):
    """COPY (or PUT + X-Copy-From) with ?multipart-manifest=get duplicates a large object
    by its manifest, as Swift's API reference says: the copy is an SLO over the same
    segments, not a new object holding the joined bytes."""
    parts = [b"A" * 1000, b"B" * 700]
    manifest = await put_segments(api, unique_name, parts)
    status, _, _ = await api.request(
        "PUT", f"{unique_name}/lo", data=json.dumps(manifest).encode(),
        params={"multipart-manifest": "put"},
        headers={"Content-Type": "video/webm", "X-Object-Meta-Color": "blue"})
    assert status == 201
    # aiohttp would add a Content-Type to a body-less COPY, and a request's Content-Type
    # overrides the source's on a copy: skip it
    token = {"X-Auth-Token": api.token}
    async with aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as session:
        for method, name, how in (("COPY", "dup1", {"Destination": f"{unique_name}/dup1"}),
                                  ("PUT", "dup2", {"X-Copy-From": f"{unique_name}/lo"})):
            target = f"{unique_name}/{'lo' if method == 'COPY' else name}"
            async with session.request(method, f"{api.url}/{target}",
                                       params={"multipart-manifest": "get"},
                                       headers={**token, **how}) as resp:
                assert resp.status == 201, await resp.text()
    for name in ("dup1", "dup2"):
        status, headers, body = await api.request("GET", f"{unique_name}/{name}")
        assert status == 200 and body == b"".join(parts), name
        assert headers["X-Static-Large-Object"].lower() == "true"
        assert headers["Content-Type"] == "video/webm"
        assert headers["X-Object-Meta-Color"] == "blue"
        _, _, raw = await api.request("GET", f"{unique_name}/{name}",
                                      params={"multipart-manifest": "get",
                                              "format": "raw"})
        assert [row["path"].lstrip("/") for row in json.loads(raw)] == \
            [m["path"] for m in manifest]
    # without the parameter a copy is the joined data, as before
    await api.request("COPY", f"{unique_name}/lo",
                      headers={"Destination": f"{unique_name}/flat"})
    _, headers, body = await api.request("GET", f"{unique_name}/flat")
    assert body == b"".join(parts) and "X-Static-Large-Object" not in headers


async def test_copy_with_manifest_get_copies_a_dlo_manifest(api, unique_name):
    await api.request("PUT", unique_name)
    for i, part in enumerate((b"x" * 10, b"y" * 5)):
        await api.request("PUT", f"{unique_name}/segs/{i:02d}", data=part)
    await api.request("PUT", f"{unique_name}/dlo", data=b"",
                      headers={"X-Object-Manifest": f"{unique_name}/segs/"})
    status, _, _ = await api.request("COPY", f"{unique_name}/dlo",
                                     params={"multipart-manifest": "get"},
                                     headers={"Destination": f"{unique_name}/dlo2"})
    assert status == 201
    status, headers, body = await api.request("GET", f"{unique_name}/dlo2")
    assert body == b"x" * 10 + b"y" * 5
    assert headers["X-Object-Manifest"] == f"{unique_name}/segs/"


async def test_manifest_delete_of_a_plain_object_keeps_it(account, unique_name, http):
    """``?multipart-manifest=delete`` names a manifest: a plain object is refused, as in
    Swift, not deleted."""
    conn = account.conn()
    conn.put_container(unique_name)
    conn.put_object(unique_name, "plain", b"keep me")
    async with http.delete(f"{account.url}/{unique_name}/plain?multipart-manifest=delete",
                           headers=account.headers(Accept="application/json")) as resp:
        assert resp.status == 200
        result = await resp.json()
    assert result["Response Status"] == "400 Bad Request"
    assert result["Number Deleted"] == 0
    assert result["Errors"] == [[f"/{unique_name}/plain", "Not an SLO manifest"]]
    assert conn.get_object(unique_name, "plain")[1] == b"keep me"
