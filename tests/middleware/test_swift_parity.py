"""Behaviour a differential run against OpenStack Swift 2.38 found different, now Swift's.

Each test drives the session's real `swiftlike serve` over loopback with raw aiohttp
(or python-swiftclient) and checks what Swift answered to the same requests.
"""

from __future__ import annotations

import hashlib
import json
import time

import aiohttp
from multidict import CIMultiDict

from tests.middleware.helpers import Account


async def _req(http: aiohttp.ClientSession, account: Account, method: str, path: str,
               body: bytes | None = None, **headers: str
               ) -> tuple[int, CIMultiDict[str], bytes]:
    async with http.request(method, account.url + path, data=body,
                            headers=account.headers(**headers)) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


async def test_a_copy_keeps_the_source_expiry_unless_told_otherwise(http, account,
                                                                    unique_name):
    c = f"/{unique_name}"
    at = str(int(time.time()) + 3600)
    assert (await _req(http, account, "PUT", c))[0] in (201, 202)
    assert (await _req(http, account, "PUT", f"{c}/src", b"abcdef",
                       **{"X-Delete-At": at}))[0] == 201
    status, headers, _ = await _req(http, account, "COPY", f"{c}/src",
                                    Destination=f"{unique_name}/copied")
    assert status == 201 and headers.get("X-Delete-At") == at
    status, _, _ = await _req(http, account, "PUT", f"{c}/from", b"",
                              **{"X-Copy-From": f"{unique_name}/src"})
    assert status == 201
    for name in ("copied", "from"):
        assert (await _req(http, account, "HEAD", f"{c}/{name}"))[1].get("X-Delete-At") == at
    # the request's own expiry wins; fresh metadata leaves the source's behind
    later = str(int(time.time()) + 7200)
    await _req(http, account, "COPY", f"{c}/src", Destination=f"{unique_name}/later",
               **{"X-Delete-At": later})
    await _req(http, account, "COPY", f"{c}/src", Destination=f"{unique_name}/fresh",
               **{"X-Fresh-Metadata": "true"})
    assert (await _req(http, account, "HEAD", f"{c}/later"))[1].get("X-Delete-At") == later
    assert "X-Delete-At" not in (await _req(http, account, "HEAD", f"{c}/fresh"))[1]


async def test_a_ranged_copy_copies_the_range(http, account, unique_name):
    c = f"/{unique_name}"
    await _req(http, account, "PUT", c)
    await _req(http, account, "PUT", f"{c}/src", b"abcdef")
    status, _, _ = await _req(http, account, "PUT", f"{c}/part", b"", Range="bytes=2-3",
                              **{"X-Copy-From": f"{unique_name}/src"})
    assert status == 201
    status, _, body = await _req(http, account, "GET", f"{c}/part")
    assert (status, body) == (200, b"cd")


async def test_head_ignores_range_and_egregious_ranges_are_refused(http, account,
                                                                    unique_name):
    c = f"/{unique_name}"
    await _req(http, account, "PUT", c)
    await _req(http, account, "PUT", f"{c}/o", bytes(range(100)))
    for spec in ("bytes=0-9", "bytes=100-", "bytes=-0", "bytes=0-1,5-6"):
        status, headers, _ = await _req(http, account, "HEAD", f"{c}/o", Range=spec)
        assert (status, headers["Content-Length"]) == (200, "100"), spec
        assert "Content-Range" not in headers
    many = "bytes=" + ",".join(f"{i}-{i}" for i in range(60))
    assert (await _req(http, account, "GET", f"{c}/o", Range=many))[0] == 416
    fifty = "bytes=" + ",".join(f"{i}-{i}" for i in range(50))
    assert (await _req(http, account, "GET", f"{c}/o", Range=fifty))[0] == 206
    overlapping = "bytes=0-50,10-60,20-70,30-80"
    assert (await _req(http, account, "GET", f"{c}/o", Range=overlapping))[0] == 416
    backwards = "bytes=" + ",".join(f"{i}-{i}" for i in range(80, 0, -10))
    assert (await _req(http, account, "GET", f"{c}/o", Range=backwards))[0] == 416
    status, _, body = await _req(http, account, "GET", f"{c}/o", Range="bytes=0-9,")
    assert (status, len(body)) == (200, 100)  # malformed: ignored, as Swift does


