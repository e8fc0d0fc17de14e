"""Symlinks end to end over raw HTTP, including static links and a link to an SLO."""

from __future__ import annotations

import hashlib
import json
from urllib.parse import quote

import aiohttp
import pytest

from tests.middleware.lo_helpers import api_for, md5


@pytest.fixture
def api(swift_cluster):
    return api_for(swift_cluster)


async def test_info(swift_cluster):
    async with aiohttp.ClientSession() as session, session.get(
            f"{swift_cluster.proxy_url}/info") as resp:
        info = await resp.json()
    assert info["symlink"] == {"symloop_max": 2, "static_links": True}


async def test_symlink_follow_get_and_errors(api, unique_name):
    c = unique_name
    await api.request("PUT", c)
    await api.request("PUT", f"{c}/target", data=b"target bytes",
                      headers={"Content-Type": "text/plain"})
    status, _, _ = await api.request("PUT", f"{c}/link", data=b"",
                                     headers={"X-Symlink-Target": f"{c}/target"})
    assert status == 201
    status, headers, body = await api.request("GET", f"{c}/link")
    assert status == 200 and body == b"target bytes"
    assert headers["Content-Location"].endswith(f"/{c}/target")
    status, headers, body = await api.request("GET", f"{c}/link",
                                              headers={"Range": "bytes=0-5"})
    assert status == 206 and body == b"target"
    status, headers, _ = await api.request("HEAD", f"{c}/link")
    assert int(headers["Content-Length"]) == 12
    status, headers, body = await api.request("GET", f"{c}/link",
                                              params={"symlink": "get"})
    assert status == 200 and body == b"" and headers["X-Symlink-Target"] == f"{c}/target"
    _, headers, _ = await api.request("HEAD", f"{c}/link")
    assert headers["Content-Type"].startswith("text/plain")  # the target's
    # errors
    status, _, _ = await api.request("PUT", f"{c}/x", data=b"body",
                                     headers={"X-Symlink-Target": f"{c}/target"})
    assert status == 400
    status, _, _ = await api.request("PUT", f"{c}/x", data=b"",
                                     headers={"X-Symlink-Target": "no-object"})
    assert status == 412
    status, _, _ = await api.request("POST", f"{c}/target",
                                     headers={"X-Symlink-Target": f"{c}/other"})
    assert status == 400
    # chains: two hops are fine, three are a loop error
    await api.request("PUT", f"{c}/l2", data=b"", headers={"X-Symlink-Target": f"{c}/link"})
    await api.request("PUT", f"{c}/l3", data=b"", headers={"X-Symlink-Target": f"{c}/l2"})
    status, _, body = await api.request("GET", f"{c}/l2")
    assert status == 200 and body == b"target bytes"
    status, _, body = await api.request("GET", f"{c}/l3")
    assert status == 409 and b"Too many levels of symbolic links" in body
    # dangling
    await api.request("PUT", f"{c}/dangling", data=b"",
                      headers={"X-Symlink-Target": f"{c}/missing"})
    status, _, _ = await api.request("GET", f"{c}/dangling")
    assert status == 404
    # cross-account target header is kept
    await api.request("PUT", f"{c}/xacct", data=b"", headers={
        "X-Symlink-Target": f"{c}/target", "X-Symlink-Target-Account": "AUTH_test"})
    status, headers, body = await api.request("GET", f"{c}/xacct")
    assert body == b"target bytes"
    _, headers, _ = await api.request("HEAD", f"{c}/xacct", params={"symlink": "get"})
    assert headers["X-Symlink-Target-Account"] == "AUTH_test"


async def test_static_links(api, unique_name):
    c = unique_name
    await api.request("PUT", c)
    await api.request("PUT", f"{c}/t", data=b"v1")
    status, _, body = await api.request("PUT", f"{c}/s", data=b"", headers={
        "X-Symlink-Target": f"{c}/t", "X-Symlink-Target-Etag": "0" * 32})
    assert status == 409 and b"does not match" in body
    status, _, _ = await api.request("PUT", f"{c}/s", data=b"", headers={
        "X-Symlink-Target": f"{c}/t", "X-Symlink-Target-Etag": md5(b"v1"),
        "X-Symlink-Target-Bytes": "3"})
    assert status == 409
    status, _, _ = await api.request("PUT", f"{c}/s", data=b"", headers={
        "X-Symlink-Target": f"{c}/gone", "X-Symlink-Target-Etag": md5(b"v1")})
    assert status == 409
    status, _, _ = await api.request("PUT", f"{c}/s", data=b"", headers={
        "X-Symlink-Target": f"{c}/t", "X-Symlink-Target-Etag": md5(b"v1")})
    assert status == 201
    _, headers, body = await api.request("GET", f"{c}/s")
    assert body == b"v1"
    _, headers, _ = await api.request("HEAD", f"{c}/s", params={"symlink": "get"})
    assert headers["X-Symlink-Target-Etag"] == md5(b"v1")
    await api.request("PUT", f"{c}/t", data=b"v2")
    status, _, _ = await api.request("GET", f"{c}/s")
    assert status == 409


