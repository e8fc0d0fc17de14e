"""Batched container-row updates: the PATCH verb, the object node's UpdateBatcher, and
the async-pending fallback when the container server is down.

Real nodes on 127.0.0.1, real SQLite, real files; the updater daemon replays what failed.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os

import aiohttp
import msgpack
from aiohttp import web

from ring import RingBuilder
from swiftlike.common.node_client import NodeClient
from swiftlike.daemons.base import DaemonContext
from swiftlike.daemons.updater import ObjectUpdater
from swiftlike.storage.server import SERVERS_KEY, make_app
from swiftlike.storage.updates import BATCH_METHOD, UpdateBatcher, UpdateTarget
from tests.cluster_harness import free_port, serve_handler
from tests.storage.conftest import make_conf

CONTAINER = "/sda/2/AUTH_t/c"


class Node:
    """A storage node app on a fixed port that can be stopped and started again."""

    def __init__(self, devices: str, port: int) -> None:
        for device in ("sda", "sdb"):
            os.makedirs(os.path.join(devices, device), exist_ok=True)
        self.devices = devices
        self.port = port
        self.conf = make_conf(devices)
        self.app: web.Application | None = None
        self.runner: web.AppRunner | None = None

    async def start(self) -> Node:
        self.app = make_app(self.conf)
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


async def _nodes(tmp_path) -> tuple[Node, Node]:
    container = await Node(str(tmp_path / "containers"), free_port()).start()
    objects = await Node(str(tmp_path / "objects"), free_port()).start()
    return container, objects


async def _make_container(session: aiohttp.ClientSession, node: Node, ts) -> None:
    async with session.put(node.url(CONTAINER), headers={"X-Timestamp": ts()}) as resp:
        assert resp.status == 201


async def _listing(session: aiohttp.ClientSession, node: Node) -> tuple[dict, list[dict]]:
    async with session.get(node.url(CONTAINER), params={"format": "json"}) as resp:
        assert resp.status in (200, 204)
        rows = await resp.json() if resp.status == 200 else []
        return dict(resp.headers), rows


async def _patch(session: aiohttp.ClientSession, node: Node, rows: object, ts) -> int:
    async with session.request(BATCH_METHOD, node.url(CONTAINER), data=json.dumps(rows),
                               headers={"X-Backend-Server-Type": "container",
                                        "X-Timestamp": ts()}) as resp:
        await resp.read()
        return resp.status


def _row(name: str, stamp: str, size: int = 1, deleted: int = 0) -> dict:
    return {"name": name, "created_at": stamp, "size": size, "content_type": "a/b",
            "etag": f"e{size}", "deleted": deleted}


async def test_patch_merges_many_rows_and_the_newest_wins_within_a_batch(tmp_path, ts):
    container, objects = await _nodes(tmp_path)
    try:
        async with aiohttp.ClientSession() as session:
            await _make_container(session, container, ts)
            older, newer, newest = ts(), ts(), ts()
            rows = [_row(f"o{i}", older, size=i) for i in range(20)]
            rows += [_row("dup", newer, size=7), _row("dup", older, size=3),  # newer first
                     _row("gone", older, size=5), _row("gone", newest, deleted=1),
                     _row("o0", newest, size=100)]                            # replaces o0
            assert await _patch(session, container, rows, ts) == 202
            headers, listed = await _listing(session, container)
            by_name = {r["name"]: r for r in listed}
            assert "gone" not in by_name
            assert by_name["dup"]["bytes"] == 7 and by_name["dup"]["hash"] == "e7"
            assert by_name["o0"]["bytes"] == 100
            assert sorted(by_name) == sorted([f"o{i}" for i in range(20)] + ["dup"])
            assert headers["X-Container-Object-Count"] == "21"
            assert int(headers["X-Container-Bytes-Used"]) == sum(range(1, 20)) + 100 + 7
            # an older row sent later changes nothing
            assert await _patch(session, container, [_row("dup", older, size=1)], ts) == 202
            assert {r["name"]: r for r in (await _listing(session, container))[1]}[
                "dup"]["bytes"] == 7
    finally:
        await objects.stop()
        await container.stop()


async def test_patch_refuses_bad_bodies_and_missing_containers(tmp_path, ts):
    container, objects = await _nodes(tmp_path)
    try:
        async with aiohttp.ClientSession() as session:
            assert await _patch(session, container, [_row("o", ts())], ts) == 404
            await _make_container(session, container, ts)
            for bad in ({"name": "o"}, [{"name": "o", "created_at": "soon"}],
                        [{"name": "", "created_at": ts()}],
                        [_row("o", ts(), size=-1)], ["o"]):
                assert await _patch(session, container, bad, ts) == 400
            async with session.request(BATCH_METHOD, container.url(CONTAINER), data=b"[]",
                                       headers={"X-Backend-Server-Type": "container"}) as resp:
                assert resp.status == 400  # no X-Timestamp
            assert (await _listing(session, container))[1] == []
    finally:
        await objects.stop()
        await container.stop()


async def test_batcher_sends_concurrent_rows_in_one_request(tmp_path, ts):
    container, objects = await _nodes(tmp_path)
    try:
        async with aiohttp.ClientSession() as session:
            await _make_container(session, container, ts)
            client = NodeClient()
            batcher = UpdateBatcher(lambda: client)
            target = UpdateTarget(f"127.0.0.1:{container.port}", "2", "sda")
            results = await asyncio.gather(*(
                batcher.send(target, "AUTH_t", "c", _row(f"b{i}", ts(), size=i), 5.0)
                for i in range(30)))
            assert results == [True] * 30
            assert (batcher.batches_sent, batcher.rows_sent) == (1, 30)
            listed = (await _listing(session, container))[1]
            assert sorted(r["name"] for r in listed) == sorted(f"b{i}" for i in range(30))
            # rows arriving while a batch is in flight leave together in the next one
            first = asyncio.ensure_future(
                batcher.send(target, "AUTH_t", "c", _row("x0", ts()), 5.0))
            await asyncio.sleep(0)  # the first batch is now on its way
            rest = [batcher.send(target, "AUTH_t", "c", _row(f"x{i}", ts()), 5.0)
                    for i in range(1, 10)]
            assert await asyncio.gather(first, *rest) == [True] * 10
            assert (batcher.batches_sent, batcher.rows_sent) == (3, 40)
            await batcher.close()
            await client.close()
    finally:
        await objects.stop()
        await container.stop()


async def test_batcher_falls_back_to_single_rows_for_servers_without_patch(ts):
    seen: list[tuple[str, str]] = []

    async def old_container_server(request: web.Request) -> web.Response:
        seen.append((request.method, request.path))
        return web.Response(status=405 if request.method == BATCH_METHOD else 201)

    runner, port = await serve_handler(old_container_server)
    try:
        client = NodeClient()
        try:
            batcher = UpdateBatcher(lambda: client)
            target = UpdateTarget(f"127.0.0.1:{port}", "2", "sda")
            rows = [_row("a", ts()), _row("b", ts(), deleted=1)]
            assert await asyncio.gather(*(batcher.send(target, "AUTH_t", "c", row, 5.0)
                                          for row in rows)) == [True, True]
            assert seen[0] == (BATCH_METHOD, "/sda/2/AUTH_t/c")
            assert sorted(seen[1:]) == [("DELETE", "/sda/2/AUTH_t/c/b"),
                                        ("PUT", "/sda/2/AUTH_t/c/a")]
            # the host is remembered: no second PATCH attempt
            assert await batcher.send(target, "AUTH_t", "c", _row("c", ts()), 5.0)
            assert seen[-1] == ("PUT", "/sda/2/AUTH_t/c/c")
            assert [m for m, _ in seen].count(BATCH_METHOD) == 1
        finally:
            await client.close()
    finally:
        await runner.cleanup()


async def test_container_down_queues_async_pending_that_the_updater_replays(tmp_path, ts,
                                                                           monkeypatch):
    container, objects = await _nodes(tmp_path)
    # the ring below only gives the updater its local device: keep the records' targets
    # (following the ring to the current primaries is tested in test_db_reclaim.py)
    monkeypatch.setattr("swiftlike.daemons.updater.current_targets",
                        lambda ring, server_type, account, container, targets: targets)
    update = {"X-Container-Host": f"127.0.0.1:{container.port}",
              "X-Container-Partition": "2", "X-Container-Device": "sda"}
    try:
        async with aiohttp.ClientSession() as session:
            await _make_container(session, container, ts)

            async def put(name: str, body: bytes) -> None:
                async with session.put(objects.url(f"/sdb/4/AUTH_t/c/{name}"), data=body,
                                       headers={"X-Timestamp": ts(), "Content-Type": "a/b",
                                                **update}) as resp:
                    assert resp.status == 201

            await asyncio.gather(*(put(f"up{i}", b"x" * i) for i in range(1, 6)))
            assert len((await _listing(session, container))[1]) == 5
            await container.stop()  # the container server goes away
            await asyncio.gather(*(put(f"down{i}", b"y" * i) for i in range(1, 9)))
            async with session.delete(objects.url("/sdb/4/AUTH_t/c/up1"),
                                      headers={"X-Timestamp": ts(), **update}) as resp:
                assert resp.status == 204
            pending = glob.glob(os.path.join(objects.devices, "sdb", "async_pending", "*",
                                             "*"))
            assert len(pending) == 9  # one durable record per row that did not get through
            records = []
            for path in pending:
                with open(path, "rb") as handle:  # noqa: ASYNC230 - a tiny local file
                    records.append(msgpack.unpackb(handle.read()))
            assert sorted(r["obj"] for r in records) == sorted(
                [f"down{i}" for i in range(1, 9)] + ["up1"])
            assert all(r["targets"][0]["host"] == update["X-Container-Host"]
                       for r in records)
            await container.start()  # back on the same port with the same disk
            builder = RingBuilder(part_power=2, replicas=1, min_part_hours=0)
            builder.add_dev({"region": 1, "zone": 1, "ip": "127.0.0.1",
                             "port": objects.port, "device": "sdb", "weight": 1.0})
            builder.rebalance()
            builder.save_ring(str(tmp_path / "cluster.ring"))
            ctx = DaemonContext({
                "cluster": {**objects.conf["cluster"], "ring": str(tmp_path / "cluster.ring")},
                "node": {**objects.conf["node"], "bind_ip": "127.0.0.1",
                         "bind_port": objects.port}})
            try:
                result = await ObjectUpdater(ctx, {"update_timeout": 5}).run_once()
            finally:
                await ctx.close()
            assert result["sdb"]["counts"]["successes"] == 9
            assert glob.glob(os.path.join(objects.devices, "sdb", "async_pending", "*",
                                          "*")) == []
            headers, listed = await _listing(session, container)
            assert sorted(r["name"] for r in listed) == sorted(
                [f"down{i}" for i in range(1, 9)] + [f"up{i}" for i in range(2, 6)])
            assert {r["name"]: r["bytes"] for r in listed}["down8"] == 8
            assert headers["X-Container-Object-Count"] == "12"
            assert objects.app is not None
            batcher = objects.app[SERVERS_KEY]["object"].updates
            assert batcher.rows_sent >= 14
    finally:
        await objects.stop()
        await container.stop()


async def test_only_the_failed_container_replica_is_queued(tmp_path, ts):
    container, objects = await _nodes(tmp_path)
    dead = f"127.0.0.1:{free_port()}"
    update = {"X-Container-Host": f"127.0.0.1:{container.port},{dead}",
              "X-Container-Partition": "2", "X-Container-Device": "sda,sdb"}
    try:
        async with aiohttp.ClientSession() as session:
            await _make_container(session, container, ts)
            async with session.put(objects.url("/sdb/4/AUTH_t/c/two"), data=b"abc",
                                   headers={"X-Timestamp": ts(), **update}) as resp:
                assert resp.status == 201
            listed = (await _listing(session, container))[1]
            assert [(r["name"], r["bytes"]) for r in listed] == [("two", 3)]
            pending = glob.glob(os.path.join(objects.devices, "sdb", "async_pending", "*",
                                             "*"))
            assert len(pending) == 1
            with open(pending[0], "rb") as handle:  # noqa: ASYNC230 - a tiny local file
                record = msgpack.unpackb(handle.read())
            assert record["targets"] == [{"host": dead, "partition": "2", "device": "sdb"}]
            assert record["op"] == "PUT" and record["headers"]["X-Size"] == "3"
    finally:
        await objects.stop()
        await container.stop()


async def test_an_update_with_an_unsafe_header_fails_like_any_other_and_is_not_sent():
    """CR/LF in a header would forge another header on the wire: the client refuses it,
    and the update counts as failed (so the caller queues it) instead of crashing."""
    from swiftlike.storage.updates import send_one_update

    client = NodeClient()
    try:
        target = UpdateTarget(f"127.0.0.1:{free_port()}", "2", "sda")  # nothing listens
        ok = await send_one_update(client, target, "PUT", "/sda/2/AUTH_t/c/o",
                                   {"X-Etag": "abc\r\nX-Forged: 1"}, timeout_s=2.0)
        assert ok is False
    finally:
        await client.close()
