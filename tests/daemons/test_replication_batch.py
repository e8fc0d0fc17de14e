# ruff: noqa: ASYNC240
"""The per-device batch replication verbs and the replicator's batching, over real sockets.

Partial failures (one partition failing on the peer), a peer that drops the connection
in the middle of a batch push, several handoff partitions in one pass, and tombstones
against older data across many partitions.
"""

from __future__ import annotations

import os
import shutil

import aiohttp
import pytest
from aiohttp import web

from swiftlike.common.timestamp import Timestamp
from swiftlike.daemons.replicator import ObjectReplicator
from swiftlike.storage import replication_wire as wire
from swiftlike.storage.diskfile import gather_ondisk_files
from swiftlike.storage.hashes import HASHES_FILE
from swiftlike.storage.replication_server import replication_verb
from tests.daemons.mini_cluster import MiniCluster, MiniNode, make_node_app


async def replicate(cluster: MiniCluster, node: MiniNode) -> dict:
    ctx = cluster.context(node)
    try:
        result = await ObjectReplicator(ctx).run_once()
    finally:
        await ctx.close()
    return result[node.device]["counts"]


def holds(cluster: MiniCluster, node: MiniNode, name: str) -> str | None:
    state = gather_ondisk_files(cluster.object_dir(node, "AUTH_a", "c", name))
    return state.data_file or state.ts_file


def names_by_partition(cluster: MiniCluster, count: int) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for i in range(count):
        name = f"o-{i}"
        found.setdefault(cluster.ring.get_part("AUTH_a", "c", name), []).append(name)
    return found


async def post_verb(node: MiniNode, verb: str, body: bytes, phase: str | None = None,
                    path: str | None = None) -> tuple[int, bytes]:
    headers = {wire.VERB_HEADER: verb, "X-Backend-Server-Type": "object"}
    if phase:
        headers[wire.PHASE_HEADER] = phase
    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{node.port}{path or '/' + node.device}", data=body,
            headers=headers) as resp:
        return resp.status, await resp.read()


async def test_batch_replicate_answers_every_partition_and_reports_a_broken_one(cluster):
    node = cluster.nodes[0]
    parts = names_by_partition(cluster, 200)
    good, broken = sorted(parts)[:2]
    for part in (good, broken):
        cluster.write_local(node, "AUTH_a", "c", parts[part][0], b"data")
    # a partition the node cannot read: its hash cache is a directory
    cache = os.path.join(node.device_path, "objects", str(broken), HASHES_FILE)
    if os.path.exists(cache):
        os.remove(cache)
    os.mkdir(cache)
    status, raw = await post_verb(node, "REPLICATE", wire.pack(
        {str(good): [], str(broken): [], "9999": []}))
    assert status == 200
    answer = wire.unpack(raw)
    assert len(answer["hashes"][str(good)]) == 1
    assert answer["hashes"]["9999"] == {}  # a partition the device lacks: no suffixes
    assert str(broken) in answer["errors"] and str(broken) not in answer["hashes"]
    status, raw = await post_verb(node, "SSYNC", wire.pack(
        {str(good): {"0" * 32: ["1700000000.00000.data", None]}}), wire.PHASE_MISSING)
    assert status == 200
    assert wire.unpack(raw)["wanted"] == {str(good): {"0" * 32: "d"}}


@pytest.mark.parametrize("body, phase, path", [
    (b"not msgpack \xc1", None, None),
    (wire.pack({"../x": []}), None, None),
    (wire.pack({"1": ["zz"]}), None, None),
    (wire.pack({"1": {"0" * 32: [1, 2]}}), wire.PHASE_MISSING, None),
    (wire.pack({"1": []}), None, "/d0/1"),  # the per-partition form is gone
    (wire.FRAME_HEADER.pack(3) + b"abc", wire.PHASE_UPDATES, None),
])
async def test_bad_batch_requests_are_refused(cluster, body, phase, path):
    node = cluster.nodes[0]
    status, raw = await post_verb(node, "SSYNC" if phase else "REPLICATE", body, phase,
                                  path)
    assert status == 400, raw
    assert not os.path.exists(os.path.join(node.device_path, "objects", "1"))


