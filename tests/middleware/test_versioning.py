"""Object versioning end to end: legacy X-Versions-Location / X-History-Location and
the newer X-Versions-Enabled with version ids, delete markers and ?versions listings."""

from __future__ import annotations

import json
from io import BytesIO

import aiohttp
import pytest
from swiftclient.service import SwiftError, SwiftService, SwiftUploadObject

from tests.middleware.lo_helpers import api_for


@pytest.fixture
def api(swift_cluster):
    return api_for(swift_cluster)


def archive_name_prefix(obj: str) -> str:
    return f"{len(obj.encode()):03x}{obj}/"


async def test_info(swift_cluster):
    async with aiohttp.ClientSession() as session, session.get(
            f"{swift_cluster.proxy_url}/info") as resp:
        info = await resp.json()
    assert info["versioned_writes"] == {"allowed_flags": ["x-versions-location",
                                                          "x-history-location"]}
    assert info["object_versioning"] == {}


async def listing(api, container, **params):
    status, _, body = await api.request("GET", container,
                                        params={"format": "json", **params})
    assert status in (200, 204), status
    return json.loads(body or b"[]")


async def test_stack_mode(api, unique_name):
    c, arch = unique_name, f"{unique_name}-arch"
    await api.request("PUT", arch)
    status, _, _ = await api.request("PUT", c, headers={"X-Versions-Location": arch,
                                                        "X-History-Location": arch})
    assert status == 400
    status, _, _ = await api.request("PUT", c, headers={"X-Versions-Location": arch})
    assert status in (201, 202)
    _, headers, _ = await api.request("HEAD", c)
    assert headers["X-Versions-Location"] == arch
    for body in (b"first", b"second", b"third"):
        status, _, _ = await api.request("PUT", f"{c}/obj", data=body)
        assert status == 201
    rows = await listing(api, arch)
    assert [r["name"].startswith(archive_name_prefix("obj")) for r in rows] == [True, True]
    _, _, body = await api.request("GET", f"{arch}/{rows[0]['name']}")
    assert body == b"first"
    status, _, _ = await api.request("DELETE", f"{c}/obj")
    assert status == 204
    _, _, body = await api.request("GET", f"{c}/obj")
    assert body == b"second"
    await api.request("DELETE", f"{c}/obj")
    _, _, body = await api.request("GET", f"{c}/obj")
    assert body == b"first"
    await api.request("DELETE", f"{c}/obj")
    status, _, _ = await api.request("GET", f"{c}/obj")
    assert status == 404
    assert await listing(api, arch) == []
    # switching versioning off
    await api.request("POST", c, headers={"X-Remove-Versions-Location": "x"})
    _, headers, _ = await api.request("HEAD", c)
    assert "X-Versions-Location" not in headers


async def test_history_mode(api, unique_name):
    c, arch = unique_name, f"{unique_name}-hist"
    await api.request("PUT", arch)
    await api.request("PUT", c, headers={"X-History-Location": arch})
    await api.request("PUT", f"{c}/doc", data=b"v1")
    await api.request("PUT", f"{c}/doc", data=b"v2")
    status, _, _ = await api.request("DELETE", f"{c}/doc")
    assert status == 204
    status, _, _ = await api.request("GET", f"{c}/doc")
    assert status == 404
    rows = await listing(api, arch, prefix=archive_name_prefix("doc"))
    assert len(rows) == 3
    assert rows[-1]["content_type"].startswith("application/x-deleted")
    _, _, body = await api.request("GET", f"{arch}/{rows[1]['name']}")
    assert body == b"v2"


