"""How a stored Content-Type is shown in container listings (Swift's form).

The examples are what Swift 2.38.3's container server lists for the same stored types
(checked against it when this was written); the properties hold for any string.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swiftlike.common.listing import content_type_as_listed, render_listing


@pytest.mark.parametrize(("stored", "listed"), [
    ("text/plain", "text/plain"),
    ("text/plain; charset=utf-8", "text/plain;charset=utf-8"),
    ("text/plain ;charset = utf-8 ; q", "text/plain ;charset=utf-8;q="),
    ('a/b; x="y; z"; swift_bytes=5', 'a/b;x="y; z"'),
    ("a/b; x=a/b", "a/b;x=a"),
    ("a/b;;", "a/b"),
    ("a/b; =x; k=v", "a/b;k=v"),
    ("a/b; k=caf\u00e9", "a/b;k=caf\u00e9"),
    # a link's target parameters (the proxy's symlink listing reads them) stay whole
    ("a/b; k = v;symlink_target=c/o%20x;symlink_target_etag=e",
     "a/b;k=v;symlink_target=c/o%20x;symlink_target_etag=e"),
])
def test_listed_types_as_swift_lists_them(stored, listed):
    assert content_type_as_listed(stored) == listed


def test_listing_rows_carry_the_listed_type():
    body, _ = render_listing("container", "c", [
        {"name": "o", "hash": "h", "bytes": 1, "content_type": "text/plain; charset=x",
         "created_at": "1700000000.00000"}], "json")
    assert b'"content_type": "text/plain;charset=x"' in body


TEXT = st.text(st.sampled_from(list('ab /;=" \t\\,\x7f\u00e9')), max_size=40)


@given(TEXT)
def test_a_type_without_parameters_is_listed_as_stored(stored):
    if ";" not in stored:
        assert content_type_as_listed(stored) == stored


@given(TEXT)
def test_listing_keeps_the_main_type_and_is_stable(stored):
    listed = content_type_as_listed(stored)
    assert listed.split(";", 1)[0] == stored.split(";", 1)[0]
    assert content_type_as_listed(listed) == listed
    assert "; " not in listed.split(";", 1)[-1].split('"')[0]


def test_an_empty_container_xml_listing_is_one_empty_element():
    """As Swift 2.38.3 writes it; an account's keeps its line break inside."""
    body, _ = render_listing("container", "c&d", [], "xml")
    assert body == b'<?xml version="1.0" encoding="UTF-8"?>\n<container name="c&amp;d" />'
    body, _ = render_listing("account", "AUTH_t", [], "xml")
    assert body.endswith(b'<account name="AUTH_t">\n</account>')