async def test_symlink_to_slo(api, unique_name):
    c = unique_name
    await api.request("PUT", c)
    parts = [b"1" * 100, b"2" * 50]
    manifest = []
    for i, part in enumerate(parts):
        await api.request("PUT", f"{c}/seg{i}", data=part)
        manifest.append({"path": f"{c}/seg{i}", "etag": md5(part), "size_bytes": len(part)})
    status, _, _ = await api.request("PUT", f"{c}/slo", data=json.dumps(manifest).encode(),
                                     params={"multipart-manifest": "put"})
    assert status == 201
    slo_etag = md5("".join(m["etag"] for m in manifest).encode())
    _, headers, _ = await api.request("HEAD", f"{c}/slo")
    manifest_etag = headers["X-Manifest-Etag"]
    # as Swift's: a static link to a large object pins its manifest's ETag, not the
    # content's
    status, _, _ = await api.request("PUT", f"{c}/link", data=b"", headers={
        "X-Symlink-Target": f"{c}/slo", "X-Symlink-Target-Etag": slo_etag})
    assert status == 409
    status, _, _ = await api.request("PUT", f"{c}/link", data=b"", headers={
        "X-Symlink-Target": f"{c}/slo", "X-Symlink-Target-Etag": manifest_etag})
    assert status == 201
    status, _, body = await api.request("GET", f"{c}/link")
    assert status == 200 and body == b"".join(parts)
    status, _, body = await api.request("GET", f"{c}/link", headers={"Range": "bytes=98-101"})
    assert status == 206 and body == b"1122"


async def test_post_to_symlink_applies_to_link_and_redirects(api, unique_name):
    c = unique_name
    await api.request("PUT", c)
    await api.request("PUT", f"{c}/target", data=b"data",
                      headers={"X-Object-Meta-Color": "blue"})
    await api.request("PUT", f"{c}/link", data=b"", headers={"X-Symlink-Target": f"{c}/target"})
    status, headers, body = await api.request("POST", f"{c}/link",
                                              headers={"X-Object-Meta-Color": "red"})
    assert status == 307, body
    account_path = "/" + api.url.split("/", 3)[3]
    assert headers["Location"] == f"{account_path}/{c}/target"
    assert b"applied to a symlink" in body
    # the metadata went onto the link, the target is untouched
    _, headers, _ = await api.request("HEAD", f"{c}/link", params={"symlink": "get"})
    assert headers["X-Object-Meta-Color"] == "red"
    assert headers["X-Symlink-Target"] == f"{c}/target"
    _, headers, _ = await api.request("HEAD", f"{c}/target")
    assert headers["X-Object-Meta-Color"] == "blue"
    # following the link still serves the target
    status, _, body = await api.request("GET", f"{c}/link")
    assert status == 200 and body == b"data"
    # a POST to a plain object is a plain 202
    status, headers, _ = await api.request("POST", f"{c}/target",
                                           headers={"X-Object-Meta-Color": "green"})
    assert status == 202 and "Location" not in headers
    # a POST to a missing object is still 404, a cross-account link names its account
    status, _, _ = await api.request("POST", f"{c}/missing")
    assert status == 404
    await api.request("PUT", f"{c}/xacct", data=b"", headers={
        "X-Symlink-Target": f"{c}/target", "X-Symlink-Target-Account": "AUTH_other"})
    status, headers, _ = await api.request("POST", f"{c}/xacct")
    assert status == 307 and headers["Location"] == f"/v1/AUTH_other/{c}/target"


