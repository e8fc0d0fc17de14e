"""Listing ``last_modified``: the sliced fast path agrees with a full date computation."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from swiftlike.common.listing import iso_last_modified
from swiftlike.common.timestamp import Timestamp


def _reference(stamp: str) -> str:
    ticks = Timestamp(stamp).ticks
    moment = datetime.fromtimestamp(ticks // 100000, UTC).replace(
        microsecond=(ticks % 100000) * 10, tzinfo=None)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")


@given(ticks=st.integers(0, 10**15 - 1000), offset=st.integers(0, 2**40))
def test_every_stored_form_renders_like_the_full_computation(ticks, offset):
    stamp = Timestamp(f"{ticks // 100000}.{ticks % 100000:05d}")
    assert stamp.ticks == ticks
    short = f"{ticks // 100000}.{ticks % 100000 // 100:03d}"  # fewer digits: parsed
    for text in (stamp.normal, Timestamp(stamp, offset).internal, short):
        assert iso_last_modified(text) == _reference(text)


def test_known_value():
    assert iso_last_modified("1700000000.12345") == "2023-11-14T22:13:20.123450"
    assert iso_last_modified("0000000000.00000") == "1970-01-01T00:00:00.000000"
