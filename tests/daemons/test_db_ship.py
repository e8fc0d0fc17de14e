"""A replica without a database gets the whole file, not its rows one batch at a time.

Four whole node servers on 127.0.0.1; the replicator runs its real passes against them
and the file travels in a real ``REPLICATE`` request.
"""

from __future__ import annotations

import os
import sqlite3
import time

import aiohttp
import pytest

from ring.hashing import hash_path_hex
from swiftlike.common.timestamp import Timestamp
from swiftlike.daemons.db_replicator import DatabaseReplicator, read_db
from swiftlike.storage.container_db import ContainerBroker
from swiftlike.storage.db_replication_server import SHIP_HEADER
from swiftlike.storage.db_ship import snapshot
from swiftlike.storage.replication_wire import VERB_HEADER
from tests.daemons.mini_cluster import PREFIX, SUFFIX, MiniCluster
from tests.daemons.test_db_reclaim import (
    ACCOUNT,
    CONTAINER,
    _account_headers,
    _send,
    _url,
    container_db,
    rows_of,
    stamp,
)

SHIP_MIN_ROWS = 50


def db_hash(account: str, container: str) -> str:
    return hash_path_hex(account, container, prefix=PREFIX.encode(), suffix=SUFFIX.encode())


@pytest.fixture
def cluster(full_cluster):
    return full_cluster


async def _container_on_one_replica(cluster: MiniCluster, rows: int) -> dict:
    """The account everywhere, the container on its first primary only, with ``rows``
    object rows; returns that primary."""
    part, nodes = cluster.ring.get_nodes(ACCOUNT, CONTAINER)
    async with aiohttp.ClientSession() as session:
        apart, anodes = cluster.ring.get_nodes(ACCOUNT)
        for dev in anodes:
            await _send(session, "PUT", _url(dev, apart, ACCOUNT), {"X-Timestamp": stamp(-100)},
                        (201, 202))
        await _send(session, "PUT", _url(nodes[0], part, ACCOUNT, CONTAINER),
                    {"X-Timestamp": stamp(-100), **_account_headers(cluster)}, (201, 202))
    add_rows(cluster, nodes[0], 0, rows)
    return nodes[0]


def add_rows(cluster: MiniCluster, dev: dict, first: int, count: int) -> None:
    broker = ContainerBroker(container_db(cluster, dev))
    created = Timestamp(time.time() - 50).internal
    try:
        broker.merge_items([{"name": f"obj-{i:06d}", "created_at": created, "size": i,
                             "content_type": "text/plain", "etag": "e" * 32, "deleted": 0}
                            for i in range(first, first + count)])
    finally:
        broker.close()


async def replicate(cluster: MiniCluster, dev: dict) -> dict:
    node = cluster.node_of(dev)
    ctx = cluster.context(node)
    try:
        result = await DatabaseReplicator(ctx, {"ship_min_rows": SHIP_MIN_ROWS}).run_once()
    finally:
        await ctx.close()
    return result[node.device]["counts"]


def sync_state(path: str) -> dict[str, str]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT key, value FROM sync_state"))
    finally:
        conn.close()


async def test_a_big_database_is_shipped_whole_then_followed_by_rows(cluster):
    source = await _container_on_one_replica(cluster, 300)
    _, nodes = cluster.ring.get_nodes(ACCOUNT, CONTAINER)
    counts = await replicate(cluster, source)
    assert counts.get("container_dbs_shipped") == 2
    assert counts.get("container_rows_pushed", 0) == 0
    expected = rows_of(container_db(cluster, source))
    source_id = sync_state(container_db(cluster, source))["id"]
    ids = set()
    for dev in nodes[1:]:
        path = container_db(cluster, dev)
        assert rows_of(path) == expected
        state = sync_state(path)
        assert state[f"in:{source_id}"] == "300" and state["clone_of"] == f"{source_id} 300"
        ids.add(read_db("container", path, 0, 0)[0]["sync_id"])  # its own id, made on use
        assert not [name for name in os.listdir(os.path.join(
            cluster.node_of(dev).device_path, "tmp")) if name.endswith(".db")]
    assert len(ids) == 2 and source_id not in ids
    assert not [name for name in os.listdir(os.path.join(
        cluster.node_of(source).device_path, "tmp")) if name.startswith("ship-")]

    # rows written after the snapshot follow as rows; nothing is shipped twice
    add_rows(cluster, source, 300, 7)
    counts = await replicate(cluster, source)
    assert "container_dbs_shipped" not in counts
    assert counts["container_rows_pushed"] == 14
    # a copy syncing to the source and to its sibling sends only what it got after the
    # snapshot (7 rows each): it says what it is a copy of, and both hold those rows
    counts = await replicate(cluster, nodes[1])
    assert counts["container_rows_pushed"] == 14
    for dev in nodes[1:]:
        assert rows_of(container_db(cluster, dev)) == rows_of(container_db(cluster, source))


