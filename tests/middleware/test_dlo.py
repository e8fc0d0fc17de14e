"""Dynamic Large Objects end to end: swiftclient's DLO upload and the raw API."""

from __future__ import annotations

import os

import pytest
from swiftclient.client import ClientException, Connection
from swiftclient.service import SwiftService, SwiftUploadObject

from tests.middleware.lo_helpers import api_for, md5


@pytest.fixture
def api(swift_cluster):
    return api_for(swift_cluster)


def test_swiftclient_dlo_upload_and_download(swift_cluster, unique_name, tmp_path):
    data = os.urandom(200 * 1024 + 5)
    src = tmp_path / "dlo.bin"
    src.write_bytes(data)
    with SwiftService(options={"auth": swift_cluster.auth_url, "user": swift_cluster.user,
                               "key": swift_cluster.key, "auth_version": "1.0",
                               "segment_size": 50 * 1024, "use_slo": False}) as swift:
        results = list(swift.upload(unique_name, [SwiftUploadObject(str(src),
                                                                    object_name="dlo.bin")]))
    assert all(r["success"] for r in results), results
    conn = Connection(swift_cluster.auth_url, swift_cluster.user, swift_cluster.key)
    headers, body = conn.get_object(unique_name, "dlo.bin")
    assert body == data
    assert "x-object-manifest" in headers
    assert int(headers["content-length"]) == len(data)
    seg_container, prefix = headers["x-object-manifest"].split("/", 1)
    segments = conn.get_container(seg_container, prefix=prefix)[1]
    assert len(segments) == 5
    assert headers["etag"].strip('"') == md5("".join(s["hash"] for s in segments).encode())
    headers, body = conn.get_object(unique_name, "dlo.bin",
                                    headers={"Range": "bytes=51000-52999"})
    assert body == data[51000:53000]


async def test_dlo_raw_api(api, unique_name):
    segs = f"{unique_name}-segs"
    await api.request("PUT", segs)
    await api.request("PUT", unique_name)
    parts = [b"alpha-", b"beta-", b"gamma"]
    for i, part in enumerate(parts):
        status, _, _ = await api.request("PUT", f"{segs}/file/{i:04d}", data=part)
        assert status == 201
    status, _, _ = await api.request("PUT", f"{unique_name}/file", data=b"",
                                     headers={"X-Object-Manifest": f"{segs}/file/"})
    assert status == 201
    status, headers, body = await api.request("GET", f"{unique_name}/file")
    assert status == 200 and body == b"alpha-beta-gamma"
    assert headers["Etag"] == f'"{md5("".join(md5(p) for p in parts).encode())}"'
    status, headers, body = await api.request("GET", f"{unique_name}/file",
                                              headers={"Range": "bytes=4-8"})
    assert status == 206 and body == b"a-bet"
    status, headers, body = await api.request("HEAD", f"{unique_name}/file")
    assert int(headers["Content-Length"]) == 16
    status, headers, body = await api.request("GET", f"{unique_name}/file",
                                              params={"multipart-manifest": "get"})
    assert status == 200 and body == b"" and headers["X-Object-Manifest"] == f"{segs}/file/"
    # a segment added later shows up: the manifest is dynamic
    await api.request("PUT", f"{segs}/file/0003", data=b"!")
    _, _, body = await api.request("GET", f"{unique_name}/file")
    assert body == b"alpha-beta-gamma!"
    status, _, _ = await api.request("GET", f"{unique_name}/file",
                                     headers={"Range": "bytes=100-"})
    assert status == 416
    status, _, _ = await api.request("PUT", f"{unique_name}/bad", data=b"",
                                     headers={"X-Object-Manifest": "no-slash"})
    assert status == 400
    # no segments yet: an empty object, md5 of nothing
    await api.request("PUT", f"{unique_name}/empty", data=b"",
                      headers={"X-Object-Manifest": f"{segs}/none/"})
    status, headers, body = await api.request("GET", f"{unique_name}/empty")
    assert status == 200 and body == b"" and headers["Etag"] == f'"{md5(b"")}"'


async def test_dlo_conditional_reads_use_its_etag(api, unique_name):
    segs = f"{unique_name}-segs"
    await api.request("PUT", segs)
    await api.request("PUT", unique_name)
    for i, part in enumerate((b"one-", b"two")):
        await api.request("PUT", f"{segs}/p/{i}", data=part)
    await api.request("PUT", f"{unique_name}/file", data=b"",
                      headers={"X-Object-Manifest": f"{segs}/p/"})
    dlo_etag = md5((md5(b"one-") + md5(b"two")).encode())
    status, _, _ = await api.request("GET", f"{unique_name}/file",
                                     headers={"If-None-Match": f'"{dlo_etag}"'})
    assert status == 304
    # the manifest object's own etag (of its empty body) is not the object's
    status, _, body = await api.request("GET", f"{unique_name}/file",
                                        headers={"If-None-Match": f'"{md5(b"")}"',
                                                 "Range": "bytes=2-5"})
    assert (status, body) == (206, b"e-tw")
    status, _, _ = await api.request("GET", f"{unique_name}/file",
                                     headers={"If-Match": f'"{md5(b"")}"'})
    assert status == 412


@pytest.mark.parametrize("value", ["/segs/p", "segs/", "segs", "segs/p?x", "segs/p&x",
                                   "segs//p"])
def test_malformed_manifest_header_is_refused(account, unique_name, value):
    """Swift's rule: ``container/prefix``, both non-empty, no leading ``/`` on the
    prefix, no ``?`` or ``&``."""
    conn = account.conn()
    conn.put_container(unique_name)
    with pytest.raises(ClientException) as err:
        conn.put_object(unique_name, "m", b"", headers={"X-Object-Manifest": value})
    assert err.value.http_status == 400
    conn.put_object(unique_name, "m", b"", headers={"X-Object-Manifest": "segs/p"})
    with pytest.raises(ClientException) as err:
        conn.post_object(unique_name, "m", headers={"X-Object-Manifest": value})
    assert err.value.http_status == 400


def test_post_repoints_a_dlo(account, unique_name):
    conn = account.conn()
    conn.put_container(unique_name)
    conn.put_object(unique_name, "a/1", b"first ")
    conn.put_object(unique_name, "b/1", b"second")
    conn.put_object(unique_name, "m", b"", headers={"X-Object-Manifest": f"{unique_name}/a/"})
    assert conn.get_object(unique_name, "m")[1] == b"first "
    conn.post_object(unique_name, "m", headers={"X-Object-Manifest": f"{unique_name}/b/"})
    headers, body = conn.get_object(unique_name, "m")
    assert headers["x-object-manifest"] == f"{unique_name}/b/"
    assert body == b"second"
