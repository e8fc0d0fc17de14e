# ruff: noqa: ASYNC230
"""How fast does a wiped device come back? The replicator's rebuild rate in objects/s.

Starts 4 storage nodes (real aiohttp servers on 127.0.0.1, one device each, 3 replicas,
fsync on), fills them with ``--objects`` small objects through the nodes' HTTP PUT
verb, wipes one device, then runs replication passes on the surviving nodes until every
object the ring places on the wiped device is back with the right bytes.

Reference: OpenStack Swift restored a wiped device of 3,737 small objects in 42.7 s here
(87 objects/s); the target is at least 10x that rate.

    python -m benchmarks.heal_bench --objects 4000
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

import aiohttp

from swiftlike.common.config import dump_toml
from swiftlike.common.node_client import node_path
from swiftlike.storage.diskfile import gather_ondisk_files
from tests.daemons.mini_cluster import MiniCluster, start_mini_cluster

SWIFT_RATE = 3737 / 42.7


async def fill(cluster: MiniCluster, count: int, size: int) -> list[str]:
    ring = cluster.ring
    names = [f"obj-{i:06d}" for i in range(count)]
    sem = asyncio.Semaphore(32)
    async with aiohttp.ClientSession() as session:

        async def put(name: str) -> None:
            body = hashlib.sha256(name.encode()).digest() * (size // 32)
            part, nodes = ring.get_nodes("AUTH_bench", "c", name)
            stamp = f"{time.time():.5f}"
            async with sem:
                for node in nodes:
                    url = (f"http://{node['ip']}:{node['port']}"
                           f"{node_path(node, part, 'AUTH_bench', 'c', name)}")
                    async with session.put(url, data=body, headers={
                            "X-Timestamp": stamp, "Content-Type": "application/octet-stream",
                            "X-Backend-Server-Type": "object"}) as resp:
                        assert resp.status == 201, (resp.status, await resp.text())

        await asyncio.gather(*(put(n) for n in names))
    return names


def missing_on(cluster: MiniCluster, victim_index: int, names: list[str]) -> int:
    ring = cluster.ring
    victim = cluster.nodes[victim_index]
    missing = 0
    for name in names:
        _, nodes = ring.get_nodes("AUTH_bench", "c", name)
        if any(n["port"] == victim.port for n in nodes):
            state = gather_ondisk_files(cluster.object_dir(victim, "AUTH_bench", "c", name))
            if state.data_file is None:
                missing += 1
    return missing


def _spawn(args: list[str], profile: str | None = None, tag: str = "",
           spies: list[subprocess.Popen] | None = None) -> subprocess.Popen:
    """A python child; with ``profile``, py-spy records it (collapsed stacks) until it ends."""
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if profile and spies is not None:
        spies.append(subprocess.Popen(
            ["py-spy", "record", "--format", "raw", "--rate", "250", "--idle", "--pid",
             str(proc.pid), "-o", os.path.join(profile, f"{tag}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return proc


async def main(objects: int, size: int, concurrency: int, profile: str | None = None
               ) -> float:
    """Fill in-process, then rebuild with every node and replicator in its own process."""
    root = tempfile.mkdtemp(prefix="heal-bench-")
    cluster = await start_mini_cluster(root, count=4, part_power=8)
    procs: list[subprocess.Popen] = []
    spies: list[subprocess.Popen] = []
    try:
        started = time.monotonic()
        names = await fill(cluster, objects, size)
        print(f"filled {objects} objects x 3 replicas in {time.monotonic() - started:.1f}s")
        for node in cluster.nodes:
            await node.stop()
        victim = 0
        wiped = cluster.nodes[victim].device_path
        shutil.rmtree(wiped)
        os.makedirs(wiped)
        expected = missing_on(cluster, victim, names)
        print(f"wiped {cluster.nodes[victim].device}: {expected} objects to restore")
        configs = []
        for node in cluster.nodes:
            conf = dict(node.conf)
            conf["node"] = {**conf["node"], "fsync": os.environ.get("HEAL_FSYNC", "1") == "1"}
            conf["replicator"] = {"concurrency": concurrency}
            path = os.path.join(root, f"node{node.index}.toml")
            with open(path, "w") as handle:
                handle.write(dump_toml(conf))
            configs.append(path)
            procs.append(_spawn(["-m", "tests.daemons.mini_cluster", path], profile,
                                f"node{node.index}", spies))
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("ready"), line
        started = time.monotonic()
        passes = 0
        while True:
            passes += 1
            replicators = [_spawn(["-m", "swiftlike", "replicate", "--once", "--config", c],
                                  profile, f"replicate{i}-pass{passes}", spies)
                           for i, c in enumerate(configs) if i != victim]
            for rep in replicators:
                out, _ = rep.communicate()
                if rep.returncode:
                    print(out[-2000:])
            if missing_on(cluster, victim, names) == 0 or passes >= 5:
                break
        elapsed = time.monotonic() - started
        left = missing_on(cluster, victim, names)
        rate = (expected - left) / elapsed if elapsed else float("inf")
        print(f"restored {expected - left}/{expected} objects in {elapsed:.2f}s "
              f"({passes} pass(es), incl. process start-up): {rate:.0f} objects/s; "
              f"Swift: {SWIFT_RATE:.0f} objects/s -> {rate / SWIFT_RATE:.1f}x")
        if left:
            print(f"NOT RESTORED: {left} objects")
        return rate
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        for spy in spies:
            spy.wait(30)
        for node in cluster.nodes:
            await node.stop()
        if not os.environ.get("HEAL_KEEP"):
            shutil.rmtree(root, ignore_errors=True)
        else:
            print("kept", root)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=500)
    parser.add_argument("--size", type=int, default=4096, help="bytes per object")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--profile", metavar="DIR",
                        help="run nodes and replicators under py-spy; collapsed stacks here")
    args = parser.parse_args()
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    asyncio.run(main(args.objects, args.size, args.concurrency, args.profile))
