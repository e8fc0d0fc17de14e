"""Properties of the node server's head parser: what a client sends is what a handler
reads, and no byte string makes it fail with anything but a BadRequest."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swiftlike.storage.node_http_parse import BadRequest, parse_chunk_size, parse_head

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=20)
# field values: visible characters, inner spaces and tabs, any non-ASCII (sent as UTF-8)
values = st.text(st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\x7f"),
                 max_size=40).map(lambda v: v.strip(" \t"))
targets = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1,
                  max_size=60).map(lambda t: "/" + t)
framing_names = {"content-length", "transfer-encoding"}


@given(tokens, targets, st.sampled_from([0, 1]),
       st.lists(st.tuples(tokens, values), max_size=12),
       st.sampled_from(["", " ", "  ", "\t"]), st.sampled_from(["", " ", "\t "]))
def test_what_is_sent_is_what_is_parsed(method, target, minor, fields, before, after):
    fields = [(n, v) for n, v in fields if n.lower() not in framing_names]
    raw = f"{method} {target} HTTP/1.{minor}\r\n" + "".join(
        f"{name}:{before}{value}{after}\r\n" for name, value in fields)
    head = parse_head(raw.encode("utf-8"))
    assert (head.method, head.target, head.minor) == (method, target, minor)
    assert list(head.headers.items()) == fields
    assert head.length is None and head.chunked is False


@given(st.integers(0, 2**40), st.integers(1, 3))
def test_content_length_repeated_alike_is_one_length(length, copies):
    raw = b"PUT /a HTTP/1.1\r\n" + b"Content-Length: %d\r\n" % length * copies
    head = parse_head(raw)
    assert head.length == length and not head.chunked


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_bad_request(raw):
    try:
        head = parse_head(raw)
    except BadRequest as err:
        assert 400 <= err.status < 600 and err.message
    else:
        assert head.method and head.target


@given(st.binary(max_size=200))
def test_any_bytes_after_a_good_request_line_parse_or_raise_bad_request(fields):
    try:
        parse_head(b"GET / HTTP/1.1\r\n" + fields)
    except BadRequest as err:
        assert err.status in (400, 431, 501)


@given(st.integers(0, 16**15 - 1), st.sampled_from(["", ";a=b", " ;x"]),
       st.booleans())
def test_chunk_sizes_round_trip(size, extension, upper):
    text = f"{size:X}" if upper else f"{size:x}"
    assert parse_chunk_size((text + extension).encode()) == size


@pytest.mark.parametrize("line", [b"", b"g", b"-1", b"0x10", b"1 2", b"1" * 16, b" 5",
                                  b"\t5", b"5;a\x00", b"5;\x7f"])
def test_bad_chunk_sizes(line):
    with pytest.raises(BadRequest):
        parse_chunk_size(line)