async def test_versions_enabled(api, unique_name):
    c = unique_name
    status, _, _ = await api.request("PUT", c, headers={"X-Versions-Enabled": "true"})
    assert status == 201
    _, headers, _ = await api.request("HEAD", c)
    assert headers["X-Versions-Enabled"] == "True"
    status, _, _ = await api.request("POST", c, headers={"X-Versions-Location": "other"})
    assert status == 400
    ids = []
    for body in (b"one", b"two", b"three"):
        status, headers, _ = await api.request("PUT", f"{c}/o", data=body)
        assert status == 201
        ids.append(headers["X-Object-Version-Id"])
    assert len(set(ids)) == 3
    status, headers, body = await api.request("GET", f"{c}/o")
    assert body == b"three" and headers["X-Object-Version-Id"] == ids[2]
    status, headers, body = await api.request("GET", f"{c}/o", params={"version-id": ids[0]})
    assert status == 200 and body == b"one" and headers["X-Object-Version-Id"] == ids[0]
    status, _, _ = await api.request("HEAD", f"{c}/o", params={"version-id": ids[1]})
    assert status == 200
    status, _, _ = await api.request("GET", f"{c}/o", params={"version-id": "junk"})
    assert status == 400
    status, _, _ = await api.request("GET", f"{c}/o", params={"version-id": "1.00000"})
    assert status == 404
    rows = await listing(api, c, versions="")
    assert [r["version_id"] for r in rows] == ids[::-1]
    assert [r["is_latest"] for r in rows] == [True, False, False]
    # the plain listing still shows one object
    assert [r["name"] for r in await listing(api, c)] == ["o"]
    # delete: a marker, the object is gone, older versions stay readable
    status, headers, _ = await api.request("DELETE", f"{c}/o")
    assert status == 204
    marker = headers["X-Object-Version-Id"]
    status, _, _ = await api.request("GET", f"{c}/o")
    assert status == 404
    rows = await listing(api, c, versions="")
    assert rows[0]["version_id"] == marker and rows[0]["is_latest"]
    assert rows[0]["content_type"].startswith("application/x-deleted")
    _, _, body = await api.request("GET", f"{c}/o", params={"version-id": ids[1]})
    assert body == b"two"
    # as in Swift, deleting the marker by id brings nothing back: no version is current
    status, headers, _ = await api.request("DELETE", f"{c}/o", params={"version-id": marker})
    assert status == 204 and headers["X-Object-Current-Version-Id"] == "null"
    status, _, _ = await api.request("GET", f"{c}/o")
    assert status == 404
    assert [r["is_latest"] for r in await listing(api, c, versions="")] == [False] * 3
    # an empty PUT with a version id makes that version current
    status, headers, _ = await api.request("PUT", f"{c}/o", params={"version-id": ids[1]},
                                           data=b"")
    assert status == 201 and headers["X-Object-Version-Id"] == ids[1]
    _, headers, body = await api.request("GET", f"{c}/o")
    assert body == b"two" and headers["X-Object-Version-Id"] == ids[1]
    rows = await listing(api, c, versions="")
    assert [(r["version_id"], r["is_latest"]) for r in rows] == [
        (ids[2], False), (ids[1], True), (ids[0], False)]  # no "null" copy of it
    status, _, _ = await api.request("PUT", f"{c}/o", params={"version-id": ids[1]},
                                     data=b"x")
    assert status == 400
    # deleting the current version by id leaves none current
    await api.request("DELETE", f"{c}/o", params={"version-id": ids[1]})
    status, _, _ = await api.request("GET", f"{c}/o")
    assert status == 404
    await api.request("PUT", f"{c}/o", params={"version-id": ids[2]}, data=b"")
    # a versioned container with versions left cannot be deleted
    status, _, _ = await api.request("DELETE", c)
    assert status == 409
    # the hidden archive does not show in the account listing
    _, _, body = await api.request("GET", "", params={"format": "json"})
    assert all("\x01" not in row["name"] for row in json.loads(body))


async def test_legacy_and_new_do_not_mix(api, unique_name):
    c = unique_name
    status, _, _ = await api.request("PUT", c, headers={"X-Versions-Enabled": "true",
                                                        "X-Versions-Location": "x"})
    assert status == 400
    await api.request("PUT", c, headers={"X-History-Location": "x"})
    status, _, _ = await api.request("POST", c, headers={"X-Versions-Enabled": "true"})
    assert status == 400


async def test_missing_archive_container_keeps_current(api, unique_name):
    c = unique_name
    await api.request("PUT", c, headers={"X-Versions-Location": f"{c}-missing"})
    await api.request("PUT", f"{c}/o", data=b"precious")
    status, _, _ = await api.request("PUT", f"{c}/o", data=b"new")
    assert status == 412
    _, _, body = await api.request("GET", f"{c}/o")
    assert body == b"precious"


