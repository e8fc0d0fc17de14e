"""Object bodies on a real node: the xxh3 body stamp and the checks of every whole GET."""

from __future__ import annotations

import glob
import hashlib
import os

import aiohttp
import msgpack
import pytest
import xxhash

from swiftlike.storage import body_io
from swiftlike.storage.diskfile import BODY_CHECKSUM_KEY, META_XATTR, read_metadata
from tests.storage.test_object_server import OBJ, object_files, overwrite, put

SIZE = 3 * 1024 * 1024 + 12345  # several 1 MiB batches and an odd tail


async def _read_until_cut(node) -> bytes:
    received = b""
    with pytest.raises(aiohttp.ClientError):
        async with node.session.get(node.url(OBJ)) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_any():
                received += chunk
    return received


def _quarantined(node) -> list[str]:
    return glob.glob(os.path.join(node.devices, "sda", "quarantined", "objects", "*"))


async def test_streamed_put_stamps_xxh3_of_the_stored_bytes(node, ts):
    body = os.urandom(SIZE)
    status, headers, _ = await put(node, ts, body)
    assert status == 201
    assert headers["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    meta = read_metadata(object_files(node, "*.data")[0])
    assert meta[BODY_CHECKSUM_KEY] == xxhash.xxh3_128(body).hexdigest()
    assert meta["ETag"] == hashlib.md5(body).hexdigest()
    async with node.session.get(node.url(OBJ)) as resp:
        assert resp.status == 200
        assert await resp.read() == body
        assert BODY_CHECKSUM_KEY not in resp.headers  # internal, never sent out
    async with node.session.head(node.url(OBJ)) as resp:
        assert BODY_CHECKSUM_KEY not in resp.headers


async def test_small_put_is_stamped_and_reads_check_the_stamp(node, ts):
    body = os.urandom(4096)
    await put(node, ts, body)
    data = object_files(node, "*.data")[0]
    assert read_metadata(data)[BODY_CHECKSUM_KEY] == xxhash.xxh3_128(body).hexdigest()
    async with node.session.get(node.url(OBJ)) as resp:
        assert resp.status == 200 and await resp.read() == body
    overwrite(data, 100, b"rot")
    received = await _read_until_cut(node)
    assert len(received) < len(body)
    assert object_files(node, "*.data") == [] and _quarantined(node)


@pytest.mark.parametrize("stamp", [None, "0" * 32], ids=["no-stamp", "wrong-stamp"])
async def test_small_object_stamp_missing_or_wrong(node, ts, stamp):
    """Written before small objects were stamped: the md5 checks it. A stamp that
    disagrees with the bytes (damaged metadata) fails the check like damaged bytes."""
    body = os.urandom(4096)
    await put(node, ts, body)
    data = object_files(node, "*.data")[0]
    meta = read_metadata(data)
    del meta[BODY_CHECKSUM_KEY]
    if stamp is not None:
        meta[BODY_CHECKSUM_KEY] = stamp
    os.setxattr(data, META_XATTR, msgpack.packb(meta, use_bin_type=True))
    if stamp is None:
        async with node.session.get(node.url(OBJ)) as resp:
            assert resp.status == 200 and await resp.read() == body
        overwrite(data, 100, b"rot")
    received = await _read_until_cut(node)
    assert len(received) < len(body)
    assert _quarantined(node)


async def test_corruption_mid_body_is_caught_by_the_stamp(node, ts):
    body = os.urandom(SIZE)
    await put(node, ts, body)
    overwrite(object_files(node, "*.data")[0], SIZE // 2, b"rot")
    received = await _read_until_cut(node)
    assert len(received) < SIZE
    assert object_files(node, "*.data") == [] and _quarantined(node)


async def test_object_without_stamp_is_still_checked_with_md5(node, ts):
    body = os.urandom(SIZE)
    await put(node, ts, body)
    data = object_files(node, "*.data")[0]
    meta = read_metadata(data)
    del meta[BODY_CHECKSUM_KEY]  # as written before stamps existed
    os.setxattr(data, META_XATTR, msgpack.packb(meta, use_bin_type=True))
    async with node.session.get(node.url(OBJ)) as resp:
        assert await resp.read() == body
    overwrite(data, SIZE - 5, b"12345")
    received = await _read_until_cut(node)
    assert len(received) < SIZE
    assert _quarantined(node)


async def test_wrong_stamp_never_serves_a_complete_body(node, ts):
    """A stamp that disagrees with the bytes (damaged metadata) is a failed check too."""
    body = os.urandom(SIZE)
    await put(node, ts, body)
    data = object_files(node, "*.data")[0]
    meta = read_metadata(data)
    meta[BODY_CHECKSUM_KEY] = "0" * 32
    os.setxattr(data, META_XATTR, msgpack.packb(meta, use_bin_type=True))
    received = await _read_until_cut(node)
    assert len(received) < SIZE
    assert _quarantined(node)


async def test_chunked_streamed_put_in_odd_pieces(node, ts):
    """Chunked transfer: HTTP chunk boundaries never end the body early."""
    body = os.urandom(SIZE)

    async def pieces():
        offset, step = 0, 1
        while offset < SIZE:
            yield body[offset:offset + step]
            offset += step
            step = step * 7 % 300007 + 1  # sizes from 1 byte to ~300 KiB

    headers = {"X-Timestamp": ts(), "Content-Type": "application/octet-stream"}
    async with node.session.put(node.url(OBJ), data=pieces(), headers=headers) as resp:
        assert resp.status == 201
        assert resp.headers["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    meta = read_metadata(object_files(node, "*.data")[0])
    assert meta["Content-Length"] == str(SIZE)
    assert meta[BODY_CHECKSUM_KEY] == xxhash.xxh3_128(body).hexdigest()
    async with node.session.get(node.url(OBJ)) as resp:
        assert await resp.read() == body


def test_read_cached_returns_what_the_page_cache_holds(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_RDONLY)
    try:
        got = body_io.read_cached(fd, 2, 5)
        if got is None:  # no RWF_NOWAIT here: the caller takes the thread path
            pytest.skip("RWF_NOWAIT reads are not supported on this system")
        assert got == b"23456"
        assert body_io.read_cached(fd, 8, 5) == b"89"  # a short read at the end
        assert body_io.read_cached(fd, 10, 5) == b""  # end of file
    finally:
        os.close(fd)


def _pieces_of(most: int):
    """A read_cached that finds only ``most`` bytes cached at any offset."""
    real = body_io.read_cached

    def partial(fd, offset, size):
        got = real(fd, offset, min(size, most))
        return got if got is None else got[:most]
    return partial


@pytest.mark.parametrize("cache", ["never-cached", "partly-cached"])
async def test_streamed_get_when_the_page_cache_misses(node, ts, monkeypatch, cache):
    """Reads the cache cannot answer go to the I/O threads; the body and its check are
    the same either way, also when each read finds only a part cached."""
    monkeypatch.setattr(body_io, "read_cached", (lambda fd, offset, size: None)
                        if cache == "never-cached" else _pieces_of(300_000))
    body = os.urandom(SIZE)
    await put(node, ts, body)
    async with node.session.get(node.url(OBJ)) as resp:
        assert resp.status == 200 and await resp.read() == body
    async with node.session.get(node.url(OBJ), headers={"Range": "bytes=5-2999999"}) as resp:
        assert resp.status == 206 and await resp.read() == body[5:3000000]
    overwrite(object_files(node, "*.data")[0], SIZE // 3, b"rot")
    received = await _read_until_cut(node)
    assert len(received) < SIZE
    assert _quarantined(node)
