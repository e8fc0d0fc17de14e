"""The body footer codec: exact format, strict parsing, and splitting under any chunking."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swiftlike.common.body_footer import (
    FOOTER_LEN,
    FooterSplitter,
    make_footer,
    parse_footer,
)

MD5_EMPTY = hashlib.md5(b"").hexdigest()


def test_footer_is_fixed_length_and_round_trips():
    footer = make_footer(MD5_EMPTY, 0)
    assert len(footer) == FOOTER_LEN
    assert parse_footer(footer) == (MD5_EMPTY, 0)
    big = make_footer("A" * 32, 5 * 1024 ** 4)
    assert parse_footer(big) == ("a" * 32, 5 * 1024 ** 4)


@pytest.mark.parametrize("raw", [
    b"",
    b"x" * FOOTER_LEN,
    make_footer(MD5_EMPTY, 7)[:-1],                      # truncated
    make_footer(MD5_EMPTY, 7)[:-1] + b" ",               # no newline
    make_footer(MD5_EMPTY, 7).replace(b"md5=", b"md6="),
    make_footer(MD5_EMPTY, 7).replace(b"d4", b"G4", 1),  # not hex
    b"z" + make_footer(MD5_EMPTY, 7),                    # one byte too long
])
def test_malformed_footers_are_refused(raw):
    with pytest.raises(ValueError):
        parse_footer(raw)


def test_make_footer_refuses_nonsense():
    with pytest.raises(ValueError):
        make_footer("abc", 1)
    with pytest.raises(ValueError):
        make_footer(MD5_EMPTY, -1)


def _split(stream: bytes, cuts: list[int], views: bool = False
           ) -> tuple[bytes, FooterSplitter]:
    splitter = FooterSplitter()
    body = bytearray()
    start = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        if cut <= start:
            continue
        piece_in = memoryview(stream)[start:cut] if views else stream[start:cut]
        for piece in splitter.feed(piece_in):
            body += piece
        start = cut
    return bytes(body), splitter


@given(st.binary(max_size=600), st.lists(st.integers(0, 700), max_size=12), st.booleans())
def test_splitter_returns_the_body_under_any_chunking(body, cuts, views):
    """Also when the pieces are memoryviews, as a node's own server hands them over."""
    stream = body + make_footer(hashlib.md5(body).hexdigest(), len(body))
    got, splitter = _split(stream, cuts, views)
    assert got == body
    assert splitter.finish() == (hashlib.md5(body).hexdigest(), len(body))


@given(st.binary(min_size=1, max_size=300), st.lists(st.integers(0, 400), max_size=8),
       st.integers(1, FOOTER_LEN))
def test_splitter_refuses_a_cut_or_missing_footer(body, cuts, missing):
    stream = body + make_footer(hashlib.md5(body).hexdigest(), len(body))
    _, splitter = _split(stream[:-missing], cuts)
    with pytest.raises(ValueError):
        splitter.finish()
    _, bare = _split(body, cuts)  # no footer at all
    with pytest.raises(ValueError):
        bare.finish()


def test_splitter_refuses_a_length_that_disagrees():
    body = b"abc" * 100
    stream = body + make_footer(hashlib.md5(body).hexdigest(), len(body) + 1)
    _, splitter = _split(stream, [10, 200])
    with pytest.raises(ValueError, match="says 301 bytes, received 300"):
        splitter.finish()


def test_splitter_keeps_pieces_of_one_buffer_adjacent_and_copies_a_bytearray():
    """Views in, views of the same memory out (the O_DIRECT writer joins adjacent pieces);
    a bytearray's tail is copied, since its owner may reuse the bytearray."""
    body = bytes(range(256)) * 40
    data = bytearray(body + make_footer(hashlib.md5(body).hexdigest(), len(body)))
    view = memoryview(data)
    splitter = FooterSplitter()
    out = splitter.feed(view[:5000]) + splitter.feed(view[5000:])
    assert all(isinstance(piece, memoryview) and piece.obj is data for piece in out)
    assert b"".join(out) == body

    reused = bytearray(data)
    splitter = FooterSplitter()
    joined = b"".join(bytes(piece) for piece in splitter.feed(reused))
    reused[:] = bytes(len(reused))  # the caller fills its buffer with the next bytes
    assert joined == body
    assert splitter.finish() == (hashlib.md5(body).hexdigest(), len(body))