async def test_versions_listing_pages_with_version_marker(api, unique_name):
    c = unique_name
    await api.request("PUT", c, headers={"X-Versions-Enabled": "true"})
    expected = []
    for name, count in (("a", 4), ("b", 3)):
        ids = []
        for i in range(count):
            status, headers, _ = await api.request("PUT", f"{c}/{name}", data=b"%d" % i)
            assert status == 201
            ids.append(headers["X-Object-Version-Id"])
        expected += [(name, vid) for vid in reversed(ids)]
    full = await listing(api, c, versions="")
    assert [(r["name"], r["version_id"]) for r in full] == expected
    # page through 7 versions two at a time, resuming with marker + version_marker
    seen, params = [], {"versions": "", "limit": "2"}
    for _ in range(10):
        rows = await listing(api, c, **params)
        if not rows:
            break
        assert len(rows) <= 2
        seen += [(r["name"], r["version_id"], r["is_latest"]) for r in rows]
        params = {"versions": "", "limit": "2", "marker": rows[-1]["name"],
                  "version_marker": rows[-1]["version_id"]}
    assert [(n, v) for n, v, _ in seen] == expected
    assert [latest for _, _, latest in seen] == [True, False, False, False,
                                                 True, False, False]
    # a version_marker in the middle resumes with the older versions of that object
    rows = await listing(api, c, versions="", marker="a", version_marker=expected[1][1])
    assert [(r["name"], r["version_id"]) for r in rows] == expected[2:]
    # a plain marker skips every version of that name
    rows = await listing(api, c, versions="", marker="a")
    assert [(r["name"], r["version_id"]) for r in rows] == expected[4:]
    # bad paging parameters
    for params in ({"version_marker": expected[0][1]},
                   {"marker": "a", "version_marker": "junk"}):
        status, _, _ = await api.request("GET", c, params={"versions": "", **params})
        assert status == 400, params
    # a limit that is not a number is ignored, one over the maximum is not (as Swift)
    status, _, _ = await api.request("GET", c, params={"versions": "", "limit": "x"})
    assert status == 200
    status, _, _ = await api.request("GET", c, params={"versions": "", "limit": "10001"})
    assert status == 412


async def test_versions_listing_marker_on_null_version(api, unique_name):
    c = unique_name
    await api.request("PUT", c)
    await api.request("PUT", f"{c}/old", data=b"before versioning")
    await api.request("PUT", f"{c}/z", data=b"z")
    await api.request("POST", c, headers={"X-Versions-Enabled": "true"})
    _, headers, _ = await api.request("PUT", f"{c}/old", data=b"after")
    newer = headers["X-Object-Version-Id"]
    rows = await listing(api, c, versions="")
    assert [(r["name"], r["version_id"]) for r in rows] == [
        ("old", newer), ("old", "null"), ("z", "null")]
    rows = await listing(api, c, versions="", marker="old", version_marker=newer)
    assert [(r["name"], r["version_id"]) for r in rows] == [("old", "null"), ("z", "null")]
    rows = await listing(api, c, versions="", marker="old", version_marker="null")
    assert [(r["name"], r["version_id"]) for r in rows] == [("z", "null")]


async def test_versions_listing_while_suspended_shows_the_null_version(api, unique_name):
    """A PUT while versioning is suspended makes the current object the null version: the
    ?versions listing shows it first and latest (it used to hide it and call the older
    version latest)."""
    import hashlib

    c = unique_name
    await api.request("PUT", c, headers={"X-Versions-Enabled": "true"})
    _, headers, _ = await api.request("PUT", f"{c}/o", data=b"A")
    first = headers["X-Object-Version-Id"]
    await api.request("POST", c, headers={"X-Versions-Enabled": "false"})
    status, _, _ = await api.request("PUT", f"{c}/o", data=b"B")
    assert status == 201
    _, _, body = await api.request("GET", f"{c}/o")
    assert body == b"B"
    rows = await listing(api, c, versions="")
    assert [(r["version_id"], r["is_latest"]) for r in rows] == [("null", True),
                                                                 (first, False)]
    assert rows[0]["hash"] == hashlib.md5(b"B").hexdigest()
    # re-enabled: the next PUT archives B as the null version, listed once, not current
    await api.request("PUT", c, headers={"X-Versions-Enabled": "true"})
    status, _, _ = await api.request("PUT", f"{c}/o", data=b"C")  # archives B as null
    assert status == 201
    rows = await listing(api, c, versions="")
    assert [r["version_id"] for r in rows].count("null") == 1
    assert rows[0]["is_latest"] and rows[0]["hash"] == hashlib.md5(b"C").hexdigest()


