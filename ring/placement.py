"""How many replicas each failure domain should hold: topology, weights, dispersion, overload.

The builder thinks in *tiers*: region > zone > ip (a server) > device. For every tier
this module computes, in "replicas per partition":

- ``weighted``: the share its weight asks for (devices capped at one replica, since a
  device never holds two replicas of one partition);
- ``wanted``: the share that spreads replicas as uniquely as the topology allows (every
  tier gets between floor and ceil of an even split, weight deciding within that band);
- ``target``: what the builder actually aims for. Like Swift's overload, the builder may
  give a device up to ``overload`` more than its weighted share to reach ``wanted``: when
  the overload needed (``max_overload``) is larger than allowed, every tier is moved the
  same fraction ``overload / max_overload`` of the way from weighted to wanted, so no
  device goes beyond ``weighted * (1 + overload)`` and every level still sums up.

Integer partition-replica quotas are then rounded top-down so that each tier's total is the
sum of its children's, which is what lets a partition hold floor or ceil of its tier target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVELS = ("region", "zone", "ip", "device")
EPS = 1e-9


@dataclass
class Topology:
    """The builder's devices as numpy vectors indexed by device id.

    ``tier_of[L]`` maps a device id to its tier number at level L and has one extra element
    at the end (-1), so that looking up the hole marker -1 yields "no tier".
    ``parent[L]`` maps a level-L tier to its level L-1 tier (level 0's parent is 0, the root).
    """

    n_ids: int
    weight: np.ndarray
    present: np.ndarray
    tier_of: list[np.ndarray]
    parent: list[np.ndarray]
    n_tiers: list[int]
    order: np.ndarray  # device ids sorted by (region, zone, ip, id): tiers are contiguous in it


def build_topology(devs: list[dict | None]) -> Topology:
    """Number the tiers of ``devs`` (a list indexed by id, None for unused ids)."""
    n_ids = len(devs)
    weight = np.zeros(n_ids, dtype=np.float64)
    present = np.zeros(n_ids, dtype=bool)
    real = [d for d in devs if d is not None]
    real.sort(key=lambda d: (d["region"], d["zone"], d["ip"], d["id"]))
    tier_of = [np.full(n_ids + 1, -1, dtype=np.int64) for _ in LEVELS]
    parents: list[list[int]] = [[] for _ in LEVELS]
    keys: list[dict] = [{} for _ in LEVELS]
    for dev in real:
        i = dev["id"]
        present[i] = True
        weight[i] = float(dev["weight"])
        path = ((dev["region"],), (dev["region"], dev["zone"]),
                (dev["region"], dev["zone"], dev["ip"]), (dev["region"], dev["zone"], dev["ip"], i))
        up = 0
        for level, key in enumerate(path):
            tier = keys[level].get(key)
            if tier is None:
                tier = len(keys[level])
                keys[level][key] = tier
                parents[level].append(up)
            tier_of[level][i] = tier
            up = tier
    order = np.array([d["id"] for d in real], dtype=np.int64)
    return Topology(
        n_ids=n_ids, weight=weight, present=present, tier_of=tier_of,
        parent=[np.array(p, dtype=np.int64) for p in parents],
        n_tiers=[len(k) for k in keys], order=order,
    )


def _solve_clip(weights: np.ndarray, total: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Return x = clip(lam * weights, lo, hi) with sum(x) == total (bisection on lam)."""
    if total <= lo.sum() + EPS:
        return lo.astype(np.float64)
    if total >= hi.sum() - EPS:
        return hi.astype(np.float64)
    pos = weights > 0
    wsum = weights.sum()
    if wsum > 0:
        x = weights * (total / wsum)
        if (x >= lo - EPS).all() and (x <= hi + EPS).all():
            return np.clip(x, lo, hi)  # the usual case: no bound binds
    low, high = 0.0, 1.0
    while np.clip(high * weights, lo, hi).sum() < total:
        high *= 2.0
        if high > 1e300:
            break
    for _ in range(200):
        mid = (low + high) / 2.0
        if np.clip(mid * weights, lo, hi).sum() < total:
            low = mid
        else:
            high = mid
        if high - low <= high * 1e-15:
            break
    x = np.clip(high * weights, lo, hi)
    # Put the bisection's last rounding error on the unclamped children.
    free = pos & (x > lo) & (x < hi)
    if free.any():
        x[free] += (total - x.sum()) * weights[free] / weights[free].sum()
    return x


def _water_level(caps: np.ndarray, total: float) -> float:
    """The level m with sum(min(caps, m)) == total: the most even split the caps allow."""
    caps = np.sort(caps.astype(np.float64))
    remaining = total
    n = len(caps)
    for i, cap in enumerate(caps):
        share = remaining / (n - i)
        if share <= cap:
            return share
        remaining -= cap
    return float(caps[-1]) if n else 0.0


@dataclass
class Targets:
    """Per-level arrays (indexed by tier number) of replicas per partition."""

    weighted: list[np.ndarray]
    wanted: list[np.ndarray]
    target: list[np.ndarray]
    max_overload: float
    effective_overload: float


def compute_targets(topo: Topology, replicas: int, overload: float) -> Targets:
    """Weighted, wanted and target replicas for every tier (see the module docstring)."""
    w = topo.weight
    n_levels = len(LEVELS)
    dev_tier = topo.tier_of[-1][:-1]
    ids = np.nonzero(topo.present)[0]
    dev_ids = np.empty(topo.n_tiers[-1], dtype=np.int64)
    dev_ids[dev_tier[ids]] = ids
    dev_weight = w[dev_ids]
    # Weighted: proportional to weight, no device above one replica.
    ones = np.ones_like(dev_weight)
    weighted_dev = _solve_clip(dev_weight, float(replicas), np.zeros_like(dev_weight),
                               np.where(dev_weight > 0, ones, 0.0))
    weighted = _roll_up(topo, weighted_dev)
    tier_weight = _roll_up(topo, dev_weight)
    caps = _roll_up(topo, (dev_weight > 0).astype(np.float64))
    # Wanted: top-down, as even as the capacities allow, weight-proportional inside the band.
    wanted = [np.zeros(n, dtype=np.float64) for n in topo.n_tiers]
    for level in range(n_levels):
        parent = topo.parent[level]
        parent_wanted = np.array([float(replicas)]) if level == 0 else wanted[level - 1]
        order = np.argsort(parent, kind="stable")
        bounds = np.searchsorted(parent[order], np.arange(len(parent_wanted) + 1))
        for g in range(len(parent_wanted)):
            kids = order[bounds[g]:bounds[g + 1]]
            total = parent_wanted[g]
            if len(kids) == 0 or total <= EPS:
                continue
            c = caps[level][kids]
            m = _water_level(c, total)
            lo = np.minimum(c, math.floor(m + EPS))
            hi = np.minimum(c, math.ceil(m - EPS))
            wanted[level][kids] = _solve_clip(tier_weight[level][kids], total, lo, hi)
    dev_weighted, dev_wanted = weighted[-1], wanted[-1]
    pos = dev_weighted > EPS
    ratios = np.where(pos, dev_wanted / np.where(pos, dev_weighted, 1.0) - 1.0, 0.0)
    max_overload = float(max(0.0, ratios.max(initial=0.0)))
    if max_overload <= overload + EPS or max_overload <= EPS:
        frac, effective = 1.0, max_overload
    else:
        frac, effective = overload / max_overload, overload
    target = [wt + (wn - wt) * frac for wt, wn in zip(weighted, wanted, strict=True)]
    return Targets(weighted=weighted, wanted=wanted, target=target,
                   max_overload=max_overload, effective_overload=effective)


def _roll_up(topo: Topology, dev_values: np.ndarray) -> list[np.ndarray]:
    """Sum device-tier values up into every level (index by tier number)."""
    out: list[np.ndarray] = [np.zeros(n, dtype=np.float64) for n in topo.n_tiers]
    out[-1] = dev_values.astype(np.float64)
    for level in range(len(LEVELS) - 1, 0, -1):
        np.add.at(out[level - 1], topo.parent[level], out[level])
    return out


def max_replicas_per_tier(values: list[np.ndarray]) -> list[np.ndarray]:
    """How many replicas of one partition a tier may hold: ceil of its target."""
    return [np.ceil(v - 1e-6).astype(np.int64) for v in values]


def tier_counts(topo: Topology, dev_counts: np.ndarray) -> list[np.ndarray]:
    """Current partition-replica counts per tier, from per-device-id counts."""
    dev_tier = topo.tier_of[-1][:-1]
    per_dev = np.zeros(topo.n_tiers[-1], dtype=np.float64)
    ids = np.nonzero(topo.present)[0]
    per_dev[dev_tier[ids]] = dev_counts[ids]
    return _roll_up(topo, per_dev)


def compute_quotas(topo: Topology, target: list[np.ndarray], parts: int, replicas: int,
                   dev_counts: np.ndarray) -> np.ndarray:
    """Integer partition-replica quota per device id, summing to ``parts * replicas``.

    Rounded top-down so each tier's quota is exactly the sum of its children's. When a
    child may be rounded either way, the one already holding more keeps the extra unit:
    that keeps quotas stable across rebalances, so rounding never causes needless moves.
    """
    current = tier_counts(topo, dev_counts)
    parent_quota = np.array([parts * replicas], dtype=np.int64)
    parent_real = np.array([float(parts * replicas)])
    quota_levels: list[np.ndarray] = []
    for level in range(len(LEVELS)):
        parent = topo.parent[level]
        real = target[level] * parts
        sums = np.zeros(len(parent_quota), dtype=np.float64)
        np.add.at(sums, parent, real)
        # Scale only away the float drift between children and their parent's *real*
        # share, never the parent's rounding: the children's floors then sum to at most
        # the parent's quota and their ceils to at least it, so every tier, down to each
        # device, ends within one unit of its real share.
        scale = np.where(sums[parent] > 0, parent_real[parent] / np.where(
            sums[parent] > 0, sums[parent], 1.0), 0.0)
        real = real * scale
        parent_real = real
        base = np.floor(real + 1e-7).astype(np.int64)
        base = np.minimum(base, parent_quota[parent])
        given = np.zeros(len(parent_quota), dtype=np.int64)
        np.add.at(given, parent, base)
        left = parent_quota - given
        remainder = real - base
        holds_more = (current[level] > base).astype(np.int64)
        has_room = remainder > 1e-9
        # Rank children inside each parent: has room, holds more, larger remainder first.
        order = np.lexsort((-remainder, -holds_more, -has_room.astype(np.int64), parent))
        sorted_parent = parent[order]
        starts = np.searchsorted(sorted_parent, sorted_parent, side="left")
        rank = np.arange(len(order)) - starts
        extra = np.zeros(len(parent), dtype=np.int64)
        extra[order] = (rank < left[sorted_parent]).astype(np.int64)
        quota = base + extra
        quota_levels.append(quota)
        parent_quota = quota
    dev_quota = np.zeros(topo.n_ids, dtype=np.int64)
    ids = np.nonzero(topo.present)[0]
    dev_quota[ids] = quota_levels[-1][topo.tier_of[-1][ids]]
    return np.minimum(dev_quota, parts)


def initial_layout(topo: Topology, quotas: np.ndarray, target: list[np.ndarray], parts: int,
                   replicas: int, rng: np.random.Generator) -> np.ndarray:
    """Place every replica of a fresh ring at once: a striped layout.

    Devices are laid end to end in tier order, each over ``quota`` positions; position i is
    replica ``i // parts`` of partition ``perm[i % parts]``. A tier's positions are then one
    contiguous run of length Q, so each partition lands in it floor(Q/parts) or
    ceil(Q/parts) times: exactly the dispersion its target asks for. Inside each tier
    whose run fits in one stripe (target <= 1 replica) positions are shuffled among its
    devices, so a device's partitions share no pattern with its neighbours'.
    """
    order = topo.order[quotas[topo.order] > 0]
    slots = np.repeat(order, quotas[order])
    if len(slots) != parts * replicas:
        raise ValueError(f"quotas sum to {len(slots)}, expected {parts * replicas}")
    # Pick, for each device, the widest tier whose target fits in one stripe.
    group = np.zeros(topo.n_ids, dtype=np.int64)
    chosen = np.zeros(topo.n_ids, dtype=bool)
    offset = 0
    for level in range(len(LEVELS)):
        fits = target[level] <= 1.0 + 1e-9
        t = topo.tier_of[level][order]
        sel = ~chosen[order] & fits[t]
        group[order[sel]] = offset + t[sel]
        chosen[order[sel]] = True
        offset += topo.n_tiers[level]
    # Groups are contiguous runs in tier order; shuffle inside each (a device-level group
    # is one device: nothing to shuffle).
    run_start = np.concatenate(([0], np.nonzero(np.diff(group[slots]))[0] + 1))
    is_device_group = group[slots] >= offset - topo.n_tiers[-1]
    shuffled = slots.copy()
    starts = np.concatenate((run_start, [len(slots)]))
    for a, z in zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True):
        if z - a > 1 and not is_device_group[a]:
            rng.shuffle(shuffled[a:z])
    perm = rng.permutation(parts)
    r2p2d = np.empty((replicas, parts), dtype=np.int64)
    r2p2d[:, perm] = shuffled.reshape(replicas, parts)
    return r2p2d
