"""Shared fixtures: one real all-in-one cluster per test session for the API tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster_harness import ServedCluster, start_served_cluster


@pytest.fixture(scope="session")
def swift_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedCluster]:
    """A `swiftlike serve` cluster (4 nodes, 3 replicas, 1 proxy worker) on a free port.

    Shared by every test in the session: tests must use their own container names
    (e.g. from the `unique_name` fixture) so they do not see each other's objects.
    """
    cluster = start_served_cluster(tmp_path_factory.mktemp("served"), nodes=4, workers=1)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A container/object name prefix unique to the test that asks for it."""
    import uuid

    return f"{request.node.name[:40]}-{uuid.uuid4().hex[:8]}".replace("[", "-").replace("]", "")
