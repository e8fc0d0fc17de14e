"""O_DIRECT body writes: whatever the pieces look like, the file holds exactly the body.

The pieces are laid out the way the node's HTTP server lays them out (a prefix that came
with the request head as bytes, then page-aligned arenas whose bytes sit at addresses
congruent to their body offsets), cut at random points, and fed in random batches.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import mmap
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swiftlike.common.timestamp import Timestamp
from swiftlike.storage import body_io, direct_write, diskfile
from swiftlike.storage.direct_read import AlignedBuffers, DirectReader
from swiftlike.storage.direct_write import ALIGNMENT, DirectSpanWriter, buffer_address

ARENA = 256 * 1024


def arena() -> mmap.mmap:
    return mmap.mmap(-1, ARENA, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def server_like_pieces(body: bytes, head_bytes: int, cuts: list[int]) -> list[bytes | memoryview]:
    """``body`` as the node's server would hand it over: ``head_bytes`` as bytes, the rest
    in arenas placed so that address and body offset agree modulo ALIGNMENT, each arena's
    fill cut at the given relative points."""
    pieces: list[bytes | memoryview] = []
    if head_bytes:
        pieces.append(body[:head_bytes])
    offset = head_bytes
    while offset < len(body):
        skew = offset % ALIGNMENT
        buf = arena()
        view = memoryview(buf)
        take = min(ARENA - skew, len(body) - offset)
        view[skew:skew + take] = body[offset:offset + take]
        points = sorted({skew + (c % take) for c in cuts} | {skew, skew + take})
        for start, stop in itertools.pairwise(points):
            pieces.append(view[start:stop])
        offset += take
    return pieces


def written(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def direct_supported(directory: str) -> bool:
    fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o600)
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(0, 3 * ARENA + 5000), head=st.integers(0, 70_000),
       cuts=st.lists(st.integers(0, 10**9), max_size=6),
       batch=st.integers(1, 9))
def test_span_writer_file_equals_the_body(tmp_path, size, head, cuts, batch):
    body = os.urandom(size)
    pieces = server_like_pieces(body, min(head, size), cuts)
    path = str(tmp_path / "f")
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    try:
        spans = DirectSpanWriter(fd)
        for index, piece in enumerate(pieces):
            spans.feed(piece)
            if index % batch == batch - 1:
                spans.drain()
        spans.flush()
        assert spans.pending == 0 and spans.offset == size
    finally:
        os.close(fd)
    assert written(path) == body
    if size - head >= 2 * ARENA and direct_supported(str(tmp_path)):
        assert spans.direct_bytes > 0


def test_pieces_that_do_not_line_up_are_written_buffered(tmp_path):
    """Memory whose address does not agree with the file offset (or read-only bytes)
    never goes out with O_DIRECT, and still lands in order."""
    body = os.urandom(3 * ARENA)
    buf = arena()
    view = memoryview(buf)
    view[1:ARENA] = body[:ARENA - 1]  # off by one from the file offset
    path = str(tmp_path / "f")
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    spans = DirectSpanWriter(fd)
    spans.feed(view[1:ARENA])
    spans.feed(body[ARENA - 1:])
    spans.flush()
    os.close(fd)
    assert written(path) == body and spans.direct_bytes == 0
    assert buffer_address(memoryview(b"read-only")) is None


def test_a_file_system_refusing_o_direct_falls_back_to_buffered(tmp_path, monkeypatch):
    """No file system here refuses O_DIRECT, so the refusal is simulated at fcntl."""
    real = fcntl.fcntl

    def refusing(fd, cmd, arg=0):
        if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "no O_DIRECT here")
        return real(fd, cmd, arg)

    monkeypatch.setattr(direct_write.fcntl, "fcntl", refusing)
    body = os.urandom(2 * ARENA + 77)
    path = str(tmp_path / "f")
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    spans = DirectSpanWriter(fd)
    for piece in server_like_pieces(body, 0, [1000, 90_000]):
        spans.feed(piece)
    spans.flush()
    os.close(fd)
    assert written(path) == body
    assert not spans.enabled and spans.direct_bytes == 0


@pytest.mark.parametrize("footer_md5", [False, True])
def test_object_writer_direct_commit(tmp_path, footer_md5):
    """The streamed-PUT writer: pieces in batches, committed; md5, xxh3 stamp and bytes
    agree with the body; an abort with bytes still held back leaves nothing behind."""
    device = str(tmp_path / "sda")
    object_dir = os.path.join(device, "objects", "1", "abc", "0" * 29 + "abc")
    os.makedirs(os.path.join(device, "tmp"))
    body = os.urandom(2 * ARENA + 4321)
    writer = diskfile.ObjectWriter(device, object_dir, compute_md5=not footer_md5,
                                   direct_io=True)
    writer.open(len(body))
    pieces = server_like_pieces(body, 1500, [5, 70_000, 200_000])
    writer.write_chunks(pieces[:3])
    writer.write_chunks(pieces[3:])
    if not footer_md5:
        assert writer.md5 is not None
        assert writer.md5.hexdigest() == hashlib.md5(body).hexdigest()
    stamp = writer.body_checksum_hex()
    writer.commit(Timestamp(1_700_000_000.5), ".data", {"ETag": "x"})
    data_file = os.path.join(object_dir, Timestamp(1_700_000_000.5).internal + ".data")
    assert written(data_file) == body
    assert stamp == body_io.body_stamp(body)

    aborted = diskfile.ObjectWriter(device, object_dir + "x", direct_io=True)
    aborted.open(len(body))
    aborted.write_chunks(server_like_pieces(body, 0, [123]))
    assert aborted.spans is not None and aborted.spans.pending  # a tail held back
    aborted.abort()
    assert aborted.spans.pending == 0
    assert os.listdir(os.path.join(device, "tmp")) == []


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, 3 * ARENA + 200), size=st.integers(0, ARENA))
def test_direct_reader_returns_exactly_the_asked_bytes(tmp_path, offset, size):
    """Reads at any offset and length (the aligned stretch around them is what goes to
    the disk), short only at the end of the file, hashed as returned."""
    path = tmp_path / "f"
    if not path.exists():
        path.write_bytes(os.urandom(3 * ARENA + 123))
    body = path.read_bytes()
    fd = os.open(path, os.O_RDONLY)
    reader = DirectReader.open(fd, AlignedBuffers(ARENA + 2 * ALIGNMENT, keep=2))
    os.close(fd)  # the reader has its own descriptor
    assert reader is not None
    try:
        hasher = hashlib.md5()
        got = reader.read(offset, size, hasher)
    finally:
        reader.close()
    assert got == body[offset:offset + size]
    assert hasher.digest() == hashlib.md5(body[offset:offset + size]).digest()