async def test_versions_listing_formats_delimiter_end_marker_and_reverse(api, unique_name):
    """``?versions`` follows the plain listing's parameters (delimiter roll-ups,
    end_marker, reverse) but is JSON alone: any other format asked for, by name or by
    Accept, is 406, as Swift 2.38.3 answers."""
    c = unique_name
    await api.request("PUT", c, headers={"X-Versions-Enabled": "true"})
    for name in ("d/x", "d/y", "e", "e"):
        status, _, _ = await api.request("PUT", f"{c}/{name}", data=name.encode())
        assert status == 201
    rows = await listing(api, c, versions="", delimiter="/")
    assert [r.get("subdir") or r["name"] for r in rows] == ["d/", "e", "e"]
    rows = await listing(api, c, versions="", end_marker="e")
    assert [r["name"] for r in rows] == ["d/x", "d/y"]
    rows = await listing(api, c, versions="", reverse="true")
    assert [r["name"] for r in rows] == ["e", "e", "d/y", "d/x"]
    rows = await listing(api, c, versions="", reverse="true", marker="e")
    assert [r["name"] for r in rows] == ["d/y", "d/x"]
    for params, headers in (({"versions": "", "format": "xml"}, {}),
                            ({"versions": "", "format": "plain"}, {}),
                            ({"versions": ""}, {"Accept": "application/xml"}),
                            ({"versions": ""}, {"Accept": "text/plain"})):
        status, _, _ = await api.request("GET", c, params=params, headers=headers)
        assert status == 406, (params, headers)
    for params, headers in (({"versions": "", "format": "json"}, {}),
                            ({"versions": ""}, {"Accept": "*/*"}),
                            ({"versions": ""}, {"Accept": "application/xml, "
                                                          "application/json;q=0.1"})):
        status, resp_headers, body = await api.request("GET", c, params=params,
                                                       headers=headers)
        assert status == 200
        assert resp_headers["Content-Type"].startswith("application/json")
        rows = json.loads(body)
        assert [r["name"] for r in rows] == ["d/x", "d/y", "e", "e"]
        assert [r["is_latest"] for r in rows] == [True, True, True, False]
    status, _, _ = await api.request("GET", c, params={"versions": ""},
                                     headers={"Accept": "application/json;q=x"})
    assert status == 400


async def test_copy_of_a_version_restores_it(api, unique_name):
    """``COPY ?version-id=`` copies that version, not the current one: the way to
    restore an old version, also from behind a delete marker."""
    c = unique_name
    await api.request("PUT", c, headers={"X-Versions-Enabled": "true"})
    _, headers, _ = await api.request("PUT", f"{c}/o", data=b"one")
    first = headers["X-Object-Version-Id"]
    await api.request("PUT", f"{c}/o", data=b"two")
    status, _, _ = await api.request("COPY", f"{c}/o", params={"version-id": first},
                                     headers={"Destination": f"{c}/o"})
    assert status == 201
    _, _, body = await api.request("GET", f"{c}/o")
    assert body == b"one"
    await api.request("DELETE", f"{c}/o")
    status, _, _ = await api.request("GET", f"{c}/o")
    assert status == 404
    status, _, _ = await api.request("COPY", f"{c}/o", params={"version-id": first},
                                     headers={"Destination": f"{c}/back"})
    assert status == 201
    _, _, body = await api.request("GET", f"{c}/back")
    assert body == b"one"


async def delete_null_version(api, path: str) -> dict:
    """DELETE ``path?version-id=null``, which must answer 204; its headers."""
    status, headers, _ = await api.request("DELETE", path, params={"version-id": "null"})
    assert status == 204
    return headers


