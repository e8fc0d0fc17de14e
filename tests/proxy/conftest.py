"""Fixtures: a fresh in-process cluster (4 nodes, 3 replicas, proxy) per test module.

Error limiting state lives 60 s in the proxy: a test that stops a node would make the
next test in the module skip that node. ``cluster`` therefore hands every test a
cluster whose nodes are all up and whose error limiter is empty, so the tests of a
module pass in any order.
"""

from __future__ import annotations

import pytest_asyncio

from swiftlike.proxy.node_pool import ReadOrder
from tests.proxy.cluster import Cluster, start_cluster, stop_cluster


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def module_cluster(tmp_path_factory):
    c = await start_cluster(tmp_path_factory.mktemp("proxy-cluster"))
    try:
        yield c
    finally:
        await stop_cluster(c)


@pytest_asyncio.fixture(loop_scope="module")
async def cluster(module_cluster: Cluster):
    await reset_cluster(module_cluster)
    yield module_cluster
    await reset_cluster(module_cluster)


async def reset_cluster(c: Cluster) -> None:
    """All nodes up, no armed cuts, no error-limited node, reads in the default order."""
    from swiftlike.proxy.server import CONTEXT_KEY

    for fault in c.faults:
        fault.cut_after = None
        if fault.stalled:
            fault.stalled = False
            fault.kill_connections()
        if fault.down:
            await fault.set_down(False)
    ctx = c.proxy_app[CONTEXT_KEY]
    ctx.limiter.reset()
    ctx.read_order = ReadOrder()  # the default (shuffle), whatever a test set


@pytest_asyncio.fixture(loop_scope="module")
async def ring_read_order(cluster: Cluster):
    """Reads ask the primaries in ring order: for tests about what the first one says."""
    from swiftlike.proxy.server import CONTEXT_KEY

    cluster.proxy_app[CONTEXT_KEY].read_order = ReadOrder("ring")
    yield cluster
