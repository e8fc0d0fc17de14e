"""Rate limiting: the Swift algorithm in the pipeline, with low limits and a real clock.

`swiftlike serve` runs with the default (off) limits, so the limiting itself is
proved at pipeline level: the middleware wraps a small handler standing in for the
proxy core (it only needs to answer the container HEAD ratelimit asks for and count
writes). The served cluster proves the /info section.
"""

from __future__ import annotations

import asyncio
import time

from swiftlike.proxy.pipeline import SwiftRequest, SwiftResponse, info_registry
from swiftlike.proxy.ratelimit import RateLimit, interpret_limits, max_rate


class CountingCore:
    """Answers container HEADs with an object count and counts everything else."""

    def __init__(self, object_count: int = 1000) -> None:
        self.object_count = object_count
        self.writes: list[float] = []

    async def __call__(self, req: SwiftRequest) -> SwiftResponse:
        if req.method == "HEAD":
            return SwiftResponse(204, {"X-Container-Object-Count": str(self.object_count)})
        self.writes.append(time.monotonic())
        return SwiftResponse(201 if req.method == "PUT" else 204)


def put(path: str) -> SwiftRequest:
    return SwiftRequest("PUT", path, headers={"Content-Length": "0"})


async def test_info_section(swift_cluster, http) -> None:
    async with http.get(swift_cluster.proxy_url + "/info") as resp:
        section = (await resp.json())["ratelimit"]
    assert section == {"account_ratelimit": 0.0, "max_sleep_time_seconds": 60.0,
                       "container_ratelimits": [], "container_listing_ratelimits": []}


def test_rate_interpolation() -> None:
    funcs, info = interpret_limits({"container_ratelimit_100": "100",
                                    "container_ratelimit_200": "50",
                                    "container_ratelimit_500": "20"}, "container_ratelimit_")
    assert info == [[100, 100.0], [200, 50.0], [500, 20.0]]
    assert max_rate(funcs, 50) is None
    assert max_rate(funcs, 100) == 100
    assert max_rate(funcs, 150) == 75
    assert max_rate(funcs, 1000) == 20


async def test_object_writes_are_spaced_and_498_past_max_sleep() -> None:
    core = CountingCore(object_count=1000)
    conf = {"ratelimit": {"container_ratelimit_100": "20", "max_sleep_time_seconds": "0.3",
                          "rate_buffer_seconds": "0"}}
    limiter = RateLimit(core, conf)
    assert info_registry(conf).sections()["ratelimit"]["container_ratelimits"] == [[100, 20.0]]
    statuses = []
    start = time.monotonic()
    results = await asyncio.gather(*(limiter(put(f"/v1/AUTH_a/c/o{i}")) for i in range(12)))
    statuses = [r.status for r in results]
    elapsed = time.monotonic() - start
    # 20/s: each write books 50 ms; a wait over 0.3 s is refused with 498 "Slow down"
    refused = [r for r in results if r.status == 498]
    assert refused and all(r.body == b"Slow down" for r in refused)
    allowed = statuses.count(201)
    assert 5 <= allowed <= 8, statuses
    assert elapsed >= 0.2
    # spread over at least their booked 50 ms each (a loaded machine can wake two late
    # sleepers together, so single gaps prove nothing; the span only grows under load)
    span = core.writes[-1] - core.writes[0]
    assert span >= 0.05 * (len(core.writes) - 1) * 0.9, core.writes
    # another container has its own clock; reads are never limited
    assert (await limiter(put("/v1/AUTH_a/other/o"))).status == 201
    assert (await limiter(SwiftRequest("GET", "/v1/AUTH_a/c/o0"))).status == 204


async def test_small_containers_and_whitelist_are_not_limited() -> None:
    core = CountingCore(object_count=5)
    limiter = RateLimit(core, {"ratelimit": {"container_ratelimit_100": "1",
                                             "max_sleep_time_seconds": "0.1",
                                             "account_ratelimit": "1",
                                             "ratelimit_whitelist": "AUTH_vip",
                                             "ratelimit_blacklist": "AUTH_bad"}})
    results = [await limiter(put(f"/v1/AUTH_a/c/o{i}")) for i in range(5)]
    assert all(r.status == 201 for r in results)
    # account_ratelimit limits container PUT/DELETE: one per second here
    assert (await limiter(put("/v1/AUTH_a/c1"))).status == 201
    assert (await limiter(put("/v1/AUTH_a/c2"))).status == 498
    vip = [(await limiter(put(f"/v1/AUTH_vip/c{i}"))).status for i in range(3)]
    assert vip == [201, 201, 201]
    blocked = await limiter(put("/v1/AUTH_bad/c/o"))
    assert blocked.status == 497


async def test_shared_state_dir_makes_workers_share_one_limit(tmp_path) -> None:
    """Two middleware instances (as two worker processes would) share the clocks."""
    conf = {"ratelimit": {"container_ratelimit_1": "10", "max_sleep_time_seconds": "0.15",
                          "rate_buffer_seconds": "0",
                          "shared_state_dir": str(tmp_path / "clocks")}}
    workers = [RateLimit(CountingCore(), conf), RateLimit(CountingCore(), conf)]
    results = await asyncio.gather(*(workers[i % 2](put(f"/v1/AUTH_a/c/o{i}"))
                                     for i in range(8)))
    statuses = [r.status for r in results]
    # 10/s with at most 0.15 s of waiting: two or three slots in all, not per worker
    assert 2 <= statuses.count(201) <= 3, statuses
    assert statuses.count(498) >= 5
