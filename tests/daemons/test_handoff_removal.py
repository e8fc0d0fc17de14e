# ruff: noqa: ASYNC230, ASYNC240
"""A delivered handoff partition loses what was delivered, never what arrived since.

A PUT lands on a handoff while one of its primaries is away, and it can land while the
replicator is removing that very partition. These tests put a write in the two
windows of the removal: before its fresh listing and after it.
"""

from __future__ import annotations

import os
import time

import pytest

from swiftlike.common.timestamp import Timestamp
from swiftlike.daemons import replication_local
from swiftlike.storage import diskfile, partition_removal
from swiftlike.storage.hashes import get_suffix_hashes
from swiftlike.storage.partition_removal import listing_hashes, partition_listing
from tests.daemons.test_replicator import holders, primaries, replicate_node


def _handoff_and_late_name(cluster, name: str):
    """The partition of ``name``, its first handoff node, and another object name of the
    same partition in a different suffix directory."""
    part, _ = cluster.ring.get_nodes("AUTH_a", "c", name)
    handoff = cluster.node_of(next(iter(cluster.ring.get_more_nodes(part))))
    first_suffix = os.path.basename(os.path.dirname(
        cluster.object_dir(handoff, "AUTH_a", "c", name)))
    for index in range(20000):
        late = f"late-{index}"
        suffix = os.path.basename(os.path.dirname(
            cluster.object_dir(handoff, "AUTH_a", "c", late)))
        if cluster.ring.get_part("AUTH_a", "c", late) == part and suffix != first_suffix:
            return part, handoff, late
    raise AssertionError("no second name in the partition")


def _files(cluster, node, name: str) -> list[str]:
    try:
        return os.listdir(cluster.object_dir(node, "AUTH_a", "c", name))
    except FileNotFoundError:
        return []


async def test_listing_hashes_agree_with_the_suffix_hashes(cluster):
    part, handoff, late = _handoff_and_late_name(cluster, "h1")
    cluster.write_local(handoff, "AUTH_a", "c", "h1", b"x" * 100)
    cluster.write_local(handoff, "AUTH_a", "c", late, b"", ext=".ts")
    partition_dir = os.path.join(handoff.device_path, "objects", str(part))
    expected = get_suffix_hashes(handoff.device_path, part)
    assert len(expected) == 2
    assert listing_hashes(partition_listing(partition_dir)) == expected


async def test_a_write_after_the_listing_stays_and_goes_home_next_pass(cluster, monkeypatch):
    part, handoff, late = _handoff_and_late_name(cluster, "h1")
    cluster.write_local(handoff, "AUTH_a", "c", "h1", b"x" * 100)
    partition_dir = os.path.join(handoff.device_path, "objects", str(part))
    real_remove_listed = partition_removal.remove_listed

    def write_lands_then_remove(directory, listing):
        if directory == partition_dir and not _files(cluster, handoff, late):
            cluster.write_local(handoff, "AUTH_a", "c", late, b"acknowledged")
        return real_remove_listed(directory, listing)

    monkeypatch.setattr(partition_removal, "remove_listed", write_lands_then_remove)
    await replicate_node(cluster, handoff)
    assert set(holders(cluster, "h1")) == primaries(cluster, "h1")  # delivered, and
    assert _files(cluster, handoff, "h1") == []  # removed from the handoff
    assert len(_files(cluster, handoff, late)) == 1  # the late write is still here
    # and the suffix the removal emptied is not reported from a stale cache
    assert get_suffix_hashes(handoff.device_path, part) == \
        listing_hashes(partition_listing(partition_dir))

    monkeypatch.setattr(partition_removal, "remove_listed", real_remove_listed)
    result = await replicate_node(cluster, handoff)
    assert result[handoff.device]["counts"]["handoffs_removed"] == 1
    assert set(holders(cluster, late)) == primaries(cluster, late)
    assert not os.path.exists(partition_dir)


