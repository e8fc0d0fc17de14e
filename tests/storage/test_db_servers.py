"""Container and account servers, and the updates that flow between node servers."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import xml.etree.ElementTree as ET

import msgpack

from tests.cluster_harness import free_port

ACCOUNT = "/sda/1/AUTH_t"
CONTAINER = "/sda/2/AUTH_t/photos"


def account_headers(node) -> dict[str, str]:
    return {"X-Account-Host": f"127.0.0.1:{node.port}", "X-Account-Partition": "1",
            "X-Account-Device": "sda"}


async def make_container(node, ts, path: str = CONTAINER, **headers) -> int:
    async with node.session.put(node.url(path), headers={
            "X-Timestamp": ts(), **account_headers(node), **headers}) as resp:
        return resp.status


async def put_row(node, ts, name: str, size: int = 10, etag: str = "e" * 32,
                  path: str = CONTAINER) -> int:
    async with node.session.put(node.url(f"{path}/{name}"), headers={
            "X-Backend-Server-Type": "container", "X-Timestamp": ts(), "X-Size": str(size),
            "X-Content-Type": "text/plain", "X-Etag": etag}) as resp:
        return resp.status


async def listing(node, target: str = CONTAINER, **query) -> tuple[int, object]:
    async with node.session.get(node.url(target), params={"format": "json", **query}) as resp:
        if resp.status != 200:
            return resp.status, None
        return resp.status, await resp.json()


async def test_container_lifecycle_and_metadata(node, ts):
    assert await make_container(node, ts, **{"X-Container-Meta-Owner": "me",
                                             "X-Container-Read": ".r:*"}) == 201
    assert await make_container(node, ts) == 202
    async with node.session.head(node.url(CONTAINER)) as resp:
        assert resp.status == 204
        assert resp.headers["X-Container-Meta-Owner"] == "me"
        assert resp.headers["X-Container-Read"] == ".r:*"
        assert resp.headers["X-Container-Object-Count"] == "0"
    async with node.session.post(node.url(CONTAINER), headers={
            "X-Timestamp": ts(), "X-Container-Meta-Owner": ""}) as resp:
        assert resp.status == 204
    async with node.session.head(node.url(CONTAINER)) as resp:
        assert "X-Container-Meta-Owner" not in resp.headers
    assert await put_row(node, ts, "a") == 201
    async with node.session.delete(node.url(CONTAINER), headers={"X-Timestamp": ts()}) as resp:
        assert resp.status == 409
    async with node.session.delete(node.url(f"{CONTAINER}/a"), headers={
            "X-Backend-Server-Type": "container", "X-Timestamp": ts()}) as resp:
        assert resp.status == 204
    async with node.session.delete(node.url(CONTAINER), headers={"X-Timestamp": ts()}) as resp:
        assert resp.status == 204
    async with node.session.get(node.url(CONTAINER)) as resp:
        assert resp.status == 404
    async with node.session.delete(node.url(CONTAINER), headers={"X-Timestamp": ts()}) as resp:
        assert resp.status == 404
    assert glob.glob(os.path.join(node.devices, "sda", "containers", "2", "*", "*", "*.db"))
    assert await make_container(node, ts) == 201  # recreated after the delete


async def test_rows_merge_by_timestamp_and_counts(node, ts):
    await make_container(node, ts)
    older = ts()
    assert await put_row(node, ts, "obj", size=100) == 201
    async with node.session.put(node.url(f"{CONTAINER}/obj"), headers={
            "X-Backend-Server-Type": "container", "X-Timestamp": older, "X-Size": "5",
            "X-Content-Type": "x/y", "X-Etag": "f" * 32}) as resp:
        assert resp.status == 201  # accepted but older: ignored
    await put_row(node, ts, "other", size=1)
    _, rows = await listing(node)
    assert [(r["name"], r["bytes"]) for r in rows] == [("obj", 100), ("other", 1)]
    async with node.session.head(node.url(CONTAINER)) as resp:
        assert resp.headers["X-Container-Object-Count"] == "2"
        assert resp.headers["X-Container-Bytes-Used"] == "101"
    assert await put_row(node, ts, "missing", path="/sda/2/AUTH_t/nope") == 404


async def test_listing_parameters_and_formats(node, ts):
    await make_container(node, ts)
    names = ["a", "a/b", "a/c", "b", "b/x/y", "c"]
    for name in names:
        await put_row(node, ts, name)
    assert [r["name"] for r in (await listing(node))[1]] == names
    assert (await listing(node, prefix="a/"))[1][0]["name"] == "a/b"
    delimited = (await listing(node, delimiter="/"))[1]
    assert [r.get("name") or r.get("subdir") for r in delimited] == ["a", "a/", "b", "b/", "c"]
    assert [r["name"] for r in (await listing(node, marker="a/b", end_marker="c"))[1]] == [
        "a/c", "b", "b/x/y"]
    assert [r["name"] for r in (await listing(node, reverse="true", limit="2"))[1]] == [
        "c", "b/x/y"]
    assert (await listing(node, limit="10001"))[0] == 412
    # a limit that is not a number is ignored, as Swift does
    assert [r["name"] for r in (await listing(node, limit="-1"))[1]] == names
    # several characters make a delimiter too; path= lists one pseudo-directory
    assert [r.get("name") or r.get("subdir")
            for r in (await listing(node, delimiter="/x"))[1]] == [*names[:-2], "b/x", "c"]
    assert [r["name"] for r in (await listing(node, path="a"))[1]] == ["a/b", "a/c"]
    assert (await listing(node, path="b/"))[1] == []  # nothing directly in b/
    row = (await listing(node, prefix="c"))[1][0]
    assert set(row) == {"name", "hash", "bytes", "content_type", "last_modified"}
    assert len(row["last_modified"]) == len("2024-01-02T03:04:05.123450")
    async with node.session.get(node.url(CONTAINER)) as resp:
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert await resp.text() == "".join(n + "\n" for n in names)
    async with node.session.get(node.url(CONTAINER), params={"prefix": "zzz"}) as resp:
        assert resp.status == 204
    async with node.session.get(node.url(CONTAINER), params={"prefix": "zzz",
                                                            "format": "json"}) as resp:
        assert resp.status == 200 and await resp.json() == []
    async with node.session.get(node.url(CONTAINER), params={"delimiter": "/"},
                                headers={"Accept": "application/xml"}) as resp:
        assert resp.headers["Content-Type"].startswith("application/xml")
        root = ET.fromstring(await resp.read())
    assert root.tag == "container" and root.attrib["name"] == "photos"
    assert [child.tag for child in root] == ["object", "subdir", "object", "subdir", "object"]
    assert root[1].attrib["name"] == "a/" and root[0].find("bytes").text == "10"
    await put_row(node, ts, "b/")  # a directory marker: listed at its own level only
    assert [r["name"] for r in (await listing(node, path=""))[1]] == ["a", "b", "b/", "c"]
    assert (await listing(node, path="b"))[1] == []


async def test_account_stats_and_listing_follow_containers(node, ts):
    async with node.session.put(node.url(ACCOUNT), headers={
            "X-Timestamp": ts(), "X-Account-Meta-Quota": "big"}) as resp:
        assert resp.status == 201
    for name in ("c1", "c2"):
        assert await make_container(node, ts, path=f"/sda/2/AUTH_t/{name}") == 201
    await put_row(node, ts, "o1", size=7, path="/sda/2/AUTH_t/c1")
    await put_row(node, ts, "o2", size=5, path="/sda/2/AUTH_t/c1")
    for _ in range(50):  # the batched account report fires after account_update_interval
        async with node.session.head(node.url(ACCOUNT)) as resp:
            if resp.headers["X-Account-Object-Count"] == "2":
                break
        await asyncio.sleep(0.1)
    assert resp.headers["X-Account-Container-Count"] == "2"
    assert resp.headers["X-Account-Bytes-Used"] == "12"
    assert resp.headers["X-Account-Meta-Quota"] == "big"
    _, rows = await listing(node, ACCOUNT)
    assert [(r["name"], r["count"], r["bytes"]) for r in rows] == [("c1", 2, 12), ("c2", 0, 0)]
    assert set(rows[0]) == {"name", "count", "bytes", "last_modified", "storage_policy"}
    async with node.session.get(node.url(ACCOUNT), params={"format": "xml"}) as resp:
        root = ET.fromstring(await resp.read())
        assert root.tag == "account" and root[0].find("name").text == "c1"
    async with node.session.delete(node.url("/sda/2/AUTH_t/c2"),
                                   headers={"X-Timestamp": ts(), **account_headers(node)}) as r:
        assert r.status == 204
    _, rows = await listing(node, ACCOUNT)
    assert [r["name"] for r in rows] == ["c1"]
    async with node.session.delete(node.url(ACCOUNT), headers={"X-Timestamp": ts()}) as resp:
        assert resp.status == 204
    async with node.session.head(node.url(ACCOUNT)) as resp:
        assert resp.status == 404


def load_record(path: str) -> dict:
    with open(path, "rb") as handle:
        return msgpack.unpackb(handle.read())


async def test_object_put_updates_container_or_queues_async_pending(node_factory, ts):
    container_node = await node_factory("containers")
    object_node = await node_factory("objects")
    await make_container(container_node, ts, path="/sda/2/AUTH_t/c")
    update = {"X-Container-Host": f"127.0.0.1:{container_node.port}",
              "X-Container-Partition": "2", "X-Container-Device": "sda"}
    async with object_node.session.put(object_node.url("/sda/4/AUTH_t/c/o1"), data=b"12345",
                                       headers={"X-Timestamp": ts(), "Content-Type": "a/b",
                                                **update}) as resp:
        assert resp.status == 201
    rows = (await listing(container_node, "/sda/2/AUTH_t/c"))[1]
    assert [(r["name"], r["bytes"], r["content_type"]) for r in rows] == [("o1", 5, "a/b")]
    down = {"X-Container-Host": f"127.0.0.1:{free_port()}", "X-Container-Partition": "2",
            "X-Container-Device": "sda"}
    async with object_node.session.put(object_node.url("/sda/4/AUTH_t/c/o2"), data=b"x",
                                       headers={"X-Timestamp": ts(), "Content-Type": "a/b",
                                                **down}) as resp:
        assert resp.status == 201
    pending = glob.glob(os.path.join(object_node.devices, "sda", "async_pending", "*", "*"))
    assert len(pending) == 1
    record = load_record(pending[0])
    assert record["op"] == "PUT" and record["obj"] == "o2" and record["container"] == "c"
    assert record["headers"]["X-Size"] == "1"
    assert record["targets"][0]["host"] == down["X-Container-Host"]
    async with object_node.session.delete(object_node.url("/sda/4/AUTH_t/c/o1"),
                                          headers={"X-Timestamp": ts(), **update}) as resp:
        assert resp.status == 204
    assert (await listing(container_node, "/sda/2/AUTH_t/c"))[1] == []
    json.dumps(record)  # the record is plain data the updater can re-send
