"""Bad input to RingBuilder: clear errors, builder unchanged."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from ring import RingBuilder, RingBuilderError, UnknownDeviceError
from ring.builder import MAX_PART_POWER

from .helpers import uniform_builder

DEV = {"region": 1, "zone": 1, "ip": "127.0.0.1", "port": 6200, "device": "d1", "weight": 100}


def snapshot(b: RingBuilder):
    arr = b.replica2part2dev
    return copy.deepcopy(b.devs), set(b._removed), None if arr is None else arr.copy()


@pytest.mark.parametrize("part_power", [-1, MAX_PART_POWER + 1, 40, 2.5, "8", True])
def test_part_power_out_of_range(part_power):
    with pytest.raises(RingBuilderError, match="part_power"):
        RingBuilder(part_power, 3)


@pytest.mark.parametrize("replicas", [0, -1, 1.5, None])
def test_bad_replicas(replicas):
    with pytest.raises(RingBuilderError, match="replicas"):
        RingBuilder(8, replicas)


def test_bad_min_part_hours_and_overload():
    with pytest.raises(RingBuilderError, match="min_part_hours"):
        RingBuilder(8, 3, min_part_hours=-1)
    with pytest.raises(RingBuilderError, match="overload"):
        RingBuilder(8, 3, overload=-0.1)


def test_duplicate_device():
    b = RingBuilder(4, 1)
    b.add_dev(DEV)
    before = snapshot(b)
    with pytest.raises(RingBuilderError, match=r"duplicate device 127\.0\.0\.1:6200/d1"):
        b.add_dev(dict(DEV, zone=2, weight=5))
    assert snapshot(b)[0] == before[0]


@pytest.mark.parametrize("change", [
    {"weight": -1}, {"weight": float("nan")}, {"weight": "heavy"}, {"port": 70000},
    {"zone": -1}, {"ip": ""}, {"device": "a/b"}, {"meta": 5}, {"id": -3},
    {"port": 0}, {"region": 1 << 70}, {"zone": 1 << 32}, {"ip": "not_an_ip"},
    {"ip": "1.2.3.999"}, {"ip": "-host"}, {"ip": "a..b"}, {"device": ".."},
    {"device": "."}, {"device": "sd a"}, {"device": "sd\x00a"}, {"device": "x" * 256},
])
def test_bad_device_fields(change):
    b = RingBuilder(4, 1)
    with pytest.raises(RingBuilderError):
        b.add_dev(dict(DEV, **change))
    assert b.devs == []


def test_missing_fields():
    with pytest.raises(RingBuilderError, match="missing weight"):
        RingBuilder(4, 1).add_dev({k: v for k, v in DEV.items() if k != "weight"})


def test_explicit_id_in_use():
    b = RingBuilder(4, 1)
    b.add_dev(dict(DEV, id=5))
    assert b.add_dev(dict(DEV, device="d2")) == 0
    with pytest.raises(RingBuilderError, match="already in use"):
        b.add_dev(dict(DEV, device="d3", id=5))


def test_unknown_device():
    b = uniform_builder(part_power=4)
    with pytest.raises(UnknownDeviceError, match="no device with id 99"):
        b.remove_dev(99)
    with pytest.raises(UnknownDeviceError):
        b.set_dev_weight(99, 1.0)
    assert isinstance(UnknownDeviceError("x"), ValueError)


def test_negative_weight_on_set():
    b = uniform_builder(part_power=4)
    with pytest.raises(RingBuilderError, match="weight must be >= 0"):
        b.set_dev_weight(0, -5)
    assert b.get_dev(0)["weight"] == 100.0


def test_more_replicas_than_devices():
    b = RingBuilder(4, 3)
    b.add_dev(DEV)
    b.add_dev(dict(DEV, device="d2"))
    with pytest.raises(RingBuilderError, match="3 replicas need at least 3 devices"):
        b.rebalance()
    assert b.replica2part2dev is None


def test_zero_total_weight_leaves_builder_unchanged():
    b = uniform_builder(part_power=4, zones=1, servers=1, disks=3)
    b.rebalance(seed=1, now=0)
    for i in range(3):
        b.set_dev_weight(i, 0)
    before = snapshot(b)
    with pytest.raises(RingBuilderError, match="total weight is zero"):
        b.rebalance()
    after = snapshot(b)
    assert after[0] == before[0] and np.array_equal(after[2], before[2])


def test_removing_too_many_devices_is_refused_unchanged():
    b = uniform_builder(part_power=4, zones=1, servers=1, disks=3)
    b.rebalance(seed=1, now=0)
    b.remove_dev(0)
    before = snapshot(b)
    with pytest.raises(RingBuilderError, match="at least 3 devices"):
        b.rebalance()
    after = snapshot(b)
    assert after[1] == before[1] and np.array_equal(after[2], before[2])


def test_save_ring_before_rebalance(tmp_path):
    with pytest.raises(RingBuilderError, match="never been rebalanced"):
        uniform_builder().save_ring(tmp_path / "x.ring")


def test_zero_weight_device_drains_respecting_min_part_hours():
    b = uniform_builder(part_power=7, zones=4, servers=1, disks=2, min_part_hours=1)
    b.rebalance(seed=1, now=0)
    held = b.dev_part_counts()[0]
    b.set_dev_weight(0, 0)
    b.rebalance(seed=1, now=10 * 3600)
    assert b.dev_part_counts()[0] == 0
    assert held > 0


def test_add_devs_is_all_or_nothing():
    b = uniform_builder()
    b.rebalance(seed=1)
    before = snapshot(b)
    new = [dict(DEV, ip="10.9.9.9", device=f"n{i}") for i in range(3)]
    bad_batches = [
        [*new, dict(new[1])],                        # duplicate inside the batch
        [*new, dict(DEV, ip="10.0.10.0", device="d0")],  # duplicate of a live device
        [*new, dict(DEV, ip="10.9.9.8", weight=-1)],     # one bad weight
        [dict(new[0], id=500), dict(new[1], id=500)],    # one id twice
        [dict(new[0], id=0)],                            # an id in use
    ]
    for batch in bad_batches:
        with pytest.raises(RingBuilderError):
            b.add_devs(batch)
        after = snapshot(b)
        assert after[0] == before[0] and after[1] == before[1]
        assert (after[2] == before[2]).all()


def test_add_devs_ids_fill_gaps_and_respect_explicit_ids():
    b = RingBuilder(6, 1)
    ids = b.add_devs([dict(DEV, device=f"d{i}") for i in range(3)])
    assert ids == [0, 1, 2]
    b.rebalance(seed=1)
    b.remove_dev(1)
    b.rebalance(seed=2)
    # id 1 is free again; an explicit id 4 leaves 3 free for the automatic one after it.
    ids = b.add_devs([dict(DEV, device="x"), dict(DEV, device="y", id=4),
                      dict(DEV, device="z"), dict(DEV, device="w")])
    assert ids == [1, 4, 3, 5]
    assert [d["device"] if d else None for d in b.devs] == ["d0", "x", "d2", "z", "y", "w"]


@pytest.mark.parametrize("spellings", [
    ["::1", "[::1]", "0:0::1", "[0000:0000:0000:0000:0000:0000:0000:0001]"],
    ["Host1", "host1", "HOST1."],
    ["10.0.0.1", "10.0.0.1 ".strip()],
])
def test_one_address_has_one_spelling(spellings):
    """Two spellings of one server are one server: the second device is a duplicate."""
    b = RingBuilder(4, 1)
    b.add_dev(dict(DEV, ip=spellings[0]))
    for other in spellings[1:]:
        with pytest.raises(RingBuilderError, match="duplicate device"):
            b.add_dev(dict(DEV, ip=other))
    other = spellings[1].strip("[]")
    pattern = f"-[{other}]" if ":" in other else f"-{other}"
    assert len(b.search_devs(pattern)) == 1  # a search in another spelling finds it
