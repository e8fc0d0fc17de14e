"""swiftlike-ring CLI, driven as a subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ring import Ring, RingBuilder


def cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ring.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def built(tmp_path):
    assert cli("o.builder", "create", "6", "3", "1", cwd=tmp_path).returncode == 0
    r = cli("o.builder", "add", "--region", "1", "--zone", "1", "--ip", "127.0.0.1",
            "--port", "6200", "--device", "d1", "--weight", "100", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "got id 0" in r.stdout
    r = cli("o.builder", "add", "r1z2-127.0.0.2:6200/d1", "100", "z3-127.0.0.3:6200/d1_ssd",
            "100", "r1z4-[::1]:6201/d2", "50", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return tmp_path


def test_full_workflow(built):
    r = cli("o.builder", "rebalance", "--seed", "4", cwd=built)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and (built / "o.ring").exists()
    ring = Ring(built / "o.ring")
    assert ring.replica_count == 3 and ring.partition_count == 64
    assert {d["ip"] for d in ring.devs} == {"127.0.0.1", "127.0.0.2", "127.0.0.3", "::1"}
    assert [d["meta"] for d in ring.devs][2] == "ssd"
    show = cli("o.builder", "show", cwd=built)
    assert show.returncode == 0
    assert "64 partitions, 3 replicas, 1 regions, 4 zones, 4 devices" in show.stdout
    assert "balance" in show.stdout and "dispersion" in show.stdout
    assert cli("o.builder", cwd=built).stdout == show.stdout
    v = cli("o.builder", "validate", cwd=built)
    assert v.returncode == 0 and v.stdout.startswith("ok"), v.stderr
    # set-weight and remove by search, then rebalance to another ring path
    assert cli("o.builder", "set-weight", "d3", "100", cwd=built).returncode == 0
    assert cli("o.builder", "add", "r1z4-127.0.0.5:6200/d9", "100", cwd=built).returncode == 0
    assert cli("o.builder", "remove", "z1-127.0.0.1", cwd=built).returncode == 0
    r = cli("o.builder", "rebalance", "--ring", str(built / "other.ring"), cwd=built)
    assert r.returncode == 0, r.stderr
    b = RingBuilder.load(built / "o.builder")
    assert [d["ip"] for d in b.devs if d] == ["127.0.0.2", "127.0.0.3", "::1", "127.0.0.5"]
    assert Ring(built / "other.ring").devs[0] is None


@pytest.fixture
def built_api(tmp_path):
    """The same builder as `built`, made through the API (fewer slow subprocesses)."""
    b = RingBuilder(6, 3, 1)
    for zone, ip, dev, weight in [(1, "127.0.0.1", "d1", 100), (2, "127.0.0.2", "d1", 100),
                                  (3, "127.0.0.3", "d1", 100), (4, "::1", "d2", 50)]:
        b.add_dev({"region": 1, "zone": zone, "ip": ip, "port": 6200, "device": dev,
                   "weight": weight})
    b.save(tmp_path / "o.builder")
    return tmp_path


@pytest.mark.parametrize("args, message", [
    (("add", "r1z1-127.0.0.1:6200/d1", "100"), "duplicate device"),
    (("add", "r1z9-127.0.0.9:6200/d1", "-3"), "weight must be >= 0"),
    (("add", "garbage", "100"), "cannot parse device"),
    (("add", "--zone", "1"), "add needs"),
    (("remove", "99"), "no device matches"),
    (("remove", "z7"), "no device matches"),
    (("set-weight", "d0", "-1"), "weight must be >= 0"),
    (("remove", "r1"), "matches 4 devices"),
    (("create", "8", "3", "1"), "already exists"),
])
def test_errors_leave_builder_untouched(built_api, args, message):
    before = (built_api / "o.builder").read_bytes()
    r = cli("o.builder", *args, cwd=built_api)
    assert r.returncode == 2
    assert message in r.stderr
    assert (built_api / "o.builder").read_bytes() == before


def test_create_errors(tmp_path):
    r = cli("x.builder", "create", "40", "3", "1", cwd=tmp_path)
    assert r.returncode == 2 and "part_power must be an integer in 0.." in r.stderr
    assert not (tmp_path / "x.builder").exists()
    r = cli("x.builder", "create", "8", "0", "1", cwd=tmp_path)
    assert r.returncode == 2 and "replicas" in r.stderr
    r = cli("missing.builder", "show", cwd=tmp_path)
    assert r.returncode == 2 and "no such builder file" in r.stderr


def test_rebalance_errors_leave_files_untouched(tmp_path):
    cli("o.builder", "create", "4", "3", "1", cwd=tmp_path)
    cli("o.builder", "add", "r1z1-127.0.0.1:6200/d1", "100", cwd=tmp_path)
    before = (tmp_path / "o.builder").read_bytes()
    r = cli("o.builder", "rebalance", cwd=tmp_path)
    assert r.returncode == 2 and "3 replicas need at least 3 devices" in r.stderr
    assert (tmp_path / "o.builder").read_bytes() == before
    assert not (tmp_path / "o.ring").exists()


def test_validate_detects_stale_ring(built):
    cli("o.builder", "rebalance", cwd=built)
    cli("o.builder", "set-weight", "d0", "300", cwd=built)
    cli("o.builder", "rebalance", "--ring", str(built / "elsewhere.ring"), cwd=built)
    r = cli("o.builder", "validate", cwd=built)
    assert r.returncode == 2 and "differs from the builder" in r.stderr


def test_corrupt_builder_file(tmp_path):
    (tmp_path / "bad.builder").write_bytes(b"\x00\x01garbage")
    r = cli("bad.builder", "show", cwd=tmp_path)
    assert r.returncode == 2 and "builder file" in r.stderr


def test_set_weight_reports_the_old_weight(built):
    r = cli("o.builder", "set-weight", "d0", "50", cwd=built)
    assert r.returncode == 0, r.stderr
    assert "weight 100 -> 50" in r.stdout


def test_unwritable_paths_are_errors_not_tracebacks(built):
    r = cli(str(built / "nodir" / "y.builder"), "create", "8", "3", "1", cwd=built)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    before = (built / "o.builder").read_bytes()
    r = cli("o.builder", "rebalance", "--ring", str(built / "nodir" / "x.ring"), cwd=built)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert (built / "o.builder").read_bytes() == before


def test_builder_naming_devices_it_lacks_is_refused(built):
    import msgpack

    cli("o.builder", "rebalance", "--seed", "1", cwd=built)
    data = msgpack.unpackb((built / "o.builder").read_bytes(), raw=False,
                           strict_map_key=False)
    table = bytearray(data["r2p2d"])
    table[0:2] = (999).to_bytes(2, "little")  # device 999 does not exist
    data["r2p2d"] = bytes(table)
    (built / "o.builder").write_bytes(msgpack.packb(data, use_bin_type=True))
    for command in ("show", "validate", "rebalance"):
        r = cli("o.builder", command, cwd=built)
        assert r.returncode == 2, command
        assert "damaged builder file" in r.stderr and "Traceback" not in r.stderr


def test_help_of_the_tool_and_every_command(tmp_path):
    """argparse formats help strings with %: a bare % in one crashed --help."""
    out = cli("--help", cwd=tmp_path)
    assert out.returncode == 0 and "set-overload <fraction or N%>" in out.stdout
    for command in ("create", "add", "remove", "set-weight", "set-overload",
                    "set-min-part-hours", "rebalance", "show", "validate"):
        out = cli("x.builder", command, "--help", cwd=tmp_path)
        assert out.returncode == 0, (command, out.stderr)


def test_set_info_moves_a_device_without_moving_partitions(built):
    assert cli("o.builder", "rebalance", "--seed", "4", cwd=built).returncode == 0
    before = Ring(built / "o.ring")
    parts_before = [before.get_part_nodes(p) for p in range(64)]
    # a server renumbered: every device on 127.0.0.2 moves to 10.0.0.2
    r = cli("o.builder", "set-info", "127.0.0.2", "--ip", "10.0.0.2", cwd=built)
    assert r.returncode == 0, r.stderr
    assert "-> d1r1z2-10.0.0.2:6200/d1" in r.stdout and "write-ring" in r.stdout
    v = cli("o.builder", "validate", cwd=built)  # the ring file is stale until written
    assert v.returncode == 2 and "device addresses differ" in v.stderr
    r = cli("o.builder", "write-ring", cwd=built)
    assert r.returncode == 0 and "wrote" in r.stdout, r.stderr
    after = Ring(built / "o.ring")
    for part, nodes in enumerate(parts_before):
        moved = after.get_part_nodes(part)
        assert [n["id"] for n in moved] == [n["id"] for n in nodes]
        assert [n["ip"] for n in moved] == [
            "10.0.0.2" if n["ip"] == "127.0.0.2" else n["ip"] for n in nodes]
    assert cli("o.builder", "validate", cwd=built).returncode == 0
    # another device's address is refused, and so is several devices without --yes
    r = cli("o.builder", "set-info", "d0", "--ip", "10.0.0.2", cwd=built)
    assert r.returncode == 2 and "duplicate device" in r.stderr
    r = cli("o.builder", "set-info", "r1", "--meta", "x", cwd=built)
    assert r.returncode == 2 and "--yes" in r.stderr
    assert RingBuilder.load(built / "o.builder").get_dev(0)["ip"] == "127.0.0.1"


def test_search_list_parts_and_pretend_min_part_hours(built):
    assert cli("o.builder", "rebalance", "--seed", "4", cwd=built).returncode == 0
    r = cli("o.builder", "search", "z3", cwd=built)
    assert r.returncode == 0 and r.stdout.startswith("d2r1z3-127.0.0.3:6200/d1 weight 100")
    assert "meta 'ssd'" in r.stdout
    ring = Ring(built / "o.ring")
    r = cli("o.builder", "list-parts", "d0", "d1", cwd=built)
    assert r.returncode == 0, r.stderr
    listed = {int(line.split()[0]): int(line.split()[1])
              for line in r.stdout.splitlines()[1:]}
    expected = {p: sum(n["id"] in (0, 1) for n in ring.get_part_nodes(p))
                for p in range(64)}
    assert listed == {p: n for p, n in expected.items() if n}
    counts = [listed[p] for p in map(int, (ln.split()[0] for ln in r.stdout.splitlines()[1:]))]
    assert counts == sorted(counts, reverse=True)
    # min_part_hours 1: the partitions a new device just took stay there for an hour,
    # so draining it again at once moves nothing, until the operator says otherwise
    assert cli("o.builder", "add", "r1z5-127.0.0.9:6200/d1", "100", cwd=built).returncode == 0
    assert "moved 0 replicas" not in cli("o.builder", "rebalance", cwd=built).stdout
    assert cli("o.builder", "set-weight", "d4", "0", cwd=built).returncode == 0
    held = cli("o.builder", "rebalance", cwd=built)
    assert "moved 0 replicas" in held.stdout, held.stdout
    assert cli("o.builder", "pretend-min-part-hours-passed", cwd=built).returncode == 0
    moved = cli("o.builder", "rebalance", cwd=built)
    assert "moved 0 replicas" not in moved.stdout, moved.stdout
