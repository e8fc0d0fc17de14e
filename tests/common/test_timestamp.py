"""Timestamp ordering and formats: every replica must agree which write is newer."""

from __future__ import annotations

from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swiftlike.common.timestamp import Timestamp, http_date, normalize_timestamp

ticks = st.integers(min_value=0, max_value=10**15 - 1)  # below 10^10 seconds
offsets = st.integers(min_value=0, max_value=2**32)


@given(ticks, offsets, ticks, offsets)
def test_order_matches_ticks_then_offset(t1: int, o1: int, t2: int, o2: int) -> None:
    a = Timestamp(f"{t1 // 100000}.{t1 % 100000:05d}", offset=o1)
    b = Timestamp(f"{t2 // 100000}.{t2 % 100000:05d}", offset=o2)
    assert (a < b) == ((t1, o1) < (t2, o2))
    assert (a == b) == ((t1, o1) == (t2, o2))


@given(ticks, offsets)
def test_internal_form_round_trips(t: int, o: int) -> None:
    ts = Timestamp(f"{t // 100000}.{t % 100000:05d}", offset=o)
    assert Timestamp(ts.internal) == ts
    assert Timestamp(ts.normal) == Timestamp(ts.normal, 0)


@given(ticks, ticks)
def test_string_order_of_internal_form_equals_value_order(t1: int, t2: int) -> None:
    """File names sort like their timestamps, so the newest file is the last one listed."""
    a, b = Timestamp(t1 / 100000), Timestamp(t2 / 100000)
    assert (a.internal < b.internal) == (a < b)


def test_normal_form_and_rounding() -> None:
    assert Timestamp(1700000000.123456).normal == "1700000000.12346"
    assert normalize_timestamp("1") == "0000000001.00000"
    assert Timestamp("1700000000.12345_000000000000000a").offset == 10
    assert Timestamp(5) < Timestamp(5, offset=1)


@pytest.mark.parametrize(
    "bad", ["", "abc", "-1", "1.2.3", "1_", "1_zz", "1e5", "10000000000", "99999999999999999"]
)
def test_invalid_values_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        Timestamp(bad)


def test_http_date_rounds_up_to_the_second() -> None:
    assert Timestamp("1.00001").http_date == "Thu, 01 Jan 1970 00:00:02 GMT"
    assert Timestamp("1").http_date == "Thu, 01 Jan 1970 00:00:01 GMT"


@given(st.integers(min_value=0, max_value=253402300799))  # up to 9999-12-31
def test_http_date_is_the_imf_fixdate_of_the_stdlib(seconds: int) -> None:
    assert http_date(seconds) == formatdate(seconds, usegmt=True)

