"""benchmarks/storage_node_small_objects.py at a tiny size: both node servers, every
phase, counts that add up, and a table that says which is which."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "storage_node_small_objects.py"


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, str(SCRIPT), "--count", "30", "--large-count", "1",
                           "--rounds", "2", *args], capture_output=True, text=True,
                          timeout=240, cwd=ROOT, check=True)
    return done.stdout


def test_compares_both_servers_over_every_phase():
    result = json.loads(_run("--json"))
    assert result["kinds"] == ["lean", "aiohttp"]
    assert len(result["rounds"]) == 2
    for one_round in result["rounds"]:
        assert set(one_round) == {"lean", "aiohttp"}
        for phases in one_round.values():
            assert list(phases) == ["small-put", "small-get", "small-head", "large-put"]
            assert all(p["per_s"] > 0 and p["cpu_ms"] >= 0 for p in phases.values())
    for row in result["summary"]:
        rates = [r[kind][row["phase"]]["per_s"] for r in result["rounds"]
                 for kind in ("lean",)]
        assert min(rates) <= row["lean"]["per_s"] <= max(rates)
        assert row["ratio"] > 0


def test_table_for_one_server():
    table = _run("--servers", "lean", "--no-fsync")
    assert "lean req/s" in table and "aiohttp" not in table and "fsync=False" in table
    assert len([line for line in table.splitlines() if line.startswith(("small", "large"))]) == 4