async def test_a_write_before_the_listing_keeps_the_whole_partition(cluster, monkeypatch):
    part, handoff, late = _handoff_and_late_name(cluster, "h1")
    cluster.write_local(handoff, "AUTH_a", "c", "h1", b"x" * 100)
    real_remove_delivered = replication_local.remove_delivered

    def write_lands_then_remove(device_path, partition, delivered, kind="objects"):
        if partition == str(part) and not _files(cluster, handoff, late):
            cluster.write_local(handoff, "AUTH_a", "c", late, b"acknowledged",
                                timestamp=Timestamp.now())
        return real_remove_delivered(device_path, partition, delivered, kind)

    monkeypatch.setattr(replication_local, "remove_delivered", write_lands_then_remove)
    result = await replicate_node(cluster, handoff)
    counts = result[handoff.device]["counts"]
    assert counts.get("handoffs_removed", 0) == 0
    assert counts["handoffs_changed_meanwhile"] == 1
    assert len(_files(cluster, handoff, "h1")) == 1
    assert len(_files(cluster, handoff, late)) == 1

    monkeypatch.setattr(replication_local, "remove_delivered", real_remove_delivered)
    result = await replicate_node(cluster, handoff)
    assert result[handoff.device]["counts"]["handoffs_removed"] == 1
    for name in ("h1", late):
        assert set(holders(cluster, name)) == primaries(cluster, name)
    assert not os.path.exists(os.path.join(handoff.device_path, "objects", str(part)))


async def test_an_empty_handoff_partition_that_got_a_write_is_kept(cluster, monkeypatch):
    """A partition with nothing in it is removed, unless a file arrives first."""
    part, handoff, late = _handoff_and_late_name(cluster, "h1")
    partition_dir = os.path.join(handoff.device_path, "objects", str(part))
    os.makedirs(partition_dir)
    real_remove_delivered = replication_local.remove_delivered

    def write_lands_then_remove(device_path, partition, delivered, kind="objects"):
        if partition == str(part):
            assert delivered == {}
            cluster.write_local(handoff, "AUTH_a", "c", late, b"acknowledged")
        return real_remove_delivered(device_path, partition, delivered, kind)

    monkeypatch.setattr(replication_local, "remove_delivered", write_lands_then_remove)
    await replicate_node(cluster, handoff)
    assert len(_files(cluster, handoff, late)) == 1


def _same_suffix_name(cluster, node, name: str) -> str:
    """Another object name whose hash directory shares ``name``'s suffix directory."""
    suffix_dir = os.path.dirname(cluster.object_dir(node, "AUTH_a", "c", name))
    for index in range(2_000_000):
        other = f"twin-{index}"
        if os.path.dirname(cluster.object_dir(node, "AUTH_a", "c", other)) == suffix_dir:
            return other
    raise AssertionError("no name in the same suffix")


def _write_before_listing(cluster, monkeypatch, node, name: str):
    """Make ``name`` land on ``node`` (a PUT) right before the pass lists its suffixes;
    the real listing function, to put back."""
    real = replication_local.rehash_and_list

    def write_lands_then_list(*args, **kwargs):
        if not _files(cluster, node, name):
            cluster.write_local(node, "AUTH_a", "c", name, b"acknowledged")
        return real(*args, **kwargs)

    monkeypatch.setattr(replication_local, "rehash_and_list", write_lands_then_list)
    return real


async def test_a_write_in_a_suffix_nobody_was_asked_about_is_not_removed(cluster,
                                                                          monkeypatch):
    """The pass lists only the suffixes that differ from a primary; a write landing in
    another suffix after the plan was offered to nobody, so it keeps the partition."""
    part, handoff, late = _handoff_and_late_name(cluster, "h1")
    cluster.write_local(handoff, "AUTH_a", "c", "h1", b"x" * 100)
    real = _write_before_listing(cluster, monkeypatch, handoff, late)
    await replicate_node(cluster, handoff)
    assert len(_files(cluster, handoff, late)) == 1 or \
        set(holders(cluster, late)) == primaries(cluster, late)
    monkeypatch.setattr(replication_local, "rehash_and_list", real)
    await replicate_node(cluster, handoff)
    await replicate_node(cluster, handoff)
    assert set(holders(cluster, late)) == primaries(cluster, late)
    assert not os.path.exists(os.path.join(handoff.device_path, "objects", str(part)))


async def test_a_write_in_a_suffix_one_primary_already_matched_is_not_removed(
        cluster, monkeypatch):
    """The suffix differs from two primaries and matches the third; a write landing in
    it before the listing is pushed to the two. The third has not got it, so the
    partition stays for the next pass."""
    part, _ = cluster.ring.get_nodes("AUTH_a", "c", "h1")
    handoff = cluster.node_of(next(iter(cluster.ring.get_more_nodes(part))))
    twin = _same_suffix_name(cluster, handoff, "h1")
    stamp = Timestamp.now()
    cluster.write_local(handoff, "AUTH_a", "c", "h1", b"x" * 100, timestamp=stamp)
    first = cluster.node_of(cluster.ring.get_nodes("AUTH_a", "c", "h1")[1][0])
    cluster.write_local(first, "AUTH_a", "c", "h1", b"x" * 100, timestamp=stamp)
    real = _write_before_listing(cluster, monkeypatch, handoff, twin)
    await replicate_node(cluster, handoff)
    assert len(_files(cluster, handoff, twin)) == 1  # kept: `first` was not sent it
    monkeypatch.setattr(replication_local, "rehash_and_list", real)
    await replicate_node(cluster, handoff)
    assert set(holders(cluster, twin)) == primaries(cluster, twin)
    assert not os.path.exists(os.path.join(handoff.device_path, "objects", str(part)))


