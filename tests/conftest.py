"""Shared fixtures: one real all-in-one cluster per test session for the API tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster_harness import ServedCluster, start_served_cluster

IMAGE_SEGMENT_SIZE = 4 * 1024 * 1024


@pytest.fixture(scope="session")
def swift_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedCluster]:
    """A `swiftlike serve` cluster (4 nodes, 3 replicas, 1 proxy worker) on a free port.

    The image API it mounts stores images over IMAGE_SEGMENT_SIZE bytes as segments.

    Shared by every test in the session: tests must use their own container names
    (e.g. from the `unique_name` fixture) so they do not see each other's objects.
    """
    # Small image segments, so the image tests push multi-segment SLOs through the real
    # large-object middleware with ~10 MiB uploads.
    cluster = start_served_cluster(tmp_path_factory.mktemp("served"), nodes=4, workers=1,
                                   extra_args=["--image-segment-size", str(IMAGE_SEGMENT_SIZE)])
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A container/object name prefix unique to the test that asks for it."""
    import uuid

    return f"{request.node.name[:40]}-{uuid.uuid4().hex[:8]}".replace("[", "-").replace("]", "")
