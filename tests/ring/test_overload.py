"""Overload trades balance for dispersion, as in Swift."""

from __future__ import annotations

import numpy as np
import pytest

from ring import RingBuilder

from .helpers import add_cluster, counts_of

# Two big zones and one small one, 3 replicas: full dispersion (one replica per zone) would
# put a third of the data on the small zone's 1/21 of the weight.
LAYOUT = [[[100.0, 100.0]], [[100.0, 100.0]], [[10.0, 10.0]]]


def build(overload: float) -> tuple[RingBuilder, object]:
    b = RingBuilder(10, 3, overload=overload)
    add_cluster(b, LAYOUT)
    return b, b.rebalance(seed=7, now=0)


def small_zone_share(b: RingBuilder) -> float:
    return counts_of(b)[[4, 5]].sum() / (3 * b.parts)


@pytest.mark.parametrize("overload", [0.0, 0.5, 1.0, 3.0])
def test_small_zone_gets_weight_times_one_plus_overload(overload):
    b, report = build(overload)
    weighted = 20 / 420
    assert report.max_overload == pytest.approx(1 / (3 * weighted) - 1)
    assert report.effective_overload == pytest.approx(overload)
    share = small_zone_share(b)
    assert share == pytest.approx(weighted * (1 + overload), abs=2 / (3 * b.parts))


def test_dispersion_improves_with_overload_and_is_full_past_max():
    results = [build(o)[1] for o in (0.0, 1.0, 3.0, 6.0, 10.0)]
    dispersion = [r.dispersion for r in results]
    assert dispersion == sorted(dispersion, reverse=True)
    assert dispersion[0] > 50.0
    assert results[-1].dispersion == 0.0
    assert results[-1].effective_overload == pytest.approx(results[-1].max_overload)


def test_overload_zero_is_pure_weight_balance():
    b, report = build(0.0)
    counts = counts_of(b)
    w = np.array([d["weight"] for d in b.devs])
    share = 3 * b.parts * w / w.sum()
    assert (np.abs(counts - share) <= np.maximum(0.01 * share, 1)).all()
    assert report.balance <= 1.0