async def test_a_partition_failing_on_the_peer_does_not_stop_the_others(cluster):
    parts = names_by_partition(cluster, 300)
    # two partitions that share the same primaries: one will break on the last primary
    by_nodes: dict[tuple, list[int]] = {}
    for part in parts:
        key = tuple(n["id"] for n in cluster.ring.get_part_nodes(part))
        by_nodes.setdefault(key, []).append(part)
    shared = next(v for v in by_nodes.values() if len(v) >= 2)
    chosen = [(p, parts[p]) for p in shared[:2]]
    first, *others = [cluster.node_of(n) for n in cluster.ring.get_part_nodes(chosen[0][0])]
    for _, names in chosen:
        for name in names:
            cluster.write_local(first, "AUTH_a", "c", name, name.encode())
    victim = others[-1]
    broken_part = chosen[0][0]
    broken_dir = os.path.join(victim.device_path, "objects", str(broken_part))
    os.makedirs(os.path.join(broken_dir, HASHES_FILE))  # its hash cache: unreadable
    counts = await replicate(cluster, first)
    assert counts["errors"] >= 1
    for name in chosen[1][1]:  # the healthy partition reached every primary
        assert holds(cluster, victim, name), name
        assert holds(cluster, others[0], name), name
    for name in chosen[0][1]:  # the broken one reached the healthy primary only
        assert holds(cluster, others[0], name), name
        assert not holds(cluster, victim, name), name
    os.rmdir(os.path.join(broken_dir, HASHES_FILE))
    for node in (first, others[0]):  # both hold it now: one of them pushes each suffix
        assert (await replicate(cluster, node)).get("errors", 0) == 0
    for name in chosen[0][1]:
        assert holds(cluster, victim, name), name


async def restart_with_app(node: MiniNode, app: web.Application) -> None:
    await node.stop()
    from swiftlike.storage.node import StorageNode

    node.storage = StorageNode(node.conf)
    node.runner = web.AppRunner(app(node.storage), access_log=None)
    await node.runner.setup()
    await web.TCPSite(node.runner, "127.0.0.1", node.port).start()


def dropping_app(storage):
    """A node that reads part of every updates push and then drops the connection."""
    inner = make_node_app(storage)
    handler = inner.router.routes()._routes[0].handler  # reuse its dispatch

    async def dispatch(request: web.Request) -> web.StreamResponse:
        if replication_verb(request) == "SSYNC" and \
                request.headers.get(wire.PHASE_HEADER) == wire.PHASE_UPDATES:
            await request.content.read(100)
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        return await handler(request)

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


async def test_peer_dropping_mid_batch_keeps_the_handoff_until_it_has_everything(cluster):
    parts = names_by_partition(cluster, 400)
    # several partitions whose handoff is the same node, and one primary shared by all
    handoff_dev = None
    picked: list[int] = []
    for part in sorted(parts):
        more = next(iter(cluster.ring.get_more_nodes(part)))
        if handoff_dev is None:
            handoff_dev = more
        if more["id"] == handoff_dev["id"]:
            picked.append(part)
    assert len(picked) >= 2
    handoff = cluster.node_of(handoff_dev)
    names = [n for p in picked for n in parts[p]]
    for name in names:
        cluster.write_local(handoff, "AUTH_a", "c", name, b"payload " + name.encode())
    flaky = cluster.node_of(cluster.ring.get_part_nodes(picked[0])[0])
    await restart_with_app(flaky, dropping_app)
    counts = await replicate(cluster, handoff)
    assert counts["errors"] >= 1
    assert counts.get("handoffs_removed", 0) < len(picked)
    flaky_parts = {p for p in picked
                   if any(n["id"] == cluster.ring.devs[flaky.index]["id"]
                          for n in cluster.ring.get_part_nodes(p))}
    for part in flaky_parts:  # nothing it did not fully get was deleted from the handoff
        assert os.path.isdir(os.path.join(handoff.device_path, "objects", str(part)))
    for name in names:  # every healthy primary has its copy already
        for dev in cluster.ring.get_nodes("AUTH_a", "c", name)[1]:
            node = cluster.node_of(dev)
            if node is not flaky:
                assert holds(cluster, node, name), (name, node.index)
    await flaky.stop()
    await flaky.start()
    counts = await replicate(cluster, handoff)
    assert counts.get("errors", 0) == 0
    assert counts["handoffs_removed"] == len(picked)
    for name in names:
        for dev in cluster.ring.get_nodes("AUTH_a", "c", name)[1]:
            assert holds(cluster, cluster.node_of(dev), name), name
        assert not holds(cluster, handoff, name)


