"""Large bodies written with O_DIRECT: bytes, tails, fallbacks, and the node using it."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import random

import pytest
import xxhash

from swiftlike.common.timestamp import Timestamp
from swiftlike.storage import direct_write, diskfile
from swiftlike.storage.direct_write import DIRECT_ALIGN, BufferPool, DirectSink, open_direct
from swiftlike.storage.diskfile import BODY_CHECKSUM_KEY, ObjectWriter, read_metadata
from tests.storage.test_object_server import OBJ, object_files, put


def _pieces(total: int, seed: int) -> list[bytes]:
    """``total`` bytes cut at random places, as a socket would hand them over."""
    rng = random.Random(seed)
    pieces = []
    while total:
        size = min(total, rng.choice([1, 7, 4096, 65536, 65537, 300_000]))
        pieces.append(rng.randbytes(size))
        total -= size
    return pieces


def _direct_supported(path: str) -> bool:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        return open_direct(fd, BufferPool(size=DIRECT_ALIGN)) is not None
    finally:
        os.close(fd)
        os.unlink(path)


@pytest.fixture
def device(tmp_path):
    (tmp_path / "tmp").mkdir()
    if not _direct_supported(str(tmp_path / "probe")):
        pytest.skip("this file system does not do O_DIRECT")
    return tmp_path


@pytest.mark.parametrize("total", [0, 1, DIRECT_ALIGN, 2 * 1024 * 1024,
                                   2 * 1024 * 1024 + 4095, 3 * 1024 * 1024 + 12345])
def test_object_writer_direct_stores_exactly_the_bytes(device, total):
    pool = BufferPool()
    object_dir = str(device / "objects" / "1" / "abc" / "abcd")
    writer = ObjectWriter(str(device), object_dir)
    writer.open(total, pool)
    assert writer.direct is not None
    assert fcntl.fcntl(writer.fd, fcntl.F_GETFL) & os.O_DIRECT
    pieces = _pieces(total, seed=total)
    writer.write_chunks(pieces)
    body = b"".join(pieces)
    writer.commit(Timestamp(1700000000.5), ".data", {"ETag": "x"})
    assert writer.direct is None and len(pool._free) == 1  # the buffer went back
    with open(os.path.join(object_dir, Timestamp(1700000000.5).internal + ".data"),
              "rb") as handle:
        assert handle.read() == body
    assert writer.md5 is not None and writer.md5.hexdigest() == hashlib.md5(body).hexdigest()
    assert writer.body_checksum_hex() in (None, xxhash.xxh3_128(body).hexdigest())


def test_buffers_are_reused_and_bounded():
    pool = BufferPool(size=DIRECT_ALIGN, keep=2)
    taken = [pool.take() for _ in range(3)]
    for buffer in taken:
        pool.give_back(buffer)
    assert len(pool._free) == 2 and taken[2].closed
    assert pool.take() is taken[1]
    pool.close()
    assert pool._free == [] and taken[0].closed


def test_short_write_finishes_buffered(device, monkeypatch):
    """A write that takes part of a buffer leaves the offset unaligned: the sink turns
    O_DIRECT off and writes everything else through the page cache."""
    path = str(device / "short")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    sink = open_direct(fd, BufferPool(size=64 * 1024))
    assert sink is not None
    real_write = os.write
    calls = []

    def short_once(target, data):
        calls.append(len(data))
        if target == fd and len(calls) == 1:  # the kernel took 1000 bytes only
            direct_write._set_direct(fd, False)
            taken = real_write(target, memoryview(data)[:1000])
            direct_write._set_direct(fd, True)
            return taken
        return real_write(target, data)

    monkeypatch.setattr(os, "write", short_once)
    body = random.Random(5).randbytes(200_000)
    sink.write(body)
    sink.finish()
    monkeypatch.undo()
    assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
    os.close(fd)
    with open(path, "rb") as handle:
        assert handle.read() == body
    assert calls[0] == 64 * 1024 and calls[1] == 64 * 1024 - 1000


def test_file_system_without_o_direct_writes_buffered(tmp_path, monkeypatch):
    def refuse(fd, on):
        raise OSError(errno.EINVAL, "O_DIRECT not supported")

    monkeypatch.setattr(direct_write, "_set_direct", refuse)
    (tmp_path / "tmp").mkdir()
    writer = ObjectWriter(str(tmp_path), str(tmp_path / "objects" / "1" / "abc" / "abcd"))
    writer.open(5 * 1024 * 1024, BufferPool())
    assert writer.direct is None
    writer.write(b"x" * 10000)
    writer.commit(Timestamp(1700000000.5), ".data", {})
    assert os.path.getsize(writer.object_dir + "/" + Timestamp(1700000000.5).internal
                           + ".data") == 10000


def test_abort_returns_the_buffer(device):
    pool = BufferPool()
    writer = ObjectWriter(str(device), str(device / "objects" / "1" / "abc" / "abcd"))
    writer.open(5 * 1024 * 1024, pool)
    writer.write(b"y" * 5000)
    writer.abort()
    assert writer.direct is None and len(pool._free) == 1
    assert os.listdir(device / "tmp") == []


@pytest.mark.parametrize("size", [4 * 1024 * 1024 + 1, 5 * 1024 * 1024])
async def test_node_writes_large_bodies_direct(node, ts, size, monkeypatch):
    """At direct_write_min and above a node PUT goes through O_DIRECT; the object reads
    back whole and checked, with the usual md5 and xxh3 stamp."""
    opened = []
    real_open_direct = diskfile.open_direct

    def spy(fd, pool):
        sink = real_open_direct(fd, pool)
        opened.append(sink)
        return sink

    monkeypatch.setattr(diskfile, "open_direct", spy)
    body = random.Random(size).randbytes(size)
    status, headers, _ = await put(node, ts, body)
    assert status == 201 and headers["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    assert len(opened) == 1
    meta = read_metadata(object_files(node, "*.data")[0])
    assert meta[BODY_CHECKSUM_KEY] == xxhash.xxh3_128(body).hexdigest()
    async with node.session.get(node.url(OBJ)) as resp:
        assert resp.status == 200 and await resp.read() == body
    async with node.session.get(node.url(OBJ), headers={"Range": "bytes=4194000-4194400"}
                                ) as resp:
        assert resp.status == 206 and await resp.read() == body[4194000:4194401]


async def test_node_below_direct_write_min_writes_buffered(node_factory, ts, monkeypatch):
    node = await node_factory(direct_write_min=0)
    called = []
    monkeypatch.setattr(diskfile, "open_direct", lambda fd, pool: called.append(fd))
    body = os.urandom(5 * 1024 * 1024)
    status, _, _ = await put(node, ts, body)
    assert status == 201 and called == []
    async with node.session.get(node.url(OBJ)) as resp:
        assert await resp.read() == body


def test_sink_rejects_nothing_it_was_given(device):
    """Pieces larger than the buffer are split across writes without loss."""
    path = str(device / "big-pieces")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    sink = DirectSink(fd, BufferPool(size=8192))
    direct_write._set_direct(fd, True)
    body = random.Random(9).randbytes(100_000)
    sink.write(body[:50_000])
    sink.write(memoryview(body)[50_000:])
    sink.finish()
    os.close(fd)
    with open(path, "rb") as handle:
        assert handle.read() == body
