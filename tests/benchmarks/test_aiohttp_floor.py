"""benchmarks/aiohttp_floor.py at a tiny size: both stacks answer, the numbers add up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_floor_measures_both_stacks_and_their_ratio() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "aiohttp_floor.py"), "--seconds", "1",
         "--rounds", "1", "--procs", "1", "--concurrency", "2", "--workers", "1", "--json"],
        capture_output=True, text=True, timeout=240, cwd=ROOT, check=True)
    result = json.loads(out.stdout)
    (bare,), (ours,) = result["bare_get_per_s"], result["swiftlike_get_per_s"]
    assert bare > 0 and ours > 0  # every counted GET returned 200 and the 4 KiB body
    assert result["share_of_bare"] == [ours / bare]
    assert result["settings"]["workers"] == 1
