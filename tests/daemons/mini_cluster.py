"""In-process storage nodes on real 127.0.0.1 sockets, for the daemon tests.

Each node is an aiohttp app serving the real object verbs (ObjectServer), the
replication verbs and recon, over its own device directory; the ring names their ports.
The daemons under test talk to them over HTTP exactly as in production. With
``full_nodes`` each is the whole node server instead (account and container servers
too, on the node's own HTTP server), for the database replicator.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ring import Ring, RingBuilder
from ring.hashing import hash_path_hex, suffix_of
from swiftlike.common.timestamp import Timestamp
from swiftlike.daemons.base import DaemonContext
from swiftlike.storage import diskfile
from swiftlike.storage.node import DeviceUnavailable, StorageNode, error_response
from swiftlike.storage.object_server import ObjectServer
from swiftlike.storage.recon import handle_recon
from swiftlike.storage.replication_server import handle_replication, replication_verb
from swiftlike.storage.routing import BadPath, parse_route
from swiftlike.storage.server import RunningNode, start_node_server
from tests.cluster_harness import free_ports

PREFIX, SUFFIX = "pre", "suf"


def make_node_app(node: StorageNode) -> web.Application:
    objects = ObjectServer(node)

    async def dispatch(request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/recon/"):
            return await handle_recon(request, node)
        if replication_verb(request):
            return await handle_replication(request, node)
        try:
            kind, route = parse_route(request.rel_url.raw_path,
                                      request.headers.get("X-Backend-Server-Type"))
        except BadPath as err:
            return error_response(400, str(err))
        if kind != "object":
            return error_response(501, "mini cluster serves objects only")
        try:
            device_path = node.device_path(route.device)
        except DeviceUnavailable:
            return error_response(507, "no device")
        return await objects.handle(request, route, device_path)

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


@dataclass
class MiniNode:
    index: int
    port: int
    devices: str
    conf: dict[str, Any]
    full: bool = False
    runner: web.AppRunner | RunningNode | None = None
    storage: StorageNode | None = None

    @property
    def device(self) -> str:
        return f"d{self.index}"

    @property
    def device_path(self) -> str:
        return os.path.join(self.devices, self.device)

    async def start(self) -> None:
        if self.full:
            self.runner = await start_node_server(self.conf, "127.0.0.1", self.port)
            return
        self.storage = StorageNode(self.conf)
        self.runner = web.AppRunner(make_node_app(self.storage), access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.storage is not None:
            await self.storage.close()
            self.storage = None


@dataclass
class MiniCluster:
    root: str
    ring_path: str
    nodes: list[MiniNode] = field(default_factory=list)

    @property
    def ring(self) -> Ring:
        return Ring(self.ring_path, hash_prefix=PREFIX.encode(), hash_suffix=SUFFIX.encode())

    def context(self, node: MiniNode) -> DaemonContext:
        return DaemonContext(node.conf)

    def object_dir(self, node: MiniNode, account: str, container: str, obj: str) -> str:
        part = self.ring.get_part(account, container, obj)
        object_hash = hash_path_hex(account, container, obj, prefix=PREFIX.encode(),
                                    suffix=SUFFIX.encode())
        return os.path.join(node.device_path, "objects", str(part), suffix_of(object_hash),
                            object_hash)

    def node_of(self, dev: dict[str, Any]) -> MiniNode:
        return next(n for n in self.nodes if n.port == dev["port"])

    def write_local(self, node: MiniNode, account: str, container: str, obj: str,
                    body: bytes, timestamp: Timestamp | None = None, ext: str = ".data",
                    extra: dict[str, str] | None = None) -> None:
        """Put a file straight onto one node's disk (as if only it got the write)."""
        import hashlib

        timestamp = timestamp or Timestamp.now()
        meta = {"name": f"/{account}/{container}/{obj}", "X-Timestamp": timestamp.internal}
        if ext == ".data":
            meta.update({"Content-Type": "application/octet-stream",
                         "ETag": hashlib.md5(body).hexdigest(),
                         "Content-Length": str(len(body))})
        meta.update(extra or {})
        diskfile.write_whole_object(node.device_path,
                                    self.object_dir(node, account, container, obj), body,
                                    timestamp, ext, meta, fsync=False)


async def start_mini_cluster(root: str, count: int = 4, replicas: int = 3,
                             part_power: int = 4, daemon_conf: dict | None = None,
                             node_conf: dict | None = None, full_nodes: bool = False
                             ) -> MiniCluster:
    """``node_conf`` adds to each node's [node] section (e.g. fsync on, for the
    group-commit write paths; the default is fsync off)."""
    builder = RingBuilder(part_power=part_power, replicas=replicas, min_part_hours=0)
    ports = free_ports(count)
    for i, port in enumerate(ports):
        builder.add_dev({"region": 1, "zone": i % 3 + 1, "ip": "127.0.0.1", "port": port,
                         "device": f"d{i}", "weight": 100.0})
    builder.rebalance(seed=1)
    ring_path = os.path.join(root, "cluster.ring")
    builder.save_ring(ring_path)
    cluster = MiniCluster(root, ring_path)
    for i, port in enumerate(ports):
        devices = os.path.join(root, f"node{i}")
        os.makedirs(os.path.join(devices, f"d{i}"), exist_ok=True)
        conf = {"cluster": {"hash_path_prefix": PREFIX, "hash_path_suffix": SUFFIX,
                            "ring": ring_path},
                "node": {"bind_ip": "127.0.0.1", "bind_port": port, "devices": devices,
                         "fsync": False, **(node_conf or {})},
                **(daemon_conf or {})}
        node = MiniNode(i, port, devices, conf, full_nodes)
        await node.start()
        cluster.nodes.append(node)
    return cluster


def _serve_main(config_path: str) -> None:
    """``python -m tests.daemons.mini_cluster <config.toml>``: one node in its own process."""
    import asyncio
    import signal

    from swiftlike.common.config import load_config

    conf = load_config(config_path)
    node_conf = conf["node"]

    async def serve() -> None:
        node = MiniNode(0, int(node_conf["bind_port"]), node_conf["devices"], conf)
        await node.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print("ready", flush=True)
        await stop.wait()
        if node.storage is not None:  # what group commit cost, for heal_bench's report
            for path, flusher in node.storage._flushers.items():
                print(f"flusher {os.path.basename(path)}: {flusher.flushes} flushes, "
                      f"{flusher.flush_seconds:.2f}s in syncfs", flush=True)
        await node.stop()

    asyncio.run(serve())


if __name__ == "__main__":
    import sys

    _serve_main(sys.argv[1])
