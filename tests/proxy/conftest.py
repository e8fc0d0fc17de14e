"""Fixtures: a fresh in-process cluster (4 nodes, 3 replicas, proxy) per test module."""

from __future__ import annotations

import pytest_asyncio

from tests.proxy.cluster import start_cluster, stop_cluster


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def cluster(tmp_path_factory):
    c = await start_cluster(tmp_path_factory.mktemp("proxy-cluster"))
    try:
        yield c
    finally:
        await stop_cluster(c)
