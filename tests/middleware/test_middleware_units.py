"""Fast checks of the large-object, versioning and symlink logic over an in-memory core.

The same behaviour is proved end to end against a real cluster in test_slo.py,
test_dlo.py, test_versioning.py and test_symlink.py.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from swiftlike.proxy.pipeline import SwiftRequest, build_pipeline, info_registry
from tests.middleware.memory_store import MemoryStore

ORDER = ["slo", "dlo", "versioned_writes", "symlink", "object_versioning"]


def body(data: bytes):
    async def gen():
        yield data
    return gen()


@pytest.fixture
def stack():
    store = MemoryStore()
    conf: dict = {}
    app = build_pipeline(store, conf, ORDER)
    return store, app, conf


async def call(app, method, path, data=None, headers=None, query=None):
    headers = dict(headers or {})
    if data is not None:
        headers.setdefault("Content-Length", str(len(data)))
    req = SwiftRequest(method, path, query=query, headers=headers,
                       body=body(data) if data is not None else None)
    resp = await app(req)
    payload = await resp.read() if method != "HEAD" else b""
    return resp, payload


async def test_info_sections(stack):
    _, _, conf = stack
    sections = info_registry(conf).sections()
    assert sections["slo"]["max_manifest_segments"] == 1000
    assert sections["symlink"] == {"symloop_max": 2, "static_links": True}
    assert sections["versioned_writes"]["allowed_flags"] == ["x-versions-location",
                                                             "x-history-location"]
    assert sections["object_versioning"] == {}


async def test_slo_roundtrip_and_errors(stack):
    _, app, _ = stack
    await call(app, "PUT", "/v1/a/c")
    segs = [b"a" * 10, b"b" * 7, b"c" * 5]
    manifest = []
    for i, seg in enumerate(segs):
        await call(app, "PUT", f"/v1/a/c/seg{i}", seg)
        manifest.append({"path": f"c/seg{i}", "etag": hashlib.md5(seg).hexdigest(),
                         "size_bytes": len(seg)})
    resp, _ = await call(app, "PUT", "/v1/a/c/big", json.dumps(manifest).encode(),
                         query={"multipart-manifest": "put"})
    assert resp.status == 201
    expected_etag = hashlib.md5("".join(m["etag"] for m in manifest).encode()).hexdigest()
    assert resp.headers["ETag"] == f'"{expected_etag}"'
    resp, data = await call(app, "GET", "/v1/a/c/big")
    assert data == b"".join(segs) and resp.content_length == 22
    resp, data = await call(app, "GET", "/v1/a/c/big", headers={"Range": "bytes=8-12"})
    assert resp.status == 206 and data == b"aabbb"
    assert resp.headers["Content-Range"] == "bytes 8-12/22"
    resp, data = await call(app, "GET", "/v1/a/c/big", headers={"Range": "bytes=0-1,20-21"})
    assert resp.status == 206 and b"aa" in data and b"cc" in data
    assert len(data) == resp.content_length
    resp, _ = await call(app, "HEAD", "/v1/a/c/big")
    assert resp.content_length == 22 and resp.headers["ETag"] == f'"{expected_etag}"'
    resp, _ = await call(app, "GET", "/v1/a/c/big", headers={"If-Match": '"nope"'})
    assert resp.status == 412
    resp, _ = await call(app, "GET", "/v1/a/c/big",
                         headers={"If-None-Match": f'"{expected_etag}"'})
    assert resp.status == 304
    resp, data = await call(app, "GET", "/v1/a/c/big",
                            query={"multipart-manifest": "get", "format": "raw"})
    assert json.loads(data) == [{**m, "path": "/" + m["path"]} for m in manifest]
    bad = [dict(manifest[0], etag="0" * 32), dict(manifest[1], size_bytes=1),
           {"path": "c/missing"}]
    resp, data = await call(app, "PUT", "/v1/a/c/bad", json.dumps(bad).encode(),
                            query={"multipart-manifest": "put"})
    assert resp.status == 400
    text = data.decode()
    assert "/c/seg0, Etag Mismatch" in text and "/c/seg1, Size Mismatch" in text
    assert "/c/missing, 404 Not Found" in text
    resp, data = await call(app, "DELETE", "/v1/a/c/big",
                            query={"multipart-manifest": "delete"},
                            headers={"Accept": "application/json"})
    result = json.loads(data)
    assert result["Number Deleted"] == 4 and result["Response Status"] == "200 OK"


async def test_dlo(stack):
    _, app, _ = stack
    await call(app, "PUT", "/v1/a/segs")
    await call(app, "PUT", "/v1/a/c")
    for i, part in enumerate([b"one-", b"two-", b"three"]):
        await call(app, "PUT", f"/v1/a/segs/p/{i:03d}", part)
    resp, _ = await call(app, "PUT", "/v1/a/c/dlo", b"", {"X-Object-Manifest": "segs/p/"})
    assert resp.status == 201
    resp, data = await call(app, "GET", "/v1/a/c/dlo")
    assert data == b"one-two-three"
    etags = "".join(hashlib.md5(p).hexdigest() for p in [b"one-", b"two-", b"three"])
    assert resp.headers["ETag"] == f'"{hashlib.md5(etags.encode()).hexdigest()}"'
    resp, data = await call(app, "GET", "/v1/a/c/dlo", headers={"Range": "bytes=2-5"})
    assert resp.status == 206 and data == b"e-tw"
    resp, _ = await call(app, "PUT", "/v1/a/c/bad", b"", {"X-Object-Manifest": "nocontainer"})
    assert resp.status == 400


async def test_symlink(stack):
    _, app, _ = stack
    await call(app, "PUT", "/v1/a/c")
    await call(app, "PUT", "/v1/a/c/target", b"hello")
    resp, _ = await call(app, "PUT", "/v1/a/c/link", b"", {"X-Symlink-Target": "c/target"})
    assert resp.status == 201
    resp, data = await call(app, "GET", "/v1/a/c/link")
    assert data == b"hello" and resp.headers["Content-Location"] == "/v1/a/c/target"
    resp, _ = await call(app, "HEAD", "/v1/a/c/link", query={"symlink": "get"})
    assert resp.headers["X-Symlink-Target"] == "c/target"
    resp, _ = await call(app, "PUT", "/v1/a/c/x", b"data", {"X-Symlink-Target": "c/target"})
    assert resp.status == 400
    resp, _ = await call(app, "PUT", "/v1/a/c/x", b"", {"X-Symlink-Target": "justone"})
    assert resp.status == 412
    await call(app, "PUT", "/v1/a/c/l2", b"", {"X-Symlink-Target": "c/link"})
    await call(app, "PUT", "/v1/a/c/l3", b"", {"X-Symlink-Target": "c/l2"})
    resp, data = await call(app, "GET", "/v1/a/c/l2")
    assert data == b"hello"
    resp, data = await call(app, "GET", "/v1/a/c/l3")
    assert resp.status == 409 and b"Too many levels" in data
    md5 = hashlib.md5(b"hello").hexdigest()
    resp, _ = await call(app, "PUT", "/v1/a/c/s", b"", {"X-Symlink-Target": "c/target",
                                                        "X-Symlink-Target-Etag": "f" * 32})
    assert resp.status == 409
    resp, _ = await call(app, "PUT", "/v1/a/c/s", b"", {"X-Symlink-Target": "c/target",
                                                        "X-Symlink-Target-Etag": md5})
    assert resp.status == 201
    await call(app, "PUT", "/v1/a/c/target", b"changed")
    resp, _ = await call(app, "GET", "/v1/a/c/s")
    assert resp.status == 409
    resp, _ = await call(app, "GET", "/v1/a/c/link", headers={"Range": "bytes=1-2"})
    assert resp.status == 206
    await call(app, "DELETE", "/v1/a/c/target")
    resp, _ = await call(app, "GET", "/v1/a/c/link")
    assert resp.status == 404


async def test_legacy_versioning(stack):
    _, app, _ = stack
    await call(app, "PUT", "/v1/a/arch")
    resp, _ = await call(app, "PUT", "/v1/a/c", headers={"X-Versions-Location": "arch",
                                                         "X-History-Location": "arch"})
    assert resp.status == 400
    await call(app, "PUT", "/v1/a/c", headers={"X-Versions-Location": "arch"})
    for v in (b"v1", b"v2", b"v3"):
        await call(app, "PUT", "/v1/a/c/obj", v)
    _, listing = await call(app, "GET", "/v1/a/arch", query={"format": "json"})
    names = [r["name"] for r in json.loads(listing)]
    assert len(names) == 2 and all(n.startswith("003obj/") for n in names)
    await call(app, "DELETE", "/v1/a/c/obj")
    _, data = await call(app, "GET", "/v1/a/c/obj")
    assert data == b"v2"
    await call(app, "DELETE", "/v1/a/c/obj")
    await call(app, "DELETE", "/v1/a/c/obj")
    resp, _ = await call(app, "GET", "/v1/a/c/obj")
    assert resp.status == 404
    await call(app, "POST", "/v1/a/c", headers={"X-History-Location": "arch"})
    await call(app, "PUT", "/v1/a/c/h", b"one")
    await call(app, "DELETE", "/v1/a/c/h")
    resp, _ = await call(app, "GET", "/v1/a/c/h")
    assert resp.status == 404
    _, listing = await call(app, "GET", "/v1/a/arch", query={"format": "json",
                                                             "prefix": "001h/"})
    rows = json.loads(listing)
    assert len(rows) == 2 and rows[1]["content_type"].startswith("application/x-deleted")


async def test_object_versioning(stack):
    _, app, _ = stack
    resp, _ = await call(app, "PUT", "/v1/a/c", headers={"X-Versions-Enabled": "true"})
    assert resp.status == 201
    resp, _ = await call(app, "HEAD", "/v1/a/c")
    assert resp.headers["X-Versions-Enabled"] == "True"
    ids = []
    for v in (b"v1", b"v2", b"v3"):
        resp, _ = await call(app, "PUT", "/v1/a/c/obj", v)
        assert resp.status == 201
        ids.append(resp.headers["X-Object-Version-Id"])
    resp, data = await call(app, "GET", "/v1/a/c/obj")
    assert data == b"v3" and resp.headers["X-Object-Version-Id"] == ids[2]
    resp, data = await call(app, "GET", "/v1/a/c/obj", query={"version-id": ids[0]})
    assert data == b"v1" and resp.headers["X-Object-Version-Id"] == ids[0]
    resp, data = await call(app, "GET", "/v1/a/c", query={"versions": "", "format": "json"})
    rows = json.loads(data)
    assert [r["version_id"] for r in rows] == ids[::-1]
    assert [r["is_latest"] for r in rows] == [True, False, False]
    resp, _ = await call(app, "DELETE", "/v1/a/c/obj")
    marker = resp.headers["X-Object-Version-Id"]
    resp, _ = await call(app, "GET", "/v1/a/c/obj")
    assert resp.status == 404
    _, data = await call(app, "GET", "/v1/a/c", query={"versions": "", "format": "json"})
    rows = json.loads(data)
    assert rows[0]["version_id"] == marker and rows[0]["is_latest"]
    assert rows[0]["content_type"].startswith("application/x-deleted")
    # as in Swift: deleting the delete marker by id does not bring v3 back ...
    resp, _ = await call(app, "DELETE", "/v1/a/c/obj", query={"version-id": marker})
    assert resp.headers["X-Object-Current-Version-Id"] == "null"
    resp, _ = await call(app, "GET", "/v1/a/c/obj")
    assert resp.status == 404
    # ... an empty PUT with its id does
    resp, _ = await call(app, "PUT", "/v1/a/c/obj", b"", query={"version-id": ids[2]})
    assert resp.status == 201 and resp.headers["X-Object-Version-Id"] == ids[2]
    _, data = await call(app, "GET", "/v1/a/c/obj")
    assert data == b"v3"
    # deleting the current version leaves none current; deleting another keeps it
    resp, _ = await call(app, "DELETE", "/v1/a/c/obj", query={"version-id": ids[0]})
    assert resp.headers["X-Object-Current-Version-Id"] == ids[2]
    resp, _ = await call(app, "DELETE", "/v1/a/c/obj", query={"version-id": ids[2]})
    assert resp.headers["X-Object-Current-Version-Id"] == "null"
    resp, _ = await call(app, "GET", "/v1/a/c/obj")
    assert resp.status == 404
    _, data = await call(app, "GET", "/v1/a/c", query={"versions": "", "format": "json"})
    assert [(r["version_id"], r["is_latest"]) for r in json.loads(data)] == [(ids[1], False)]
    resp, _ = await call(app, "GET", "/v1/a/c/obj", query={"version-id": "bogus"})
    assert resp.status == 400
    resp, _ = await call(app, "POST", "/v1/a/c", headers={"X-Versions-Location": "x"})
    assert resp.status == 400
    resp, _ = await call(app, "DELETE", "/v1/a/c")
    assert resp.status == 409


async def test_slo_nested_and_ranged_segments(stack):
    _, app, _ = stack
    await call(app, "PUT", "/v1/a/c")
    await call(app, "PUT", "/v1/a/c/s1", b"0123456789")
    await call(app, "PUT", "/v1/a/c/s2", b"abcdefghij")
    inner = [{"path": "c/s1"}, {"path": "c/s2", "range": "2-4"}]
    resp, _ = await call(app, "PUT", "/v1/a/c/inner", json.dumps(inner).encode(),
                         query={"multipart-manifest": "put"})
    assert resp.status == 201
    outer = [{"path": "c/inner"}, {"path": "c/s1", "range": "-2"}]
    resp, data = await call(app, "PUT", "/v1/a/c/outer", json.dumps(outer).encode(),
                            query={"multipart-manifest": "put"})
    assert resp.status == 201, data
    resp, data = await call(app, "GET", "/v1/a/c/outer")
    assert data == b"0123456789cde89"
    resp, data = await call(app, "GET", "/v1/a/c/outer", headers={"Range": "bytes=9-12"})
    assert data == b"9cde"
    bad = [{"path": "c/s1", "range": "20-30"}]
    resp, data = await call(app, "PUT", "/v1/a/c/bad", json.dumps(bad).encode(),
                            query={"multipart-manifest": "put"})
    assert resp.status == 400 and b"Unsatisfiable Range" in data
    resp, data = await call(app, "DELETE", "/v1/a/c/outer",
                            query={"multipart-manifest": "delete"})
    assert b"Number Deleted: 4" in data  # s1, s2, inner, outer (s1 once found)


async def test_slo_heartbeat_yields_whitespace_while_validating():
    import asyncio

    class SlowHeads(MemoryStore):
        async def __call__(self, req):
            if req.method == "HEAD" and req.path.endswith("/seg"):
                await asyncio.sleep(1.3)
            return await super().__call__(req)

    store = SlowHeads()
    app = build_pipeline(store, {"slo": {"yield_frequency": 1}}, ["slo"])
    await call(app, "PUT", "/v1/a/c")
    await call(app, "PUT", "/v1/a/c/seg", b"12345")
    manifest = [{"path": "c/seg", "size_bytes": 5}]
    resp, data = await call(app, "PUT", "/v1/a/c/m", json.dumps(manifest).encode(),
                            query={"multipart-manifest": "put", "heartbeat": "on"})
    assert resp.status == 202
    assert data.startswith(b" ") and b"Response Status: 201 Created" in data


async def test_null_version_kept_when_versioning_is_enabled(stack):
    _, app, _ = stack
    await call(app, "PUT", "/v1/a/c")
    await call(app, "PUT", "/v1/a/c/o", b"before")
    await call(app, "POST", "/v1/a/c", headers={"X-Versions-Enabled": "true"})
    _, data = await call(app, "GET", "/v1/a/c", query={"versions": "", "format": "json"})
    assert [r["version_id"] for r in json.loads(data)] == ["null"]
    resp, _ = await call(app, "PUT", "/v1/a/c/o", b"after")
    _, data = await call(app, "GET", "/v1/a/c", query={"versions": "", "format": "json"})
    rows = json.loads(data)
    assert [r["version_id"] for r in rows] == [resp.headers["X-Object-Version-Id"], "null"]
    _, data = await call(app, "GET", "/v1/a/c/o", query={"version-id": "null"})
    assert data == b"before"
    resp, _ = await call(app, "GET", "/v1/a/\x01versions\x01c/o")
    assert resp.status == 400


async def test_range_and_conditional_reads_cost_one_store_read(stack):
    """slo, dlo and symlink no longer HEAD an object before a Range or If-* read: the
    object server answers a manifest or link whole (X-Backend-Whole-If-Metadata-Present)
    and the middleware that owns it applies the client's headers."""
    store, app, _ = stack
    await call(app, "PUT", "/v1/a/c")
    await call(app, "PUT", "/v1/a/c/plain", b"0123456789")
    await call(app, "PUT", "/v1/a/c/seg0", b"abcde")
    await call(app, "PUT", "/v1/a/c/seg1", b"fghij")
    manifest = [{"path": f"c/seg{i}", "etag": hashlib.md5(s).hexdigest(), "size_bytes": 5}
                for i, s in enumerate((b"abcde", b"fghij"))]
    await call(app, "PUT", "/v1/a/c/big", json.dumps(manifest).encode(),
               query={"multipart-manifest": "put"})
    await call(app, "PUT", "/v1/a/c/link", b"", {"X-Symlink-Target": "c/big"})
    seen: list[tuple[str, str]] = []

    async def counting(req):
        seen.append((req.method, req.path))
        return await store(req)

    app = build_pipeline(counting, {}, ORDER)
    resp, data = await call(app, "GET", "/v1/a/c/plain", headers={"Range": "bytes=2-4"})
    assert (resp.status, data) == (206, b"234")
    assert seen == [("GET", "/v1/a/c/plain")]
    seen.clear()
    resp, data = await call(app, "GET", "/v1/a/c/big", headers={"Range": "bytes=3-6"})
    assert (resp.status, data) == (206, b"defg")
    assert ("HEAD", "/v1/a/c/big") not in seen and seen[0] == ("GET", "/v1/a/c/big")
    seen.clear()
    resp, data = await call(app, "GET", "/v1/a/c/link", headers={"Range": "bytes=4-5"})
    assert (resp.status, data) == (206, b"ef")
    assert [m for m, _ in seen].count("HEAD") == 0
    assert seen[:2] == [("GET", "/v1/a/c/link"), ("GET", "/v1/a/c/big")]
