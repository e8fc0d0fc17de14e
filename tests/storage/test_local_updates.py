"""Container rows for a database of the object node itself skip HTTP.

Real node servers on 127.0.0.1 (start_node_server, which tells the node its address),
real SQLite and files: the rows must land as a PATCH would land them, failures must
queue in async_pending as a failed PATCH does, and nothing goes over the wire.
"""

from __future__ import annotations

import asyncio
import glob
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import msgpack
import pytest

from swiftlike.storage import replication_wire as wire
from swiftlike.storage.replication_wire import VERB_HEADER
from swiftlike.storage.routing import Route
from swiftlike.storage.server import RunningNode, start_node_server
from swiftlike.storage.updates import UpdateTarget
from tests.storage.conftest import make_conf


@dataclass
class LocalNode:
    running: RunningNode
    devices: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.running.port}"


@pytest.fixture
async def local_node(tmp_path) -> AsyncIterator[LocalNode]:
    """A node served by start_node_server (so it knows its address), devices sda, sdb."""
    devices = str(tmp_path / "node")
    for device in ("sda", "sdb"):
        os.makedirs(os.path.join(devices, device))
    running = await start_node_server(make_conf(devices), "127.0.0.1", 0)
    try:
        yield LocalNode(running, devices)
    finally:
        await running.cleanup()


ROW = {"X-Backend-Server-Type": "container"}  # a one-row update, not an object PUT


def _pending(devices: str) -> list[dict]:
    records = []
    for path in glob.glob(os.path.join(devices, "sdb", "async_pending", "*", "*")):
        with open(path, "rb") as handle:
            records.append(msgpack.unpackb(handle.read()))
    return records


async def test_rows_for_its_own_databases_land_without_a_request(local_node, ts):
    running, devices, base = local_node.running, local_node.devices, local_node.base
    update = {"X-Container-Host": f"127.0.0.1:{running.port}",
              "X-Container-Partition": "2", "X-Container-Device": "sda"}
    batcher = running.dispatcher.servers["object"].updates
    async with aiohttp.ClientSession() as session:
        async with session.put(f"{base}/sda/2/AUTH_t/c",
                               headers={"X-Timestamp": ts()}) as resp:
            assert resp.status == 201

        async def put(name: str, size: int) -> None:
            async with session.put(f"{base}/sdb/4/AUTH_t/c/{name}", data=b"x" * size,
                                   headers={"X-Timestamp": ts(), "Content-Type": "a/b",
                                            **update}) as resp:
                assert resp.status == 201

        await asyncio.gather(*(put(f"o{i}", i) for i in range(1, 21)))
        async with session.delete(f"{base}/sdb/4/AUTH_t/c/o1",
                                  headers={"X-Timestamp": ts(), **update}) as resp:
            assert resp.status == 204
        async with session.get(f"{base}/sda/2/AUTH_t/c",
                               params={"format": "json"}) as resp:
            listed = await resp.json()
            assert resp.headers["X-Container-Object-Count"] == "19"
            assert resp.headers["X-Container-Bytes-Used"] == str(sum(range(2, 21)))
    assert sorted(r["name"] for r in listed) == sorted(f"o{i}" for i in range(2, 21))
    assert {r["name"]: (r["bytes"], r["content_type"]) for r in listed}["o7"] == (7, "a/b")
    assert batcher.rows_local == 21
    assert batcher.batches_sent == 0 and batcher.rows_sent == 0  # no PATCH at all
    assert _pending(devices) == []


async def test_a_missing_device_or_container_queues_the_row_like_a_failed_patch(local_node,
                                                                               ts):
    running, devices, base = local_node.running, local_node.devices, local_node.base
    own = f"127.0.0.1:{running.port}"
    batcher = running.dispatcher.servers["object"].updates
    async with aiohttp.ClientSession() as session:
        for name, device in (("no-device", "sdz"), ("no-container", "sda")):
            async with session.put(f"{base}/sdb/4/AUTH_t/c/{name}", data=b"abc",
                                   headers={"X-Timestamp": ts(),
                                            "X-Container-Host": own,
                                            "X-Container-Partition": "2",
                                            "X-Container-Device": device}) as resp:
                assert resp.status == 201  # the object is stored all the same
    records = _pending(devices)
    assert sorted(r["obj"] for r in records) == ["no-container", "no-device"]
    targets = {r["obj"]: r["targets"] for r in records}
    assert targets["no-device"] == [{"host": own, "partition": "2", "device": "sdz"}]
    assert batcher.rows_local == 2 and batcher.rows_sent == 0


