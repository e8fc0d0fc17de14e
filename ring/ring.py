"""Ring: the read-only placement lookup every proxy, storage node and daemon uses.

Loaded from a ring file (``ring.ringfile``); immutable once loaded, except that it swaps in
a new file when the one on disk changes (checked at most every ``reload_interval``
seconds). Lookups are on the hot path of every request, so per-device node dicts are
built once per load and shared (read-only) by every lookup: a lookup hashes the path and
reads R device ids from one partition-major table, which keeps a partition's ids in one
cache line.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from xxhash import xxh3_128_intdigest as _xxh3_128_int

from .hashing import hash_path
from .ringfile import LookupTable, RingFileError, read_lookup_table

_WALK_CHUNK = 128


class _Loaded:
    """Everything derived from one ring file; swapped atomically on reload."""

    __slots__ = (
        "by_part",
        "data",
        "dev_ids",
        "devs",
        "ip_count",
        "mtime_key",
        "nodes_of",
        "part_power",
        "partition_count",
        "region_count",
        "replica_count",
        "shift",
        "shift128",
        "templates",
        "tiers",
        "zone_count",
    )

    def __init__(self, data: LookupTable, mtime_key: tuple):
        self.data = data
        self.mtime_key = mtime_key
        self.part_power = data.part_power
        self.partition_count = 1 << data.part_power
        self.replica_count = data.replicas
        self.shift = 64 - data.part_power
        self.shift128 = 128 - data.part_power
        self.devs: list[dict | None] = [None if d is None else dict(d) for d in data.devs]
        self.templates = [
            [None if d is None else NodeDict(d, index=r) for d in self.devs]
            for r in range(data.replicas)
        ]
        self.by_part = memoryview(data.by_part)  # indexing returns plain ints, fast
        self.nodes_of = _make_nodes_of(self.by_part, data.replicas, self.templates)
        # Handoffs come only from devices that hold partitions: one at weight 0 (being
        # drained, or added to be ramped up later) would otherwise stand in an unused
        # zone of its own and be every partition's first handoff.
        holding = _devices_holding_parts(data)
        live = [d for d in self.devs if d is not None and d["id"] in holding]
        self.dev_ids = sorted(d["id"] for d in live)
        self.tiers = {d["id"]: (d["region"], (d["region"], d["zone"]),
                                (d["region"], d["zone"], d["ip"])) for d in live}
        self.region_count = len({t[0] for t in self.tiers.values()})
        self.zone_count = len({t[1] for t in self.tiers.values()})
        self.ip_count = len({t[2] for t in self.tiers.values()})


def _devices_holding_parts(data: LookupTable) -> set[int]:
    """Ids of the devices with at least one partition: from the ring file when its
    builder recorded them, else counted from the table (older files)."""
    recorded = data.meta.get("devs_with_parts")
    if isinstance(recorded, list):
        return set(recorded)
    return set(data.by_part)


class NodeDict(dict):
    """A device as lookups return it. One instance per (device, replica index) is shared
    by every lookup of a loaded ring, so it refuses changes: copy it (``dict(node)``) to
    modify it. Reads cost what a plain dict's do."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("ring node dicts are shared and read-only; copy with dict(node)")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple:
        return (NodeDict, (dict(self),))

    def __copy__(self) -> dict:
        return dict(self)

    def __deepcopy__(self, memo: dict) -> dict:
        return dict(self)


def _make_nodes_of(by_part: memoryview, replicas: int,
                   templates: list[list[NodeDict | None]]) -> Callable[[int], list[dict]]:
    """A function part -> the primaries' shared node dicts, unrolled for R = 3 and 2.

    ``by_part`` holds partition p's device ids at p*R .. p*R+R-1: one memory fetch where
    R separate rows would need R (a ring's rows are far bigger than the CPU caches).
    """
    if replicas == 3:
        t0, t1, t2 = templates

        def nodes3(part: int) -> list[dict]:
            i = part * 3
            return [t0[by_part[i]], t1[by_part[i + 1]], t2[by_part[i + 2]]]
        return nodes3
    if replicas == 2:
        t0, t1 = templates

        def nodes2(part: int) -> list[dict]:
            i = part * 2
            return [t0[by_part[i]], t1[by_part[i + 1]]]
        return nodes2
    indexed = list(enumerate(templates))

    def nodes(part: int) -> list[dict]:
        i = part * replicas
        return [t[by_part[i + r]] for r, t in indexed]
    return nodes


