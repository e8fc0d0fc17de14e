"""Node selection: error limiting, and the order reads ask the primaries in.

A node device that keeps failing (connection refused, timeouts, 5xx) is skipped for
``error_suppression_interval`` seconds once it has failed more than
``error_suppression_limit`` times, so one dead disk does not cost every request a
timeout. State is per proxy process (like Swift's proxy), held by the app object.

Reads (GET/HEAD of objects, containers and accounts) ask one primary at a time. Asking
them in ring order would send every read of one name to the same node: one hot
container's listings would all queue on one single-threaded container server while its
two other replicas idle. Like Swift's default ``sorting_method = shuffle``, reads take
the primaries in a random order; writes go to all of them anyway.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Mapping
from itertools import islice
from typing import Any

from swiftlike.common.node_client import node_key


class ErrorLimiter:
    """Counts node failures and says which nodes to skip for a while."""

    def __init__(self, interval: float = 60.0, limit: int = 10) -> None:
        self.interval = interval
        self.limit = limit
        self._errors: dict[str, tuple[int, float]] = {}

    def is_limited(self, node: Mapping[str, Any], now: float | None = None) -> bool:
        entry = self._errors.get(node_key(node))
        if entry is None:
            return False
        count, last = entry
        now = time.monotonic() if now is None else now
        if now - last > self.interval:
            del self._errors[node_key(node)]
            return False
        return count > self.limit

    def error(self, node: Mapping[str, Any]) -> None:
        key = node_key(node)
        count, _ = self._errors.get(key, (0, 0.0))
        self._errors[key] = (count + 1, time.monotonic())

    def limit_now(self, node: Mapping[str, Any]) -> None:
        """Suppress a node at once (e.g. 507: the device is unmounted or full)."""
        self._errors[node_key(node)] = (self.limit + 1, time.monotonic())

    def success(self, node: Mapping[str, Any]) -> None:
        if self._errors:
            self._errors.pop(node_key(node), None)

    def reset(self) -> None:
        """Forget every failure (an operator action, and for tests)."""
        self._errors.clear()

    def error_count(self, node: Mapping[str, Any]) -> int:
        return self._errors.get(node_key(node), (0, 0.0))[0]


READ_ORDERS = ("shuffle", "ring")


class ReadOrder:
    """The order a read asks the primaries in: ``shuffle`` (Swift's default) or ``ring``.

    ``ring`` keeps the ring's order, so every read of a name starts at the same node;
    it suits tests and debugging, not load. The random source is passed in so that a
    test can make the order reproducible.
    """

    def __init__(self, method: str = "shuffle", rng: random.Random | None = None) -> None:
        if method not in READ_ORDERS:
            raise ValueError(f"[proxy] sorting_method must be one of {', '.join(READ_ORDERS)}"
                             f", not {method!r}")
        self.method = method
        self.rng = rng or random.Random()

    def __call__(self, primaries: list[dict]) -> list[dict]:
        if self.method == "ring" or len(primaries) < 2:
            return primaries
        order = list(primaries)
        self.rng.shuffle(order)
        return order


def iter_nodes(
    ring: Any,
    part: int,
    primaries: list[dict],
    limiter: ErrorLimiter,
    handoff_limit: int | None = None,
) -> Iterator[dict]:
    """Primaries, then handoffs, skipping error-limited devices.

    ``handoff_limit`` bounds how many handoffs are consulted (Swift's
    ``request_node_count``), so a missing object does not fan out over the cluster.
    """
    if handoff_limit is None:
        handoff_limit = len(primaries) * 2
    for node in primaries:
        if not limiter.is_limited(node):
            yield node
    for node in islice(ring.get_more_nodes(part), handoff_limit):
        if not limiter.is_limited(node):
            yield node


class PrimaryNotFound:
    """When a one-replica-at-a-time read that keeps meeting 404s may stop.

    Once every primary has said 404 and one of the answers knew of a deletion (an
    object's tombstone, a deleted database: ``X-Backend-Timestamp``), that is the
    answer. A plain 404 from every primary is not enough: after a rebalance has moved
    all of a partition's primaries, the data waits on the old ones, now handoffs, until
    replication brings it over, and Swift's proxy asks handoffs too. A miss then asks as
    many handoffs as there are primaries (Swift's ``request_node_count``, 2 x replicas)
    before it gives up; while some node could not answer at all, the read goes on down
    ``iter_nodes``' longer handoff list, where the only copy may be.
    """

    def __init__(self, primaries: list[dict]) -> None:
        self._primaries = primaries
        self._from_primaries = 0
        self._all = 0
        self._deletion_known = False

    def record(self, node: dict, deletion_known: bool) -> bool:
        """Note a 404 from ``node`` (``deletion_known``: it carried a deletion's
        timestamp); True when the read should stop with the 404."""
        self._all += 1
        if any(node is primary for primary in self._primaries):
            self._from_primaries += 1
        self._deletion_known = self._deletion_known or deletion_known
        if self._from_primaries >= len(self._primaries) and self._deletion_known:
            return True
        return self._all >= 2 * len(self._primaries)
