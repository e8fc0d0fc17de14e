"""benchmarks/ringsim.py at a tiny size: totals add up, failures move exactly what failed."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from benchmarks.ringsim import format_report, simulate, write_plots
from benchmarks.ringsim_model import (
    Topology,
    Workload,
    build_ring,
    device_bytes,
    failure_scenario,
    load_description,
    partition_load,
)
from benchmarks.tinyplot import encode_png

ROOT = Path(__file__).resolve().parents[2]


def _tiny() -> tuple[Topology, Workload]:
    topo = Topology(part_power=10, zones_per_region=4, servers_per_zone=2, disks_per_server=4,
                    disk_size_tb=[1.0, 2.0], rebuild_mib_per_s=50.0)
    work = Workload(objects=200_000, size="lognormal", size_bytes=100_000, sigma=1.0)
    return topo, work


def test_totals_add_up():
    topo, work = _tiny()
    counts, part_bytes = partition_load(topo, work)
    assert counts.sum() == work.objects
    assert part_bytes.sum() == work.total_bytes == 200_000 * 100_000
    assert (part_bytes >= 0).all()
    builder, devices = build_ring(topo)
    stored = device_bytes(np.asarray(builder.replica2part2dev), part_bytes, len(devices))
    assert stored.sum() == pytest.approx(3 * work.total_bytes, rel=1e-12)


def test_fixed_sizes_are_exact():
    topo, _ = _tiny()
    counts, part_bytes = partition_load(topo, Workload(objects=5000, size="fixed",
                                                       size_bytes=4096))
    assert (part_bytes == counts * 4096).all()


@pytest.mark.parametrize("kind", ["device", "server", "zone"])
def test_failure_moves_exactly_the_failed_replicas(kind):
    topo, work = _tiny()
    builder, devices = build_ring(topo)
    _, part_bytes = partition_load(topo, work)
    r2p2d = np.asarray(builder.replica2part2dev)
    result = failure_scenario(builder, devices, part_bytes, topo, kind)
    expected_devices = {"device": 1, "server": 4, "zone": 8}[kind]
    assert result["failed_devices"] == expected_devices
    assert result["moved_only_failed"] is True
    assert result["replicas_moved"] == result["replicas_lost"]
    # The builder given to the scenario is untouched.
    assert np.array_equal(np.asarray(builder.replica2part2dev), r2p2d)
    # One replica per partition at most is lost: zones are unique per replica.
    assert result["partitions_single_copy"] == 0
    assert result["partitions_degraded"] == result["replicas_lost"]
    assert result["heal_hours"] > topo.detect_hours
    tl = result["timeline"]
    assert tl["degraded"][0] == result["partitions_degraded"] and tl["degraded"][-1] == 0


def test_failed_device_bytes_match_its_fill():
    topo, work = _tiny()
    builder, devices = build_ring(topo)
    _, part_bytes = partition_load(topo, work)
    r2p2d = np.asarray(builder.replica2part2dev)
    stored = device_bytes(r2p2d, part_bytes, len(devices))
    result = failure_scenario(builder, devices, part_bytes, topo, "device")
    victim = devices[len(devices) // 2].id
    assert result["bytes_to_rereplicate"] == pytest.approx(stored[victim], abs=1)
    assert result["replicas_lost"] == int((r2p2d == victim).sum())


def test_simulate_report_and_plots(tmp_path: Path):
    topo, work = _tiny()
    result = simulate(topo, work, add_servers=1)
    fill = result["fill"]
    assert fill["stored_bytes"] == 3 * work.total_bytes
    assert fill["fill_min"] <= fill["fill_mean"] <= fill["fill_p99"] <= fill["fill_max"]
    assert 0 < fill["cluster_fill_when_first_device_full"] <= 1
    growth = result["growth"]
    assert growth["devices_added"] == 4
    assert 0.9 <= growth["moved_vs_ideal"] <= 1.5
    dur = result["durability"]
    assert 0 < dur["partition_annual_loss_probability"] <= dur["cluster_annual_loss_probability"]
    report = format_report(result)
    assert "device fill" in report and "zone" in report and "durability" in report
    paths = write_plots(result, tmp_path / "sim")
    assert len(paths) == 4
    for path in paths:
        data = Path(path).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")


def test_png_encoder_round_trip():
    img = np.zeros((3, 2, 3), dtype=np.uint8)
    img[1, 1] = (10, 20, 30)
    png = encode_png(img)
    idat_at = png.index(b"IDAT")
    length = int.from_bytes(png[idat_at - 4:idat_at], "big")
    raw = zlib.decompress(png[idat_at + 4:idat_at + 4 + length])
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(3, 7)
    assert (rows[:, 0] == 0).all()
    assert tuple(rows[1, 4:7]) == (10, 20, 30)


def test_description_file_and_errors(tmp_path: Path):
    desc = tmp_path / "cluster.toml"
    desc.write_text("[topology]\npart_power = 8\nservers_per_zone = 1\ndisks_per_server = 2\n"
                    "disk_size_tb = 4\n[workload]\nobjects = 1e4\nsize = 'fixed'\n")
    topo, work = load_description(desc)
    assert topo.part_power == 8 and topo.disk_size_tb == [4.0] and work.objects == 10_000
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"topology": {"disks": 3}}))
    with pytest.raises(ValueError, match="unknown keys"):
        load_description(bad)


def test_cli_json(tmp_path: Path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ringsim.py"), "--part-power", "9",
         "--servers-per-zone", "1", "--objects", "1e5", "--json", "--no-progress",
         "--plots", str(tmp_path / "p")],
        capture_output=True, text=True, timeout=120, check=True)
    data = json.loads(out.stdout)
    assert data["objects_placed"] == 100_000
    assert data["fill"]["stored_bytes"] == 3 * data["workload_total_bytes"]
    assert [f["kind"] for f in data["failures"]] == ["device", "server", "zone"]
    assert all(Path(p).exists() for p in data["plots"])
