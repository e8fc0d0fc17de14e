"""benchmarks/vs_swift.py: the Swift all-in-one config and the ratio math.

The comparison itself is not run here: it installs OpenStack Swift from PyPI.
"""

from __future__ import annotations

import configparser
import subprocess
from pathlib import Path

import pytest

from benchmarks.machine_limits import (
    available_memory_bytes,
    measure_machine_limits,
    phase_share,
    warm_free_memory,
)
from benchmarks.swift_saio import (
    PIPELINES,
    SERVER_KINDS,
    make_layout,
    node_conf_text,
    proxy_conf_text,
    ring_commands,
    write_saio,
)
from benchmarks.vs_swift import (
    SwiftlikeServer,
    compare_rounds,
    format_comparison,
    median_ratio,
)


def _load_result(ops: dict[str, float], cpu: float | None = 1.0) -> dict:
    phases = []
    for name, rate in ops.items():
        phases.append({
            "phase": name, "ops_per_s": rate, "mib_per_s": rate * 16 if "large" in name else 0,
            "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.0, "max": 4.0},
            "server_cpu_ms_per_op": cpu, "errors": 0,
        })
    return {"phases": phases}


def test_median_ratio_is_median_of_per_round_ratios():
    assert median_ratio([10, 30, 20], [1, 2, 4]) == pytest.approx(10.0)   # 10, 15, 5
    assert median_ratio([5, 5], [0, 1]) == pytest.approx(5.0)            # 0 is skipped
    assert median_ratio([5], [0]) is None


def test_compare_rounds_targets_and_shares():
    rounds = [
        {"swift": _load_result({"small-put": 50, "large-get": 10}),
         "swiftlike": _load_result({"small-put": 600, "large-get": 15})},
        {"swift": _load_result({"small-put": 40, "large-get": 10}),
         "swiftlike": _load_result({"small-put": 300, "large-get": 30})},
        {"swift": _load_result({"small-put": 60, "large-get": 10}),
         "swiftlike": _load_result({"small-put": 660, "large-get": 25})},
    ]
    limits = {"small_write_fsync_per_s": 3000.0, "large_write_fsync_mib_per_s": 1000.0,
              "pagecache_read_mib_per_s": 10000.0, "small_read_per_s": 90000.0}
    rows = {r["phase"]: r for r in compare_rounds(rounds, limits)}
    put = rows["small-put"]
    assert put["ratio"] == pytest.approx(11.0)          # ratios 12, 7.5, 11
    assert put["target"] == 10.0 and put["meets_target"] is True
    assert put["swift"]["ops_per_s"] == 50 and put["swiftlike"]["ops_per_s"] == 600
    assert put["swiftlike"]["share_of_machine"] == pytest.approx(600 * 3 / 3000)
    get = rows["large-get"]
    assert get["ratio"] == pytest.approx(2.5) and get["meets_target"] is True
    assert get["swift"]["share_of_machine"] == pytest.approx(160 / 10000)
    table = format_comparison(list(rows.values()))
    assert "11.00x" in table and ">=10x ok" in table


def test_compare_rounds_reports_a_miss():
    rounds = [{"swift": _load_result({"small-get": 100}),
               "swiftlike": _load_result({"small-get": 500}, cpu=None)}]
    (row,) = compare_rounds(rounds)
    assert row["ratio"] == pytest.approx(5.0) and row["meets_target"] is False
    assert row["swiftlike"]["cpu_ms_per_op"] is None
    assert "MISS" in format_comparison([row])


def test_phase_share_formulas():
    limits = {"small_write_fsync_per_s": 1000.0, "large_write_fsync_mib_per_s": 300.0,
              "pagecache_read_mib_per_s": 6000.0, "small_read_per_s": 50000.0}
    assert phase_share("small-put", 100, 0.4, limits) == pytest.approx(0.3)
    assert phase_share("large-put", 6, 100, limits) == pytest.approx(1.0)
    assert phase_share("large-get", 6, 600, limits) == pytest.approx(0.1)
    assert phase_share("small-head", 100, 0, limits) is None


def test_machine_limits_are_positive(tmp_path: Path):
    limits = measure_machine_limits(tmp_path, seconds=0.2)
    assert all(v > 0 for v in limits.values())
    assert list(tmp_path.iterdir()) == []     # the probe cleans up after itself


def test_saio_config_has_our_topology(tmp_path: Path):
    layout = make_layout(tmp_path, nodes=4, proxy_workers=2)
    write_saio(layout, ring_builder=None)
    proxy = configparser.ConfigParser()
    proxy.read(tmp_path / "etc" / "proxy-server.conf")
    assert proxy["DEFAULT"]["bind_port"] == str(layout.proxy_port)
    assert proxy["DEFAULT"]["swift_dir"] == str(layout.etc)
    assert proxy["filter:tempauth"]["user_test_tester"].startswith("testing")
    assert "tempauth" in proxy["pipeline:main"]["pipeline"].split()
    assert proxy["filter:cache"]["memcache_servers"].endswith(f":{layout.memcache_port}")
    swift_conf = configparser.ConfigParser()
    swift_conf.read(tmp_path / "etc" / "swift.conf")
    assert swift_conf["swift-hash"]["swift_hash_path_suffix"]
    ports = set()
    for kind in SERVER_KINDS:
        for node in range(1, 5):
            conf = configparser.ConfigParser()
            conf.read(tmp_path / "etc" / f"{kind}-server-{node}.conf")
            assert conf["DEFAULT"]["mount_check"] == "false"
            assert conf[f"app:{kind}-server"]["use"] == f"egg:swift#{kind}"
            assert (Path(conf["DEFAULT"]["devices"]) / f"d{node}").is_dir()
            ports.add(int(conf["DEFAULT"]["bind_port"]))
    assert len(ports) == 12 and layout.proxy_port not in ports
    # No background daemons are configured: no replicator/auditor/updater sections.
    text = node_conf_text(layout, "object", 1) + proxy_conf_text(layout)
    assert "replicator" not in text and "auditor" not in text and "updater" not in text


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_every_middleware_of_a_swift_pipeline_is_configured(tmp_path: Path, pipeline: str):
    layout = make_layout(tmp_path, nodes=4, pipeline=pipeline)
    write_saio(layout, ring_builder=None)
    proxy = configparser.ConfigParser()
    proxy.read(tmp_path / "etc" / "proxy-server.conf")
    names = proxy["pipeline:main"]["pipeline"].split()
    assert names[-1] == "proxy-server" and "tempauth" in names
    for name in names[:-1]:
        assert proxy[f"filter:{name}"]["use"].startswith("egg:swift#"), name
    # Swift refuses to start with object versioning on and no symlink middleware
    versioning = proxy["filter:versioned_writes"].get("allow_object_versioning") == "true"
    assert versioning == ("symlink" in names)


