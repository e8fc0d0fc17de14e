"""Flat memory on a real cluster: benchmarks/image_bench.py at a test-sized scale.

Slow (it starts its own `swiftlike serve` and moves hundreds of MiB through 3 replicas
with fsync): run with ``SWIFTLIKE_SLOW_TESTS=1 pytest -m slow tests/image``. The 2 GiB
run is ``python benchmarks/image_bench.py`` (numbers in docs/image.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.image_bench import run_on_new_cluster

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("SWIFTLIKE_SLOW_TESTS"),
                       reason="large transfer: set SWIFTLIKE_SLOW_TESTS=1 to run"),
]


def test_proxy_worker_memory_stays_flat_while_images_stream(tmp_path: Path) -> None:
    # 384 MiB in 32 MiB segments: 12 segments, each bigger than any buffer we allow.
    result = run_on_new_cluster(size_mib=384, segment_mib=32, data_dir=tmp_path)
    assert result.segments == 12
    assert result.proxy_growth_mib < 64, result.summary()
