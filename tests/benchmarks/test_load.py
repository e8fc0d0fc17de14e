"""benchmarks/load.py: counts, errors, clean-up and CPU accounting, against a fake endpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from benchmarks.load import ALL_PHASES, LoadConfig, run_load
from benchmarks.load_stats import format_table, percentiles_ms, process_tree_ticks
from tests.benchmarks.fake_swift import FakeSwift

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_swift():
    server = FakeSwift()
    server.start()
    yield server
    server.stop()


def _phases(result):
    return {p["phase"]: p for p in result["phases"]}


@pytest.mark.parametrize("client", ["raw", "aiohttp"])
def test_every_phase_runs_its_count_and_cleans_up(fake_swift, client):
    config = LoadConfig(auth_url=fake_swift.auth_url, procs=2, concurrency=4, count=40,
                        large_count=3, large_size=256 * 1024, server_pids=(os.getpid(),),
                        client=client)
    result = run_load(config)
    phases = _phases(result)
    assert list(phases) == list(ALL_PHASES)
    for name in ("small-put", "small-get", "small-head", "mixed", "small-delete"):
        assert phases[name]["ops"] == 40, name
    assert phases["small-list"]["ops"] == 4
    for name in ("large-put", "large-get", "large-delete"):
        assert phases[name]["ops"] == 3, name
    assert all(p["errors"] == 0 for p in phases.values())
    # Bytes moved are exactly what the phases say.
    assert phases["small-put"]["bytes"] == 40 * 4096
    assert phases["large-get"]["bytes"] == 3 * 256 * 1024
    mixed = phases["mixed"]["op_counts"]
    assert sum(mixed.values()) == 40 and mixed.get("get", 0) > 0
    # The server saw what the client reports, and nothing is left behind.
    assert fake_swift.requests[("HEAD", "object")] == 40 + mixed.get("head", 0)
    assert fake_swift.containers == {}
    for p in phases.values():
        lat = p["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert p["server_cpu_s"] is not None and p["server_cpu_s"] >= 0
    table = format_table(result["phases"])
    assert "small-put" in table and "large-get" in table
    json.dumps(result)   # plain data


@pytest.mark.parametrize("client", ["raw", "aiohttp"])
def test_errors_are_counted_not_hidden(client):
    server = FakeSwift(fail_every_nth_get=5)
    server.start()
    try:
        result = run_load(LoadConfig(auth_url=server.auth_url, procs=1, concurrency=2,
                                     count=20, phases=("small-get",), client=client))
    finally:
        server.stop()
    (get,) = result["phases"]          # the PUT phase ran but is not reported
    assert get["phase"] == "small-get"
    assert get["errors"] == 4 and get["ops"] == 16
    assert any("503" in s for s in get["error_samples"])


def test_duration_bounds_a_phase(fake_swift):
    started = time.monotonic()
    result = run_load(LoadConfig(auth_url=fake_swift.auth_url, procs=1, concurrency=1,
                                 count=100_000, duration=0.5, phases=("small-put",)))
    (put,) = result["phases"]
    assert 0 < put["ops"] < 100_000
    assert time.monotonic() - started < 30
    assert fake_swift.containers == {}


def test_read_phases_have_their_own_count_and_time_limit(fake_swift):
    # 30 objects stored, 90 GETs and HEADs over them; the other phases keep --count
    result = run_load(LoadConfig(auth_url=fake_swift.auth_url, procs=2, concurrency=3,
                                 count=30, read_count=90,
                                 phases=("small-put", "small-get", "small-head", "mixed")))
    phases = _phases(result)
    assert phases["small-put"]["ops"] == 30
    assert phases["small-get"]["ops"] == 90 and phases["small-head"]["ops"] == 90
    assert phases["small-get"]["bytes"] == 90 * 4096
    assert all(p["errors"] == 0 for p in phases.values())
    assert sum(phases["mixed"]["op_counts"].values()) == 30
    # read_seconds stops the read phases only: the PUT phase still runs its whole count
    started = time.monotonic()
    result = run_load(LoadConfig(auth_url=fake_swift.auth_url, procs=1, concurrency=1,
                                 count=20, read_count=1_000_000, read_seconds=0.5,
                                 phases=("small-put", "small-get")))
    phases = _phases(result)
    assert phases["small-put"]["ops"] == 20
    assert 0 < phases["small-get"]["ops"] < 1_000_000
    assert phases["small-get"]["seconds"] < 5
    assert time.monotonic() - started < 30
    assert fake_swift.containers == {}


def test_bad_credentials_fail_clearly(fake_swift):
    with pytest.raises(RuntimeError, match="401"):
        run_load(LoadConfig(auth_url=fake_swift.auth_url, key="wrong", count=1))


def test_config_validation():
    with pytest.raises(ValueError, match="unknown phases"):
        LoadConfig(auth_url="http://x", phases=("small-put", "nope"))
    with pytest.raises(ValueError):
        LoadConfig(auth_url="http://x", procs=0)
    with pytest.raises(ValueError, match="read_count"):
        LoadConfig(auth_url="http://x", read_count=0)
    with pytest.raises(ValueError, match="read_seconds"):
        LoadConfig(auth_url="http://x", read_seconds=0)
    with pytest.raises(ValueError, match="unknown client"):
        LoadConfig(auth_url="http://x", client="curl")


def test_cli_json(fake_swift):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "load.py"), "--auth", fake_swift.auth_url,
         "--procs", "1", "--concurrency", "2", "--count", "10", "--read-count", "15",
         "--phases", "small-put,small-get", "--json"],
        capture_output=True, text=True, timeout=120, check=True)
    data = json.loads(out.stdout)
    assert [p["phase"] for p in data["phases"]] == ["small-put", "small-get"]
    assert [p["ops"] for p in data["phases"]] == [10, 15]


def test_process_tree_cpu_includes_descendants():
    # A parent that only waits, and a child that burns CPU: the tree's ticks grow. The
    # child burns for up to 10 s and the test waits for the growth (no fixed window,
    # so a busy machine slows it down instead of failing it); the parent alone would
    # never get there.
    code = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
            "'import time\\nt=time.time()\\nwhile time.time()-t<10.0: pass'])")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.2)
        before = process_tree_ticks([proc.pid])
        wanted = before + os.sysconf("SC_CLK_TCK") * 0.3
        deadline = time.monotonic() + 9.0
        while process_tree_ticks([proc.pid]) < wanted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_tree_ticks([proc.pid]) >= wanted
    finally:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.wait(10)
    assert process_tree_ticks([proc.pid]) == 0      # gone: nothing counted


def test_percentiles():
    lat = percentiles_ms([i / 1000 for i in range(1, 101)])
    assert lat["max"] == pytest.approx(100.0)
    assert lat["p50"] == pytest.approx(50.5)
    assert percentiles_ms([])["p50"] is None


@pytest.mark.parametrize("client", ["raw", "aiohttp"])
def test_against_swiftlike_serve(swift_cluster, client):
    """The real thing: every phase against `swiftlike serve`, with its CPU measured."""
    config = LoadConfig(auth_url=swift_cluster.auth_url, procs=1, concurrency=4, count=12,
                        large_count=2, large_size=2 * 1024 * 1024,
                        server_pids=(swift_cluster.process.pid,), client=client)
    phases = _phases(run_load(config))
    assert list(phases) == list(ALL_PHASES)
    for name, p in phases.items():
        assert p["errors"] == 0, (name, p["error_samples"])
    assert phases["small-put"]["ops"] == 12 and phases["large-get"]["ops"] == 2
    assert phases["small-put"]["server_cpu_s"] > 0


def test_reads_after_a_failed_put_phase_count_as_errors():
    server = FakeSwift()
    server.start()
    try:
        # 65 MiB objects are over the fake's body limit (413): every large PUT fails.
        result = run_load(LoadConfig(auth_url=server.auth_url, procs=1, concurrency=2,
                                     count=4, large_count=2, large_size=65 * 1024 * 1024,
                                     phases=("large-put", "large-get")))
    finally:
        server.stop()
    put, get = result["phases"]
    assert put["ops"] == 0 and put["errors"] == 2
    assert get["ops"] == 0 and get["errors"] == 2
    assert "not run" in get["error_samples"][0]
