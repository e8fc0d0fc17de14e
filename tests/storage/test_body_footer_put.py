"""Streamed PUTs that end in the proxy's md5 footer, on a real node over real sockets.

The node must store exactly the body (never the footer), take the footer's md5 as the
ETag, stamp its own xxh3 of the bytes, and commit nothing when the body is cut short,
the footer is missing, mangled or disagrees with the length that arrived.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest
import xxhash

from swiftlike.common.body_footer import FOOTER_HEADER, FOOTER_LEN, FOOTER_VERSION, make_footer
from swiftlike.storage.diskfile import BODY_CHECKSUM_KEY, read_metadata
from tests.storage.test_object_server import OBJ, object_files

SIZE = 2 * 1024 * 1024 + 777  # above the small-object limit, several write batches


def framed(body: bytes, md5_hex: str | None = None, length: int | None = None) -> bytes:
    md5_hex = md5_hex or hashlib.md5(body).hexdigest()
    return body + make_footer(md5_hex, len(body) if length is None else length)


async def footer_put(node, ts, data, **headers):
    headers = {"X-Timestamp": ts(), "Content-Type": "application/x-test",
               FOOTER_HEADER: FOOTER_VERSION, **headers}
    async with node.session.put(node.url(OBJ), data=data, headers=headers) as resp:
        return resp.status, resp.headers.copy(), await resp.read()


async def in_pieces(data: bytes, size: int = 100_003):
    for start in range(0, len(data), size):
        yield data[start:start + size]
        await asyncio.sleep(0)


def file_size(path: str) -> int:
    return os.stat(path).st_size


def stored_nothing(node) -> bool:
    tmp = os.path.join(node.devices, "sda", "tmp")
    return object_files(node) == [] and (not os.path.isdir(tmp) or os.listdir(tmp) == [])


async def eventually_stored_nothing(node, seconds: float = 5.0) -> bool:
    """The node cleans up after a cut connection in its own time: wait for it."""
    for _ in range(int(seconds / 0.05)):
        if stored_nothing(node):
            return True
        await asyncio.sleep(0.05)
    return stored_nothing(node)


@pytest.fixture(params=[False, True], ids=["buffered", "direct-io"])
async def node(node_factory, request):
    """Every footer case with the body written buffered and with O_DIRECT: the footer is
    held back as a view of the receive buffer in the second case."""
    return await node_factory(direct_io=request.param)


@pytest.mark.parametrize("chunked", [False, True])
async def test_footer_put_stores_the_body_and_the_proxys_md5(node, ts, chunked):
    body = os.urandom(SIZE)
    data = framed(body)
    status, headers, _ = await footer_put(node, ts, in_pieces(data) if chunked else data)
    assert status == 201
    md5 = hashlib.md5(body).hexdigest()
    assert headers["ETag"] == f'"{md5}"'
    data_file = object_files(node, "*.data")[0]
    assert file_size(data_file) == SIZE  # the footer is not part of the object
    meta = read_metadata(data_file)
    assert meta["ETag"] == md5
    assert meta["Content-Length"] == str(SIZE)
    assert meta[BODY_CHECKSUM_KEY] == xxhash.xxh3_128(body).hexdigest()
    async with node.session.get(node.url(OBJ)) as resp:
        assert resp.status == 200
        assert resp.headers["ETag"] == f'"{md5}"'
        assert await resp.read() == body


async def test_footer_put_of_a_small_body_never_stores_the_footer(node, ts):
    status, headers, _ = await footer_put(node, ts, framed(b"tiny"))
    assert status == 201
    assert headers["ETag"] == f'"{hashlib.md5(b"tiny").hexdigest()}"'
    async with node.session.get(node.url(OBJ)) as resp:
        assert await resp.read() == b"tiny"


async def test_empty_body_with_footer(node, ts):
    status, headers, _ = await footer_put(node, ts, in_pieces(framed(b"")))
    assert status == 201
    assert headers["ETag"] == f'"{hashlib.md5(b"").hexdigest()}"'
    assert file_size(object_files(node, "*.data")[0]) == 0


@pytest.mark.parametrize("case", ["missing", "mangled", "wrong-length", "too-short",
                                  "garbage-after"])
@pytest.mark.parametrize("chunked", [False, True])
async def test_bad_footer_commits_nothing(node, ts, case, chunked):
    body = os.urandom(SIZE)
    data = {
        "missing": body,
        "mangled": framed(body).replace(b"SLFOOTER1", b"SLFOOTER2"),
        "wrong-length": framed(body, length=SIZE - 1),
        "too-short": b"x" * (FOOTER_LEN - 1),
        "garbage-after": framed(body) + b"!",
    }[case]
    status, _, text = await footer_put(node, ts, in_pieces(data) if chunked else data)
    assert status == 400, text
    assert b"footer" in text.lower()
    assert stored_nothing(node)


async def test_footer_md5_against_request_etag_is_422(node, ts):
    body = os.urandom(SIZE)
    status, _, _ = await footer_put(node, ts, framed(body), ETag="0" * 32)
    assert status == 422
    assert stored_nothing(node)
    status, _, _ = await footer_put(node, ts, framed(body),
                                    ETag=hashlib.md5(body).hexdigest())
    assert status == 201


async def test_unknown_footer_version_is_refused(node, ts):
    body = os.urandom(SIZE)
    status, _, text = await footer_put(node, ts, framed(body), **{FOOTER_HEADER: "sha9-v7"})
    assert status == 400 and b"sha9-v7" in text
    assert stored_nothing(node)


async def test_short_body_cut_mid_stream_commits_nothing(node, ts):
    """Content-Length promises body + footer; the sender vanishes before the end."""
    body = os.urandom(SIZE)
    data = framed(body)
    _, writer = await asyncio.open_connection("127.0.0.1", node.port)
    head = (f"PUT {OBJ} HTTP/1.1\r\nHost: x\r\nX-Timestamp: {ts()}\r\n"
            f"Content-Type: a/b\r\n{FOOTER_HEADER}: {FOOTER_VERSION}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode()
    writer.write(head + data[:SIZE])  # the whole body, but not the footer
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()
    assert await eventually_stored_nothing(node)
    await asyncio.sleep(0.2)  # and nothing shows up late either
    assert stored_nothing(node)


async def test_plain_put_without_footer_still_hashes_itself(node, ts):
    body = os.urandom(SIZE)
    headers = {"X-Timestamp": ts(), "Content-Type": "a/b"}
    async with node.session.put(node.url(OBJ), data=body, headers=headers) as resp:
        assert resp.status == 201
        assert resp.headers["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    assert file_size(object_files(node, "*.data")[0]) == SIZE
