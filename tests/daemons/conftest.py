"""Shared fixture of the daemon tests: a small real cluster (see mini_cluster.py)."""

from __future__ import annotations

import pytest

from tests.daemons.mini_cluster import start_mini_cluster


@pytest.fixture(params=["fsync off"])
async def cluster(tmp_path, request):
    """Four storage nodes on free ports, stopped after the test. A test parametrized
    indirectly with "group commit" gets nodes that fsync through group commit."""
    node_conf = {"fsync": True, "durability": "group"} if request.param == "group commit" \
        else None
    mini = await start_mini_cluster(str(tmp_path), node_conf=node_conf)
    try:
        yield mini
    finally:
        for node in mini.nodes:
            await node.stop()


@pytest.fixture
async def full_cluster(tmp_path):
    """Four whole node servers (account and container servers too), stopped after."""
    mini = await start_mini_cluster(str(tmp_path), full_nodes=True)
    try:
        yield mini
    finally:
        for node in mini.nodes:
            await node.stop()
