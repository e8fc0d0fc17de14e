"""The model behind ringsim: topology, workload, and what failures and growth cost.

Objects are never simulated one by one.  Object names hash uniformly onto partitions,
so the object counts of the partitions are one multinomial draw; the bytes of a
partition holding k objects are the sum of k sizes, drawn as a gamma variable with the
exact mean and variance of that sum (k·m, k·v).  The partition byte counts are then
scaled so that they add up exactly to the workload's total (objects × mean size), which
keeps every derived number consistent.  Placement comes from the real ``ring`` builder.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from ring import RingBuilder

TB = 10**12
MIB = 1024 * 1024
HOUR = 3600.0
YEAR_HOURS = 24 * 365.25


@dataclasses.dataclass
class Topology:
    """A uniform cluster: regions × zones × servers × disks, with per-disk numbers."""

    part_power: int = 14
    replicas: int = 3
    regions: int = 1
    zones_per_region: int = 4
    servers_per_zone: int = 4
    disks_per_server: int = 12
    disk_size_tb: list[float] = dataclasses.field(default_factory=lambda: [16.0])
    rebuild_mib_per_s: float = 100.0
    annual_failure_rate: float = 0.02
    detect_hours: float = 1.0
    overload: float = 0.0

    @property
    def devices(self) -> int:
        return (self.regions * self.zones_per_region * self.servers_per_zone
                * self.disks_per_server)


@dataclasses.dataclass
class Workload:
    """How many objects and how their sizes are distributed."""

    objects: int = 10_000_000
    size: str = "lognormal"            # lognormal | fixed
    size_bytes: float = 1 * MIB        # fixed size, or the lognormal's mean
    sigma: float = 1.5                 # lognormal shape

    def mean_var(self) -> tuple[float, float]:
        """Mean and variance of one object's size."""
        if self.size == "fixed":
            return float(self.size_bytes), 0.0
        if self.size == "lognormal":
            mean = float(self.size_bytes)
            return mean, mean * mean * (math.exp(self.sigma ** 2) - 1.0)
        raise ValueError(f"unknown size distribution {self.size!r} (lognormal or fixed)")

    @property
    def total_bytes(self) -> int:
        return round(self.objects * self.mean_var()[0])


def _fill(cls: type, data: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"[{where}]: unknown keys {sorted(unknown)}; known: {sorted(names)}")
    return cls(**data)


def load_description(path: str | Path | None,
                     overrides: dict[str, dict[str, Any]] | None = None
                     ) -> tuple[Topology, Workload]:
    """Read a TOML or JSON file with [topology] and [workload] tables (both optional)."""
    data: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        data = json.loads(text) if str(path).endswith(".json") else tomllib.loads(text)
    topo_data = dict(data.get("topology", {}))
    work_data = dict(data.get("workload", {}))
    for key, value in (overrides or {}).get("topology", {}).items():
        topo_data[key] = value
    for key, value in (overrides or {}).get("workload", {}).items():
        work_data[key] = value
    if "disk_size_tb" in topo_data and not isinstance(topo_data["disk_size_tb"], list):
        topo_data["disk_size_tb"] = [topo_data["disk_size_tb"]]
    topo = _fill(Topology, topo_data, "topology")
    work = _fill(Workload, work_data, "workload")
    if "objects" in work_data:
        work.objects = int(work_data["objects"])
    work.mean_var()
    if topo.devices < topo.replicas:
        raise ValueError(f"{topo.devices} devices cannot hold {topo.replicas} replicas")
    return topo, work


@dataclasses.dataclass
class Device:
    id: int
    region: int
    zone: int
    server: str
    capacity: float     # bytes