async def test_post_to_static_symlink_names_its_etag(api, unique_name):
    c = unique_name
    await api.request("PUT", c)
    await api.request("PUT", f"{c}/t", data=b"v1")
    await api.request("PUT", f"{c}/s", data=b"", headers={
        "X-Symlink-Target": f"{c}/t", "X-Symlink-Target-Etag": md5(b"v1")})
    status, headers, _ = await api.request("POST", f"{c}/s",
                                           headers={"X-Object-Meta-K": "v"})
    assert status == 307
    assert headers["X-Symlink-Target-Etag"] == md5(b"v1")
    assert headers["Location"].endswith(f"/{c}/t")


async def test_conditional_reads_of_a_link_are_for_its_target(api, unique_name):
    c = unique_name
    await api.request("PUT", c)
    await api.request("PUT", f"{c}/target", data=b"target bytes")
    await api.request("PUT", f"{c}/link", data=b"", headers={"X-Symlink-Target": f"{c}/target"})
    target_etag = md5(b"target bytes")
    link_etag = md5(b"")  # the link object's own: never what a client is compared with
    status, _, _ = await api.request("GET", f"{c}/link",
                                     headers={"If-None-Match": f'"{target_etag}"'})
    assert status == 304
    status, _, body = await api.request("GET", f"{c}/link",
                                        headers={"If-None-Match": f'"{link_etag}"'})
    assert (status, body) == (200, b"target bytes")
    status, _, body = await api.request("GET", f"{c}/link",
                                        headers={"If-Match": f'"{target_etag}"',
                                                 "Range": "bytes=-5"})
    assert (status, body) == (206, b"bytes")
    status, _, _ = await api.request("HEAD", f"{c}/link", headers={"If-Match": f'"{link_etag}"'})
    assert status == 412


def make_links(conn, container: str, target: str, body: bytes) -> str:
    """``container`` with ``target`` and two links to it, ``link`` and the static
    ``static``; returns the target's etag."""
    conn.put_container(container)
    conn.put_object(container, target, body)
    etag = conn.head_object(container, target)["etag"]
    conn.put_object(container, "link", b"",
                    headers={"X-Symlink-Target": f"{container}/{target}"})
    conn.put_object(container, "static", b"", headers={
        "X-Symlink-Target": f"{container}/{target}", "X-Symlink-Target-Etag": etag})
    return etag


@pytest.mark.parametrize("how", ["COPY", "X-Copy-From"])
async def test_copy_with_symlink_get_copies_the_link(account, unique_name, http, how):
    """``?symlink=get`` on a copy copies the link itself (Swift's API), so the copy
    follows the target's later changes; a static link stays pinned."""
    conn = account.conn()
    etag = make_links(conn, unique_name, "target", b"v1")
    base = f"{account.url}/{unique_name}"
    for source, copy in (("link", "copy"), ("static", "static-copy")):
        if how == "COPY":
            request = http.request("COPY", f"{base}/{source}?symlink=get",
                                   headers=account.headers(
                                       Destination=f"{unique_name}/{copy}"))
        else:
            request = http.put(f"{base}/{copy}?symlink=get", data=b"",
                               headers=account.headers(**{
                                   "X-Copy-From": f"{unique_name}/{source}"}))
        async with request as resp:
            assert resp.status == 201, await resp.text()
        headers = conn.head_object(unique_name, copy, query_string="symlink=get")
        assert headers["x-symlink-target"] == f"{unique_name}/target"
        assert headers["content-length"] == "0"
    assert conn.head_object(unique_name, "static-copy", query_string="symlink=get")[
        "x-symlink-target-etag"] == etag
    conn.put_object(unique_name, "target", b"v2")
    assert conn.get_object(unique_name, "copy")[1] == b"v2"  # follows: a link
    # without ?symlink=get a copy of a link is a copy of its target's bytes
    async with http.request("COPY", f"{base}/link", headers=account.headers(
            Destination=f"{unique_name}/bytes")) as resp:
        assert resp.status == 201
    assert "x-symlink-target" not in conn.head_object(unique_name, "bytes",
                                                      query_string="symlink=get")


