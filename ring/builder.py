"""RingBuilder: the devices, their weights, and the partition assignment that a ring is made of.

A rebalance (see docs/ring.md):

1. compute each tier's target replicas per partition (weight, dispersion, overload) and
   round them to integer quotas per device (``ring.placement``);
2. on the first rebalance, lay every replica out at once (striped layout);
3. afterwards: replicas on removed devices become holes (they move regardless of
   min_part_hours); replicas in over-full tiers are lifted when their partition may move;
   holes are filled; then devices over quota hand movable replicas to devices under
   quota, each move checked to keep dispersion (``ring.moves``). Each partition moves at
   most one replica per rebalance, and none within ``min_part_hours`` of its last move.

The builder validates every input before changing anything, so a failed call leaves it as
it was.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from .cli_parse import match_devices, normalize_address
from .moves import MoveEngine
from .placement import (
    LEVELS,
    build_topology,
    compute_quotas,
    compute_targets,
    initial_layout,
    max_replicas_per_tier,
)
from .ringfile import (
    RingFileError,
    atomic_write,
    dtype_for,
    names_unknown_devices,
    write_ring_file,
)

MAX_PART_POWER = 26  # 2**26 x replicas int64 work arrays: ~1.6 GB at 3 replicas
_MAX_TIER_ID = 0xFFFFFFFF  # region and zone numbers (and ports, checked tighter)
BUILDER_FORMAT = "swiftlike-builder"
BUILDER_VERSION = 1


class RingBuilderError(ValueError):
    """Bad input to the ring builder; the builder is left unchanged."""


class UnknownDeviceError(RingBuilderError, LookupError):
    """A device id that the builder does not have."""


@dataclass
class RebalanceReport:
    """What a rebalance did and how good the result is."""

    moved_replicas: int
    moved_partitions: int
    balance: float  # max |% deviation| of a device's partitions from its weighted share
    dispersion: float  # % of partitions with a tier holding more than the topology requires
    dispersion_by_tier: dict[str, float] = field(default_factory=dict)
    max_overload: float = 0.0  # overload needed to reach full dispersion
    effective_overload: float = 0.0
    quota_gap: int = 0  # replicas still away from their device quotas (min_part_hours, topology)
    initial: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form for JSON output."""
        return dict(self.__dict__)