def build_ring(topo: Topology, progress=None) -> tuple[RingBuilder, list[Device]]:
    """One device per disk, weight = capacity in TB; the real builder places partitions."""
    builder = RingBuilder(topo.part_power, topo.replicas, min_part_hours=1,
                          overload=topo.overload, clock=lambda: 0.0)
    specs: list[dict] = []
    sizes: list[float] = []
    server_index = 0
    for region in range(1, topo.regions + 1):
        for zone in range(1, topo.zones_per_region + 1):
            for _ in range(topo.servers_per_zone):
                size_tb = topo.disk_size_tb[server_index % len(topo.disk_size_tb)]
                ip = f"10.{region}.{server_index // 250}.{server_index % 250 + 1}"
                for disk in range(topo.disks_per_server):
                    specs.append({"region": region, "zone": zone, "ip": ip, "port": 6200,
                                  "device": f"d{disk}", "weight": float(size_tb)})
                    sizes.append(size_tb * TB)
                server_index += 1
    ids = builder.add_devs(specs)
    devices = [Device(dev_id, spec["region"], spec["zone"], spec["ip"], size)
               for dev_id, spec, size in zip(ids, specs, sizes, strict=True)]
    if progress:
        progress("initial rebalance")
    builder.rebalance(seed=1, now=0.0)
    return builder, devices