def _mtime_key(path: str) -> tuple:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Ring:
    """Partition lookups against a ring file. See docs/internal-protocol.md ("The ring API")."""

    def __init__(self, path: str | os.PathLike[str], hash_prefix: bytes = b"",
                 hash_suffix: bytes = b"", reload_interval: float = 15.0, *,
                 clock: Callable[[], float] = time.monotonic):
        self.path = os.fspath(path)
        self._prefix = bytes(hash_prefix)
        self._suffix = bytes(hash_suffix)
        self._prefix_str = self._prefix.decode("utf-8", "surrogateescape")
        self._suffix_str = self._suffix.decode("utf-8", "surrogateescape")
        self.reload_interval = float(reload_interval)
        self._clock = clock
        self._next_check = clock() + self.reload_interval
        self._install(self._read())

    def _read(self) -> _Loaded:
        try:
            key = _mtime_key(self.path)
        except OSError as exc:
            raise RingFileError(f"cannot read ring file {self.path!r}: {exc}") from exc
        return _Loaded(read_lookup_table(self.path), key)

    # --- reloading -------------------------------------------------------------------------
    def _maybe_reload(self) -> None:
        now = self._clock()
        if now < self._next_check:
            return
        self._next_check = now + self.reload_interval
        self.reload_if_changed()

    def reload_if_changed(self) -> bool:
        """Reload now if the file changed; True if a new ring was loaded.

        A file that fails to load keeps the current ring in service (a half-copied or
        corrupt ring must not take a node down); the error is raised to the caller of
        this method only, and the next check retries.
        """
        try:
            key = _mtime_key(self.path)
        except OSError:
            return False
        if key == self._ring.mtime_key:
            return False
        try:
            self._install(_Loaded(read_lookup_table(self.path), key))
        except RingFileError:
            return False
        return True

    # --- properties ------------------------------------------------------------------------
    @property
    def replica_count(self) -> int:
        self._maybe_reload()
        return self._ring.replica_count

    @property
    def partition_count(self) -> int:
        self._maybe_reload()
        return self._ring.partition_count

    @property
    def part_power(self) -> int:
        self._maybe_reload()
        return self._ring.part_power

    @property
    def devs(self) -> list[dict | None]:
        """Devices indexed by id (None where an id is unused)."""
        self._maybe_reload()
        return self._ring.devs

    @property
    def meta(self) -> dict[str, Any]:
        return self._ring.data.meta

    # --- lookups ---------------------------------------------------------------------------
    def get_part(self, account: str, container: str | None = None,
                 obj: str | None = None) -> int:
        """The partition of /account[/container[/object]]."""
        if self._clock() >= self._next_check:
            self._maybe_reload()
        digest = hash_path(account, container, obj, prefix=self._prefix, suffix=self._suffix)
        return int.from_bytes(digest[:8], "big") >> self._ring.shift

    def _install(self, loaded: _Loaded) -> None:
        """Put a loaded ring in service, with an object lookup specialised for it.

        Object lookups are on the hot path of every request: the instance attribute
        ``get_nodes`` shadows the method with a closure that has the salts, the shift
        and the ring's own ``nodes_of`` bound as locals. Anything else (reload due,
        account or container paths) goes through the method.
        """
        self._ring = loaded
        clock, general = self._clock, Ring.get_nodes.__get__(self)
        head, tail = self._prefix_str + "/", self._suffix_str
        shift, nodes_of = loaded.shift128, loaded.nodes_of

        def get_nodes(account: str, container: str | None = None,
                      obj: str | None = None) -> tuple[int, list[dict]]:
            if obj is None or container is None or not account or (
                    clock() >= self._next_check):
                return general(account, container, obj)
            key = f"{head}{account}/{container}/{obj}{tail}"
            try:
                data = key.encode()
            except UnicodeEncodeError:  # surrogate-escaped bytes in a salt or a name
                data = key.encode("utf-8", "surrogateescape")
            part = _xxh3_128_int(data) >> shift
            return part, nodes_of(part)

        get_nodes.__doc__ = Ring.get_nodes.__doc__
        self.get_nodes = get_nodes  # type: ignore[method-assign]

    def get_nodes(self, account: str, container: str | None = None,
                  obj: str | None = None) -> tuple[int, list[dict]]:
        """(partition, primary node dicts with 'index') for a path.

        The dicts are shared by every lookup and read-only (:class:`NodeDict`).
        """
        if self._clock() >= self._next_check:
            self._maybe_reload()
        ring = self._ring
        if obj is not None and container is not None and account:
            # Same bytes as ring.hashing.hash_path builds (tests check they agree); the
            # 128-bit digest read as one big-endian int, top part_power bits.
            # Prefix and suffix are kept decoded with surrogateescape, which encodes back
            # to exactly the same bytes, so one encode builds prefix + path + suffix.
            key = f"{self._prefix_str}/{account}/{container}/{obj}{self._suffix_str}"
            part = _xxh3_128_int(key.encode("utf-8", "surrogateescape")) >> ring.shift128
        else:
            digest = hash_path(account, container, obj, prefix=self._prefix,
                               suffix=self._suffix)
            part = int.from_bytes(digest[:8], "big") >> ring.shift
        return part, ring.nodes_of(part)

    def get_part_nodes(self, part: int) -> list[dict]:
        """Primary node dicts of a partition, in replica order, each with 'index'."""
        if self._clock() >= self._next_check:
            self._maybe_reload()
        ring = self._ring
        if not 0 <= part < ring.partition_count:
            raise IndexError(f"partition {part} out of range 0..{ring.partition_count - 1}")
        return ring.nodes_of(part)

    def get_more_nodes(self, part: int) -> Iterator[dict]:
        """Handoff nodes for a partition, deterministic, never a primary.

        Devices come in the order they appear walking the partitions after ``part``
        (so a device turns up in proportion to its weight), then any device never seen.
        Four passes over that order: first devices in regions no earlier node used, then
        unused zones, then unused servers (ip), then any unused device.
        """
        ring = self._ring
        if not 0 <= part < ring.partition_count:
            raise IndexError(f"partition {part} out of range 0..{ring.partition_count - 1}")
        return self._handoffs(ring, part)

    @staticmethod
    def _handoffs(ring: _Loaded, part: int) -> Iterator[dict]:
        r = ring.replica_count
        primaries = list(ring.by_part[part * r:(part + 1) * r])
        used_devs = set(primaries)
        used = [set(), set(), set()]
        for dev_id in primaries:
            for level, tier in enumerate(ring.tiers[dev_id]):
                used[level].add(tier)
        totals = (ring.region_count, ring.zone_count, ring.ip_count)
        order = _HandoffOrder(ring, part)
        handoff_index = ring.replica_count
        for level in (0, 1, 2, None):
            if level is not None and len(used[level]) >= totals[level]:
                continue
            i = 0
            while True:
                dev_id = order.get(i)
                if dev_id is None:
                    break
                i += 1
                if dev_id in used_devs:
                    continue
                tiers = ring.tiers[dev_id]
                if level is not None and tiers[level] in used[level]:
                    continue
                used_devs.add(dev_id)
                for lv, tier in enumerate(tiers):
                    used[lv].add(tier)
                node = dict(ring.devs[dev_id], handoff_index=handoff_index)
                handoff_index += 1
                yield node
                if level is not None and len(used[level]) >= totals[level]:
                    break


