# ruff: noqa: ASYNC230, ASYNC240
"""The object replicator against real in-process nodes on loopback sockets."""

from __future__ import annotations

import os
import shutil

import pytest

from swiftlike.common.timestamp import Timestamp
from swiftlike.daemons.auditor import ObjectAuditor
from swiftlike.daemons.replicator import ObjectReplicator
from swiftlike.storage.diskfile import gather_ondisk_files, read_metadata
from tests.daemons.mini_cluster import MiniCluster


async def replicate_node(cluster: MiniCluster, node) -> dict:
    """One replication pass of one node; its per-device stats."""
    ctx = cluster.context(node)
    try:
        return await ObjectReplicator(ctx).run_once()
    finally:
        await ctx.close()


async def replicate_all(cluster: MiniCluster, rounds: int = 1) -> list[dict]:
    return [await replicate_node(cluster, node)
            for _ in range(rounds) for node in cluster.nodes]


def holders(cluster: MiniCluster, name: str) -> dict[int, str | None]:
    """node index -> winning file name, for every node holding anything for ``name``."""
    found = {}
    for node in cluster.nodes:
        state = gather_ondisk_files(cluster.object_dir(node, "AUTH_a", "c", name))
        if state.newest_durable is not None:
            found[node.index] = state.data_file or state.ts_file
    return found


def primaries(cluster: MiniCluster, name: str) -> set[int]:
    _, nodes = cluster.ring.get_nodes("AUTH_a", "c", name)
    return {cluster.node_of(n).index for n in nodes}


async def test_object_on_one_primary_reaches_the_others(cluster):
    _, nodes = cluster.ring.get_nodes("AUTH_a", "c", "o1")
    first = cluster.node_of(nodes[0])
    cluster.write_local(first, "AUTH_a", "c", "o1", b"hello world")
    await replicate_all(cluster)
    found = holders(cluster, "o1")
    assert set(found) == primaries(cluster, "o1")
    assert len(set(found.values())) == 1
    for index in found:
        node = cluster.nodes[index]
        state = gather_ondisk_files(cluster.object_dir(node, "AUTH_a", "c", "o1"))
        path = os.path.join(cluster.object_dir(node, "AUTH_a", "c", "o1"), state.data_file)
        assert open(path, "rb").read() == b"hello world"
        assert read_metadata(path)["ETag"] == "5eb63bbbe01eeed093cb22bb8f5acdc3"


async def test_newer_tombstone_wins_and_older_data_is_not_pushed_back(cluster):
    _, nodes = cluster.ring.get_nodes("AUTH_a", "c", "gone")
    a, b = cluster.node_of(nodes[0]), cluster.node_of(nodes[1])
    old = Timestamp.now()
    new = Timestamp(old.timestamp + 1)
    for node in (a, b, cluster.node_of(nodes[2])):
        cluster.write_local(node, "AUTH_a", "c", "gone", b"old", timestamp=old)
    cluster.write_local(b, "AUTH_a", "c", "gone", b"", timestamp=new, ext=".ts")
    await replicate_all(cluster, rounds=2)
    found = holders(cluster, "gone")
    assert set(found) == primaries(cluster, "gone")
    assert set(found.values()) == {new.internal + ".ts"}


async def test_handoff_partition_is_pushed_home_and_removed(cluster):
    part, _ = cluster.ring.get_nodes("AUTH_a", "c", "h1")
    handoff_dev = next(iter(cluster.ring.get_more_nodes(part)))
    handoff = cluster.node_of(handoff_dev)
    cluster.write_local(handoff, "AUTH_a", "c", "h1", b"x" * 1000)
    result = await replicate_node(cluster, handoff)
    counts = result[handoff.device]["counts"]
    assert counts["handoffs_removed"] == 1
    assert set(holders(cluster, "h1")) == primaries(cluster, "h1")
    assert not os.path.exists(os.path.join(handoff.device_path, "objects", str(part)))


async def test_wiped_device_is_rebuilt(cluster):
    names = [f"obj-{i}" for i in range(60)]
    for name in names:
        for dev in cluster.ring.get_nodes("AUTH_a", "c", name)[1]:
            cluster.write_local(cluster.node_of(dev), "AUTH_a", "c", name, name.encode() * 50)
    victim = cluster.nodes[1]
    shutil.rmtree(victim.device_path)
    os.makedirs(victim.device_path)
    await replicate_all(cluster)
    for name in names:
        assert set(holders(cluster, name)) == primaries(cluster, name), name


