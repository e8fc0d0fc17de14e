# ruff: noqa: ASYNC230, ASYNC240
"""The auditor's full pass on streamed objects written with the proxy's md5 footer.

Since the footer, a streamed object's ETag (the proxy's md5) and its xxh3 stamp (the
node's own hash of what it wrote) come from different places; the full pass checks the
stored bytes against both, so bit rot and a wrong ETag are both caught.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import mmap
import os

import aiohttp
import pytest
import xxhash

from swiftlike.common.body_footer import FOOTER_HEADER, FOOTER_VERSION, make_footer
from swiftlike.common.timestamp import Timestamp
from swiftlike.daemons.auditor import ObjectAuditor
from swiftlike.storage.direct_read import AlignedBuffers, DirectReader
from swiftlike.storage.diskfile import BODY_CHECKSUM_KEY, gather_ondisk_files, read_metadata
from tests.daemons.mini_cluster import MiniCluster, MiniNode

SIZE = 1024 * 1024 + 99  # a streamed PUT (above the node's small-object limit)


async def footer_put(cluster: MiniCluster, name: str, body: bytes,
                     md5_hex: str | None = None) -> tuple[MiniNode, str]:
    """PUT through one real node's HTTP API as the proxy does; returns the .data path."""
    part, devs = cluster.ring.get_nodes("AUTH_a", "c", name)
    node = cluster.node_of(devs[0])
    md5_hex = md5_hex or hashlib.md5(body).hexdigest()
    headers = {"X-Timestamp": Timestamp.now().internal, "Content-Type": "a/b",
               FOOTER_HEADER: FOOTER_VERSION}
    url = f"http://127.0.0.1:{node.port}/{node.device}/{part}/AUTH_a/c/{name}"
    async with aiohttp.ClientSession() as s, s.put(
            url, data=body + make_footer(md5_hex, len(body)), headers=headers) as r:
        assert r.status == 201, await r.text()
    object_dir = cluster.object_dir(node, "AUTH_a", "c", name)
    return node, os.path.join(object_dir, gather_ondisk_files(object_dir).data_file)


async def audit(cluster: MiniCluster, node: MiniNode, mode: str) -> dict:
    ctx = cluster.context(node)
    try:
        result = await ObjectAuditor(ctx, {"files_per_second": 0,
                                           "bytes_per_second": 0}).run_once(mode)
    finally:
        await ctx.close()
    return result[node.device]["counts"]


def quarantined(node: MiniNode) -> list[str]:
    root = os.path.join(node.device_path, "quarantined", "objects")
    return os.listdir(root) if os.path.isdir(root) else []


async def test_clean_streamed_object_passes_the_full_audit(cluster):
    body = os.urandom(SIZE)
    node, data = await footer_put(cluster, "clean", body)
    meta = read_metadata(data)
    assert meta[BODY_CHECKSUM_KEY] == xxhash.xxh3_128(body).hexdigest()
    counts = await audit(cluster, node, "full")
    assert counts.get("quarantined", 0) == 0
    assert counts["bytes_audited"] >= SIZE
    assert os.path.exists(data)


async def test_rotten_bytes_of_a_streamed_object_are_quarantined(cluster):
    node, data = await footer_put(cluster, "rot", os.urandom(SIZE))
    with open(data, "r+b") as handle:
        handle.seek(SIZE // 2)
        handle.write(b"\x00rot\x00")  # same size: only the full pass can tell
    assert (await audit(cluster, node, "quick")).get("quarantined", 0) == 0
    assert (await audit(cluster, node, "full"))["quarantined"] == 1
    assert not os.path.exists(data)
    assert quarantined(node)


async def test_a_footer_md5_that_disagrees_with_the_bytes_is_caught(cluster):
    """The node trusts the proxy's md5; the auditor is what checks it afterwards."""
    body = os.urandom(SIZE)
    node, data = await footer_put(cluster, "lying", body, md5_hex="f" * 32)
    meta = read_metadata(data)
    assert meta["ETag"] == "f" * 32
    assert meta[BODY_CHECKSUM_KEY] == xxhash.xxh3_128(body).hexdigest()  # bytes intact
    assert (await audit(cluster, node, "full"))["quarantined"] == 1
    assert not os.path.exists(data)


async def test_a_stamp_that_disagrees_with_the_bytes_is_caught(cluster):
    body = os.urandom(SIZE)
    node = cluster.nodes[0]
    cluster.write_local(node, "AUTH_a", "c", "stamped", body,
                        extra={BODY_CHECKSUM_KEY: "0" * 32})
    assert (await audit(cluster, node, "full"))["quarantined"] == 1


def resident_pages(path: str) -> int:
    """Pages of ``path`` in the page cache now (mincore over a shared read-only mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = os.path.getsize(path)
    pages = -(-size // mmap.PAGESIZE)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        try:
            vec = ctypes.create_string_buffer(pages)
            assert libc.mincore(addr, size, vec) == 0, ctypes.get_errno()
            return sum(b & 1 for b in vec.raw)
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def cache_then_evict(path: str) -> None:
    """Read the file through the page cache (so it was there), then drop it again."""
    fd = os.open(path, os.O_RDONLY)
    try:
        while os.read(fd, 1 << 20):
            pass
        assert resident_pages(path) > 0
        os.fsync(fd)  # dirty pages cannot be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert resident_pages(path) == 0


async def test_the_full_pass_leaves_the_page_cache_as_it_found_it(cluster):
    """Reading every object through the page cache would push out what clients read."""
    node, data = await footer_put(cluster, "cold", os.urandom(4 * SIZE))
    probe = os.open(data, os.O_RDONLY)
    try:
        reader = DirectReader.open(probe, AlignedBuffers(4096))
        if reader is None:
            pytest.skip("this file system refuses O_DIRECT (the pass falls back to the cache)")
        reader.close()
    finally:
        os.close(probe)
    cache_then_evict(data)
    counts = await audit(cluster, node, "full")
    assert counts.get("quarantined", 0) == 0 and counts["bytes_audited"] >= 4 * SIZE
    assert resident_pages(data) == 0


async def test_where_o_direct_is_refused_the_pass_still_reads_everything(cluster, monkeypatch):
    """A file system that refuses O_DIRECT (EINVAL on the read): rot is still found."""
    real_read = DirectReader.read

    def refused(self, offset, size, hasher=None):
        if offset:
            raise OSError(errno.EINVAL, "O_DIRECT refused")
        return real_read(self, offset, size, hasher)

    monkeypatch.setattr(DirectReader, "read", refused)
    node, data = await footer_put(cluster, "fallback", os.urandom(3 * SIZE))
    counts = await audit(cluster, node, "full")
    assert counts.get("quarantined", 0) == 0 and counts["bytes_audited"] == 3 * SIZE
    with open(data, "r+b") as handle:
        handle.seek(2 * SIZE)
        handle.write(b"\x00rot\x00")
    assert (await audit(cluster, node, "full"))["quarantined"] == 1


async def test_short_reads_mid_file_do_not_end_the_body(cluster, monkeypatch):
    """A read may return less than asked before the end: the pass reads on from there."""
    real_read = DirectReader.read

    def short(self, offset, size, hasher=None):
        return real_read(self, offset, min(size, 5000), hasher)

    monkeypatch.setattr(DirectReader, "read", short)
    node, _ = await footer_put(cluster, "short", os.urandom(2 * SIZE))
    counts = await audit(cluster, node, "full")
    assert counts.get("quarantined", 0) == 0 and counts["bytes_audited"] == 2 * SIZE
