"""Read buffers that skip the zero-fill (see swiftlike.common.buffers)."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from swiftlike.common.buffers import read_buffer
from swiftlike.storage.body_io import read_cached


@given(st.integers(min_value=0, max_value=1 << 20))
def test_a_read_buffer_is_a_writable_bytearray_of_the_size_asked(size):
    buffer = read_buffer(size)
    assert type(buffer) is bytearray and len(buffer) == size
    buffer[-1:] = b"x" * min(size, 1)  # writable, resizable like any bytearray
    del buffer[size // 2:]
    assert len(buffer) == size // 2


@given(st.binary(max_size=70_000), st.integers(min_value=1, max_value=100_000),
       st.integers(min_value=0, max_value=80_000))
def test_a_cached_read_returns_exactly_the_file_bytes(tmp_path_factory, data, size, offset):
    # the buffer's old bytes must never show: what comes back is the file's, cut to length
    path = tmp_path_factory.mktemp("read") / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        got = read_cached(fd, offset, size)
    finally:
        os.close(fd)
    if got is not None:  # None: RWF_NOWAIT unsupported here, or not cached
        assert bytes(got) == data[offset:offset + size]