def test_the_features_pipeline_matches_ours():
    """Swift runs the API features swiftlike's default pipeline serves."""
    from swiftlike.proxy.pipeline import DEFAULT_PIPELINE

    swift = set(PIPELINES["features"].replace("-", "_").split())
    # Swift's proxy does CORS itself; its versioned_writes serves both kinds of
    # versioning; recon_cluster is ours alone (Swift's recon lives on the nodes)
    ours = set(DEFAULT_PIPELINE) - {"cors", "object_versioning", "recon_cluster"}
    assert ours <= swift, ours - swift


def test_ring_commands_build_three_replica_rings(tmp_path: Path):
    layout = make_layout(tmp_path, nodes=4)
    cmds = ring_commands(layout, "swift-ring-builder")
    creates = [c for c in cmds if c[2] == "create"]
    adds = [c for c in cmds if c[2] == "add"]
    assert len(creates) == 3 and all(c[4] == "3" for c in creates)
    assert len(adds) == 12
    object_ports = {int(c[c.index("--port") + 1]) for c in adds if "object.builder" in c[1]}
    assert object_ports == set(layout.node_ports["object"])
    assert sum(c[2] == "rebalance" for c in cmds) == 3


def test_saved_result_renders(tmp_path: Path):
    from benchmarks.vs_swift import main

    def full(ops):
        res = _load_result(ops)
        for p in res["phases"]:
            p.update(ops=10, errors=0, error_samples=[],
                     latency_ms={"p50": 1.0, "p90": 2.0, "p99": 3.0, "max": 4.0})
        return res

    rounds = [{"swift": full({"small-put": 50}), "swiftlike": full({"small-put": 700})}]
    limits = {"small_write_fsync_per_s": 3000.0, "large_write_fsync_mib_per_s": 1000.0,
              "pagecache_read_mib_per_s": 10000.0, "small_read_per_s": 90000.0}
    saved = {"swift_version": "2.38.3", "machine_limits": limits, "rounds": rounds,
             "cpus": 2, "comparison": compare_rounds(rounds, limits)}
    path = tmp_path / "result.json"
    path.write_text(__import__("json").dumps(saved))
    assert main(["--from-json", str(path)]) == 0


def test_memory_warmup_touches_what_it_reports():
    if available_memory_bytes() is None:
        pytest.skip("no /proc/meminfo here")
    warmup = warm_free_memory(cap_bytes=48 * 1024 * 1024, chunk=16 * 1024 * 1024)
    assert warmup["gib"] == pytest.approx(48 / 1024)
    assert warmup["seconds"] >= 0
    assert warmup["s_per_gib"] == pytest.approx(warmup["seconds"] / warmup["gib"])


def test_report_names_the_memory_warmup(tmp_path: Path, capsys: pytest.CaptureFixture):
    import json

    from benchmarks.vs_swift import main

    limits = {"small_write_fsync_per_s": 3000.0, "large_write_fsync_mib_per_s": 1000.0,
              "pagecache_read_mib_per_s": 9000.0, "small_read_per_s": 50000.0}
    saved = {"swift_version": "2.38.3", "machine_limits": limits, "rounds": [], "cpus": 2,
             "memory_warmup": {"gib": 12.5, "seconds": 30.0, "s_per_gib": 2.4}}
    path = tmp_path / "saved.json"
    path.write_text(json.dumps(saved))
    assert main(["--from-json", str(path)]) == 0
    assert "12.5 GiB touched in 30.0 s (2.40 s/GiB)" in capsys.readouterr().out


def test_warmup_covers_the_large_phases_twice():
    from benchmarks.vs_swift import warmup_bytes

    mib = 1024 * 1024
    assert warmup_bytes(6) == 2 << 30  # the small default: the 2 GiB floor
    assert warmup_bytes(40) == 2 * 2 * 3 * 40 * 16 * mib  # 7.5 GiB


def test_a_stopped_serve_is_seen_as_not_running(tmp_path: Path):
    """vs_swift restarts serve before our turn when it stopped itself (a node that did
    not come up makes serve give up), instead of failing every later round."""
    server = SwiftlikeServer(tmp_path / "data", 1, 4, 2, ["true"])
    assert not server.running()
    server.proc = subprocess.Popen(["sleep", "30"])
    try:
        assert server.running()
    finally:
        server.proc.kill()
        server.proc.wait()
    assert not server.running()
