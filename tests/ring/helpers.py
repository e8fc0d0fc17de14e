"""Shared builders and hypothesis strategies for the ring tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from ring import RingBuilder


def add_cluster(b: RingBuilder, layout: list[list[list[float]]], region: int = 1,
                ip_base: str = "10.0") -> list[int]:
    """Add devices: layout[zone][server] = list of device weights. Returns the ids."""
    ids = []
    for z, servers in enumerate(layout):
        for s, disks in enumerate(servers):
            for d, weight in enumerate(disks):
                ids.append(b.add_dev({"region": region, "zone": z + 1,
                                      "ip": f"{ip_base}.{region}{z}.{s}", "port": 6200,
                                      "device": f"d{d}", "weight": weight}))
    return ids


def uniform_builder(part_power: int = 8, replicas: int = 3, zones: int = 4, servers: int = 2,
                    disks: int = 2, weight: float = 100.0, **kw) -> RingBuilder:
    b = RingBuilder(part_power, replicas, **kw)
    add_cluster(b, [[[weight] * disks for _ in range(servers)] for _ in range(zones)])
    return b


weights = st.sampled_from([50.0, 100.0, 100.0, 150.0, 200.0])
layouts = st.lists(                                   # zones
    st.lists(st.lists(weights, min_size=1, max_size=3), min_size=1, max_size=3),
    min_size=1, max_size=5)


def n_devices(layout: list[list[list[float]]]) -> int:
    return sum(len(disks) for servers in layout for disks in servers)


def counts_of(b: RingBuilder) -> np.ndarray:
    arr = b.replica2part2dev.astype(np.int64)
    return np.bincount(arr.ravel(), minlength=len(b.devs))


def zone_of(b: RingBuilder) -> np.ndarray:
    return np.array([(d["region"], d["zone"]) if d else (-1, -1) for d in b.devs],
                    dtype=[("r", "i8"), ("z", "i8")])