async def test_only_its_own_address_counts_as_local(local_node):
    running = local_node.running
    containers = running.dispatcher.servers["container"]
    assert containers.serves(UpdateTarget(f"127.0.0.1:{running.port}", "2", "sda"))
    assert not containers.serves(UpdateTarget(f"127.0.0.1:{running.port + 1}", "2",
                                              "sda"))
    assert not containers.serves(UpdateTarget(f"127.0.0.2:{running.port}", "2", "sda"))
    containers.serve_address("0.0.0.0", running.port)  # a wildcard names no node
    assert not containers.serves(UpdateTarget(f"127.0.0.1:{running.port}", "2", "sda"))


async def test_row_commits_share_the_device_flush_and_keep_full_sync_otherwise(local_node,
                                                                                ts):
    running, devices, base = local_node.running, local_node.devices, local_node.base
    node = running.dispatcher.node
    containers = running.dispatcher.servers["container"]
    device_path = os.path.join(devices, "sda")
    assert node.group_commit
    containers.batcher.park_rows = False  # the merging path (parking: test_parked_rows)
    async with aiohttp.ClientSession() as session:
        async with session.put(f"{base}/sda/2/AUTH_t/c",
                               headers={"X-Timestamp": ts()}) as resp:
            assert resp.status == 201
        flushes = node.flusher(device_path).flushes
        async with session.put(f"{base}/sda/2/AUTH_t/c/row", headers={
                "X-Timestamp": ts(), "X-Size": "3", "X-Etag": "e", **ROW}) as resp:
            assert resp.status == 201
        # the row's commit waited for a flush of its device, not for its own fsync
        assert node.flusher(device_path).flushes > flushes
        broker = containers.broker(device_path, Route("sda", "2", "AUTH_t", "c"))
        level = broker.connection().execute("PRAGMA synchronous").fetchone()[0]
        assert level == 2  # FULL again for every other write of the database

        def broken(_fd: int) -> None:
            raise OSError(5, "Input/output error")

        real = node.flusher(device_path).sync_func
        node.flusher(device_path).sync_func = broken
        async with session.put(f"{base}/sda/2/AUTH_t/c/lost", headers={
                "X-Timestamp": ts(), "X-Size": "3", "X-Etag": "e", **ROW}) as resp:
            assert resp.status >= 500  # never acknowledged without its flush
        # the committed row went into the database file with SQLite's own fsyncs, and
        # the WAL that held it is empty (a retry finding the row is then truly stored)
        assert os.path.getsize(broker.db_path + "-wal") == 0  # noqa: ASYNC240 - a stat
        node.flusher(device_path).sync_func = real
        flushes = node.flusher(device_path).flushes
        async with session.put(f"{base}/sda/2/AUTH_t/c/after", headers={
                "X-Timestamp": ts(), "X-Size": "3", "X-Etag": "e", **ROW}) as resp:
            assert resp.status == 201
        # from then on this device's row commits fsync on their own
        assert node.flusher(device_path).flushes == flushes
        async with session.get(f"{base}/sda/2/AUTH_t/c", params={"format": "json"}) as resp:
            assert sorted(r["name"] for r in await resp.json()) == ["after", "lost", "row"]


async def test_a_replication_merge_answers_after_a_device_flush(local_node, ts):
    running, devices, base = local_node.running, local_node.devices, local_node.base
    node = running.dispatcher.node
    containers = running.dispatcher.servers["container"]
    device_path = os.path.join(devices, "sda")
    async with aiohttp.ClientSession() as session:
        async with session.put(f"{base}/sda/2/AUTH_t/c", headers={"X-Timestamp": ts()}) as r:
            assert r.status == 201
        db_hash = os.path.basename(os.path.dirname(
            containers.broker(device_path, Route("sda", "2", "AUTH_t", "c")).db_path))
        flushes = node.flusher(device_path).flushes
        row = {"name": "o", "created_at": ts(), "size": 1, "content_type": "a/b",
               "etag": "e", "deleted": 0}
        async with session.post(f"{base}/sda/2/{db_hash}", data=wire.pack(
                {"op": "merge_items", "rows": [row]}), headers={
                "X-Backend-Server-Type": "container", VERB_HEADER: "REPLICATE",
                "Content-Type": wire.MSGPACK_TYPE}) as resp:
            assert resp.status == 200
            assert wire.unpack(await resp.read())["changed"] == 1
        # rows committed under deferred sync may be what a merge finds: it answers only
        # once a flush that began after it has covered them
        assert node.flusher(device_path).flushes > flushes
