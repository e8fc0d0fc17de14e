# ruff: noqa: ASYNC240
"""A delivered handoff partition loses what was delivered, never what arrived since.

A PUT lands on a handoff while one of its primaries is away, and it can land while the
replicator is removing that very partition. These tests put a write in the two
windows of the removal: before its fresh listing and after it.
"""

from __future__ import annotations

import os

from swiftlike.common.timestamp import Timestamp
from swiftlike.daemons import replicator as replicator_module
from swiftlike.storage import partition_removal
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
    real_remove_delivered = replicator_module.remove_delivered

    def write_lands_then_remove(device_path, partition, delivered, kind="objects"):
        if partition == str(part) and not _files(cluster, handoff, late):
            cluster.write_local(handoff, "AUTH_a", "c", late, b"acknowledged",
                                timestamp=Timestamp.now())
        return real_remove_delivered(device_path, partition, delivered, kind)

    monkeypatch.setattr(replicator_module, "remove_delivered", write_lands_then_remove)
    result = await replicate_node(cluster, handoff)
    counts = result[handoff.device]["counts"]
    assert counts.get("handoffs_removed", 0) == 0
    assert counts["handoffs_changed_meanwhile"] == 1
    assert len(_files(cluster, handoff, "h1")) == 1
    assert len(_files(cluster, handoff, late)) == 1

    monkeypatch.setattr(replicator_module, "remove_delivered", real_remove_delivered)
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
    real_remove_delivered = replicator_module.remove_delivered

    def write_lands_then_remove(device_path, partition, delivered, kind="objects"):
        if partition == str(part):
            assert delivered == {}
            cluster.write_local(handoff, "AUTH_a", "c", late, b"acknowledged")
        return real_remove_delivered(device_path, partition, delivered, kind)

    monkeypatch.setattr(replicator_module, "remove_delivered", write_lands_then_remove)
    await replicate_node(cluster, handoff)
    assert len(_files(cluster, handoff, late)) == 1
