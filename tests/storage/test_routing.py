"""parse_route: a node path means the same whether its segments arrive quoted or raw."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swiftlike.storage.routing import BadPath, parse_route

# names as the proxy sends them: any text but NUL; "/" only inside the object name
_name = st.text(st.characters(blacklist_characters="\x00/", blacklist_categories=("Cs",)),
                min_size=1, max_size=12)
_obj = st.lists(_name, min_size=1, max_size=3).map("/".join)


@given(device=_name.filter(lambda d: d not in (".", "..")),
       partition=st.integers(0, 2**20), account=_name, container=_name, obj=_obj,
       padded=st.booleans())
def test_quoted_and_raw_paths_name_the_same_route(device, partition, account, container,
                                                   obj, padded):
    part = f"{partition:05d}" if padded else str(partition)
    segments = [device, part, account, container, obj]
    quoted = "/" + "/".join(quote(s, safe="/" if i == 4 else "") for i, s in
                            enumerate(segments))
    server_type, route = parse_route(quoted, None)
    assert server_type == "object"
    assert (route.device, route.partition, route.account, route.container, route.obj) == \
        (device, str(partition), account, container, obj)
    if not any(c in "".join(segments) for c in "%?"):
        raw = "/" + "/".join(segments)
        assert parse_route(raw, None) == (server_type, route)


@pytest.mark.parametrize("path", [
    "/d/1/a/c/o\x00x", "/d/1/a/c/o%00x", "/d/1/a%ff/c", "/../1/a", "/d/x1/a", "/d/1",
    "/d/1/a//o", "/d/1/a/c/", "d/1/a",
])
def test_bad_paths_are_refused(path):
    with pytest.raises(BadPath):
        parse_route(path, None)


def test_server_type_header_must_fit_the_segments():
    assert parse_route("/d/1/a/c", "container")[0] == "container"
    assert parse_route("/d/1/a", "account")[0] == "account"
    with pytest.raises(BadPath):
        parse_route("/d/1/a/c", "object")
    with pytest.raises(BadPath):
        parse_route("/d/1/a/c/o", "widget")