async def test_a_small_database_still_ships_rows(cluster):
    source = await _container_on_one_replica(cluster, SHIP_MIN_ROWS)
    counts = await replicate(cluster, source)
    assert "container_dbs_shipped" not in counts
    assert counts["container_rows_pushed"] == 2 * SHIP_MIN_ROWS


async def test_a_peer_that_got_the_database_meanwhile_gets_rows(cluster, tmp_path):
    """The ship never replaces a database: a container PUT that reached the peer after
    the sync asked, or another sender's ship, wins, and rows follow as before."""
    source = await _container_on_one_replica(cluster, 120)
    part, nodes = cluster.ring.get_nodes(ACCOUNT, CONTAINER)
    peer = nodes[1]
    path = container_db(cluster, source)
    info, _ = read_db("container", path, 0, 0)
    async with aiohttp.ClientSession() as session:
        # the peer's own database, made after the replicator's "missing" answer
        await _send(session, "PUT", _url(peer, part, ACCOUNT, CONTAINER),
                    {"X-Timestamp": stamp(-90), **_account_headers(cluster)}, (201, 202))
        body = snapshot_bytes(path, tmp_path)
        async with session.request(
                "POST", _url(peer, part, db_hash(ACCOUNT, CONTAINER)), data=body,
                headers={"X-Backend-Server-Type": "container", VERB_HEADER: "REPLICATE",
                         SHIP_HEADER: f"{info['sync_id']} 120"}) as resp:
            assert resp.status == 200, await resp.text()
    assert rows_of(container_db(cluster, peer)) == {}  # left as it was
    counts = await replicate(cluster, source)
    assert counts["container_dbs_shipped"] == 1  # the third primary had none
    assert counts["container_rows_pushed"] == 120  # to the peer, as rows
    assert rows_of(container_db(cluster, peer)) == rows_of(path)


async def test_a_file_that_is_not_that_database_is_refused(cluster, tmp_path):
    source = await _container_on_one_replica(cluster, 10)
    other_part, other_nodes = cluster.ring.get_nodes(ACCOUNT, "another")
    target = next(dev for dev in other_nodes if dev["id"] != source["id"])
    good = snapshot_bytes(container_db(cluster, source), tmp_path)
    garbage = b"SQLite format 3\x00" + os.urandom(4096)
    other_hash = db_hash(ACCOUNT, "another")
    async with aiohttp.ClientSession() as session:
        # another container's database; noise; half a database
        for body in (good, garbage, good[:len(good) // 2]):
            async with session.request(
                    "POST", _url(target, other_part, other_hash), data=body,
                    headers={"X-Backend-Server-Type": "container",
                             VERB_HEADER: "REPLICATE", SHIP_HEADER: "abc 10"}) as resp:
                assert resp.status == 400, await resp.text()
    assert leftovers(cluster.node_of(target).device_path, str(other_part)) == ([], [])


def leftovers(device_path: str, part: str) -> tuple[list[str], list[str]]:
    """What a refused ship left: the partition's directory, database files in tmp/."""
    return ([part] if os.path.exists(os.path.join(device_path, "containers", part)) else [],
            [name for name in os.listdir(os.path.join(device_path, "tmp"))
             if name.endswith(".db")])


def snapshot_bytes(path: str, tmp_path) -> bytes:
    """A consistent copy of a database's file, as the replicator would ship it."""
    broker = ContainerBroker(path)
    try:
        copy, _ = snapshot(broker, str(tmp_path))
    finally:
        broker.close()
    with open(copy, "rb") as handle:
        return handle.read()


async def test_a_pass_clears_what_crashes_left_in_tmp(cluster):
    """A ship cut off by a crash leaves its file in tmp/; a week on, a pass removes it
    (and any other leftover), never what is fresh."""
    node = cluster.nodes[0]
    tmp = os.path.join(node.device_path, "tmp")
    os.makedirs(os.path.join(tmp, "removed-old", "db"), exist_ok=True)
    week_ago = time.time() - 8 * 24 * 3600
    leave_in_tmp(tmp, week_ago)
    counts = await replicate(cluster, {"id": 0, "device": node.device, "port": node.port})
    assert counts.get("tmp_entries_removed") == 2
    assert sorted(os.listdir(tmp)) == ["fresh.db"]


def leave_in_tmp(tmp: str, old: float) -> None:
    for name in ("shipped-old.db", "fresh.db"):
        with open(os.path.join(tmp, name), "wb") as handle:
            handle.write(b"x")
    for name in ("shipped-old.db", "removed-old"):
        os.utime(os.path.join(tmp, name), (old, old))
