# ruff: noqa: ASYNC230, ASYNC240
"""Updater, expirer, auditor requeue and recon against real in-process nodes."""

from __future__ import annotations

import os
import time

import aiohttp
import msgpack

from swiftlike.common.node_client import node_path
from swiftlike.common.timestamp import Timestamp
from swiftlike.daemons.auditor import ObjectAuditor
from swiftlike.daemons.expirer import ObjectExpirer
from swiftlike.daemons.updater import ObjectUpdater, list_pending
from swiftlike.storage.diskfile import gather_ondisk_files
from swiftlike.storage.expiring_queue import enqueue_expiring, pending_count
from swiftlike.storage.updates import pending_record, write_async_pending
from tests.cluster_harness import serve_handler
from tests.daemons.mini_cluster import PREFIX, SUFFIX


async def put(cluster, name: str, body: bytes, headers: dict[str, str]) -> list:
    part, nodes = cluster.ring.get_nodes("AUTH_a", "c", name)
    async with aiohttp.ClientSession() as session:
        for node in nodes:
            url = f"http://127.0.0.1:{node['port']}{node_path(node, part, 'AUTH_a', 'c', name)}"
            async with session.put(url, data=body, headers={
                    "X-Timestamp": Timestamp.now().internal, **headers}) as resp:
                assert resp.status == 201, await resp.text()
    return nodes


async def test_expirer_deletes_due_objects_everywhere_and_keeps_the_rest(cluster):
    delete_at = int(time.time()) + 2
    nodes = await put(cluster, "short", b"bye", {"X-Delete-At": str(delete_at)})
    await put(cluster, "keep", b"stay", {})
    holder = cluster.node_of(nodes[0])
    ctx = cluster.context(holder)
    try:
        # the auditor finds X-Delete-At and queues it (the object server may also do so)
        await ObjectAuditor(ctx, {"files_per_second": 0}).run_once("quick")
        assert pending_count(holder.device_path) == 1
        early = await ObjectExpirer(ctx).run_once(now=time.time())
        assert early[holder.device]["counts"].get("attempted", 0) == 0
        result = await ObjectExpirer(ctx).run_once(now=delete_at + 1)
    finally:
        await ctx.close()
    assert result[holder.device]["counts"]["objects_expired"] == 1
    assert pending_count(holder.device_path) == 0
    for dev in nodes:
        node = cluster.node_of(dev)
        state = gather_ondisk_files(cluster.object_dir(node, "AUTH_a", "c", "short"))
        assert state.data_file is None and state.ts_file is not None
        assert state.ts_file.startswith(Timestamp(delete_at).internal)
    for dev in cluster.ring.get_nodes("AUTH_a", "c", "keep")[1]:
        node = cluster.node_of(dev)
        assert gather_ondisk_files(cluster.object_dir(node, "AUTH_a", "c", "keep")).data_file


async def test_expirer_leaves_an_object_whose_expiry_changed(cluster):
    nodes = await put(cluster, "renewed", b"x", {})
    holder = cluster.node_of(nodes[0])
    delete_at = int(time.time()) + 1
    enqueue_expiring(holder.device_path, "AUTH_a", "c", "renewed", delete_at,
                     Timestamp.now().internal, PREFIX.encode(), SUFFIX.encode(), fsync=False)
    ctx = cluster.context(holder)
    try:
        result = await ObjectExpirer(ctx).run_once(now=delete_at + 5)
    finally:
        await ctx.close()
    # settled without a DELETE: every replica holds a state without that expiry
    assert result[holder.device]["counts"]["superseded"] == 1
    assert result[holder.device]["counts"].get("deletes", 0) == 0
    for dev in nodes:
        node = cluster.node_of(dev)
        assert gather_ondisk_files(cluster.object_dir(node, "AUTH_a", "c", "renewed")).data_file


async def test_updater_replays_and_removes_or_keeps_pending(cluster, tmp_path, monkeypatch):
    node = cluster.nodes[0]
    received = []
    # stand-in container servers the ring does not name: keep the records' own targets
    # (following the ring to the current primaries is tested in test_db_reclaim.py)
    monkeypatch.setattr("swiftlike.daemons.updater.current_targets",
                        lambda ring, server_type, account, container, targets: targets)

    async def container_server(request: aiohttp.web.Request) -> aiohttp.web.Response:
        received.append((request.method, request.path, request.headers.get("X-Timestamp")))
        return aiohttp.web.Response(status=201)

    runner, port = await serve_handler(container_server)
    from swiftlike.storage.updates import UpdateTarget

    good = UpdateTarget(f"127.0.0.1:{port}", "3", "sdx")
    dead = UpdateTarget("127.0.0.1:1", "3", "sdy")
    stamp = Timestamp.now().internal
    for obj, targets in (("o1", [good]), ("o2", [good, dead])):
        record = pending_record("PUT", "AUTH_a", "c", obj, "container",
                                {"X-Timestamp": stamp, "X-Size": "1"}, targets)
        write_async_pending(node.device_path, record, stamp, PREFIX.encode(), SUFFIX.encode(),
                            fsync=False)
    ctx = cluster.context(node)
    try:
        result = await ObjectUpdater(ctx, {"update_timeout": 1}).run_once()
    finally:
        await ctx.close()
        await runner.cleanup()
    counts = result[node.device]["counts"]
    assert counts["successes"] == 1 and counts["failures"] == 1
    assert sorted(p for _, p, _ in received) == ["/sdx/3/AUTH_a/c/o1", "/sdx/3/AUTH_a/c/o2"]
    left = list_pending(node.device_path)
    assert len(left) == 1
    with open(left[0], "rb") as handle:
        record = msgpack.unpackb(handle.read())
    assert [t["device"] for t in record["targets"]] == ["sdy"]  # only the failed target