async def test_corrupt_copy_is_quarantined_and_restored(cluster):
    _, nodes = cluster.ring.get_nodes("AUTH_a", "c", "bad")
    for dev in nodes:
        cluster.write_local(cluster.node_of(dev), "AUTH_a", "c", "bad", b"good bytes" * 100)
    victim = cluster.node_of(nodes[0])
    object_dir = cluster.object_dir(victim, "AUTH_a", "c", "bad")
    data = os.path.join(object_dir, gather_ondisk_files(object_dir).data_file)
    with open(data, "r+b") as handle:
        handle.write(b"BAD")  # same size: only the full pass can tell
    ctx = cluster.context(victim)
    try:
        quick = await ObjectAuditor(ctx, {"files_per_second": 0}).run_once("quick")
        assert quick[victim.device]["counts"].get("quarantined", 0) == 0
        full = await ObjectAuditor(ctx, {"files_per_second": 0}).run_once("full")
        assert full[victim.device]["counts"]["quarantined"] == 1
    finally:
        await ctx.close()
    assert os.listdir(os.path.join(victim.device_path, "quarantined", "objects"))
    await replicate_all(cluster)
    data = os.path.join(object_dir, gather_ondisk_files(object_dir).data_file)
    assert open(data, "rb").read() == b"good bytes" * 100


async def test_corrupt_source_is_not_spread(cluster):
    _, nodes = cluster.ring.get_nodes("AUTH_a", "c", "rot")
    source = cluster.node_of(nodes[0])
    cluster.write_local(source, "AUTH_a", "c", "rot", b"a" * 500)
    object_dir = cluster.object_dir(source, "AUTH_a", "c", "rot")
    data = os.path.join(object_dir, gather_ondisk_files(object_dir).data_file)
    with open(data, "r+b") as handle:
        handle.write(b"Z")
    result = await replicate_node(cluster, source)
    assert result[source.device]["counts"]["quarantined_by_peer"] >= 1
    assert holders(cluster, "rot") == {}


@pytest.mark.parametrize("cluster", ["fsync off", "group commit"], indirect=True)
async def test_rebuilt_object_keeps_its_meta_in_one_pass(cluster):
    """A lost object comes back with its .meta (POSTed metadata, X-Delete-At) at once:
    the .data and .meta arrive in one batch, and the .meta must not be judged against a
    directory the .data has not been linked into yet."""
    _, nodes = cluster.ring.get_nodes("AUTH_a", "c", "m1")
    data_at = Timestamp.now()
    meta_at = Timestamp(data_at.timestamp + 1)
    for dev in nodes:
        node = cluster.node_of(dev)
        cluster.write_local(node, "AUTH_a", "c", "m1", b"body", timestamp=data_at)
        cluster.write_local(node, "AUTH_a", "c", "m1", b"", timestamp=meta_at, ext=".meta",
                            extra={"X-Object-Meta-Color": "blue"})
    victim = cluster.node_of(nodes[0])
    object_dir = cluster.object_dir(victim, "AUTH_a", "c", "m1")
    shutil.rmtree(object_dir)
    part_dir = os.path.dirname(os.path.dirname(object_dir))
    for name in os.listdir(part_dir):
        if name.startswith("hashes"):
            os.unlink(os.path.join(part_dir, name))
    for node in cluster.nodes:  # one pass of every node, the victim's last
        if node is not victim:
            await replicate_node(cluster, node)
    state = gather_ondisk_files(object_dir)
    assert state.data_file == data_at.internal + ".data"
    assert state.meta_file == meta_at.internal + ".meta"
    metadata = read_metadata(os.path.join(object_dir, state.meta_file))
    assert metadata["X-Object-Meta-Color"] == "blue"


@pytest.mark.parametrize("newer", [".data", ".ts"])
async def test_handoff_older_than_the_primaries_is_removed(cluster, newer):
    """A handoff copy the primaries have since overwritten or deleted is delivered: the
    primaries want nothing of it. It must go, not sit on the handoff for ever because
    its suffix hashes can never match theirs."""
    part, nodes = cluster.ring.get_nodes("AUTH_a", "c", "stale")
    handoff = cluster.node_of(next(iter(cluster.ring.get_more_nodes(part))))
    old = Timestamp.now()
    new = Timestamp(old.timestamp + 1)
    cluster.write_local(handoff, "AUTH_a", "c", "stale", b"old", timestamp=old)
    for dev in nodes:
        cluster.write_local(cluster.node_of(dev), "AUTH_a", "c", "stale",
                            b"new" if newer == ".data" else b"", timestamp=new, ext=newer)
    result = await replicate_node(cluster, handoff)
    counts = result[handoff.device]["counts"]
    assert counts.get("handoffs_removed") == 1, counts
    assert not os.path.exists(os.path.join(handoff.device_path, "objects", str(part)))
    found = holders(cluster, "stale")
    assert set(found) == primaries(cluster, "stale")
    assert set(found.values()) == {new.internal + newer}
