"""Shared fixture of the daemon tests: a small real cluster (see mini_cluster.py)."""

from __future__ import annotations

import pytest

from tests.daemons.mini_cluster import start_mini_cluster


@pytest.fixture
async def cluster(tmp_path):
    """Four storage nodes on free ports, stopped after the test."""
    mini = await start_mini_cluster(str(tmp_path))
    try:
        yield mini
    finally:
        for node in mini.nodes:
            await node.stop()
