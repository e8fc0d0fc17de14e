"""Servers freeze their startup objects and collect less often once listening."""

from __future__ import annotations

import subprocess
import sys


def test_settle_freezes_startup_objects_and_raises_thresholds():
    code = (
        "import gc\n"
        "from swiftlike.common.gc_tuning import SERVER_GC_THRESHOLDS, settle_after_startup\n"
        "startup = [dict(n=i) for i in range(1000)]\n"
        "cycle = []; cycle.append(cycle); del cycle\n"
        "assert gc.get_freeze_count() == 0\n"
        "settle_after_startup()\n"
        "assert gc.get_freeze_count() >= 1000, gc.get_freeze_count()\n"
        "assert gc.get_threshold() == SERVER_GC_THRESHOLDS == (10000, 20, 20)\n"
        "assert gc.collect() == 0  # the startup cycle went before the freeze\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
