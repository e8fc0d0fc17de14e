"""The account reaper on a whole `swiftlike serve` cluster: a reseller deletes an account,
the reaper empties it on every node, the database replicator then removes its databases,
and the name can be used again; other accounts are untouched throughout.

Clients are python-swiftclient (as the account's user and as the reseller admin) and raw
aiohttp requests straight to the storage nodes for what a client cannot see.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import swiftclient

from ring import Ring
from swiftlike.common.config import hash_salts, load_config
from swiftlike.common.node_client import node_path
from swiftlike.common.timestamp import Timestamp
from swiftlike.daemons.base import DaemonContext
from swiftlike.daemons.db_replicator import DatabaseReplicator, list_databases
from swiftlike.daemons.reaper import AccountReaper
from tests.cluster_harness import ServedCluster, start_served_cluster
from tests.daemons.mini_cluster import MiniCluster
from tests.daemons.test_db_reclaim import ACCOUNT, CONTAINER, _url, make_account_and_container

DOOMED, KEPT = "AUTH_test2", "AUTH_test"


@pytest.fixture
def served(tmp_path: Path):
    cluster = start_served_cluster(tmp_path / "data", nodes=4, workers=1,
                                   extra_args=["--no-daemons"])
    try:
        yield cluster
    finally:
        cluster.stop()


def connect(cluster: ServedCluster, user: str, key: str) -> swiftclient.Connection:
    return swiftclient.Connection(cluster.auth_url, user, key, retries=0)


def node_configs(cluster: ServedCluster) -> list[dict]:
    run = cluster.data_dir / "run"
    return [load_config(path) for path in sorted(run.glob("*.toml"))
            if path.name != "proxy.toml"]


def ring_of(conf: dict) -> Ring:
    prefix, suffix = hash_salts(conf)
    return Ring(conf["cluster"]["ring"], hash_prefix=prefix, hash_suffix=suffix)


async def run_everywhere(configs: list[dict], make) -> list[dict]:  # type: ignore[no-untyped-def]
    results = []
    for conf in configs:
        ctx = DaemonContext(conf)
        try:
            results.append(await make(ctx).run_once())
        finally:
            await ctx.close()
    return results


async def statuses(ring: Ring, method: str, *names: str) -> list[int]:
    """What each primary answers to ``method`` on an account, container or object."""
    part, nodes = ring.get_nodes(*names)
    kind = ("account", "container", "object")[len(names) - 1]
    out = []
    async with aiohttp.ClientSession() as session:
        for node in nodes:
            url = f"http://{node['ip']}:{node['port']}" + node_path(node, part, *names)
            async with session.request(method, url,
                                       headers={"X-Backend-Server-Type": kind}) as resp:
                out.append(resp.status)
    return out


def account_dbs(configs: list[dict]) -> list[str]:
    found = []
    for conf in configs:
        devices = conf["node"]["devices"]
        for device in os.listdir(devices):
            found += [path for _, _, path in
                      list_databases(os.path.join(devices, device), "accounts")]
    return found


def fill_accounts(cluster: ServedCluster) -> dict[str, list[str]]:
    """Containers and objects in both accounts; the doomed one also keeps old versions
    (a hidden versions container) and a name that needs quoting."""
    doomed = connect(cluster, "test2:tester2", "testing2")
    made: dict[str, list[str]] = {}
    for container in ("photos", "logs", "empty"):
        doomed.put_container(container)
    for i in range(12):
        name = f"photos/ä {i}/x" if i % 3 == 0 else f"img-{i}"
        doomed.put_object("photos", name, f"photo {i}".encode())
        made.setdefault("photos", []).append(name)
    doomed.put_object("logs", "zero", b"")
    made["logs"] = ["zero"]
    doomed.put_container("history", headers={"X-Versions-Enabled": "true"})
    for body in (b"v1", b"v2", b"v3"):
        doomed.put_object("history", "doc", body)
    made["history"] = ["doc"]
    kept = connect(cluster, "test:tester", "testing")
    kept.put_container("keep")
    kept.put_object("keep", "precious", b"still here")
    return made


async def test_a_deleted_account_is_reaped_and_its_databases_removed(served):
    made = await asyncio.to_thread(fill_accounts, served)
    admin = connect(served, "admin:admin", "admin")
    admin_url = admin.get_auth()[0]
    doomed_url = admin_url.replace("AUTH_admin", DOOMED)
    configs = node_configs(served)
    ring = ring_of(configs[0])
    token = admin.get_auth()[1]
    async with aiohttp.ClientSession() as session:
        async with session.delete(doomed_url, headers={"X-Auth-Token": token}) as resp:
            assert resp.status == 204, await resp.text()
        # as Swift: the deleted account answers 410, and cannot be made again yet
        async with session.head(doomed_url, headers={"X-Auth-Token": token}) as resp:
            assert resp.status == 410
        async with session.put(doomed_url, headers={"X-Auth-Token": token}) as resp:
            assert resp.status == 403, await resp.text()
        async with session.head(doomed_url, headers={"X-Auth-Token": token}) as resp:
            assert resp.status == 410
        # nor by its own users' first container PUT (as Swift: the account's autocreate
        # is refused, 503)
        user_url, user_token = connect(served, "test2:tester2", "testing2").get_auth()
        async with session.put(user_url + "/new-box",
                               headers={"X-Auth-Token": user_token}) as resp:
            assert resp.status == 503
        async with session.get(user_url, headers={"X-Auth-Token": user_token}) as resp:
            assert resp.status == 410 and resp.headers["X-Account-Status"] == "Deleted"
        # and nothing in it is there for the API any more (as Swift: the account is
        # checked before the container), so no write lands where the reaper works
        async with session.put(user_url + "/photos/late", data=b"x",
                               headers={"X-Auth-Token": user_token}) as resp:
            assert resp.status == 404
        for method in ("GET", "HEAD", "POST"):
            async with session.request(method, user_url + "/photos",
                                       headers={"X-Auth-Token": user_token}) as resp:
                assert resp.status == 404, method
        async with session.post(user_url, headers={"X-Auth-Token": user_token,
                                                   "X-Account-Meta-Color": "red"}) as resp:
            assert resp.status == 404

    # a pass that must wait (delay_reaping) leaves everything in place
    waited = await run_everywhere(
        configs, lambda ctx: AccountReaper(ctx, {"delay_reaping": 3600}))
    assert not any(dev["counts"].get("objects_deleted") for r in waited for dev in r.values())
    assert 200 in await statuses(ring, "HEAD", DOOMED, "photos", made["photos"][0])

    reaped = await run_everywhere(configs, AccountReaper)
    counts: dict[str, int] = {}
    for result in reaped:
        for dev in result.values():
            assert not dev["counts"].get("errors"), dev
            for key, value in dev["counts"].items():
                counts[key] = counts.get(key, 0) + value
    # photos, logs, empty, history and history's hidden versions container
    assert counts.get("containers_deleted", 0) == 5, counts
    assert counts.get("objects_deleted", 0) >= 12 + 1 + 1, counts
    assert not counts.get("containers_remaining"), counts

    for container, names in made.items():
        for name in names:
            assert 200 not in await statuses(ring, "HEAD", DOOMED, container, name), name
        assert 204 not in await statuses(ring, "HEAD", DOOMED, container), container
    # the other account kept everything
    kept = connect(served, "test:tester", "testing")
    assert (await asyncio.to_thread(kept.get_object, "keep", "precious"))[1] == b"still here"

    # the account is empty now: the replicator removes its databases (reclaim_age 0)
    before = account_dbs(configs)
    await run_everywhere(configs, lambda ctx: DatabaseReplicator(ctx, {"reclaim_age": 0}))
    left = account_dbs(configs)
    assert len(left) < len(before)
    kept_part = ring.get_part(KEPT)
    doomed_part = ring.get_part(DOOMED)
    assert all(f"/{doomed_part}/" not in path for path in left) or doomed_part == kept_part
    # ... after which the name is free again, for a new and empty account
    async with aiohttp.ClientSession() as session:
        async with session.put(doomed_url, headers={"X-Auth-Token": token}) as resp:
            assert resp.status == 201, await resp.text()
        async with session.get(doomed_url + "?format=json",
                               headers={"X-Auth-Token": token}) as resp:
            assert resp.status == 200 and await resp.json() == []


def test_the_reap_command_runs_one_pass(served):
    run = served.data_dir / "run"
    conf = next(path for path in sorted(run.glob("*.toml")) if path.name != "proxy.toml")
    done = subprocess.run([sys.executable, "-m", "swiftlike", "reap", "--once", "--config",
                           str(conf)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def mini(full_cluster):
    return full_cluster


async def put_object(mini: MiniCluster, session: aiohttp.ClientSession, name: str) -> None:
    part, nodes = mini.ring.get_nodes(ACCOUNT, CONTAINER, name)
    cpart, cnodes = mini.ring.get_nodes(ACCOUNT, CONTAINER)
    stamp = Timestamp.now().internal
    for index, dev in enumerate(nodes):
        cnode = cnodes[index % len(cnodes)]
        async with session.put(_url(dev, part, ACCOUNT, CONTAINER, name), data=b"body",
                               headers={"X-Timestamp": stamp, "Content-Type": "text/plain",
                                        "X-Container-Host": f"127.0.0.1:{cnode['port']}",
                                        "X-Container-Partition": str(cpart),
                                        "X-Container-Device": cnode["device"]}) as resp:
            assert resp.status == 201, await resp.text()


async def reap_all(mini: MiniCluster) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in mini.nodes:
        if node.runner is None:
            continue  # stopped: its daemons stop with it
        ctx = mini.context(node)
        try:
            result = await AccountReaper(ctx).run_once()
        finally:
            await ctx.close()
        for key, value in result[node.device]["counts"].items():
            counts[key] = counts.get(key, 0) + value
    return counts


async def test_what_a_down_node_holds_is_reaped_on_a_later_pass(mini):
    async with aiohttp.ClientSession() as session:
        await make_account_and_container(mini, session, Timestamp.now().internal)
        names = [f"o{i}" for i in range(8)]
        for name in names:
            await put_object(mini, session, name)
        await delete_account(mini, session)
        # one object node is down for the first pass (not the container's only
        # primaries: one of the account's, so its share of containers waits as well)
        down = mini.node_of(mini.ring.get_nodes(ACCOUNT, CONTAINER, names[0])[1][0])
        await down.stop()
        first = await reap_all(mini)
        # its listing or its deletes could not be had: the container waits
        assert first.get("containers_remaining") and not first.get("containers_deleted"), \
            first
        await down.start()
        second = await reap_all(mini)
        assert second.get("containers_deleted") == 1, second
        assert not second.get("containers_remaining") and not second.get("errors"), second
        for name in names:
            assert set(await object_statuses(mini, session, name)) == {404}, name


async def delete_account(mini: MiniCluster, session: aiohttp.ClientSession) -> None:
    apart, anodes = mini.ring.get_nodes(ACCOUNT)
    gone = Timestamp.now().internal
    for dev in anodes:
        async with session.delete(_url(dev, apart, ACCOUNT),
                                  headers={"X-Timestamp": gone}) as resp:
            assert resp.status == 204


async def object_statuses(mini: MiniCluster, session: aiohttp.ClientSession, name: str
                          ) -> list[int]:
    part, nodes = mini.ring.get_nodes(ACCOUNT, CONTAINER, name)
    out = []
    for dev in nodes:
        async with session.head(_url(dev, part, ACCOUNT, CONTAINER, name),
                                headers={"X-Backend-Server-Type": "object"}) as resp:
            out.append(resp.status)
    return out


async def test_rows_only_a_lagging_container_replica_holds_are_reaped_too(mini):
    """Objects whose container updates all went to one container replica (the others
    missed them): listed from every replica, deleted, and the container is not called
    deleted while a replica still answers 409."""
    async with aiohttp.ClientSession() as session:
        await make_account_and_container(mini, session, Timestamp.now().internal)
        cpart, cnodes = mini.ring.get_nodes(ACCOUNT, CONTAINER)
        lagging = [f"lag-{i}" for i in range(5)]
        for name in lagging:
            part, nodes = mini.ring.get_nodes(ACCOUNT, CONTAINER, name)
            stamp = Timestamp.now().internal
            for dev in nodes:
                async with session.put(
                        _url(dev, part, ACCOUNT, CONTAINER, name), data=b"secret",
                        headers={"X-Timestamp": stamp, "Content-Type": "text/plain",
                                 "X-Container-Host": f"127.0.0.1:{cnodes[2]['port']}",
                                 "X-Container-Partition": str(cpart),
                                 "X-Container-Device": cnodes[2]["device"]}) as resp:
                    assert resp.status == 201
        await delete_account(mini, session)
        counts = await reap_all(mini)
        assert counts.get("containers_deleted") == 1, counts
        for name in lagging:
            assert 200 not in await object_statuses(mini, session, name), name


async def test_rows_that_reach_a_deleted_container_bring_the_reaper_back(mini):
    """A row that reaches a container replica after the reaper deleted the container
    (an update that was in flight): the container reports a count, the account keeps it
    listed (deleted only when empty, as Swift's), and the next pass lists the deleted
    database and deletes the object."""
    async with aiohttp.ClientSession() as session:
        await make_account_and_container(mini, session, Timestamp.now().internal)
        await delete_account(mini, session)
        assert (await reap_all(mini)).get("containers_deleted") == 1
        name = "late"
        await put_object(mini, session, name)  # rows reach the deleted databases
        apart, anodes = mini.ring.get_nodes(ACCOUNT)
        report = {"X-Backend-Server-Type": "account", "X-Timestamp": Timestamp.now().internal,
                  "X-Put-Timestamp": Timestamp(1).internal,
                  "X-Delete-Timestamp": Timestamp.now().internal,
                  "X-Object-Count": "1", "X-Bytes-Used": "4"}
        for dev in anodes:  # what each container replica reports once it has the row
            async with session.put(_url(dev, apart, ACCOUNT, CONTAINER),
                                   headers=report) as resp:
                assert resp.status == 204
        assert 200 in await object_statuses(mini, session, name)
        again = await reap_all(mini)
        assert again.get("objects_deleted") == 1 and again.get("containers_deleted") == 1, \
            again
        assert 200 not in await object_statuses(mini, session, name)


async def test_a_report_a_deleted_account_refuses_does_not_wait_in_async_pending(mini):
    """Otherwise it outlives the account's database, and a re-created account would
    list the old container again."""
    from swiftlike.daemons.updater import ObjectUpdater
    from swiftlike.storage.updates import UpdateTarget, pending_record, write_async_pending

    async with aiohttp.ClientSession() as session:
        await make_account_and_container(mini, session, Timestamp.now().internal)
        await delete_account(mini, session)
    apart, anodes = mini.ring.get_nodes(ACCOUNT)
    node = mini.nodes[0]
    headers = {"X-Put-Timestamp": Timestamp.now().internal, "X-Delete-Timestamp": "0",
               "X-Object-Count": "3", "X-Bytes-Used": "9", "X-Backend-Server-Type": "account"}
    record = pending_record("PUT", ACCOUNT, CONTAINER, None, "account", headers,
                            UpdateTarget.of_nodes(apart, anodes))
    path = write_async_pending(node.device_path, record, headers["X-Put-Timestamp"],
                               b"pre", b"suf", False)
    ctx = mini.context(node)
    try:
        result = await ObjectUpdater(ctx).run_once()
    finally:
        await ctx.close()
    assert not await asyncio.to_thread(os.path.exists, path), result


async def test_a_refused_put_does_not_revive_a_deleted_account_anywhere(served):
    """A replica that lacked the deleted account's database makes a new one for the
    reseller's PUT the others refuse; left alone, replication would spread its newer
    put timestamp and bring the account back."""
    admin = connect(served, "admin:admin", "admin")
    admin_url, token = admin.get_auth()
    url = admin_url.replace("AUTH_admin", "AUTH_revive")
    configs = node_configs(served)
    ring = ring_of(configs[0])
    async with aiohttp.ClientSession() as session:
        for method, expected in (("PUT", 201), ("DELETE", 204)):
            async with session.request(method, url, headers={"X-Auth-Token": token}) as resp:
                assert resp.status == expected, await resp.text()
        lost = next(p for p in account_dbs(configs) if open_info(p) == "AUTH_revive")
        await asyncio.to_thread(shutil.rmtree, os.path.dirname(lost))
        async with session.put(url, headers={"X-Auth-Token": token}) as resp:
            assert resp.status == 403, await resp.text()
    assert 204 not in await statuses(ring, "HEAD", "AUTH_revive")
    await run_everywhere(configs, DatabaseReplicator)
    assert set(await statuses(ring, "HEAD", "AUTH_revive")) == {404}
    async with aiohttp.ClientSession() as session, session.head(
            url, headers={"X-Auth-Token": token}) as resp:
        assert resp.status == 410


def open_info(path: str) -> str:
    """The account name in a database's stat row."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("SELECT account FROM account_stat").fetchone()[0])
    finally:
        conn.close()
