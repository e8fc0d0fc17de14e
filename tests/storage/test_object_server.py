"""Object verbs of a real storage node over real sockets, checked on disk too."""

from __future__ import annotations

import glob
import hashlib
import os
import time

import aiohttp
import pytest

from swiftlike.storage.diskfile import META_XATTR, read_metadata
from swiftlike.storage.hashes import get_suffix_hashes
from tests.storage.conftest import make_conf

OBJ = "/sda/3/AUTH_t/cont/dir/obj"


def object_files(node, pattern: str = "*") -> list[str]:
    return sorted(glob.glob(os.path.join(node.devices, "sda", "objects", "3", "*", "*",
                                         pattern)))


def overwrite(path: str, offset: int, data: bytes) -> None:
    """Damage a stored file in place (what bit rot would do)."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


async def put(node, ts, body: bytes = b"hello world", path: str = OBJ, **headers):
    headers = {"X-Timestamp": ts(), "Content-Type": "text/plain", **headers}
    async with node.session.put(node.url(path), data=body, headers=headers) as resp:
        return resp.status, resp.headers.copy(), await resp.read()


async def test_put_get_head_roundtrip_with_metadata(node, ts):
    status, headers, _ = await put(node, ts, b"hello world", **{"X-Object-Meta-Color": "blue"})
    assert status == 201
    assert headers["ETag"] == f'"{hashlib.md5(b"hello world").hexdigest()}"'
    async with node.session.get(node.url(OBJ)) as resp:
        assert resp.status == 200
        assert await resp.read() == b"hello world"
        assert resp.headers["Content-Type"] == "text/plain"
        assert resp.headers["X-Object-Meta-Color"] == "blue"
        assert resp.headers["Accept-Ranges"] == "bytes"
        assert resp.headers["X-Backend-Timestamp"] == resp.headers["X-Backend-Data-Timestamp"]
        assert "Last-Modified" in resp.headers
    async with node.session.head(node.url(OBJ)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "11"
        assert await resp.read() == b""
    files = object_files(node)
    assert len(files) == 1 and files[0].endswith(".data")
    meta = read_metadata(files[0])
    assert meta["ETag"] == hashlib.md5(b"hello world").hexdigest()
    assert os.getxattr(files[0], META_XATTR)
    assert os.listdir(os.path.join(node.devices, "sda", "tmp")) == []


async def test_sidecar_metadata_when_xattrs_are_off(node_factory, ts):
    node = await node_factory(xattr=False)
    assert (await put(node, ts, b"abc"))[0] == 201
    data = object_files(node, "*.data")[0]
    assert object_files(node, "*.data.msgpack") == [data + ".msgpack"]
    with pytest.raises(OSError):
        os.getxattr(data, META_XATTR)
    async with node.session.get(node.url(OBJ)) as resp:
        assert resp.status == 200 and await resp.read() == b"abc"


async def test_timestamps_last_writer_wins_and_409(node, ts):
    older, newer = ts(), ts()
    assert (await put(node, lambda: newer, b"new"))[0] == 201
    status, headers, _ = await put(node, lambda: older, b"old")
    assert status == 409
    assert headers["X-Backend-Timestamp"] == newer
    assert (await put(node, lambda: newer, b"same"))[0] == 409
    async with node.session.get(node.url(OBJ)) as resp:
        assert await resp.read() == b"new"
    assert (await put(node, ts, b"newest"))[0] == 201
    assert len(object_files(node)) == 1  # the older .data was cleaned up


async def test_delete_leaves_tombstone_and_blocks_older_put(node, ts):
    await put(node, ts)
    delete_ts = ts()
    async with node.session.delete(node.url(OBJ), headers={"X-Timestamp": delete_ts}) as resp:
        assert resp.status == 204
    files = object_files(node)
    assert [os.path.basename(f) for f in files] == [f"{delete_ts}.ts"]
    async with node.session.get(node.url(OBJ)) as resp:
        assert resp.status == 404
        assert resp.headers["X-Backend-Timestamp"] == delete_ts
    async with node.session.delete(node.url(OBJ), headers={"X-Timestamp": ts()}) as resp:
        assert resp.status == 404  # nothing live, but the newer tombstone is written
    async with node.session.put(node.url(OBJ), data=b"x", headers={
            "X-Timestamp": delete_ts, "Content-Type": "a/b"}) as resp:
        assert resp.status == 409
    async with node.session.delete(node.url(OBJ), headers={"X-Timestamp": "1.0"}) as resp:
        assert resp.status == 409


async def test_post_replaces_user_metadata(node, ts):
    await put(node, ts, **{"X-Object-Meta-A": "1", "X-Object-Meta-B": "2"})
    post_ts = ts()
    async with node.session.post(node.url(OBJ), headers={
            "X-Timestamp": post_ts, "X-Object-Meta-C": "3",
            "Content-Type": "image/png"}) as resp:
        assert resp.status == 202
    async with node.session.head(node.url(OBJ)) as resp:
        assert resp.headers.get("X-Object-Meta-A") is None
        assert resp.headers["X-Object-Meta-C"] == "3"
        assert resp.headers["Content-Type"] == "image/png"
        assert resp.headers["X-Backend-Timestamp"] == post_ts
    async with node.session.post(node.url(OBJ), headers={"X-Timestamp": "2.0"}) as resp:
        assert resp.status == 409
    async with node.session.post(node.url("/sda/3/AUTH_t/cont/none"),
                                 headers={"X-Timestamp": ts()}) as resp:
        assert resp.status == 404
    assert len(object_files(node, "*.meta")) == 1


async def test_missing_or_bad_timestamp_is_400(node):
    for value in (None, "not-a-time"):
        headers = {"Content-Type": "a/b"}
        if value:
            headers["X-Timestamp"] = value
        async with node.session.put(node.url(OBJ), data=b"x", headers=headers) as resp:
            assert resp.status == 400


async def test_etag_mismatch_is_422_and_nothing_stored(node, ts):
    status, _, _ = await put(node, ts, b"body", ETag="0" * 32)
    assert status == 422
    big = os.urandom(200 * 1024)
    status, _, _ = await put(node, ts, big, ETag="0" * 32)
    assert status == 422
    assert object_files(node) == []
    assert os.listdir(os.path.join(node.devices, "sda", "tmp")) == []


async def test_chunked_put_streams(node, ts):
    payload = os.urandom(3 * 1024 * 1024 + 17)

    async def body():
        for start in range(0, len(payload), 100_000):
            yield payload[start:start + 100_000]

    async with node.session.put(node.url(OBJ), data=body(), headers={
            "X-Timestamp": ts(), "Content-Type": "application/x",
            "ETag": hashlib.md5(payload).hexdigest()}) as resp:
        assert resp.status == 201
    async with node.session.get(node.url(OBJ)) as resp:
        assert await resp.read() == payload


async def test_if_none_match_star_on_put(node, ts):
    assert (await put(node, ts, **{"If-None-Match": "*"}))[0] == 201
    assert (await put(node, ts, **{"If-None-Match": "*"}))[0] == 412


async def test_ranges_single_multi_and_416(node, ts):
    body = bytes(range(256)) * 4
    await put(node, ts, body, **{"Content-Type": "application/octet-stream"})
    async with node.session.get(node.url(OBJ), headers={"Range": "bytes=10-19"}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == "bytes 10-19/1024"
        assert await resp.read() == body[10:20]
    async with node.session.get(node.url(OBJ), headers={"Range": "bytes=-5"}) as resp:
        assert await resp.read() == body[-5:]
    async with node.session.get(node.url(OBJ), headers={"Range": "bytes=1000-"}) as resp:
        assert await resp.read() == body[1000:]
    async with node.session.get(node.url(OBJ), headers={"Range": "bytes=0-1,5-6"}) as resp:
        assert resp.status == 206
        content_type = resp.headers["Content-Type"]
        assert content_type.startswith("multipart/byteranges;boundary=")
        boundary = content_type.split("boundary=")[1]
        raw = await resp.read()
        assert int(resp.headers["Content-Length"]) == len(raw)
    parts = [p for p in raw.split(f"--{boundary}".encode()) if p not in (b"", b"--")]
    assert len(parts) == 2
    assert b"Content-Range: bytes 0-1/1024" in parts[0] and parts[0].endswith(body[0:2] + b"\r\n")
    assert b"Content-Range: bytes 5-6/1024" in parts[1] and parts[1].endswith(body[5:7] + b"\r\n")
    async with node.session.get(node.url(OBJ), headers={"Range": "bytes=5000-"}) as resp:
        assert resp.status == 416
        assert resp.headers["Content-Range"] == "bytes */1024"
    async with node.session.get(node.url(OBJ), headers={"Range": "bytes=9-3"}) as resp:
        assert resp.status == 200  # an invalid header is ignored


@pytest.mark.parametrize(("extra", "marked"), [
    ({}, False),
    ({"X-Object-Manifest": "segs/prefix"}, True),
    ({"X-Static-Large-Object": "True"}, True),
    ({"X-Static-Large-Object": "false"}, False),  # a false flag marks nothing
])
async def test_whole_if_metadata_present(node, ts, extra, marked):
    """A manifest or link is answered whole for its middleware; other objects as asked."""
    body = b"0123456789"
    await put(node, ts, body, **extra)
    etag = hashlib.md5(body).hexdigest()
    for headers in ({"Range": "bytes=2-4"}, {"If-None-Match": f'"{etag}"'},
                    {"If-Match": '"nope"'}):
        headers["X-Backend-Whole-If-Metadata-Present"] = \
            "X-Static-Large-Object, x-object-manifest"
        async with node.session.get(node.url(OBJ), headers=headers) as resp:
            data = await resp.read()
        if marked:
            assert (resp.status, data) == (200, body), headers
        else:
            expected = {"Range": (206, body[2:5]), "If-None-Match": (304, b""),
                        "If-Match": (412, None)}[next(iter(headers))]
            assert resp.status == expected[0], headers
            if expected[1] is not None:
                assert data == expected[1]
    # without the header a manifest object is an ordinary one on the node
    async with node.session.get(node.url(OBJ), headers={"Range": "bytes=2-4"}) as resp:
        assert (resp.status, await resp.read()) == (206, body[2:5])


async def test_ranges_on_a_large_object(node, ts):
    body = os.urandom(600 * 1024)
    await put(node, ts, body)
    async with node.session.get(node.url(OBJ), headers={
            "Range": "bytes=100-300000,500000-"}) as resp:
        raw = await resp.read()
        assert resp.status == 206 and int(resp.headers["Content-Length"]) == len(raw)
    assert body[100:300001] in raw and body[500000:] in raw


async def test_conditional_requests(node, ts):
    _, headers, _ = await put(node, ts, b"cond")
    etag = headers["ETag"]
    cases = [
        ({"If-Match": etag}, 200), ({"If-Match": '"nope"'}, 412), ({"If-Match": "*"}, 200),
        ({"If-None-Match": etag}, 304), ({"If-None-Match": '"nope"'}, 200),
        ({"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"}, 304),
        ({"If-Modified-Since": "Thu, 01 Jan 1970 00:00:01 GMT"}, 200),
        ({"If-Unmodified-Since": "Thu, 01 Jan 1970 00:00:01 GMT"}, 412),
        ({"If-Unmodified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"}, 200),
    ]
    for headers, expected in cases:
        async with node.session.get(node.url(OBJ), headers=headers) as resp:
            assert resp.status == expected, headers
            if expected == 304:
                assert resp.headers["ETag"] == etag
    async with node.session.get(node.url("/sda/3/AUTH_t/cont/missing"),
                                headers={"If-Match": "*"}) as resp:
        assert resp.status == 412


async def test_x_delete_at_expiry_and_validation(node, ts):
    soon = int(time.time()) + 1
    assert (await put(node, ts, **{"X-Delete-At": str(soon)}))[0] == 201
    assert (await put(node, ts, **{"X-Delete-At": "100"}))[0] == 400
    queued = glob.glob(os.path.join(node.devices, "sda", "expiring", "*", "*"))
    assert len(queued) == 1
    async with node.session.delete(node.url(OBJ), headers={
            "X-Timestamp": ts(), "X-If-Delete-At": str(soon + 5)}) as resp:
        assert resp.status == 412
    while time.time() < soon + 0.05:
        await __import__("asyncio").sleep(0.1)
    async with node.session.get(node.url(OBJ)) as resp:
        assert resp.status == 404


async def test_unknown_device_bad_paths_and_healthcheck(node, ts):
    async with node.session.put(node.url("/nodev/3/a/c/o"), data=b"x",
                                headers={"X-Timestamp": ts()}) as resp:
        assert resp.status == 507
    for path in ("/sda/notanumber/a/c/o", "/../3/a/c/o", "/sda/3/a%00/c/o", "/%2E%2E/3/a/c/o",
                 "/sda/3"):
        async with node.session.get(node.url(path)) as resp:
            assert resp.status == 400, path
    async with node.session.get(node.url("/healthcheck")) as resp:
        assert resp.status == 200 and await resp.text() == "OK"
    async with node.session.get(node.url("/recon/diskusage")) as resp:
        usage = await resp.json()
        assert {entry["device"] for entry in usage} == {"sda", "sdb"}
        assert all(entry["size"] > 0 for entry in usage)


async def test_full_device_is_507_and_writes_nothing(node_factory, ts):
    node = await node_factory(fallocate_reserve="100%")
    status, _, _ = await put(node, ts, b"x" * 1000)
    assert status == 507
    assert object_files(node) == []


async def test_corrupt_small_object_is_quarantined_and_connection_cut(node, ts):
    await put(node, ts, b"good data!")
    data = object_files(node, "*.data")[0]
    overwrite(data, 0, b"evil")
    with pytest.raises(aiohttp.ClientError):
        async with node.session.get(node.url(OBJ)) as resp:
            await resp.read()
    assert object_files(node, "*.data") == []
    quarantined = glob.glob(os.path.join(node.devices, "sda", "quarantined", "objects", "*"))
    assert len(quarantined) == 1
    async with node.session.get(node.url(OBJ)) as resp:
        assert resp.status == 404


@pytest.mark.parametrize("size", [1024 * 1024, 5 * 1024 * 1024 + 123],
                         ids=["page-cache", "direct-read"])
async def test_corrupt_large_object_never_completes(node, ts, size):
    """Whether the GET reads through the page cache or, for a big object the cache does
    not hold, with O_DIRECT: a body that does not match its checksum never completes."""
    body = os.urandom(size)
    await put(node, ts, body)
    data = object_files(node, "*.data")[0]
    overwrite(data, len(body) - 10, b"0123456789")
    received = b""
    with pytest.raises(aiohttp.ClientError):
        async with node.session.get(node.url(OBJ)) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_any():
                received += chunk
    assert len(received) < len(body)
    assert glob.glob(os.path.join(node.devices, "sda", "quarantined", "objects", "*"))


async def test_big_object_read_back_past_the_page_cache(node, ts):
    """A big object written with O_DIRECT and dropped from the page cache comes back
    whole (read with O_DIRECT), also when its first pages are cached."""
    body = os.urandom(6 * 1024 * 1024 + 77)
    assert (await put(node, ts, body))[0] == 201
    data = object_files(node, "*.data")[0]
    fd = os.open(data, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        for _ in range(2):
            async with node.session.get(node.url(OBJ)) as resp:
                assert resp.status == 200 and await resp.read() == body
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            assert os.pread(fd, 10_000, 0) == body[:10_000]  # a cached prefix
    finally:
        os.close(fd)


async def test_suffix_hashes_change_with_writes(node, ts):
    await put(node, ts)
    device = os.path.join(node.devices, "sda")
    first = get_suffix_hashes(device, 3)
    assert len(first) == 1
    assert get_suffix_hashes(device, 3) == first
    async with node.session.delete(node.url(OBJ), headers={"X-Timestamp": ts()}) as resp:
        assert resp.status == 204
    second = get_suffix_hashes(device, 3)
    assert second.keys() == first.keys() and second != first


def test_enospc_while_writing_removes_temp_and_raises_disk_full(tmp_path):
    """/dev/full answers every write with a real ENOSPC from the kernel."""
    from swiftlike.storage.diskfile import DiskFull, ObjectWriter

    os.makedirs(tmp_path / "tmp")
    writer = ObjectWriter(str(tmp_path), str(tmp_path / "objects" / "1" / "abc" / "x"))
    writer.open()
    os.close(writer.fd)
    writer.fd = os.open("/dev/full", os.O_WRONLY)
    with pytest.raises(DiskFull):
        writer.write(b"data" * 1000)
    assert os.listdir(tmp_path / "tmp") == []
    assert not os.path.exists(tmp_path / "objects")


def test_large_writes_start_writeback_as_they_go(tmp_path):
    """Every WRITEBACK_STEP bytes the disk is asked to start (sync_file_range), so the
    final fsync waits for the tail only; the bytes committed are unchanged."""
    from swiftlike.common.timestamp import Timestamp
    from swiftlike.storage.diskfile import (
        START_WRITEBACK,
        WRITEBACK_STEP,
        ObjectWriter,
        gather_ondisk_files,
    )

    if START_WRITEBACK is None:
        pytest.skip("no sync_file_range on this platform")
    body = os.urandom(WRITEBACK_STEP // 3 + 1) * 7  # a bit over 2 steps
    object_dir = str(tmp_path / "objects" / "1" / "abc" / "x")
    writer = ObjectWriter(str(tmp_path), object_dir)
    for start in range(0, len(body), 65536):
        writer.write(body[start:start + 65536])
    assert writer.writeback_from == 2 * WRITEBACK_STEP  # 64 KiB pieces divide a step
    writer.commit(Timestamp(1700000000), ".data", {"Content-Length": str(len(body))})
    state = gather_ondisk_files(object_dir)
    with open(os.path.join(object_dir, state.data_file), "rb") as handle:
        assert handle.read() == body
    unsynced = ObjectWriter(str(tmp_path), object_dir + "y", fsync=False)
    unsynced.write(body)
    assert unsynced.writeback_from == 0  # fsync off: nothing is forced to disk


async def test_truncated_data_file_is_quarantined_on_head(node, ts):
    await put(node, ts, b"0123456789")
    data = object_files(node, "*.data")[0]
    os.truncate(data, 3)
    async with node.session.head(node.url(OBJ)) as resp:
        assert resp.status == 404
    assert glob.glob(os.path.join(node.devices, "sda", "quarantined", "objects", "*"))


@pytest.mark.parametrize("new_size", [3, 11, 5000], ids=["shorter", "one-byte-longer", "longer"])
async def test_small_data_file_of_the_wrong_size_is_quarantined_on_get(node, ts, new_size):
    await put(node, ts, b"0123456789")
    data = object_files(node, "*.data")[0]
    os.truncate(data, new_size)  # extends with zero bytes when longer
    async with node.session.get(node.url(OBJ)) as resp:
        assert resp.status == 404
        assert await resp.read() != b"0123456789"
    assert glob.glob(os.path.join(node.devices, "sda", "quarantined", "objects", "*"))
    assert object_files(node, "*.data") == []


def test_small_writes_share_a_recent_space_check_big_ones_ask_again(tmp_path, monkeypatch):
    """A statvfs per replica write is avoided for small writes, but what they take is
    counted, and a check is never older than SPACE_CHECK_SECONDS, even under constant
    load. A big write, or one of unknown size (a chunked body's checks), always asks."""
    from types import SimpleNamespace

    from swiftlike.storage import node as node_module

    free = {"bytes": 10_000}
    calls = []
    clock = [1000.0]

    def fake_free(path: str) -> int:
        calls.append(path)
        return free["bytes"]

    monkeypatch.setattr(node_module, "free_bytes", fake_free)
    monkeypatch.setattr(node_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    storage = node_module.StorageNode(make_conf(str(tmp_path), small_object_limit=4096,
                                                fallocate_reserve=100))
    try:
        device = str(tmp_path / "sda")
        assert storage.has_space_for(device, 4000) and storage.has_space_for(device, 4000)
        assert len(calls) == 1
        assert not storage.has_space_for(device, 4000)  # 1,900 above the reserve left
        assert storage.has_space_for(device, 1900)  # a refusal took nothing
        free["bytes"] = 10**9  # someone freed space: a big write asks at once
        assert storage.has_space_for(device, 10**6) and len(calls) == 2
        assert storage.has_space_for(device, 0) and len(calls) == 3  # size unknown
        free["bytes"] = 0
        assert not storage.has_space_for(device, 0) and len(calls) == 4
        free["bytes"] = 10**9
        assert not storage.has_space_for(device, 1)  # that check still holds ...
        clock[0] += node_module.SPACE_CHECK_SECONDS + 0.01
        assert storage.has_space_for(device, 1)  # ... for SPACE_CHECK_SECONDS only
        checks = len(calls)
        step = node_module.SPACE_CHECK_SECONDS / 3
        for _ in range(7):  # a write every third of the window, for over two windows
            clock[0] += step
            assert storage.has_space_for(device, 1)
        assert len(calls) - checks >= 2
    finally:
        storage.io_pool.shutdown()
        storage.db_pool.shutdown()
