"""Shared account/container HEADs: a finished HEAD answers only requests that arrived
before it started, and a metadata write through the worker forgets it.

A real (counting) HTTP server stands in for the container server, so every backend
round trip is seen; the ring is a real two-device ring (both devices on that server).
"""

from __future__ import annotations

import time

from aiohttp import web

from ring import Ring, RingBuilder
from swiftlike.common.constraints import Limits
from swiftlike.common.node_client import NodeClient, node_path
from swiftlike.proxy.base_controller import Controller, ProxyContext
from swiftlike.proxy.node_pool import ErrorLimiter
from tests.cluster_harness import serve_handler


async def test_finished_head_is_shared_only_with_earlier_arrivals(tmp_path):
    heads: list[str] = []

    async def container_server(request: web.Request) -> web.Response:
        heads.append(request.path)
        return web.Response(status=204, headers={"X-Container-Object-Count": str(len(heads))})

    runner, port = await serve_handler(container_server)
    builder = RingBuilder(part_power=2, replicas=2, min_part_hours=0)
    for device in ("sda", "sdb"):
        builder.add_dev({"region": 1, "zone": 1, "ip": "127.0.0.1", "port": port,
                         "device": device, "weight": 1.0})
    builder.rebalance()
    builder.save_ring(str(tmp_path / "cluster.ring"))
    ring = Ring(str(tmp_path / "cluster.ring"), hash_prefix=b"p", hash_suffix=b"s")
    ctx = ProxyContext(ring=ring, client=NodeClient(), limiter=ErrorLimiter(),
                       limits=Limits.from_conf({}))
    controller = Controller(ctx)
    part, nodes = ring.get_nodes("AUTH_a", "c")
    key = ("c", "AUTH_a", "c", "")

    async def head(since: float | None):
        return await controller.head_shared(
            key, part, nodes, lambda n: node_path(n, part, "AUTH_a", "c"),
            {"X-Backend-Server-Type": "container"}, since=since)

    try:
        early = time.monotonic()  # a request that arrived before any HEAD started
        first = await head(early)
        assert first is not None and len(heads) == 1
        assert await head(early) is first          # started after it arrived: shared
        assert len(heads) == 1
        late = time.monotonic()                    # arrived after that HEAD started
        second = await head(late)
        assert len(heads) == 2 and second is not first
        assert second.headers["X-Container-Object-Count"] == "2"
        assert await head(None) is not second      # no arrival time: never reused
        assert len(heads) == 3
        controller.invalidate_info("AUTH_a", "c")  # a metadata write through this worker
        await head(early)
        assert len(heads) == 4
    finally:
        await ctx.client.close()
        await runner.cleanup()
