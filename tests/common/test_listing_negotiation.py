"""Which listing format a request gets: format=, then Accept with its q-values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swiftlike.common.listing import LISTING_OFFERS, negotiate_listing


@pytest.mark.parametrize(("query", "accept", "expected"), [
    ({}, None, ("plain", "text/plain; charset=utf-8")),
    ({}, "*/*", ("plain", "text/plain; charset=utf-8")),
    ({}, "application/json", ("json", "application/json; charset=utf-8")),
    ({}, "text/xml", ("xml", "text/xml; charset=utf-8")),
    ({}, "application/*", ("json", "application/json; charset=utf-8")),
    ({}, "application/json;q=0.5, text/xml;q=0.9", ("xml", "text/xml; charset=utf-8")),
    ({}, "text/html", None),
    ({}, "foo/bar", None),
    ({}, "text/plain;q=0, */*;q=0.1", ("json", "application/json; charset=utf-8")),
    ({"format": "json"}, "text/html", ("json", "application/json; charset=utf-8")),
    ({"format": "nonsense"}, None, ("plain", "text/plain; charset=utf-8")),
])
def test_examples(query, accept, expected):
    assert negotiate_listing(query, accept) == expected


@pytest.mark.parametrize("accept", ["json", "text/json;q=x", "text/plain;q=2"])
def test_an_unreadable_accept_header_is_an_error(accept):
    with pytest.raises(ValueError):
        negotiate_listing({}, accept)


QUALITIES = st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0])


@given(st.lists(st.tuples(st.sampled_from([m for m, _ in LISTING_OFFERS]), QUALITIES),
                min_size=1, max_size=4, unique_by=lambda pair: pair[0]))
def test_the_best_rated_offer_wins(rated):
    accept = ", ".join(f"{mime};q={q}" for mime, q in rated)
    found = negotiate_listing({}, accept)
    best = max(q for _, q in rated)
    if best == 0:
        assert found is None
        return
    assert found is not None
    chosen = found[1].split(";")[0]
    assert dict(rated)[chosen] == best
    # ties go to the earlier offer, in Swift's order
    offers = [m for m, _ in LISTING_OFFERS]
    assert chosen == min((m for m, q in rated if q == best), key=offers.index)