async def test_name_limits_count_characters_as_swift_does(http, account, unique_name):
    """600 "é" is 1,200 bytes: Swift takes it as an object name (its limit, 1,024,
    counts characters), and so does everything behind our proxy, listings included."""
    from urllib.parse import quote

    container = unique_name + "é" * 200  # over 256 bytes, under 256 characters
    c = "/" + quote(container)
    assert (await _req(http, account, "PUT", c))[0] in (201, 202)
    long_name = "é" * 1024
    assert (await _req(http, account, "PUT", f"{c}/{quote(long_name)}", b"data"))[0] == 201
    status, _, body = await _req(http, account, "GET", f"{c}/{quote(long_name)}")
    assert (status, body) == (200, b"data")
    async with http.get(account.url + c, params={"format": "json"},
                        headers=account.headers()) as resp:
        assert [row["name"] for row in await resp.json()] == [long_name]
    assert (await _req(http, account, "PUT", f"{c}/{quote(long_name + 'x')}", b"x"))[0] == 400
    assert (await _req(http, account, "PUT", "/" + quote("é" * 257)))[0] == 400


async def test_listing_parameters_as_swift_reads_them(http, account, unique_name):
    c = f"/{unique_name}"
    await _req(http, account, "PUT", c)
    for name in ("a/b", "a/b/c", "a/c", "d"):
        await _req(http, account, "PUT", f"{c}/{name}", b"x")

    async def names(**params: str) -> tuple[int, list[str]]:
        async with http.get(account.url + c, params={"format": "json", **params},
                            headers=account.headers()) as resp:
            if resp.status != 200:
                return resp.status, []
            return 200, [row.get("name") or row["subdir"] for row in await resp.json()]

    assert await names(delimiter="a/") == (200, ["a/", "d"])  # several characters
    assert await names(delimiter="/b") == (200, ["a/b", "a/c", "d"])
    assert await names(path="a") == (200, ["a/b", "a/c"])  # one pseudo-directory
    assert await names(limit="-1") == (200, ["a/b", "a/b/c", "a/c", "d"])  # ignored
    assert await names(limit="abc") == (200, ["a/b", "a/b/c", "a/c", "d"])
    assert (await names(limit="10001"))[0] == 412
    async with http.get(account.url + c + "?prefix=%FF", headers=account.headers()) as resp:
        assert resp.status == 400
    status, headers, _ = await _req(http, account, "HEAD", c)
    assert status == 204 and headers["Last-Modified"].endswith(" GMT")


async def test_a_versions_listing_is_json_unless_asked_otherwise(http, account, unique_name):
    c = f"/{unique_name}"
    await _req(http, account, "PUT", c, **{"X-Versions-Enabled": "true"})
    status, headers, body = await _req(http, account, "GET", c + "?versions")
    assert (status, body) == (200, b"[]")
    assert headers["Content-Type"].startswith("application/json")
    await _req(http, account, "PUT", f"{c}/o", b"one")
    status, headers, body = await _req(http, account, "GET", c + "?versions")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert b'"is_latest": true' in body or b'"is_latest":true' in body
    # JSON alone (checked against Swift 2.38.3): another format by name is 406
    status, headers, body = await _req(http, account, "GET", c + "?versions&format=plain")
    assert status == 406


async def test_slo_manifests_as_swift_writes_them(http, account, unique_name):
    import hashlib
    import json
    import re

    c = f"/{unique_name}"
    await _req(http, account, "PUT", c)
    await _req(http, account, "PUT", f"{c}/seg", b"0123456789")
    manifest = [{"path": f"{unique_name}/seg", "etag": hashlib.md5(b"0123456789").hexdigest(),
                 "size_bytes": 10}]
    status, _, _ = await _req(http, account, "PUT", f"{c}/slo?multipart-manifest=put",
                              json.dumps(manifest).encode())
    assert status == 201
    status, _, body = await _req(http, account, "GET", f"{c}/slo?multipart-manifest=get")
    assert status == 200
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000000",
                        json.loads(body)[0]["last_modified"])
    # an empty manifest is a large object of no bytes, as in Swift
    status, _, _ = await _req(http, account, "PUT", f"{c}/empty?multipart-manifest=put", b"[]")
    assert status == 201
    status, headers, body = await _req(http, account, "GET", f"{c}/empty")
    assert (status, body, headers["Content-Length"]) == (200, b"", "0")
    assert headers.get("X-Static-Large-Object") == "True"
    status, headers, _ = await _req(http, account, "HEAD", f"{c}/empty")
    assert (status, headers["Content-Length"]) == (200, "0")
    assert (await _req(http, account, "GET", f"{c}/empty", Range="bytes=0-1"))[0] == 416


