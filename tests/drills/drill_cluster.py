"""A 6-node, 3-zone, 3-replica cluster of real processes for the fault drills.

Every storage node is ``python -m swiftlike node --config ...`` (its daemons off: the
drill runs their passes itself, so it knows when healing happened), plus one
``python -m swiftlike proxy``. The drill can kill and restart nodes, damage their disks,
run daemon passes (in-process, talking HTTP to the nodes like the real daemons), and
verify the cluster: every object readable with the right bytes from the proxy, exactly
the 3 primaries holding the newest file, no handoff copies left, listings right.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ring import Ring, RingBuilder
from ring.hashing import hash_path_hex, suffix_of
from swiftlike.common.config import dump_toml
from swiftlike.daemons.base import DaemonContext
from swiftlike.daemons.runner import run_pass
from swiftlike.storage.account_db import AccountBroker
from swiftlike.storage.container_db import ContainerBroker
from swiftlike.storage.diskfile import gather_ondisk_files
from tests.cluster_harness import free_ports

PREFIX, SUFFIX = "drill-prefix", "drill-suffix"
ACCOUNT = "AUTH_test"


@dataclass
class DrillNode:
    name: str
    ip: str
    port: int
    devices: str
    device: str
    config: str
    conf: dict[str, Any]
    proc: subprocess.Popen | None = None
    netns: str | None = None

    @property
    def device_path(self) -> str:
        return os.path.join(self.devices, self.device)

    def start(self) -> None:
        cmd = [sys.executable, "-m", "swiftlike", "node", "--config", self.config]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


@dataclass
class DrillCluster:
    root: str
    ring_path: str
    proxy_port: int
    proxy_conf: str
    nodes: list[DrillNode] = field(default_factory=list)
    proxy: subprocess.Popen | None = None

    @property
    def ring(self) -> Ring:
        return Ring(self.ring_path, hash_prefix=PREFIX.encode(), hash_suffix=SUFFIX.encode())

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def start_proxy(self) -> None:
        self.proxy = subprocess.Popen(
            [sys.executable, "-m", "swiftlike", "proxy", "--config", self.proxy_conf],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    async def wait_ready(self, within: float = 60.0) -> None:
        urls = [f"http://{n.ip}:{n.port}/healthcheck" for n in self.nodes if n.proc]
        urls.append(f"{self.proxy_url}/healthcheck")
        await wait_healthy(urls, within)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        if self.proxy is not None and self.proxy.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proxy.pid, signal.SIGKILL)
            self.proxy.wait(10)

    def node_of(self, dev: dict[str, Any]) -> DrillNode:
        return next(n for n in self.nodes if n.port == dev["port"] and n.ip == dev["ip"])

    async def daemon_pass(self, name: str, nodes: list[DrillNode] | None = None) -> None:
        """One pass of a daemon on each (running) node, all nodes at once."""
        targets = [n for n in (nodes or self.nodes) if n.proc is not None]

        async def one(node: DrillNode) -> None:
            ctx = DaemonContext(node.conf)
            try:
                await run_pass(name, ctx)
            finally:
                await ctx.close()

        await asyncio.gather(*(one(n) for n in targets))

    async def heal(self, rounds: int = 4) -> None:
        for _ in range(rounds):
            await self.daemon_pass("update")
            await self.daemon_pass("replicate")

    def object_holders(self, container: str, obj: str) -> dict[str, str]:
        """node name -> winning file name, over every node's device."""
        part = self.ring.get_part(ACCOUNT, container, obj)
        object_hash = hash_path_hex(ACCOUNT, container, obj, prefix=PREFIX.encode(),
                                    suffix=SUFFIX.encode())
        found = {}
        for node in self.nodes:
            state = gather_ondisk_files(os.path.join(
                node.device_path, "objects", str(part), suffix_of(object_hash), object_hash))
            winner = state.data_file or state.ts_file
            if winner:
                found[node.name] = winner
        return found

    def primary_names(self, container: str, obj: str) -> set[str]:
        _, nodes = self.ring.get_nodes(ACCOUNT, container, obj)
        return {self.node_of(n).name for n in nodes}

    async def token(self, session: aiohttp.ClientSession) -> tuple[str, str]:
        async with session.get(f"{self.proxy_url}/auth/v1.0", headers={
                "X-Auth-User": "test:tester", "X-Auth-Key": "testing"}) as resp:
            assert resp.status == 200, resp.status
            return resp.headers["X-Auth-Token"], resp.headers["X-Storage-Url"]

    async def verify_readable(self, container: str, expected: dict[str, bytes]) -> list[str]:
        """Every object GETs its exact bytes through the proxy, and is listed."""
        problems = []
        async with aiohttp.ClientSession() as session:
            token, url = await self.token(session)
            for name, body in expected.items():
                async with session.get(f"{url}/{container}/{name}",
                                       headers={"X-Auth-Token": token}) as resp:
                    if resp.status != 200 or await resp.read() != body:
                        problems.append(f"{name}: GET {resp.status}")
            async with session.get(f"{url}/{container}?format=json",
                                   headers={"X-Auth-Token": token}) as resp:
                listed = {row["name"] for row in await resp.json()}
            if listed != set(expected):
                problems.append(f"listing differs: {sorted(set(expected) ^ listed)[:5]}")
        return problems

    async def verify(self, container: str, expected: dict[str, bytes | None]) -> list[str]:
        """Problems found (empty when healthy). ``None`` means "must be deleted"."""
        problems = []
        async with aiohttp.ClientSession() as session:
            token, url = await self.token(session)
            for name, body in expected.items():
                async with session.get(f"{url}/{container}/{name}",
                                       headers={"X-Auth-Token": token}) as resp:
                    data = await resp.read()
                    if body is None and resp.status != 404:
                        problems.append(f"{name}: deleted but GET gave {resp.status}")
                    elif body is not None and (resp.status != 200 or data != body):
                        problems.append(f"{name}: GET {resp.status}, {len(data)} bytes")
                holders = self.object_holders(container, name)
                primaries = self.primary_names(container, name)
                if set(holders) != primaries:
                    problems.append(f"{name}: on {sorted(holders)}, primaries "
                                    f"{sorted(primaries)}")
                elif len(set(holders.values())) != 1:
                    problems.append(f"{name}: replicas differ {holders}")
                elif body is not None and not next(iter(holders.values())).endswith(".data"):
                    problems.append(f"{name}: newest file is {holders}")
            async with session.get(f"{url}/{container}?format=json",
                                   headers={"X-Auth-Token": token}) as resp:
                listed = {row["name"] for row in await resp.json()} if resp.status == 200 \
                    else set()
            wanted = {n for n, b in expected.items() if b is not None}
            if listed != wanted:
                problems.append(f"listing: missing {sorted(wanted - listed)[:5]}, "
                                f"extra {sorted(listed - wanted)[:5]}")
        return problems + self.verify_databases(container, wanted)

    def database_paths(self, kind: str, container: str | None = None) -> dict[str, str]:
        """node name -> path of the account's (or container's) database on each primary."""
        part, nodes = self.ring.get_nodes(ACCOUNT, container)
        db_hash = hash_path_hex(ACCOUNT, container, prefix=PREFIX.encode(),
                                suffix=SUFFIX.encode())
        return {self.node_of(n).name: os.path.join(
            self.node_of(n).device_path, kind, str(part), suffix_of(db_hash), db_hash,
            f"{db_hash}.db") for n in nodes}

    def verify_databases(self, container: str, wanted: set[str]) -> list[str]:
        """Every primary replica of the container's database lists exactly ``wanted``
        with matching counts, and every account replica reports that count.

        Reading through the proxy asks one replica; a replica that replication failed to
        fill would go unseen there, and answer some later listing empty.
        """
        problems = []
        for name, path in self.database_paths("containers", container).items():
            if not os.path.exists(path):
                problems.append(f"container db missing on {name}")
                continue
            broker = ContainerBroker(path, fsync=False)
            try:
                listed = {row["name"] for row in broker.list_objects(len(wanted) + 10)}
                count = broker.get_info()["object_count"]
            finally:
                broker.close()
            if listed != wanted or count != len(wanted):
                problems.append(f"container db on {name}: {len(listed)} rows, count {count}, "
                                f"missing {sorted(wanted - listed)[:3]}, "
                                f"extra {sorted(listed - wanted)[:3]}")
        for name, path in self.database_paths("accounts").items():
            if not os.path.exists(path):
                problems.append(f"account db missing on {name}")
                continue
            broker = AccountBroker(path, fsync=False)
            try:
                rows = {row["name"]: row for row in broker.list_containers(10000)}
            finally:
                broker.close()
            if rows.get(container, {}).get("count") != len(wanted):
                problems.append(f"account db on {name}: {container} counted "
                                f"{rows.get(container, {}).get('count')}, not {len(wanted)}")
        return problems