class _HandoffOrder:
    """Lazily built device order for one partition's handoffs (see Ring.get_more_nodes)."""

    def __init__(self, ring: _Loaded, part: int):
        self.ring = ring
        self.part = part
        self.order: list[int] = []
        self.seen: set[int] = set()
        self.walked = 1  # partitions walked after `part`
        self.done = False

    def get(self, i: int) -> int | None:
        while i >= len(self.order) and not self.done:
            self._extend()
        return self.order[i] if i < len(self.order) else None

    def _extend(self) -> None:
        ring = self.ring
        n = ring.partition_count
        if self.walked >= n or len(self.seen) >= len(ring.dev_ids):
            rest = [d for d in ring.dev_ids if d not in self.seen]
            # Deterministic but part-dependent order for devices the walk never met.
            rest.sort(key=lambda d: ((d * 2654435761) ^ (self.part * 40503)) & 0xFFFFFFFF)
            self.order.extend(rest)
            self.seen.update(rest)
            self.done = True
            return
        stop = min(self.walked + _WALK_CHUNK, n)
        first, last = (self.part + self.walked) % n, (self.part + stop - 1) % n
        self.walked = stop
        replicas, by_part = ring.replica_count, ring.by_part
        if first <= last:
            block = by_part[first * replicas:(last + 1) * replicas].tolist()
        else:  # the walk wraps past the last partition
            block = (by_part[first * replicas:].tolist() +
                     by_part[:(last + 1) * replicas].tolist())
        for dev_id in block:
            if dev_id not in self.seen:
                self.seen.add(dev_id)
                self.order.append(dev_id)