async def test_a_post_after_the_listing_keeps_its_object_for_the_next_pass(cluster,
                                                                          monkeypatch):
    """A .meta landing beside a listed .data: unlinking the .data would leave metadata
    nobody can offer, so the object's directory stays, and the next pass delivers it."""
    part, handoff, _ = _handoff_and_late_name(cluster, "h1")
    cluster.write_local(handoff, "AUTH_a", "c", "h1", b"x" * 100)
    partition_dir = os.path.join(handoff.device_path, "objects", str(part))
    real_remove_listed = partition_removal.remove_listed
    posted = Timestamp.now()

    def post_lands_then_remove(directory, listing):
        if directory == partition_dir:
            cluster.write_local(handoff, "AUTH_a", "c", "h1", b"", timestamp=posted,
                                ext=".meta", extra={"X-Object-Meta-Color": "blue"})
        return real_remove_listed(directory, listing)

    monkeypatch.setattr(partition_removal, "remove_listed", post_lands_then_remove)
    result = await replicate_node(cluster, handoff)
    assert result[handoff.device]["counts"].get("handoffs_removed", 0) == 0
    assert len(_files(cluster, handoff, "h1")) == 2  # the .data and the .meta
    monkeypatch.setattr(partition_removal, "remove_listed", real_remove_listed)
    await replicate_node(cluster, handoff)
    for index in primaries(cluster, "h1"):
        names = _files(cluster, cluster.nodes[index], "h1")
        assert posted.internal + ".meta" in names, names
    assert not os.path.exists(partition_dir)


async def test_a_suffix_made_while_the_partition_goes_leaves_no_stale_hash(cluster,
                                                                          monkeypatch):
    part, handoff, late = _handoff_and_late_name(cluster, "h1")
    cluster.write_local(handoff, "AUTH_a", "c", "h1", b"x" * 100)
    partition_dir = os.path.join(handoff.device_path, "objects", str(part))
    real = partition_removal._remove_partition_dir

    def write_lands_then_drop(directory):
        cluster.write_local(handoff, "AUTH_a", "c", late, b"acknowledged")
        return real(directory)

    monkeypatch.setattr(partition_removal, "_remove_partition_dir", write_lands_then_drop)
    await replicate_node(cluster, handoff)
    assert len(_files(cluster, handoff, late)) == 1
    assert get_suffix_hashes(handoff.device_path, part) == \
        listing_hashes(partition_listing(partition_dir))


@pytest.mark.parametrize("age", [2 * 86400.0, 120.0, 0.0])
async def test_a_leftover_sidecar_goes_with_the_partition_once_old(cluster, age):
    """A sidecar whose file never got linked (a failed write) is not the replicas'
    business; a day old it goes. A younger one may be a write waiting for a slow flush
    before its link, and stays."""
    part, handoff, _ = _handoff_and_late_name(cluster, "h1")
    cluster.write_local(handoff, "AUTH_a", "c", "h1", b"x" * 100)
    orphan = os.path.join(cluster.object_dir(handoff, "AUTH_a", "c", "h1"),
                          Timestamp.now().internal + ".data.msgpack")
    with open(orphan, "wb") as handle:
        handle.write(b"\x80")
    os.utime(orphan, (time.time() - age, time.time() - age))
    result = await replicate_node(cluster, handoff)
    gone = not os.path.exists(os.path.join(handoff.device_path, "objects", str(part)))
    assert gone == (age > 86400)
    assert result[handoff.device]["counts"].get("handoffs_removed", 0) == int(gone)