def partition_load(topo: Topology, work: Workload, seed: int = 7
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(objects, bytes) per partition, int64; bytes add up to ``work.total_bytes``."""
    rng = np.random.default_rng(seed)
    parts = 1 << topo.part_power
    # A multinomial with equal cells, drawn as a chain of binomials in numpy's C code.
    counts = rng.multinomial(work.objects, np.full(parts, 1.0 / parts)).astype(np.int64)
    mean, var = work.mean_var()
    if var == 0.0:
        raw = counts.astype(np.float64) * mean
    else:
        shape = counts * (mean * mean / var)
        raw = np.zeros(parts)
        nonzero = counts > 0
        raw[nonzero] = rng.gamma(shape[nonzero], var / mean)
    total = work.total_bytes
    if raw.sum() <= 0:
        return counts, np.zeros(parts, dtype=np.int64)
    sized = np.floor(raw * (total / raw.sum())).astype(np.int64)
    sized[int(np.argmax(sized))] += total - int(sized.sum())   # exact total
    return counts, sized


def device_bytes(r2p2d: np.ndarray, part_bytes: np.ndarray, n_devs: int) -> np.ndarray:
    """Bytes stored on each device: every replica of every partition."""
    weights = np.broadcast_to(part_bytes, r2p2d.shape).ravel().astype(np.float64)
    return np.bincount(r2p2d.ravel().astype(np.int64), weights=weights, minlength=n_devs)


def fill_report(topo: Topology, devices: list[Device], r2p2d: np.ndarray,
                part_bytes: np.ndarray) -> dict[str, Any]:
    """Per-device fill, and how full the cluster is when its fullest device is full."""
    n = max(d.id for d in devices) + 1
    stored = device_bytes(r2p2d, part_bytes, n)
    ids = np.array([d.id for d in devices])
    cap = np.array([d.capacity for d in devices])
    fill = stored[ids] / cap
    total_cap = cap.sum()
    raw_used = stored[ids].sum()
    max_fill = float(fill.max())
    usable = (raw_used / total_cap) / max_fill if max_fill > 0 else 1.0
    return {
        "devices": len(devices),
        "raw_capacity_tb": total_cap / TB,
        "stored_tb": raw_used / TB,
        "stored_bytes": round(raw_used),
        "fill_min": float(fill.min()), "fill_mean": float(raw_used / total_cap),
        "fill_max": max_fill, "fill_p99": float(np.percentile(fill, 99)),
        "overfull_devices": int((fill > 1.0).sum()),
        "cluster_fill_when_first_device_full": float(usable),
        "fill": fill,
    }


def failure_scenario(builder: RingBuilder, devices: list[Device], part_bytes: np.ndarray,
                     topo: Topology, kind: str) -> dict[str, Any]:
    """Fail one device / server / zone, let the ring reassign, and cost the repair.

    The failed devices are removed and the ring rebalanced (a copy of the builder):
    exactly the replicas that sat on them get new homes.  Each new copy is read from a
    surviving replica; a disk both reading and writing shares its rebuild bandwidth.
    """
    victim = devices[len(devices) // 2]
    if kind == "device":
        failed = [victim.id]
    elif kind == "server":
        failed = [d.id for d in devices if d.server == victim.server]
    elif kind == "zone":
        failed = [d.id for d in devices if (d.region, d.zone) == (victim.region, victim.zone)]
    else:
        raise ValueError(f"unknown failure kind {kind!r}")
    old = np.array(builder.replica2part2dev, dtype=np.int64)
    trial = copy.deepcopy(builder)
    for dev_id in failed:
        trial.remove_dev(dev_id)
    trial.rebalance(seed=2, now=1.0)
    new = np.array(trial.replica2part2dev, dtype=np.int64)
    n = max(d.id for d in devices) + 1
    is_failed = np.zeros(n, dtype=bool)
    is_failed[failed] = True
    lost = is_failed[old]                        # replica slots that lost their copy
    changed = old != new
    replicas_per_part_lost = lost.sum(axis=0)
    # Source of each new copy: the first replica of the partition that survived.
    survivor_row = np.argmax(~lost, axis=0)
    sources = old[survivor_row, np.arange(old.shape[1])]
    rows, cols = np.nonzero(lost)
    dest = new[rows, cols]
    src = sources[cols]
    sizes = part_bytes[cols].astype(np.float64)
    written = np.bincount(dest, weights=sizes, minlength=n)
    read = np.bincount(src, weights=sizes, minlength=n)
    bandwidth = topo.rebuild_mib_per_s * MIB
    busiest = float((written + read).max()) if len(sizes) else 0.0
    heal_seconds = busiest / bandwidth + topo.detect_hours * HOUR
    timeline = heal_timeline(dest, cols, sizes, replicas_per_part_lost, topo.replicas,
                             bandwidth, topo.detect_hours * HOUR)
    receivers = written[written > 0]
    return {
        "kind": kind,
        "failed_devices": len(failed),
        "replicas_lost": int(lost.sum()),
        "replicas_moved": int(changed.sum()),
        "moved_only_failed": bool(np.array_equal(changed, lost)),
        "bytes_to_rereplicate": int(sizes.sum()),
        "handoff_devices": len(receivers),
        "handoff_bytes_max": float(receivers.max()) if len(receivers) else 0.0,
        "handoff_bytes_mean": float(receivers.mean()) if len(receivers) else 0.0,
        "heal_hours": heal_seconds / HOUR,
        "partitions_degraded": int((replicas_per_part_lost > 0).sum()),
        "partitions_single_copy": int((replicas_per_part_lost == topo.replicas - 1).sum()),
        "partitions_no_copy": int((replicas_per_part_lost >= topo.replicas).sum()),
        "timeline": timeline,
    }


def heal_timeline(dest: np.ndarray, cols: np.ndarray, sizes: np.ndarray,
                  lost_per_part: np.ndarray, replicas: int, bandwidth: float, delay: float,
                  points: int = 200) -> dict[str, list[float]]:
    """Degraded partitions over time: each destination disk copies its queue in order."""
    if len(dest) == 0:
        return {"hours": [0.0], "degraded": [0], "single_copy": [0]}
    order = np.lexsort((cols, dest))
    d_sorted = dest[order]
    cum = np.cumsum(sizes[order])
    start_of_group = np.r_[0, np.nonzero(np.diff(d_sorted))[0] + 1]
    group_base = np.repeat(np.r_[0.0, cum][start_of_group], np.diff(np.r_[start_of_group,
                                                                           len(order)]))
    done = np.empty(len(dest))
    done[order] = delay + (cum - group_base) / bandwidth
    part_done: dict[str, np.ndarray] = {}
    parts_n = len(lost_per_part)
    finish = np.zeros(parts_n)
    np.maximum.at(finish, cols, done)
    degraded = finish[lost_per_part > 0]
    single = finish[lost_per_part == replicas - 1]
    end = float(finish.max())
    grid = np.linspace(0.0, end, points)
    degraded_sorted = np.sort(degraded)
    single_sorted = np.sort(single)
    part_done["degraded"] = len(degraded_sorted) - np.searchsorted(degraded_sorted, grid,
                                                                   side="right")
    part_done["single"] = len(single_sorted) - np.searchsorted(single_sorted, grid,
                                                               side="right")
    return {"hours": (grid / HOUR).tolist(), "degraded": part_done["degraded"].tolist(),
            "single_copy": part_done["single"].tolist()}


def growth_scenario(builder: RingBuilder, devices: list[Device], part_bytes: np.ndarray,
                    topo: Topology, add_servers: int) -> dict[str, Any]:
    """Add ``add_servers`` servers (spread over the zones), rebalance once, cost the move."""
    trial = copy.deepcopy(builder)
    old = np.array(builder.replica2part2dev, dtype=np.int64)
    size_tb = topo.disk_size_tb[0]
    zones = sorted({(d.region, d.zone) for d in devices})
    specs = []
    for i in range(add_servers):
        region, zone = zones[i % len(zones)]
        for disk in range(topo.disks_per_server):
            specs.append({
                "region": region, "zone": zone, "ip": f"10.250.{i // 250}.{i % 250 + 1}",
                "port": 6200, "device": f"d{disk}", "weight": float(size_tb)})
    new_ids = trial.add_devs(specs)
    # Past min_part_hours: every partition may move one replica.
    trial.rebalance(seed=3, now=builder.min_part_hours * HOUR + 10.0)
    new = np.array(trial.replica2part2dev, dtype=np.int64)
    changed = old != new
    rows, cols = np.nonzero(changed)
    sizes = part_bytes[cols].astype(np.float64)
    n = max(max(d.id for d in devices), *new_ids) + 1
    written = np.bincount(new[rows, cols], weights=sizes, minlength=n)
    read = np.bincount(old[rows, cols], weights=sizes, minlength=n)
    added_cap = len(new_ids) * size_tb * TB
    total_cap = sum(d.capacity for d in devices) + added_cap
    stored = float(part_bytes.sum()) * topo.replicas
    ideal = stored * added_cap / total_cap
    bandwidth = topo.rebuild_mib_per_s * MIB
    return {
        "servers_added": add_servers,
        "devices_added": len(new_ids),
        "replicas_moved": int(changed.sum()),
        "bytes_moved": int(sizes.sum()),
        "bytes_ideal": int(ideal),
        "moved_vs_ideal": float(sizes.sum() / ideal) if ideal else 0.0,
        "rebalance_hours": float((written + read).max()) / bandwidth / HOUR,
        "new_devices_fill_of_target": float(
            written[new_ids].sum() / ideal) if ideal else 0.0,
    }


def durability(builder: RingBuilder, topo: Topology, heal_hours: float,
               part_bytes: np.ndarray) -> dict[str, Any]:
    """Annual probability of losing a partition: all its replicas fail within a heal window.

    Independent disk failures at rate λ = AFR per year, repair window W (the device-
    failure heal time).  For one set of R disks the rate of losing all R is about
    R!·λ^R·W^(R-1) (the usual Markov-chain approximation, valid while λW << 1).
    Partitions whose replicas sit on the same set of disks share that risk, so the
    cluster's rate sums over distinct disk sets.
    """
    r2p2d = np.sort(np.array(builder.replica2part2dev, dtype=np.int64), axis=0)
    n = int(r2p2d.max()) + 1
    if n ** r2p2d.shape[0] < 2**62:
        # One integer per sorted replica set: much faster than unique rows.
        key = np.zeros(r2p2d.shape[1], dtype=np.int64)
        for row in r2p2d:
            key = key * n + row
        sets = np.unique(key)
    else:
        sets = np.unique(r2p2d.T, axis=0)
    lam = topo.annual_failure_rate
    window = heal_hours / YEAR_HOURS
    r = topo.replicas
    per_set = math.factorial(r) * lam ** r * window ** (r - 1)
    cluster_rate = per_set * len(sets)
    return {
        "heal_window_hours": heal_hours,
        "distinct_replica_sets": len(sets),
        "partition_annual_loss_probability": 1.0 - math.exp(-per_set),
        "cluster_annual_loss_probability": 1.0 - math.exp(-cluster_rate),
        "expected_bytes_lost_per_year": float(per_set * part_bytes.sum()),
    }