async def test_links_are_listed_with_their_targets(account, unique_name, http):
    """JSON container listings show ``symlink_path`` (and a static link's
    ``symlink_etag`` and ``symlink_bytes``), as Swift's do; its XML rows have the usual
    five fields alone (checked against Swift 2.38.3). The type is the link's own."""
    conn = account.conn()
    etag = make_links(conn, unique_name, "target obj", b"abc")
    conn.put_object(unique_name, "far", b"", headers={
        "X-Symlink-Target": "c/o", "X-Symlink-Target-Account": "AUTH_test2"})
    rows = {r["name"]: r for r in conn.get_container(unique_name)[1]}
    quoted = quote(f"/v1/AUTH_test/{unique_name}/target obj")
    assert rows["link"]["symlink_path"] == quoted
    assert rows["link"]["content_type"] == "application/symlink"
    assert "symlink_etag" not in rows["link"]
    assert rows["static"]["symlink_path"] == quoted
    assert (rows["static"]["symlink_etag"], rows["static"]["symlink_bytes"]) == (etag, 3)
    assert rows["far"]["symlink_path"] == "/v1/AUTH_test2/c/o"
    assert "symlink_path" not in rows["target obj"]
    async with http.get(f"{account.url}/{unique_name}?format=xml",
                        headers=account.headers()) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith(
            "application/xml")
        text = await resp.text()
    assert "<name>link</name><hash>d41d8cd98f00b204e9800998ecf8427e</hash><bytes>0</bytes>" \
        "<content_type>application/symlink</content_type><last_modified>" in text
    assert "symlink_path" not in text and "symlink_target=" not in text
    async with http.get(f"{account.url}/{unique_name}", headers=account.headers()) as resp:
        assert (await resp.text()).split("\n")[:4] == ["far", "link", "static", "target obj"]


async def test_static_links_name_their_target_and_list_a_large_objects_etag(
        account, unique_name, http):
    """As Swift 2.38.3: a static link refused (or followed) for a target that does not
    match says which target in ``Content-Location``; a static link to an SLO is listed
    with the SLO's ``slo_etag`` beside its own md5."""
    conn = account.conn()
    conn.put_container(unique_name)
    conn.put_object(unique_name, "s0", b"a" * 1024 * 1024)
    conn.put_object(unique_name, "s1", b"b")
    manifest = json.dumps([{"path": f"{unique_name}/s0"}, {"path": f"{unique_name}/s1"}])
    conn.put_object(unique_name, "slo", manifest, query_string="multipart-manifest=put")
    head = conn.head_object(unique_name, "slo")
    conn.put_object(unique_name, "link", b"", headers={
        "X-Symlink-Target": f"{unique_name}/slo",
        "X-Symlink-Target-Etag": head["x-manifest-etag"]})
    for target in ("s1", "missing"):
        async with http.put(f"{account.url}/{unique_name}/bad", data=b"", headers={
                **account.headers(), "X-Symlink-Target": f"{unique_name}/{target}",
                "X-Symlink-Target-Etag": "nope"}) as resp:
            assert resp.status == 409
            assert resp.headers["Content-Location"] == \
                f"/v1/{account.url.rsplit('/', 1)[1]}/{unique_name}/{target}"
    rows = {row["name"]: row for row in conn.get_container(unique_name)[1]}
    assert rows["link"]["hash"] == "d41d8cd98f00b204e9800998ecf8427e"
    assert rows["link"]["slo_etag"] == head["etag"]
    assert rows["link"]["symlink_etag"] == head["x-manifest-etag"]
    assert rows["link"]["symlink_bytes"] == 1024 * 1024 + 1
    conn.put_object(unique_name, "pinned", b"", headers={
        "X-Symlink-Target": f"{unique_name}/s1",
        "X-Symlink-Target-Etag": hashlib.md5(b"b").hexdigest()})
    conn.put_object(unique_name, "s1", b"changed")
    async with http.get(f"{account.url}/{unique_name}/pinned",
                        headers=account.headers()) as resp:
        assert resp.status == 409
        assert resp.headers["Content-Location"].endswith(f"/{unique_name}/s1")


async def test_a_clients_own_symlink_parameter_never_lists_as_a_link(account, unique_name,
                                                                      http):
    """A plain object whose type has a ``symlink_target`` parameter of the client's
    (spaced or not) is no link: the parameter is left out of its listed type."""
    conn = account.conn()
    conn.put_container(unique_name)
    conn.put_object(unique_name, "o", b"hi",
                    content_type="text/plain; symlink_target=other/x; a=1")
    row = conn.get_container(unique_name)[1][0]
    assert "symlink_path" not in row
    assert row["content_type"] == "text/plain;a=1"
    assert conn.head_object(unique_name, "o")["content-type"] == \
        "text/plain; symlink_target=other/x; a=1"