async def test_a_site_with_listings_turned_off_shows_its_error_page(http, account,
                                                                      unique_name):
    c = f"/{unique_name}"
    await _req(http, account, "PUT", c, **{
        "X-Container-Read": ".r:*,.rlistings", "X-Container-Meta-Web-Error": "error.html",
        "X-Container-Meta-Web-Listings": "false"})
    await _req(http, account, "PUT", f"{c}/404error.html", b"<p>lost</p>",
               **{"Content-Type": "text/html"})
    await _req(http, account, "PUT", f"{c}/sub/page.html", b"page")
    for path in (f"{c}/", f"{c}/sub/"):
        async with http.get(account.url + path) as resp:  # anonymous, as a browser
            assert (resp.status, await resp.read()) == (404, b"<p>lost</p>"), path


async def test_a_symlink_put_needs_a_length(http, account, unique_name):
    c = f"/{unique_name}"
    await _req(http, account, "PUT", c)
    url = account.url + f"{c}/link"
    async with http.put(url, skip_auto_headers=("Content-Type",), headers=account.headers(
            **{"X-Symlink-Target": f"{unique_name}/target"})) as resp:
        assert resp.status == 201  # aiohttp sends Content-Length: 0
    # a raw request with neither Content-Length nor Transfer-Encoding
    import asyncio
    from urllib.parse import urlsplit
    parts = urlsplit(account.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write((f"PUT {parts.path}{c}/link2 HTTP/1.1\r\nHost: x\r\n"
                  f"X-Auth-Token: {account.token}\r\nX-Symlink-Target: {unique_name}/t\r\n"
                  "Connection: close\r\n\r\n").encode())
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    assert status_line.split()[1] == b"411"


async def test_listings_negotiate_their_format_on_accept(http, account, unique_name):
    c = f"/{unique_name}"
    await _req(http, account, "PUT", c)
    await _req(http, account, "PUT", f"{c}/o", b"x")
    for path in (c, ""):  # a container and the account
        status, headers, body = await _req(
            http, account, "GET", path, Accept="application/json;q=0.5, text/xml;q=0.9")
        assert status == 200 and headers["Content-Type"] == "text/xml; charset=utf-8"
        assert body.startswith(b"<?xml") and headers["Vary"] == "Accept"
        for method in ("GET", "HEAD"):
            assert (await _req(http, account, method, path, Accept="text/html"))[0] == 406
        assert (await _req(http, account, "GET", path, Accept="json"))[0] == 400
        status, headers, body = await _req(http, account, "GET", path, Accept="text/html")
        assert b"Not Acceptable" in body
        # a format named in the query does not depend on Accept: no Vary (as Swift)
        status, headers, _ = await _req(http, account, "GET", path + "?format=json")
        assert status == 200 and "Vary" not in headers


async def test_info_says_expired_objects_stay_closed(http, account):
    root = account.url.split("/v1/")[0]
    async with http.get(f"{root}/info") as resp:
        assert (await resp.json())["swift"]["allow_open_expired"] is False


async def test_refused_conditions_and_ranges_still_describe_the_object(http, account,
                                                                       unique_name):
    c = f"/{unique_name}"
    await _req(http, account, "PUT", c)
    await _req(http, account, "PUT", f"{c}/o", b"x" * 100, **{
        "Content-Type": "text/x-doc", "Content-Disposition": "inline",
        "X-Object-Meta-Color": "blue", "X-Delete-After": "1000"})
    status, headers, _ = await _req(http, account, "GET", f"{c}/o", **{"If-Match": '"nope"'})
    assert status == 412
    for name in ("ETag", "Last-Modified", "X-Timestamp"):
        assert name in headers, name
    assert headers["Content-Type"].startswith("text/x-doc")
    status, headers, _ = await _req(http, account, "GET", f"{c}/o", Range="bytes=200-")
    assert status == 416 and headers["Content-Range"] == "bytes */100"
    assert "ETag" in headers and headers["Accept-Ranges"] == "bytes"
    # with the object's metadata too (Swift 2.38.3), on 304, 412 and 416 alike
    for condition in ({"If-None-Match": "*"}, {"If-Match": '"nope"'},
                      {"Range": "bytes=200-"}):
        status, headers, _ = await _req(http, account, "GET", f"{c}/o", **condition)
        assert status in (304, 412, 416)
        assert headers["X-Object-Meta-Color"] == "blue", condition
        assert headers["Content-Disposition"] == "inline" and "X-Delete-At" in headers


async def test_a_dlo_asked_for_several_ranges_answers_whole(http, account, unique_name):
    c = f"/{unique_name}"
    await _req(http, account, "PUT", c)
    for i, part in enumerate((b"01234", b"56789")):
        await _req(http, account, "PUT", f"{c}/seg/{i}", part)
    await _req(http, account, "PUT", f"{c}/dlo", b"",
               **{"X-Object-Manifest": f"{unique_name}/seg/"})
    status, _, body = await _req(http, account, "GET", f"{c}/dlo", Range="bytes=0-1,5-6")
    assert (status, body) == (200, b"0123456789")
    status, _, body = await _req(http, account, "GET", f"{c}/dlo", Range="bytes=3-6")
    assert (status, body) == (206, b"3456")


async def test_a_content_encoded_body_is_stored_as_sent(account, unique_name):
    """Swift stores the bytes of a PUT with Content-Encoding as they came (clients
    upload pre-compressed files with it). aiohttp's server decoded them: a declared
    length answered 400, a body that was not gzip 500, and a chunked gzip upload stored
    the decompressed bytes under the gzip header."""
    import gzip

    plain = b"hello, compressed world\n" * 50
    packed = gzip.compress(plain)

    async def chunks(data: bytes):
        for i in range(0, len(data), 16):
            yield data[i:i + 16]

    c = f"/{unique_name}"
    async with aiohttp.ClientSession(auto_decompress=False) as raw:
        assert (await _req(raw, account, "PUT", c))[0] in (201, 202)
        cases = [("sized", "gzip", packed), ("chunked", "gzip", packed),
                 ("not-gzip", "gzip", b"plain"), ("deflate", "deflate", packed),
                 ("brotli", "br", b"\x0b\x02\x80hello\x03")]
        for name, encoding, data in cases:
            body = chunks(data) if name == "chunked" else data
            async with raw.put(f"{account.url}{c}/{name}", data=body, headers=account.headers(
                    **{"Content-Encoding": encoding})) as resp:
                assert resp.status == 201, (name, resp.status, await resp.text())
            status, headers, got = await _req(raw, account, "GET", f"{c}/{name}")
            assert (status, got) == (200, data), name
            assert headers["Content-Encoding"] == encoding
        status, _, _ = await _req(raw, account, "POST", f"{c}/sized",
                                  **{"Content-Encoding": "br", "X-Object-Meta-A": "1"})
        assert status == 202


async def test_transient_sysmeta_is_kept_from_clients(http, account, unique_name):
    c = f"/{unique_name}"
    await _req(http, account, "PUT", c)
    status, _, _ = await _req(http, account, "PUT", f"{c}/o", b"x",
                              **{"X-Object-Transient-Sysmeta-Foo": "1"})
    assert status == 201
    status, headers, _ = await _req(http, account, "HEAD", f"{c}/o")
    assert status == 200 and "X-Object-Transient-Sysmeta-Foo" not in headers


async def test_a_post_replaces_every_header_a_post_may_set(account, unique_name):
    """Swift: a POST's headers replace the whole set a POST may set, so what the PUT or
    an earlier POST set and this POST does not repeat is gone. The data file's values
    used to come back from under each POST."""
    async with aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as http:
        await _post_replaces(http, account, unique_name)


async def _post_replaces(http: aiohttp.ClientSession, account: Account, unique_name: str
                         ) -> None:
    c = f"/{unique_name}"
    await _req(http, account, "PUT", c)
    await _req(http, account, "PUT", f"{c}/o", b"x", **{
        "Content-Type": "text/plain", "Content-Disposition": "inline",
        "Cache-Control": "max-age=1"})
    assert (await _req(http, account, "POST", f"{c}/o", **{
        "Content-Disposition": "attachment", "Content-Encoding": "gzip"}))[0] == 202
    _, headers, _ = await _req(http, account, "HEAD", f"{c}/o")
    assert headers["Content-Disposition"] == "attachment"
    assert "Cache-Control" not in headers
    assert (await _req(http, account, "POST", f"{c}/o", **{"X-Object-Meta-A": "1"}))[0] == 202
    _, headers, _ = await _req(http, account, "HEAD", f"{c}/o")
    for gone in ("Content-Disposition", "Cache-Control", "Content-Encoding"):
        assert gone not in headers, gone
    assert headers["X-Object-Meta-A"] == "1" and headers["Content-Type"] == "text/plain"
    # an empty type changes nothing; swift_bytes is dropped, not refused
    assert (await _req(http, account, "POST", f"{c}/o", **{"Content-Type": ""}))[0] == 202
    assert (await _req(http, account, "HEAD", f"{c}/o"))[1]["Content-Type"] == "text/plain"
    status, _, _ = await _req(http, account, "POST", f"{c}/o", **{
        "Content-Type": "text/csv; charset=utf-8; swift_bytes=5"})
    assert status == 202
    _, headers, _ = await _req(http, account, "HEAD", f"{c}/o")
    assert headers["Content-Type"] == "text/csv; charset=utf-8"
    # whether an object is a static large object is its PUT's business
    status, _, _ = await _req(http, account, "POST", f"{c}/o",
                              **{"X-Static-Large-Object": "True"})
    assert status == 400


async def test_a_post_without_the_manifest_header_ends_a_dlo(http, account, unique_name):
    c = f"/{unique_name}"
    await _req(http, account, "PUT", c)
    await _req(http, account, "PUT", f"{c}/seg/1", b"old")
    await _req(http, account, "PUT", f"{c}/oth/1", b"new")
    await _req(http, account, "PUT", f"{c}/dlo", b"",
               **{"X-Object-Manifest": f"{unique_name}/seg/"})
    await _req(http, account, "POST", f"{c}/dlo",
               **{"X-Object-Manifest": f"{unique_name}/oth/"})
    assert (await _req(http, account, "GET", f"{c}/dlo"))[2] == b"new"
    await _req(http, account, "POST", f"{c}/dlo", **{"X-Object-Meta-A": "1"})
    status, headers, body = await _req(http, account, "GET", f"{c}/dlo")
    assert (status, body) == (200, b"") and "X-Object-Manifest" not in headers


async def test_a_repeated_query_parameter_takes_its_last_value(http, account, unique_name):
    c = f"/{unique_name}"
    await _req(http, account, "PUT", c)
    for name in "abc":
        await _req(http, account, "PUT", f"{c}/{name}", b"x")
    async with http.get(f"{account.url}{c}?format=json&limit=1&limit=3&format=xml",
                        headers=account.headers()) as resp:
        body = await resp.text()
    assert resp.status == 200 and body.startswith("<?xml")
    assert body.count("<object>") == 3


async def test_clearing_either_legacy_location_turns_versioning_off(http, account,
                                                                    unique_name):
    c = f"/{unique_name}"
    await _req(http, account, "PUT", f"{c}-h")
    for flag, clear in (("X-History-Location", "X-Versions-Location"),
                        ("X-Versions-Location", "X-History-Location")):
        assert (await _req(http, account, "PUT", c, **{flag: f"{unique_name}-h"}))[0] in (
            201, 202)
        assert (await _req(http, account, "POST", c, **{clear: ""}))[0] == 204
        _, headers, _ = await _req(http, account, "HEAD", c)
        assert "X-History-Location" not in headers and "X-Versions-Location" not in headers


async def test_metadata_limits_count_what_is_stored_plus_the_request(http, account,
                                                                     unique_name):
    """Swift's servers check the merged metadata: 90 items, then one more, is 400, and
    so is growing past 4,096 bytes in steps; removing items makes room again."""
    c = f"/{unique_name}"
    full = {f"X-Container-Meta-K{i}": "v" for i in range(90)}
    assert (await _req(http, account, "PUT", c, **full))[0] in (201, 202)
    assert (await _req(http, account, "POST", c, **{"X-Container-Meta-Extra": "v"}))[0] == 400
    assert (await _req(http, account, "PUT", c, **{"X-Container-Meta-Extra": "v"}))[0] == 400
    status, _, _ = await _req(http, account, "POST", c, **{
        "X-Remove-Container-Meta-K0": "x", "X-Container-Meta-Extra": "v"})
    assert status == 204
    _, headers, _ = await _req(http, account, "HEAD", c)
    assert "X-Container-Meta-Extra" in headers and "X-Container-Meta-K0" not in headers
    big = f"/{unique_name}-big"
    assert (await _req(http, account, "PUT", big, **{
        f"X-Container-Meta-B{i}": "x" * 250 for i in range(15)}))[0] in (201, 202)
    assert (await _req(http, account, "POST", big, **{
        "X-Container-Meta-Y1": "y" * 250, "X-Container-Meta-Y2": "y" * 100}))[0] == 400


def test_stored_metadata_check_merges_additions_and_removals():
    from swiftlike.common.constraints import Limits, check_metadata_after

    limits = Limits()
    existing = {f"k{i}": "v" for i in range(90)}
    assert check_metadata_after(existing, {"X-Account-Meta-New": "v"}, "account", limits)
    assert check_metadata_after(existing, {"X-Account-Meta-K1": "w"}, "account",
                                limits) is None  # a change, not an addition
    assert check_metadata_after(existing, {"X-Account-Meta-K1": "", "X-Account-Meta-N": "v"},
                                "account", limits) is None
    assert check_metadata_after(existing, {"X-Container-Meta-New": "v"}, "account",
                                limits) is None  # another type's headers do not count


async def test_account_xml_listing_bytes_are_swifts(http, account, unique_name):
    """One element per line, and a roll-up as an empty element (a container listing's
    XML is one line with <subdir><name> roll-ups)."""
    for name in (unique_name, f"{unique_name}-1-a", f"{unique_name}-1-b"):
        assert (await _req(http, account, "PUT", f"/{name}"))[0] in (201, 202)
    async with http.get(account.url, params={"format": "xml", "prefix": unique_name,
                                             "delimiter": "-"},
                        headers=account.headers()) as resp:
        body = await resp.text()
    lines = body.split("\n")
    assert lines[0] == '<?xml version="1.0" encoding="UTF-8"?>'
    assert lines[1] == f'<account name="{account.url.rsplit("/", 1)[1]}">'
    assert lines[2].startswith(f"<container><name>{unique_name}</name><count>0</count>")
    assert lines[2].endswith("</container>")
    assert lines[3] == f'<subdir name="{unique_name}-" />'
    assert lines[4:] == ["</account>"]


async def test_listed_content_types_lose_their_spaces_as_swifts_do(http, account,
                                                                   unique_name):
    """Container listings re-assemble a type's parameters (``type;key=value``); HEAD
    keeps the type as stored. Checked through swiftclient, which reads the JSON."""
    conn = account.conn()
    conn.put_container(unique_name)
    stored = {"plain": "text/plain", "spaced": "text/plain; charset=UTF-8",
              "several": 'text/html ;level = 1; q="a; b" ;flag',
              "slashed": "application/x-thing; path=a/b"}
    for name, content_type in stored.items():
        conn.put_object(unique_name, name, b"x", content_type=content_type)
    _, rows = conn.get_container(unique_name)
    assert {row["name"]: row["content_type"] for row in rows} == {
        "plain": "text/plain", "spaced": "text/plain;charset=UTF-8",
        "several": 'text/html ;level=1;q="a; b";flag=',
        "slashed": "application/x-thing;path=a"}
    for name, content_type in stored.items():
        assert conn.head_object(unique_name, name)["content-type"] == content_type
    async with http.get(f"{account.url}/{unique_name}", params={"format": "xml"},
                        headers=account.headers()) as resp:
        assert "<content_type>text/plain;charset=UTF-8</content_type>" in await resp.text()
    # a link's own type is listed the same way, and its target survives in full
    status, _, _ = await _req(http, account, "PUT", f"/{unique_name}/link", b"",
                              **{"X-Symlink-Target": f"{unique_name}/spaced",
                                 "Content-Type": "text/x-link; a = 1"})
    assert status == 201
    _, rows = conn.get_container(unique_name, prefix="link")
    assert rows[0]["content_type"] == "text/x-link;a=1"
    assert rows[0]["symlink_path"].endswith(f"/{unique_name}/spaced")


async def test_an_slo_is_listed_with_its_manifest_md5_and_its_slo_etag(http, account,
                                                                       unique_name):
    """As Swift 2.38.3 lists a manifest: JSON rows carry ``hash`` (the stored
    manifest's md5, the object's X-Manifest-Etag), ``slo_etag`` (the large object's
    ETag, quoted) and the whole size; XML rows the usual five fields. A copy that
    flattens the SLO into a plain object lists as one."""
    conn = account.conn()
    conn.put_container(unique_name)
    conn.put_object(unique_name, "s0", b"a" * 1024 * 1024)
    conn.put_object(unique_name, "s1", b"b" * 10)
    manifest = [{"path": f"{unique_name}/s{i}"} for i in range(2)]
    status, headers, _ = await _req(http, account, "PUT",
                                    f"/{unique_name}/slo?multipart-manifest=put",
                                    json.dumps(manifest).encode())
    assert status == 201
    slo_etag = headers["Etag"]
    head = conn.head_object(unique_name, "slo")
    assert head["etag"] == slo_etag
    rows = {row["name"]: row for row in conn.get_container(unique_name)[1]}
    assert rows["slo"]["hash"] == head["x-manifest-etag"]
    assert rows["slo"]["slo_etag"] == slo_etag
    assert rows["slo"]["bytes"] == 1024 * 1024 + 10
    assert "slo_etag" not in rows["s0"]
    async with http.get(f"{account.url}/{unique_name}", params={"format": "xml"},
                        headers=account.headers()) as resp:
        text = await resp.text()
    assert f"<name>slo</name><hash>{head['x-manifest-etag']}</hash>" \
        f"<bytes>{1024 * 1024 + 10}</bytes>" in text
    assert "slo_etag" not in text
    conn.copy_object(unique_name, "slo", f"/{unique_name}/flat")
    rows = {row["name"]: row for row in conn.get_container(unique_name)[1]}
    assert "slo_etag" not in rows["flat"]
    whole = hashlib.md5(b"a" * 1024 * 1024 + b"b" * 10).hexdigest()
    assert (rows["flat"]["hash"], rows["flat"]["bytes"]) == (whole, 1024 * 1024 + 10)


async def test_a_versions_listing_refuses_its_format_only_once_readable(http, account,
                                                                       unique_name):
    """As Swift: 404 for a missing container and 401 without a token come before the
    406 of a versions listing asked for in XML."""
    async with http.get(f"{account.url}/{unique_name}-nope",
                        params={"versions": "", "format": "xml"},
                        headers=account.headers()) as resp:
        assert resp.status == 404, resp.status
    await _req(http, account, "PUT", f"/{unique_name}")
    async with http.get(f"{account.url}/{unique_name}",
                        params={"versions": "", "format": "xml"}) as resp:
        assert resp.status == 401, resp.status


async def test_a_versions_listing_shows_an_slos_slo_etag(http, account, unique_name):
    """Swift's slo middleware adds slo_etag to every JSON listing, versions included."""
    c, segs = unique_name, f"{unique_name}-segs"
    await _req(http, account, "PUT", f"/{c}", **{"X-Versions-Enabled": "true"})
    await _req(http, account, "PUT", f"/{segs}")
    await _req(http, account, "PUT", f"/{segs}/s1", b"a" * (1 << 20))
    manifest = json.dumps([{"path": f"/{segs}/s1"}]).encode()
    st, _, _ = await _req(http, account, "PUT", f"/{c}/big?multipart-manifest=put", manifest)
    assert st == 201
    async with http.get(f"{account.url}/{c}", params={"format": "json"},
                        headers=account.headers()) as resp:
        assert "slo_etag" in (await resp.json())[0]
    async with http.get(f"{account.url}/{c}", params={"format": "json", "versions": ""},
                        headers=account.headers()) as resp:
        rows = await resp.json()
    assert rows and all("slo_etag" in r for r in rows), rows
