# ruff: noqa: ASYNC221, ASYNC230, ASYNC240
"""Fault drills: damage a real 6-node cluster, let the daemons heal it, prove nothing is lost.

Each drill writes a known set of objects through the proxy, does its damage, runs daemon
passes (updater + replicator on every node) and then checks every object's bytes through
the proxy, the 3 primaries' files on disk (same newest timestamp, no handoff copies) and
the container listing.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import sqlite3
import subprocess
import time

import aiohttp
import pytest

from swiftlike.common.timestamp import Timestamp
from tests.drills.drill_cluster import ACCOUNT, DrillCluster, build_drill_cluster

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
async def cluster(tmp_path):
    drill = build_drill_cluster(str(tmp_path))
    for node in drill.nodes:
        node.start()
    drill.start_proxy()
    try:
        await drill.wait_ready()
        yield drill
    finally:
        drill.stop()


async def put_objects(cluster: DrillCluster, container: str, objects: dict[str, bytes],
                      concurrency: int = 8) -> dict[str, int]:
    """PUT through the proxy; returns status per name (bounded concurrency)."""
    statuses: dict[str, int] = {}
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:
        token, url = await cluster.token(session)
        async with session.put(f"{url}/{container}", headers={"X-Auth-Token": token}) as resp:
            assert resp.status in (201, 202), resp.status

        async def put(name: str, body: bytes) -> None:
            async with sem, session.put(f"{url}/{container}/{name}", data=body,
                                        headers={"X-Auth-Token": token}) as resp:
                statuses[name] = resp.status

        await asyncio.gather(*(put(n, b) for n, b in objects.items()))
    return statuses


async def delete_objects(cluster: DrillCluster, container: str, names: list[str]) -> None:
    async with aiohttp.ClientSession() as session:
        token, url = await cluster.token(session)
        for name in names:
            async with session.delete(f"{url}/{container}/{name}",
                                      headers={"X-Auth-Token": token}) as resp:
                assert resp.status in (204, 404), resp.status


def payloads(prefix: str, count: int, size: int = 2048) -> dict[str, bytes]:
    rng = random.Random(prefix)
    return {f"{prefix}-{i:04d}": rng.randbytes(size) for i in range(count)}


async def heal_and_verify(cluster: DrillCluster, container: str,
                          expected: dict[str, bytes | None], rounds: int = 4) -> None:
    problems: list[str] = []
    for _ in range(rounds):
        await cluster.heal(rounds=1)
        problems = await cluster.verify(container, expected)
        if not problems:
            return
    raise AssertionError("cluster did not heal:\n" + "\n".join(problems[:20]))


async def test_drill1_killed_node_gets_its_data_back_from_handoffs(cluster):
    first = payloads("before", 30)
    assert set((await put_objects(cluster, "d1", first)).values()) == {201}
    victim = cluster.nodes[2]
    victim.kill()
    during = payloads("during", 60)
    statuses = await put_objects(cluster, "d1", during)
    assert set(statuses.values()) == {201}, statuses  # handoffs took the victim's share
    handoff_copies = sum(
        1 for name in during
        if set(cluster.object_holders("d1", name)) - cluster.primary_names("d1", name))
    assert handoff_copies > 0, "no write went to a handoff: the drill proves nothing"
    victim.start()
    await cluster.wait_ready()
    await heal_and_verify(cluster, "d1", {**first, **during})


async def test_drill2_corrupted_files_are_never_served_and_are_restored(cluster):
    objects = payloads("corrupt", 40, size=4096)
    assert set((await put_objects(cluster, "d2", objects)).values()) == {201}
    rng = random.Random(2)
    damaged = 0
    for name in sorted(objects)[:20]:
        node = cluster.node_of(rng.choice(cluster.ring.get_nodes("AUTH_test", "d2", name)[1]))
        holders = cluster.object_holders("d2", name)
        part = cluster.ring.get_part("AUTH_test", "d2", name)
        root = os.path.join(node.device_path, "objects", str(part))
        for dirpath, _, files in os.walk(root):
            if holders.get(node.name) in files:
                path = os.path.join(dirpath, holders[node.name])
                if damaged % 2:
                    os.truncate(path, 100)
                else:
                    with open(path, "r+b") as handle:
                        handle.seek(10)
                        handle.write(b"\xff\x00\xff")
                damaged += 1
    assert damaged == 20
    # GETs never return bad bytes, whichever replica answers
    async with aiohttp.ClientSession() as session:
        token, url = await cluster.token(session)
        for name in sorted(objects)[:20]:
            for _ in range(3):
                try:
                    async with session.get(f"{url}/d2/{name}",
                                           headers={"X-Auth-Token": token}) as resp:
                        data = await resp.read()
                        if resp.status == 200:
                            assert data == objects[name], name
                except aiohttp.ClientPayloadError:
                    pass  # a cut-short body is the honest answer to a bad replica
    await cluster.daemon_pass("audit")
    quarantined = sum(len(os.listdir(os.path.join(n.device_path, "quarantined", "objects")))
                      for n in cluster.nodes
                      if os.path.isdir(os.path.join(n.device_path, "quarantined", "objects")))
    assert quarantined >= 1
    await heal_and_verify(cluster, "d2", objects)


async def test_drill3_wiped_device_is_rebuilt(cluster):
    objects = payloads("wipe", 80)
    assert set((await put_objects(cluster, "d3", objects)).values()) == {201}
    victim = cluster.nodes[4]
    shutil.rmtree(victim.device_path)
    os.makedirs(victim.device_path)
    await heal_and_verify(cluster, "d3", objects)


async def test_drill5_cut_off_node_keeps_deletes_and_gets_new_writes(cluster):
    old = payloads("old", 40)
    assert set((await put_objects(cluster, "d5", old)).values()) == {201}
    victim = cluster.nodes[1]
    victim.kill()  # its listener is gone: no one can reach it
    deleted = sorted(old)[:15]
    await delete_objects(cluster, "d5", deleted)
    new = payloads("new", 30)
    assert set((await put_objects(cluster, "d5", new)).values()) == {201}
    victim.start()
    await cluster.wait_ready()
    expected: dict[str, bytes | None] = {**old, **new}
    for name in deleted:
        expected[name] = None
    await heal_and_verify(cluster, "d5", expected)


async def test_drill6_concurrent_overwrites_and_deletes_converge(cluster):
    names = [f"race-{i:02d}" for i in range(15)]
    await put_objects(cluster, "d6", {n: b"v0" for n in names})
    async with aiohttp.ClientSession() as session:
        token, url = await cluster.token(session)

        async def client(seed: int) -> None:
            rng = random.Random(seed)
            for step in range(40):
                name = rng.choice(names)
                if rng.random() < 0.3:
                    async with session.delete(f"{url}/d6/{name}",
                                              headers={"X-Auth-Token": token}) as resp:
                        await resp.read()
                else:
                    async with session.put(f"{url}/d6/{name}", data=f"{seed}-{step}".encode(),
                                           headers={"X-Auth-Token": token}) as resp:
                        await resp.read()

        await asyncio.gather(client(1), client(2))
        await cluster.heal(rounds=2)
        expected: dict[str, bytes | None] = {}
        for name in names:
            async with session.get(f"{url}/d6/{name}",
                                   headers={"X-Auth-Token": token}) as resp:
                expected[name] = await resp.read() if resp.status == 200 else None
    await heal_and_verify(cluster, "d6", expected)
    for name in names:
        holders = cluster.object_holders("d6", name)
        assert len(set(holders.values())) == 1, (name, holders)


async def test_drill4_full_device_answers_507_and_keeps_nothing_half_written(tmp_path):
    drill = build_drill_cluster(str(tmp_path))
    victim = drill.nodes[3]
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                              victim.device_path], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        for node in drill.nodes:
            node.start()
        drill.start_proxy()
        await drill.wait_ready()
        objects = payloads("full", 60, size=64 * 1024)
        # a container replica on the full device cannot take rows either (its listing
        # stays stale until space is freed): keep the container's db off that device
        container = next(c for c in (f"d4-{i}" for i in range(100))
                         if victim.name not in {drill.node_of(n).name for n in
                                                drill.ring.get_nodes("AUTH_test", c)[1]})
        statuses = await put_objects(drill, container, objects, concurrency=4)
        assert set(statuses.values()) == {201}, statuses  # 507s sent writes elsewhere
        url = f"http://{victim.ip}:{victim.port}/{victim.device}/0/AUTH_test/{container}/probe"
        async with aiohttp.ClientSession() as session:
            async with session.put(url, data=b"x" * (2 << 20), headers={
                    "X-Timestamp": f"{time.time():.5f}",
                    "Content-Type": "application/octet-stream"}) as resp:
                assert resp.status == 507, resp.status
        tmp_dir = os.path.join(victim.device_path, "tmp")
        leftovers = os.listdir(tmp_dir) if os.path.isdir(tmp_dir) else []
        assert leftovers == [], leftovers
        on_victim = 0
        for name in objects:
            holders = drill.object_holders(container, name)
            if victim.name in holders:
                on_victim += 1
        assert on_victim < sum(1 for n in objects
                               if victim.name in drill.primary_names(container, n))
        problems = await drill.verify_readable(container, objects)
        assert problems == [], problems
    finally:
        drill.stop()
        subprocess.run(["umount", "-l", victim.device_path], check=False)


async def test_drill7_accounts_learn_the_counts_containers_converged_to(cluster):
    """A late report from a container replica that was missing rows overwrites the
    account's count with a smaller one; once that replica has its rows (replication,
    which reports nothing itself), the updater's sweep reports again and the accounts
    converge to the real count."""
    objects = payloads("count", 10)
    assert set((await put_objects(cluster, "d7", objects)).values()) == {201}
    await cluster.heal(rounds=1)
    assert not cluster.verify_databases("d7", set(objects))
    lagging = next(iter(cluster.database_paths("containers", "d7").values()))
    conn = sqlite3.connect(lagging)
    conn.execute("UPDATE container_stat SET reported_object_count = 3")
    conn.commit()
    put = conn.execute("SELECT put_timestamp FROM container_stat").fetchone()[0]
    conn.close()
    part, nodes = cluster.ring.get_nodes(ACCOUNT)
    async with aiohttp.ClientSession() as session:
        for node in nodes:  # its report of 3, the newest the accounts have seen
            async with session.put(
                    f"http://{node['ip']}:{node['port']}/{node['device']}/{part}/"
                    f"{ACCOUNT}/d7", headers={
                        "X-Backend-Server-Type": "account",
                        "X-Timestamp": Timestamp.now().internal, "X-Put-Timestamp": put,
                        "X-Delete-Timestamp": "0", "X-Object-Count": "3",
                        "X-Bytes-Used": "6144"}) as resp:
                assert resp.status in (201, 202), resp.status
    assert any("counted 3" in p for p in cluster.verify_databases("d7", set(objects)))
    await heal_and_verify(cluster, "d7", objects, rounds=2)


async def test_drill8_a_database_restored_from_an_old_copy_is_refilled(cluster):
    """A container replica put back to an older copy of itself, in the same file (a
    backup restored, commits lost): its peers must send it the rows it lost. What a peer
    remembers having pushed cannot tell; the replica's own file does."""
    first = payloads("restore-a", 5)
    assert set((await put_objects(cluster, "d8", first)).values()) == {201}
    await cluster.heal(rounds=1)
    name, path = next(iter(cluster.database_paths("containers", "d8").items()))
    snapshot = os.path.join(os.path.dirname(cluster.nodes[0].device_path), "snapshot.db")
    source, copy = sqlite3.connect(path), sqlite3.connect(snapshot)
    source.backup(copy)
    source.close()
    copy.close()
    later = payloads("restore-b", 3)
    assert set((await put_objects(cluster, "d8", later)).values()) == {201}
    await cluster.heal(rounds=1)
    assert not cluster.verify_databases("d8", set(first) | set(later))
    victim = next(n for n in cluster.nodes if n.name == name)
    victim.kill()
    inode = os.stat(path).st_ino
    with open(snapshot, "rb") as old, open(path, "r+b") as current:
        current.truncate(0)
        current.write(old.read())
    for side in ("-wal", "-shm"):
        if os.path.exists(path + side):
            os.unlink(path + side)
    assert os.stat(path).st_ino == inode  # the same file, older contents
    victim.start()
    await cluster.wait_ready()
    assert any(name in p for p in cluster.verify_databases("d8", set(first) | set(later)))
    await heal_and_verify(cluster, "d8", {**first, **later}, rounds=2)