def _check_number(name: str, value: Any, *, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RingBuilderError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise RingBuilderError(f"{name} must be finite, got {value!r}")
    if minimum is not None and value < minimum:
        raise RingBuilderError(f"{name} must be >= {minimum}, got {value!r}")
    return value


class RingBuilder:
    """Builds and rebalances a ring. The only writer of placement decisions."""

    def __init__(self, part_power: int, replicas: int, min_part_hours: float = 1,
                 overload: float = 0.0, *, clock: Callable[[], float] = time.time):
        if isinstance(part_power, bool) or not isinstance(part_power, int) or not (
                0 <= part_power <= MAX_PART_POWER):
            raise RingBuilderError(f"part_power must be an integer in 0..{MAX_PART_POWER}, "
                                   f"got {part_power!r}")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise RingBuilderError(f"replicas must be an integer >= 1, got {replicas!r}")
        self.part_power = part_power
        self.replicas = replicas
        self.min_part_hours = _check_number("min_part_hours", min_part_hours, minimum=0)
        self.overload = _check_number("overload", overload, minimum=0)
        self.clock = clock
        self.devs: list[dict | None] = []
        self._removed: set[int] = set()  # removed, replicas still assigned until rebalance
        self._r2p2d: np.ndarray | None = None
        self._last_moved: np.ndarray | None = None  # uint32 epoch seconds per partition
        self.version = 0
        self.dirty = True

    # --- devices ---------------------------------------------------------------------------
    @property
    def parts(self) -> int:
        return 1 << self.part_power

    def _live_devs(self) -> list[dict]:
        return [d for d in self.devs if d is not None and d["id"] not in self._removed]

    def get_dev(self, dev_id: int) -> dict:
        """The device with this id (a copy); UnknownDeviceError if there is none."""
        if (isinstance(dev_id, bool) or not isinstance(dev_id, int) or not
                0 <= dev_id < len(self.devs) or self.devs[dev_id] is None
                or dev_id in self._removed):
            raise UnknownDeviceError(f"no device with id {dev_id!r}")
        return dict(self.devs[dev_id])

    def add_dev(self, dev: dict) -> int:
        """Add a device; return its id. Keys: region, zone, ip, port, device, weight,
        optional id and meta. Raises RingBuilderError on bad or duplicate devices."""
        return self.add_devs([dev])[0]

    def add_devs(self, devs: Iterable[dict]) -> list[int]:
        """Add many devices at once; return their ids in order. All or nothing: any bad
        or duplicate device raises RingBuilderError and none is added.

        One duplicate check and one free-id scan for the whole batch: adding 10,000
        devices one by one compares every pair (seconds at that size)."""
        checked = [self._checked_dev(dev) for dev in devs]
        taken = {(d["ip"], d["port"], d["device"]): d["id"] for d in self._live_devs()}
        for dev in checked:
            addr = (dev["ip"], dev["port"], dev["device"])
            if addr in taken:
                where = "" if taken[addr] is None else f" (already id {taken[addr]})"
                raise RingBuilderError(
                    f"duplicate device {dev['ip']}:{dev['port']}/{dev['device']}{where}")
            taken[addr] = None
        reserved: set[int] = set()
        for dev in checked:
            dev_id = dev["id"]
            if dev_id is None:
                continue
            if dev_id in reserved or (dev_id < len(self.devs)
                                      and self.devs[dev_id] is not None):
                raise RingBuilderError(f"device id {dev_id} is already in use")
            reserved.add(dev_id)
        free = (i for i in itertools.count()
                if i not in reserved and (i >= len(self.devs) or self.devs[i] is None))
        ids = [dev["id"] if dev["id"] is not None else next(free) for dev in checked]
        for dev_id, dev in zip(ids, checked, strict=True):
            if dev_id >= len(self.devs):
                self.devs.extend([None] * (dev_id + 1 - len(self.devs)))
            self.devs[dev_id] = {**dev, "id": dev_id}
        if ids:
            self.dirty = True
        return ids

    @staticmethod
    def _checked_dev(dev: dict) -> dict:
        """A validated copy of a device to add (``id`` None when the builder picks it)."""
        if not isinstance(dev, dict):
            raise RingBuilderError(f"a device is a dict, got {type(dev).__name__}")
        missing = [k for k in ("region", "zone", "ip", "port", "device", "weight")
                   if k not in dev]
        if missing:
            raise RingBuilderError(f"device is missing {', '.join(missing)}")
        for key in ("region", "zone", "port"):
            if isinstance(dev[key], bool) or not isinstance(dev[key], int) or \
                    not 0 <= dev[key] <= _MAX_TIER_ID:
                raise RingBuilderError(f"{key} must be an integer from 0 to {_MAX_TIER_ID}, "
                                       f"got {dev[key]!r}")
        if not 1 <= dev["port"] <= 65535:
            raise RingBuilderError(f"port must be from 1 to 65535, got {dev['port']}")
        ip = normalize_address(dev["ip"])
        if ip is None:
            raise RingBuilderError(f"ip must be an IP address or a host name, got {dev['ip']!r}")
        device = dev["device"]
        if not isinstance(device, str) or not device or device in (".", "..") or \
                len(device) > 255 or any(c == "/" or not c.isprintable() or c.isspace()
                                         for c in device):
            raise RingBuilderError("device must be a directory name (no '/', whitespace "
                                   f"or control characters, not '.' or '..'), got {device!r}")
        weight = _check_number("weight", dev["weight"], minimum=0)
        meta = dev.get("meta", "")
        if not isinstance(meta, str):
            raise RingBuilderError(f"meta must be a string, got {meta!r}")
        dev_id = dev.get("id")
        if dev_id is not None and (isinstance(dev_id, bool) or not isinstance(dev_id, int)
                                   or not 0 <= dev_id < 0xFFFFFFFF):
            raise RingBuilderError(f"device id must be a non-negative integer, got {dev_id!r}")
        return {"id": dev_id, "region": dev["region"], "zone": dev["zone"], "ip": ip,
                "port": dev["port"], "device": dev["device"], "weight": weight, "meta": meta}

    def remove_dev(self, dev_id: int) -> None:
        """Mark a device removed; its replicas move at the next rebalance."""
        self.get_dev(dev_id)
        self._removed.add(dev_id)
        self.dirty = True

    def set_dev_weight(self, dev_id: int, weight: float) -> None:
        """Change a device's weight (0 drains it gradually, honouring min_part_hours)."""
        self.get_dev(dev_id)
        self.devs[dev_id]["weight"] = _check_number("weight", weight, minimum=0)
        self.dirty = True

    def set_dev_info(self, dev_id: int, *, ip: str | None = None, port: int | None = None,
                     device: str | None = None, meta: str | None = None) -> dict:
        """Change where a device is reached, or its meta, without moving a partition
        (a server renumbered, disks moved to another host); returns the device as it is
        now. The ring file must be written again (:meth:`save_ring`) for nodes and
        proxies to see it; the builder's version moves on so they know it changed."""
        old = self.get_dev(dev_id)
        changes = {key: value for key, value in
                   (("ip", ip), ("port", port), ("device", device), ("meta", meta))
                   if value is not None}
        new = {**self._checked_dev({**old, **changes}), "id": dev_id}
        addr = (new["ip"], new["port"], new["device"])
        for other in self._live_devs():
            if other["id"] != dev_id and (other["ip"], other["port"], other["device"]) == addr:
                raise RingBuilderError(f"duplicate device {new['ip']}:{new['port']}/"
                                       f"{new['device']} (already id {other['id']})")
        if new != old:
            self.devs[dev_id] = new
            self.version += 1
        return dict(new)

    def pretend_min_part_hours_passed(self) -> None:
        """Let the next rebalance move any partition, however recently it moved (for an
        operator who knows the replicas have settled, or has to drain a device now)."""
        if self._last_moved is not None:
            self._last_moved[:] = 0

    def set_overload(self, overload: float) -> None:
        """Set how much more than its weighted share a device may take for dispersion."""
        self.overload = _check_number("overload", overload, minimum=0)
        self.dirty = True

    def set_min_part_hours(self, hours: float) -> None:
        self.min_part_hours = _check_number("min_part_hours", hours, minimum=0)

    def search_devs(self, pattern: str) -> list[dict]:
        """Devices matching a swift-style search: d<id>r<region>z<zone>-<ip>:<port>/<device>
        (every part optional), or a plain id."""
        return match_devices(self._live_devs(), pattern)

    # --- rebalance -------------------------------------------------------------------------
    def _check_rebalance(self) -> list[dict]:
        live = self._live_devs()
        weighted = [d for d in live if d["weight"] > 0]
        if not weighted:
            raise RingBuilderError("no device has weight: total weight is zero")
        if len(weighted) < self.replicas:
            raise RingBuilderError(
                f"{self.replicas} replicas need at least {self.replicas} devices with "
                f"weight, the builder has {len(weighted)}")
        if len(self.devs) - 1 > 0xFFFFFFFE:
            raise RingBuilderError("too many device ids")
        return live

    def rebalance(self, seed: int | None = None, now: float | None = None) -> RebalanceReport:
        """Reassign partitions (see the module docstring); return a report."""
        started = time.perf_counter()
        self._check_rebalance()
        now = float(self.clock() if now is None else now)
        rng = np.random.default_rng(seed)
        devs = list(self.devs)
        for dev_id in self._removed:
            devs[dev_id] = None
        topo = build_topology(devs)
        targets = compute_targets(topo, self.replicas, self.overload)
        max_rep = max_replicas_per_tier(targets.target)
        parts = self.parts
        initial = self._r2p2d is None
        if initial:
            quotas = compute_quotas(topo, targets.target, parts, self.replicas,
                                    np.zeros(topo.n_ids, dtype=np.int64))
            work = initial_layout(topo, quotas, targets.target, parts, self.replicas, rng)
            MoveEngine(topo, work, quotas, max_rep, np.ones(parts, dtype=bool), rng).mix(1)
            last_moved = np.zeros(parts, dtype=np.uint32)
            moved_replicas = moved_parts = 0
            counts = np.bincount(work.ravel(), minlength=topo.n_ids)
        else:
            old = self._r2p2d.astype(np.int64)
            work = old.copy()
            if self._removed:
                gone = np.zeros(len(self.devs) + 1, dtype=bool)
                gone[list(self._removed)] = True
                work[gone[work]] = -1
            movable = (now - self._last_moved.astype(np.float64)) >= self.min_part_hours * 3600
            present_counts = np.bincount(work[work >= 0], minlength=topo.n_ids)
            quotas = compute_quotas(topo, targets.target, parts, self.replicas, present_counts)
            # Only holes to fill (a device removed, nothing added or re-weighted): then
            # only the removed replicas move. Should chance leave a tier unable to take its
            # whole share of them, the few left over stay as a slight imbalance (reported)
            # rather than moving replicas that could stay where they are.
            only_holes = not (present_counts > quotas).any()
            engine = MoveEngine(topo, work, quotas, max_rep, movable, rng)
            engine.repair_dispersion()
            engine.fill_holes()
            engine.settle_fresh(old)
            if not only_holes:
                engine.pull()
            changed = work != old
            moved_replicas = int(changed.sum())
            part_changed = changed.any(axis=0)
            moved_parts = int(part_changed.sum())
            last_moved = self._last_moved.copy()
            last_moved[part_changed] = np.uint32(min(max(now, 0), 0xFFFFFFFF))
            counts = engine.counts
        report = self._report(topo, targets, work, counts, quotas)
        # Commit: nothing above changed the builder.
        for dev_id in self._removed:
            self.devs[dev_id] = None
        while self.devs and self.devs[-1] is None:
            self.devs.pop()
        self._removed = set()
        self._r2p2d = work.astype(dtype_for(max(len(self.devs) - 1, 0)))
        self._last_moved = last_moved
        self.version += 1
        self.dirty = False
        report.moved_replicas = moved_replicas
        report.moved_partitions = moved_parts
        report.initial = initial
        report.seconds = time.perf_counter() - started
        return report

    def _report(self, topo, targets, work, counts, quotas) -> RebalanceReport:
        ids = np.nonzero(topo.present)[0]
        weighted_parts = targets.weighted[-1][topo.tier_of[-1][ids]] * self.parts
        balance = balance_of(counts[ids], weighted_parts)
        wanted_max = max_replicas_per_tier(targets.wanted)
        over_any = np.zeros(self.parts, dtype=bool)
        by_tier = {}
        for level, name in enumerate(LEVELS):
            over = partitions_over(topo.tier_of[level], wanted_max[level], work)
            by_tier[name] = round(float(100.0 * over.mean()), 4)
            over_any |= over
        gap = int(np.abs(counts[ids] - quotas[ids]).sum() // 2)
        return RebalanceReport(
            moved_replicas=0, moved_partitions=0, balance=balance,
            dispersion=round(float(100.0 * over_any.mean()), 4), dispersion_by_tier=by_tier,
            max_overload=targets.max_overload, effective_overload=targets.effective_overload,
            quota_gap=gap)

    # --- views -----------------------------------------------------------------------------
    @property
    def replica2part2dev(self) -> np.ndarray | None:
        """The current assignment (read-only view), None before the first rebalance."""
        if self._r2p2d is None:
            return None
        view = self._r2p2d.view()
        view.flags.writeable = False
        return view

    @property
    def last_moved(self) -> np.ndarray | None:
        return None if self._last_moved is None else self._last_moved.copy()

    def dev_part_counts(self) -> dict[int, int]:
        """Partition-replicas per device id in the current assignment."""
        if self._r2p2d is None:
            return {}
        counts = np.bincount(self._r2p2d.ravel(), minlength=len(self.devs))
        return {d["id"]: int(counts[d["id"]]) for d in self.devs if d is not None}

    def stats(self) -> RebalanceReport | None:
        """Balance and dispersion of the current assignment (None before a rebalance)."""
        if self._r2p2d is None:
            return None
        topo = build_topology(self.devs)
        targets = compute_targets(topo, self.replicas, self.overload)
        work = self._r2p2d.astype(np.int64)
        counts = np.bincount(work.ravel(), minlength=topo.n_ids)
        quotas = compute_quotas(topo, targets.target, self.parts, self.replicas, counts)
        return self._report(topo, targets, work, counts, quotas)

    # --- files -----------------------------------------------------------------------------
    def save_ring(self, path: str | os.PathLike[str]) -> None:
        """Write the ring file that :class:`ring.Ring` loads (atomically)."""
        if self._r2p2d is None:
            raise RingBuilderError("the builder has never been rebalanced: nothing to save")
        write_ring_file(path, self.part_power, self.replicas, self._ring_devs(), self._r2p2d,
                        extra={"version": self.version})

    def _ring_devs(self) -> list[dict | None]:
        return [None if d is None else dict(d) for d in self.devs]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": BUILDER_FORMAT, "format_version": BUILDER_VERSION,
            "part_power": self.part_power, "replicas": self.replicas,
            "min_part_hours": self.min_part_hours, "overload": self.overload,
            "version": self.version, "dirty": self.dirty, "devs": self.devs,
            "removed": sorted(self._removed),
            "r2p2d": None if self._r2p2d is None else self._r2p2d.tobytes(),
            "r2p2d_dtype": None if self._r2p2d is None else self._r2p2d.dtype.str,
            "last_moved": None if self._last_moved is None else self._last_moved.tobytes(),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the builder file (msgpack) atomically."""
        atomic_write(path, msgpack.packb(self.to_dict(), use_bin_type=True))

    @classmethod
    def load(cls, path: str | os.PathLike[str], *,
             clock: Callable[[], float] = time.time) -> RingBuilder:
        """Read a builder file written by :meth:`save`."""
        try:
            with open(path, "rb") as f:
                data = msgpack.unpackb(f.read(), raw=False, strict_map_key=False)
        except OSError as exc:
            raise RingFileError(f"cannot read builder file {os.fspath(path)!r}: {exc}") from exc
        except Exception as exc:
            raise RingFileError(f"{os.fspath(path)}: not a builder file ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != BUILDER_FORMAT:
            raise RingFileError(f"{os.fspath(path)}: not a swiftlike builder file")
        if data.get("format_version") != BUILDER_VERSION:
            raise RingFileError(f"{os.fspath(path)}: unsupported builder version "
                                f"{data.get('format_version')!r}")
        try:
            b = cls(data["part_power"], data["replicas"], data["min_part_hours"],
                    data["overload"], clock=clock)
            b.devs = data["devs"]
            b._removed = set(data["removed"])
            b.version = data["version"]
            b.dirty = data["dirty"]
            if data["r2p2d"] is not None:
                arr = np.frombuffer(data["r2p2d"], dtype=data["r2p2d_dtype"])
                b._r2p2d = arr.reshape(b.replicas, b.parts).copy()
                b._last_moved = np.frombuffer(data["last_moved"], dtype=np.uint32).copy()
                if len(b._last_moved) != b.parts:
                    raise ValueError("last_moved has the wrong length")
                if names_unknown_devices(b._r2p2d, b.devs):
                    raise ValueError("partitions assigned to devices it does not have")
        except (KeyError, TypeError, ValueError) as exc:
            raise RingFileError(f"{os.fspath(path)}: damaged builder file ({exc})") from exc
        return b


def balance_of(counts: np.ndarray, wanted: np.ndarray) -> float:
    """Max |% deviation| of counts from wanted; a device wanting none but holding some is 999.99."""
    counts = counts.astype(np.float64)
    pos = wanted > 0
    dev = np.zeros(len(counts))
    dev[pos] = np.abs(counts[pos] / wanted[pos] - 1.0) * 100.0
    dev[~pos & (counts > 0)] = 999.99
    return float(round(dev.max(initial=0.0), 4))


def partitions_over(tier_of: np.ndarray, max_rep: np.ndarray, r2p2d: np.ndarray) -> np.ndarray:
    """Per partition: does any tier of this level hold more replicas than ``max_rep`` allows?"""
    over = np.zeros(r2p2d.shape[1], dtype=bool)
    if len(max_rep) == 0 or max_rep.min() >= r2p2d.shape[0]:
        return over  # no tier can be over: it may hold every replica
    limits = np.concatenate((max_rep, [1 << 30]))
    t = tier_of.astype(np.int32)[r2p2d]
    for r in range(r2p2d.shape[0]):
        cnt = (t == t[r]).sum(axis=0)
        over |= cnt > limits[t[r]]
    return over