async def test_tombstones_win_over_older_data_in_every_partition(cluster):
    parts = names_by_partition(cluster, 60)
    old = Timestamp.now()
    new = Timestamp(old.timestamp + 5)
    deleted, kept = [], []
    for index, (part, names) in enumerate(sorted(parts.items())):
        primaries = [cluster.node_of(n) for n in cluster.ring.get_part_nodes(part)]
        for name in names:
            for node in primaries:
                cluster.write_local(node, "AUTH_a", "c", name, b"old", timestamp=old)
            if index % 2 == 0:  # only the last primary saw the delete
                cluster.write_local(primaries[-1], "AUTH_a", "c", name, b"",
                                    timestamp=new, ext=".ts")
                deleted.append(name)
            else:
                kept.append(name)
    for _ in range(2):
        for node in cluster.nodes:
            await replicate(cluster, node)
    for name in deleted:
        for dev in cluster.ring.get_nodes("AUTH_a", "c", name)[1]:
            assert holds(cluster, cluster.node_of(dev), name) == new.internal + ".ts", name
    for name in kept:
        for dev in cluster.ring.get_nodes("AUTH_a", "c", name)[1]:
            assert holds(cluster, cluster.node_of(dev), name) == old.internal + ".data"


async def test_wiped_device_is_rebuilt_with_few_requests(cluster):
    names = [f"w-{i}" for i in range(80)]
    stamp = Timestamp.now()
    for name in names:
        for dev in cluster.ring.get_nodes("AUTH_a", "c", name)[1]:
            cluster.write_local(cluster.node_of(dev), "AUTH_a", "c", name, name.encode(),
                                timestamp=stamp)
    victim = cluster.nodes[2]
    shutil.rmtree(victim.device_path)
    os.makedirs(victim.device_path)
    pushed = 0
    for node in cluster.nodes:
        if node is not victim:
            pushed += (await replicate(cluster, node)).get("files_pushed", 0)
    expected = [n for n in names
                if any(cluster.node_of(d) is victim
                       for d in cluster.ring.get_nodes("AUTH_a", "c", n)[1])]
    for name in expected:
        assert holds(cluster, victim, name), name
    assert pushed == len(expected)  # one push per object: the others left it to one


def test_a_rehash_leaves_fresh_empty_directories_to_their_writer(tmp_path):
    """A writer makes suffix/hash dirs, then links its file: a rehash in between (a peer's
    REPLICATE) must not remove them under it; idle empty ones are still cleaned up."""
    from swiftlike.storage.hashes import EMPTY_DIR_GRACE, hash_suffix_dir

    suffix = tmp_path / "abc"
    fresh, idle = suffix / ("1" * 29 + "abc"), suffix / ("2" * 29 + "abc")
    fresh.mkdir(parents=True)
    idle.mkdir()
    old = os.stat(idle).st_mtime - EMPTY_DIR_GRACE - 1
    os.utime(idle, (old, old))
    assert hash_suffix_dir(str(suffix)) is None
    assert fresh.is_dir() and not idle.exists()