async def test_deleting_the_null_version_deletes_an_unversioned_object(api, unique_name):
    """``swift delete --versions`` deletes each listed row with ``?version-id=null``: in
    a container that never kept versions that is the object itself (it used to answer
    204 and keep it, so the container could never be emptied)."""
    c = unique_name
    await api.request("PUT", c)
    await api.request("PUT", f"{c}/plain", data=b"abc")
    rows = await listing(api, c, versions="")
    assert [(r["name"], r["version_id"]) for r in rows] == [("plain", "null")]
    assert (await delete_null_version(api, f"{c}/plain"))["X-Object-Version-Id"] == "null"
    status, _, _ = await api.request("HEAD", f"{c}/plain")
    assert status == 404
    await delete_null_version(api, f"{c}/plain")  # gone already: nothing to do, 204
    status, _, _ = await api.request("DELETE", c)
    assert status == 204


async def test_deleting_the_null_version_keeps_a_numbered_current_object(api, unique_name):
    c = unique_name
    await api.request("PUT", c, headers={"X-Versions-Enabled": "true"})
    await api.request("PUT", f"{c}/o", data=b"A")
    await delete_null_version(api, f"{c}/o")
    _, _, body = await api.request("GET", f"{c}/o")
    assert body == b"A"
    # suspended: B is the null version and current; deleting it leaves no current
    # version (as in Swift), and A stays
    await api.request("POST", c, headers={"X-Versions-Enabled": "false"})
    await api.request("PUT", f"{c}/o", data=b"B")
    await delete_null_version(api, f"{c}/o")
    status, _, _ = await api.request("GET", f"{c}/o")
    assert status == 404
    rows = await listing(api, c, versions="")
    assert [(r["version_id"] != "null", r["is_latest"]) for r in rows] == [(True, False)]


def test_swiftclient_delete_with_versions_empties_an_unversioned_container(swift_cluster,
                                                                            unique_name):
    c = unique_name
    with SwiftService(options={"auth": swift_cluster.auth_url, "user": swift_cluster.user,
                               "key": swift_cluster.key, "auth_version": "1.0"}) as svc:
        uploads = [SwiftUploadObject(BytesIO(b"x" * i), object_name=f"o{i}")
                   for i in range(1, 6)]
        assert all(r["success"] for r in svc.upload(c, uploads))
        results = list(svc.delete(container=c, options={"versions": True}))
        assert all(r["success"] for r in results), results
        assert sum(1 for r in results if r["action"] == "delete_object") == 5
        with pytest.raises(SwiftError, match="not found"):
            svc.stat(container=c)  # the container went too


async def test_a_read_says_where_its_version_stays(api, unique_name):
    """As Swift 2.38.3: a GET/HEAD of a versioned object names its version in
    ``Content-Location``; a miss in a versioned container (behind a delete marker) is
    version "null"; a plain container's reads carry neither."""
    c = unique_name
    await api.request("PUT", c, headers={"X-Versions-Enabled": "true"})
    name = "d\u00e9j\u00e0 vu/o"
    _, headers, _ = await api.request("PUT", f"{c}/{name}", data=b"one")
    vid = headers["X-Object-Version-Id"]
    account = api.url.rsplit("/", 1)[1]
    for method in ("GET", "HEAD"):
        status, headers, _ = await api.request(method, f"{c}/{name}")
        assert status == 200
        assert headers["X-Object-Version-Id"] == vid
        assert headers["Content-Location"] == \
            f"/v1/{account}/{c}/d%C3%A9j%C3%A0%20vu/o?version-id={vid}"
    await api.request("PUT", f"{c}/{name}", data=b"two")
    status, _, body = await api.request("GET", f"{c}/{name}", params={"version-id": vid})
    assert (status, body) == (200, b"one")  # the location still reads that version
    await api.request("DELETE", f"{c}/{name}")
    status, headers, _ = await api.request("GET", f"{c}/{name}")
    assert status == 404 and headers["X-Object-Version-Id"] == "null"
    plain = f"{c}-plain"
    await api.request("PUT", plain)
    await api.request("PUT", f"{plain}/o", data=b"x")
    _, headers, _ = await api.request("GET", f"{plain}/o")
    assert "Content-Location" not in headers and "X-Object-Version-Id" not in headers
    status, headers, _ = await api.request("GET", f"{plain}/missing")
    assert status == 404 and "X-Object-Version-Id" not in headers
