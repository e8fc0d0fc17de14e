"""Ring lookups, handoffs, reloading, and the ring file format (round trip and corruption)."""

from __future__ import annotations

import json
import os
import struct

import msgpack
import numpy as np
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ring import Ring, RingBuilder, RingFileError
from ring.hashing import hash_path, partition_of
from ring.ringfile import HEADER, decode_lookup_table, decode_ring, encode_ring

from .helpers import add_cluster, layouts, n_devices, uniform_builder

FAST = settings(max_examples=30, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture
def ring_path(tmp_path):
    b = uniform_builder(part_power=8, zones=4, servers=2, disks=2)
    b.rebalance(seed=3, now=0)
    path = tmp_path / "test.ring"
    b.save_ring(path)
    return path, b


def test_get_nodes_matches_hash_path_and_builder(ring_path):
    path, b = ring_path
    ring = Ring(path, hash_prefix=b"pre", hash_suffix=b"suf")
    assert ring.replica_count == 3 and ring.partition_count == 256 and ring.part_power == 8
    arr = b.replica2part2dev
    for args in [("a",), ("a", "c"), ("a", "c", "o"), ("AUTH_x", "c/d", "ü/\U0001f600"),
                 ("a", "c", "\udcff")]:
        part, nodes = ring.get_nodes(*args)
        want = partition_of(hash_path(*args, prefix=b"pre", suffix=b"suf"), 8)
        assert part == want == ring.get_part(*args)
        assert [n["id"] for n in nodes] == arr[:, part].tolist()
        assert [n["index"] for n in nodes] == [0, 1, 2]
        assert set(nodes[0]) >= {"id", "region", "zone", "ip", "port", "device", "weight",
                                 "meta", "index"}
    with pytest.raises(ValueError):
        ring.get_nodes("a", None, "o")


def test_returned_nodes_are_shared_and_read_only(ring_path):
    """Lookups share one dict per device and replica index; a caller cannot corrupt it
    for everyone else, and a copy is an ordinary mutable dict."""
    import copy
    import pickle

    ring = Ring(ring_path[0])
    _, nodes = ring.get_nodes("a", "c", "o")
    for attempt in (lambda n: n.__setitem__("ip", "mutated"), lambda n: n.pop("ip"),
                    lambda n: n.update(ip="mutated"), lambda n: n.setdefault("x", 1),
                    lambda n: n.clear(), lambda n: n.__delitem__("ip")):
        with pytest.raises(TypeError, match="read-only"):
            attempt(nodes[0])
    again = ring.get_part_nodes(ring.get_part("a", "c", "o"))
    assert again[0] is nodes[0] and again[0]["ip"] != "mutated"
    for mine in (dict(nodes[0]), copy.copy(nodes[0]), copy.deepcopy(nodes[0])):
        mine["ip"] = "mutated"
        assert nodes[0]["ip"] != "mutated"
    assert pickle.loads(pickle.dumps(nodes[0])) == nodes[0]
    assert json.loads(json.dumps(nodes[0])) == dict(nodes[0])


def test_prefix_suffix_change_placement(ring_path):
    a = Ring(ring_path[0], hash_prefix=b"one")
    b = Ring(ring_path[0], hash_prefix=b"two")
    parts = [(a.get_part("acc", "c", f"o{i}"), b.get_part("acc", "c", f"o{i}"))
             for i in range(50)]
    assert any(x != y for x, y in parts)


def test_handoffs_prefer_unused_zones_then_servers(ring_path):
    ring = Ring(ring_path[0])
    for part in range(0, 256, 17):
        primaries = ring.get_part_nodes(part)
        handoffs = list(ring.get_more_nodes(part))
        assert handoffs == list(ring.get_more_nodes(part))  # deterministic
        ids = [n["id"] for n in handoffs]
        assert len(ids) == len(set(ids)) == 16 - 3
        assert not {n["id"] for n in primaries} & set(ids)
        used = {n["zone"] for n in primaries}
        # 4 zones, 3 primaries: the first handoff is in the zone no primary uses.
        assert handoffs[0]["zone"] not in used
        servers = {n["ip"] for n in primaries} | {handoffs[0]["ip"]}
        # next come the servers not used yet, before any second device on a used one
        unused_servers = 8 - len(servers)
        assert {n["ip"] for n in handoffs[1:1 + unused_servers]}.isdisjoint(servers)


@FAST
@given(layout=layouts, replicas=st.integers(1, 3), part_power=st.integers(0, 6),
       seed=st.integers(0, 1000))
def test_handoffs_property(tmp_path_factory, layout, replicas, part_power, seed):
    if n_devices(layout) < replicas:
        return
    b = RingBuilder(part_power, replicas)
    add_cluster(b, layout)
    b.rebalance(seed=seed, now=0)
    path = tmp_path_factory.mktemp("h") / "r.ring"
    b.save_ring(path)
    ring = Ring(path)
    for part in {0, (1 << part_power) - 1, seed % (1 << part_power)}:
        prim = [n["id"] for n in ring.get_part_nodes(part)]
        hand = [n["id"] for n in ring.get_more_nodes(part)]
        assert hand == [n["id"] for n in ring.get_more_nodes(part)]
        assert not set(prim) & set(hand)
        assert len(hand) == len(set(hand))
        # every device that holds a partition, and no other (as in Swift)
        assert sorted(prim + hand) == sorted(set(b.replica2part2dev.ravel().tolist()))


def test_a_device_without_partitions_is_never_a_handoff(tmp_path):
    """A disk at weight 0 (drained, or added to be ramped up later) in a zone of its own
    must not become every partition's first handoff."""
    b = uniform_builder(part_power=8, zones=3, servers=2, disks=1)
    idle = b.add_dev({"region": 1, "zone": 4, "ip": "10.0.4.1", "port": 6200,
                      "device": "idle", "weight": 0})
    b.rebalance(seed=1, now=0)
    path = tmp_path / "r.ring"
    b.save_ring(path)
    for loaded in (Ring(path), _ring_without_recorded_holders(path, tmp_path)):
        handoffs = [[n["id"] for n in loaded.get_more_nodes(p)] for p in range(256)]
        assert all(idle not in ids for ids in handoffs)
        assert all(len(ids) == 6 - 3 for ids in handoffs)


def _ring_without_recorded_holders(path, tmp_path):
    """The same ring as a file from before devs_with_parts: counted at load instead."""
    data = decode_ring(path.read_bytes())
    meta = {k: v for k, v in data.meta.items()
            if k not in ("part_power", "replicas", "dtype", "devs", "devs_with_parts")}
    blob = encode_ring(data.part_power, data.replicas, data.devs, data.replica2part2dev,
                       meta)
    header, rest = blob[:HEADER.size], blob[HEADER.size:]
    magic, version, flags, meta_len, body_len, _ = HEADER.unpack(header)
    meta_full = msgpack.unpackb(rest[:meta_len], raw=False)
    assert "devs_with_parts" in meta_full
    del meta_full["devs_with_parts"]
    meta_bytes = msgpack.packb(meta_full, use_bin_type=True)
    body = rest[meta_len:]
    old = HEADER.pack(magic, version, flags, len(meta_bytes), body_len,
                      xxhash.xxh3_64_intdigest(meta_bytes + body)) + meta_bytes + body
    old_path = tmp_path / "old.ring"
    old_path.write_bytes(old)
    return Ring(old_path)


def test_ring_and_builder_files_are_readable_by_every_service(tmp_path):
    old_umask = os.umask(0o077)
    try:
        b = uniform_builder(part_power=4, zones=3, servers=1, disks=1)
        b.rebalance(seed=1, now=0)
        b.save_ring(tmp_path / "r.ring")
        b.save(tmp_path / "r.builder")
        (tmp_path / "r.ring").chmod(0o600)
        b.save_ring(tmp_path / "r.ring")  # a rewrite does not keep a narrower mode
    finally:
        os.umask(old_umask)
    for name in ("r.ring", "r.builder"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644


@FAST
@given(layout=layouts, replicas=st.integers(1, 3), part_power=st.integers(0, 8),
       seed=st.integers(0, 1000))
def test_file_round_trip(layout, replicas, part_power, seed):
    if n_devices(layout) < replicas:
        return
    b = RingBuilder(part_power, replicas)
    add_cluster(b, layout)
    b.rebalance(seed=seed, now=0)
    blob = encode_ring(b.part_power, b.replicas, b.devs, b.replica2part2dev)
    data = decode_ring(blob)
    assert data.part_power == part_power and data.replicas == replicas
    assert np.array_equal(data.replica2part2dev, b.replica2part2dev)
    assert data.devs == [dict(d) for d in b.devs]
    # the numpy-free loader the lookups use: the same table, partition-major
    table = decode_lookup_table(blob)
    assert (table.part_power, table.replicas, table.devs) == (part_power, replicas, data.devs)
    assert table.by_part.tolist() == b.replica2part2dev.T.ravel().tolist()


@pytest.mark.parametrize("holes", [1, 40])
@pytest.mark.parametrize("dev_count", [50, 70000])  # 2-byte and 4-byte device ids
def test_partitions_on_unknown_devices_are_never_written_nor_read(holes, dev_count):
    """The writer refuses such a table; a file holding one anyway (another writer, the
    right checksum) is refused by the checking loader."""
    devs = [{"id": i, "region": 1, "zone": 1, "ip": "127.0.0.1", "port": 6200 + i,
             "device": f"d{i}", "weight": 1.0, "meta": ""} for i in range(dev_count)]
    table = np.arange(3 * 64).reshape(3, 64) % 7
    good = encode_ring(6, 3, devs, table)
    assert decode_lookup_table(good).by_part.tolist() == table.T.ravel().tolist()
    for gone in range(6, 6 + holes):
        devs[gone] = None
    with pytest.raises(ValueError, match="unknown devices"):
        encode_ring(6, 3, devs, table)
    meta_len = struct.unpack_from("<I", good, 12)[0]
    meta = msgpack.unpackb(good[HEADER.size:HEADER.size + meta_len])
    meta["devs"] = devs
    meta_bytes = msgpack.packb(meta, use_bin_type=True)
    body = good[HEADER.size + meta_len:]
    forged = HEADER.pack(b"SWLKRING", 1, 0, len(meta_bytes), len(body),
                         xxhash.xxh3_64_intdigest(meta_bytes + body)) + meta_bytes + body
    with pytest.raises(RingFileError, match="unknown devices"):
        decode_ring(forged)


def test_lookups_never_import_numpy(ring_path):
    """Daemons and proxies only look up: loading a ring must not pay for numpy."""
    import subprocess
    import sys
    code = ("import sys; from ring import Ring; r = Ring(sys.argv[1]); "
            "r.get_nodes('a', 'c', 'o'); list(r.get_more_nodes(3)); "
            "import swiftlike.daemons.replicator; print('numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(ring_path[0])], check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "False"


def test_builder_file_round_trip(tmp_path):
    b = uniform_builder(part_power=6, min_part_hours=2, overload=0.25)
    b.rebalance(seed=1, now=5000)
    b.remove_dev(3)
    b.save(tmp_path / "x.builder")
    c = RingBuilder.load(tmp_path / "x.builder")
    assert c.devs == b.devs and c.min_part_hours == 2 and c.overload == 0.25
    assert np.array_equal(c.replica2part2dev, b.replica2part2dev)
    assert np.array_equal(c.last_moved, b.last_moved)
    assert c.rebalance(seed=2, now=6000).moved_replicas == b.rebalance(seed=2, now=6000
                                                                        ).moved_replicas


@pytest.mark.parametrize("damage", ["truncate", "flip_payload", "flip_header", "magic",
                                    "version", "empty", "append"])
def test_corrupt_ring_file_refused(ring_path, damage):
    path, _ = ring_path
    blob = bytearray(path.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "flip_payload":
        blob[-5] ^= 0x40
    elif damage == "flip_header":
        blob[HEADER.size + 3] ^= 0x01
    elif damage == "magic":
        blob[0:8] = b"NOTARING"
    elif damage == "version":
        struct.pack_into("<H", blob, 8, 99)
    elif damage == "empty":
        blob = bytearray()
    elif damage == "append":
        blob += b"junk"
    path.write_bytes(bytes(blob))
    with pytest.raises(RingFileError) as info:
        Ring(path)
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value)


def test_missing_ring_file(tmp_path):
    with pytest.raises(RingFileError, match="cannot read"):
        Ring(tmp_path / "nope.ring")


def test_reload_when_file_changes(tmp_path):
    now = [0.0]
    b = uniform_builder(part_power=6)
    b.rebalance(seed=1, now=0)
    path = tmp_path / "r.ring"
    b.save_ring(path)
    ring = Ring(path, reload_interval=15, clock=lambda: now[0])
    assert len([d for d in ring.devs if d]) == 16
    b.add_dev({"region": 1, "zone": 9, "ip": "10.9.9.9", "port": 6200, "device": "x",
               "weight": 100})
    b.rebalance(seed=2, now=10**6)
    b.save_ring(path)
    os.utime(path, ns=(1, 10**18))  # make sure the mtime differs even on coarse clocks
    now[0] = 10.0
    assert len([d for d in ring.devs if d]) == 16  # not checked yet: interval not over
    now[0] = 16.0
    assert len([d for d in ring.devs if d]) == 17
    # A corrupt replacement keeps the good ring in service.
    path.write_bytes(b"garbage")
    now[0] = 40.0
    assert ring.replica_count == 3 and len([d for d in ring.devs if d]) == 17


def test_save_ring_is_atomic_and_leaves_no_temp(tmp_path):
    b = uniform_builder(part_power=5)
    b.rebalance(seed=1, now=0)
    b.save_ring(tmp_path / "r.ring")
    b.save(tmp_path / "r.builder")
    assert sorted(os.listdir(tmp_path)) == ["r.builder", "r.ring"]


@pytest.mark.parametrize("prefix, suffix", [(b"", b""), (b"\xff\xe2\x82", b"\x80x\xc3"),
                                            (b"secret", b"\x00")])
@given(names=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=5))
@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fast_hash_path_agrees_with_hashing(ring_path, prefix, suffix, names):
    # get_nodes builds the hashed bytes itself for speed: it must match ring.hashing.
    ring = Ring(ring_path[0], hash_prefix=prefix, hash_suffix=suffix)
    for name in names:
        want = partition_of(hash_path("acct", "cont", name, prefix=prefix, suffix=suffix), 8)
        assert ring.get_nodes("acct", "cont", name)[0] == want


@pytest.mark.parametrize("replicas", [1, 2, 3, 4])
def test_lookups_match_the_builder_for_every_replica_count(tmp_path, replicas):
    """The unrolled lookups (R = 2, 3) and the general one agree with the builder's table;
    one replica once tripped memoryview over the file's byte-order format."""
    b = uniform_builder(part_power=6, replicas=replicas)
    b.rebalance(seed=3)
    path = str(tmp_path / "object.ring")
    b.save_ring(path)
    ring = Ring(path)
    table = b.replica2part2dev
    for name in ("o", "other", "third"):
        part, nodes = ring.get_nodes("acc", "cont", name)
        assert [n["id"] for n in nodes] == [int(table[r][part]) for r in range(replicas)]
        assert [n["index"] for n in nodes] == list(range(replicas))
        assert ring.get_part_nodes(part) == nodes


def test_object_lookup_fast_path_agrees_with_hash_path(tmp_path):
    """The specialised object lookup hashes exactly what hash_path does, also with salts
    that are not UTF-8 and names carrying surrogate-escaped bytes; it follows a reload."""
    b = uniform_builder(part_power=8, replicas=3)
    b.rebalance(seed=5)
    path = str(tmp_path / "object.ring")
    b.save_ring(path)
    ring = Ring(path, hash_prefix=b"\xff\xfepre", hash_suffix=b"suf\x80", reload_interval=0)
    names = ["plain", "ünï", "bad\udcff", "a/b/c", ""]
    for name in names:
        part, nodes = ring.get_nodes("AUTH_a", "c", name)
        assert part == ring.get_part("AUTH_a", "c", name)
        assert nodes == ring.get_part_nodes(part)
    b.rebalance(seed=6)  # nothing to move: same table, new file
    b.set_dev_weight(0, 0.0)
    b.rebalance(seed=7, now=10**9)
    b.save_ring(path)
    os.utime(path, ns=(1, 1))
    part, nodes = ring.get_nodes("AUTH_a", "c", "plain")
    assert [n["id"] for n in nodes] == [int(b.replica2part2dev[r][part]) for r in range(3)]