async def wait_healthy(urls: list[str], within: float) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        for url in urls:
            while True:
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{url} not healthy")
                await asyncio.sleep(0.1)


def build_drill_cluster(root: str, ips: list[str] | None = None,
                        netns: list[str] | None = None, part_power: int = 6) -> DrillCluster:
    """Write ring and configs for 6 nodes in 3 zones (one device each) and a proxy."""
    count = 6
    ips = ips or ["127.0.0.1"] * count
    *picked, proxy_port = free_ports(count + 1)
    ports = [port if ip == "127.0.0.1" else 6200 for ip, port in zip(ips, picked, strict=True)]
    builder = RingBuilder(part_power=part_power, replicas=3, min_part_hours=0)
    for i in range(count):
        builder.add_dev({"region": 1, "zone": i % 3 + 1, "ip": ips[i], "port": ports[i],
                         "device": f"sd{i}", "weight": 100.0})
    builder.rebalance(seed=7)
    ring_path = os.path.join(root, "cluster.ring")
    builder.save_ring(ring_path)
    cluster_table = {"hash_path_prefix": PREFIX, "hash_path_suffix": SUFFIX, "ring": ring_path}
    proxy = {"cluster": cluster_table,
             "proxy": {"bind_ip": "127.0.0.1", "bind_port": proxy_port, "workers": 1,
                       "node_timeout": 3.0, "conn_timeout": 0.5,
                       "error_suppression_interval": 1.0},
             "auth": {"secret": "drill-secret", "users": {"test:tester": "testing .admin"}}}
    proxy_path = os.path.join(root, "proxy.toml")
    with open(proxy_path, "w") as handle:
        handle.write(dump_toml(proxy))
    cluster = DrillCluster(root, ring_path, proxy_port, proxy_path)
    for i in range(count):
        devices = os.path.join(root, f"node{i}")
        os.makedirs(os.path.join(devices, f"sd{i}"), exist_ok=True)
        conf = {"cluster": cluster_table,
                "node": {"bind_ip": ips[i], "bind_port": ports[i], "devices": devices,
                         "fsync": True, "container_update_timeout": 1.0},
                "daemons": {"enabled": False, "node_timeout": 5.0},
                "replicator": {"concurrency": 8}}
        path = os.path.join(root, f"node{i}.toml")
        with open(path, "w") as handle:
            handle.write(dump_toml(conf))
        cluster.nodes.append(DrillNode(f"node{i}", ips[i], ports[i], devices, f"sd{i}", path,
                                       conf, netns=(netns[i] if netns else None)))
    return cluster