def test_a_write_whose_flush_is_slow_keeps_its_sidecar(tmp_path):
    """Without xattrs a staged write's metadata is a sidecar beside where its file will
    be linked, written before the flush that precedes the link; a removal meanwhile
    must leave it, or the write is acknowledged without metadata."""
    device = str(tmp_path)
    os.makedirs(os.path.join(device, "tmp"))
    partition_dir = os.path.join(device, "objects", "7")
    object_dir = os.path.join(partition_dir, "abc", "0" * 29 + "abc")
    older, newer = Timestamp(1_700_000_000.0), Timestamp.now()

    def meta(stamp, body):
        return {"name": "/a/c/o", "X-Timestamp": stamp.internal, "ETag": "x",
                "Content-Length": str(len(body))}

    diskfile.write_whole_object(device, object_dir, b"old", older, ".data",
                                meta(older, b"old"), fsync=False, use_xattr=False)
    delivered = listing_hashes(partition_listing(partition_dir))
    writer = diskfile.stage_whole_object(device, object_dir, b"new", newer, ".data",
                                         meta(newer, b"new"), use_xattr=False)
    sidecar = os.path.join(object_dir, newer.internal + ".data.msgpack")
    os.utime(sidecar, (time.time() - 300, time.time() - 300))  # a slow flush
    partition_removal.remove_delivered(device, "7", delivered)
    writer.publish()
    data = os.path.join(object_dir, newer.internal + ".data")
    assert diskfile.read_metadata(data)["X-Timestamp"] == newer.internal


async def test_a_suffix_that_changed_and_was_not_meant_for_a_peer_keeps_the_partition(
        cluster, monkeypatch):
    """Suffix a is sent to every primary, suffix c to one of them only (the others
    matched). Before the listing a matches everyone (a write landed on the handoff)
    and c gets a new object: that object reached one primary, so the partition stays."""
    _, handoff, other = _handoff_and_late_name(cluster, "h1")
    same_a = _same_suffix_name(cluster, handoff, "h1")
    new_in_c = _same_suffix_name(cluster, handoff, other)
    p1, p2, p3 = (cluster.node_of(n) for n in cluster.ring.get_nodes("AUTH_a", "c", "h1")[1])
    tx, ty, tw = (Timestamp(1_700_000_001.0), Timestamp(1_700_000_002.0),
                  Timestamp(1_700_000_003.0))
    cluster.write_local(handoff, "AUTH_a", "c", "h1", b"x", timestamp=tx)
    cluster.write_local(handoff, "AUTH_a", "c", other, b"w", timestamp=tw)
    for node in (p1, p2, p3):
        cluster.write_local(node, "AUTH_a", "c", "h1", b"x", timestamp=tx)
        cluster.write_local(node, "AUTH_a", "c", same_a, b"y", timestamp=ty)
    for node in (p1, p3):
        cluster.write_local(node, "AUTH_a", "c", other, b"w", timestamp=tw)
    real = replication_local.rehash_and_list

    def writes_land_then_list(*args, **kwargs):
        if not _files(cluster, handoff, new_in_c):
            cluster.write_local(handoff, "AUTH_a", "c", same_a, b"y", timestamp=ty)
            cluster.write_local(handoff, "AUTH_a", "c", new_in_c, b"acknowledged")
        return real(*args, **kwargs)

    monkeypatch.setattr(replication_local, "rehash_and_list", writes_land_then_list)
    await replicate_node(cluster, handoff)
    assert _files(cluster, handoff, new_in_c) or \
        set(holders(cluster, new_in_c)) == primaries(cluster, new_in_c)


async def test_a_removal_that_died_halfway_does_not_strand_the_partition(cluster):
    """The files of one object went, then the process died before the journal heard
    of it: the cached hash still matches every primary, the disk does not. The next
    pass must rehash it, not compare against it for ever."""
    part, handoff, _ = _handoff_and_late_name(cluster, "h1")
    twin = _same_suffix_name(cluster, handoff, "h1")
    nodes = [cluster.node_of(n) for n in cluster.ring.get_nodes("AUTH_a", "c", "h1")[1]]
    for node in [handoff, *nodes]:
        cluster.write_local(node, "AUTH_a", "c", "h1", b"x",
                            timestamp=Timestamp(1_700_000_001.0))
        cluster.write_local(node, "AUTH_a", "c", twin, b"y",
                            timestamp=Timestamp(1_700_000_002.0))
    get_suffix_hashes(handoff.device_path, part)  # cached, journal empty
    object_dir = cluster.object_dir(handoff, "AUTH_a", "c", "h1")
    for name in os.listdir(object_dir):
        os.unlink(os.path.join(object_dir, name))
    os.rmdir(object_dir)
    for _ in range(2):
        await replicate_node(cluster, handoff)
    assert not os.path.exists(os.path.join(handoff.device_path, "objects", str(part)))