async def test_recon_reports_daemon_stats_that_survive_restart(cluster):
    node = cluster.nodes[0]
    ctx = cluster.context(node)
    try:
        await ObjectUpdater(ctx).run_once()
    finally:
        await ctx.close()
    await node.stop()
    await node.start()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{node.port}/recon/updater") as resp:
            assert resp.status == 200
            body = await resp.json()
        async with session.get(f"http://127.0.0.1:{node.port}/recon/nonsense") as resp:
            assert resp.status == 404
    assert node.device in body["devices"]
    assert body["devices"][node.device]["duration"] >= 0
    assert os.path.exists(os.path.join(node.device_path, ".recon", "updater.json"))


async def test_proxy_side_cluster_recon_aggregates_every_node(cluster):
    from swiftlike.proxy.recon_cluster import gather_cluster_recon

    for node in cluster.nodes:
        ctx = cluster.context(node)
        try:
            await ObjectUpdater(ctx).run_once()
        finally:
            await ctx.close()
    await cluster.nodes[3].stop()
    async with aiohttp.ClientSession() as session:
        body = await gather_cluster_recon(cluster.ring, session, "updater",
                                          per_node_timeout=2)
    assert len(body["nodes"]) == 3
    assert body["unreachable"] == [f"127.0.0.1:{cluster.nodes[3].port}"]
    assert all(n["daemon"] == "updater" for n in body["nodes"].values())


def test_due_entries_take_buckets_in_numeric_order(tmp_path):
    """A bucket with more digits than now's (an older release queued any X-Delete-At)
    sorts first as a string: taken as the earliest and in the future, it ended every
    pass before the due buckets after it."""
    from swiftlike.storage.expiring_queue import QUEUE_DIR, due_entries

    root = tmp_path / QUEUE_DIR
    for bucket, name in (("10000000000", "far"), ("1700000000", "due")):
        (root / bucket).mkdir(parents=True)
        (root / bucket / f"h-{name}").write_bytes(msgpack.packb(
            {"account": "a", "container": "c", "obj": name, "delete_at": int(bucket)}))
    assert [r["obj"] for _, r in due_entries(str(tmp_path), now=1800000000.0)] == ["due"]


async def test_expirer_leaves_a_version_a_stale_replica_missed_the_overwrite_of(cluster):
    """The replica that missed an overwrite still has the old version with its
    X-Delete-At: a DELETE stamped with the delete-at time would take it there, and that
    tombstone, later than the overwrite, would then replicate over the newer version
    everywhere. The expirer sees the newer state on the other replicas and drops the
    entry instead."""
    delete_at = int(time.time()) + 2
    nodes = await put(cluster, "ow", b"old", {"X-Delete-At": str(delete_at)})
    part = cluster.ring.get_part("AUTH_a", "c", "ow")
    async with aiohttp.ClientSession() as session:
        for node in nodes[:2]:  # the third replica is down for the overwrite
            url = f"http://127.0.0.1:{node['port']}{node_path(node, part, 'AUTH_a', 'c', 'ow')}"
            async with session.put(url, data=b"newer", headers={
                    "X-Timestamp": Timestamp.now().internal}) as resp:
                assert resp.status == 201
    stale = cluster.node_of(nodes[2])  # its queue entry came with the first PUT
    ctx = cluster.context(stale)
    try:
        result = await ObjectExpirer(ctx).run_once(now=delete_at + 1)
    finally:
        await ctx.close()
    counts = result[stale.device]["counts"]
    assert counts.get("superseded") == 1 and counts.get("deletes", 0) == 0, counts
    assert pending_count(stale.device_path) == 0
    for dev in nodes:
        state = gather_ondisk_files(cluster.object_dir(cluster.node_of(dev), "AUTH_a", "c",
                                                       "ow"))
        assert state.ts_file is None and state.data_file, dev
