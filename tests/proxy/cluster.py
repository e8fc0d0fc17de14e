"""An in-process test cluster: real storage nodes and a real proxy on loopback ports.

Four storage nodes (one device each, four zones), a 3-replica ring built with
RingBuilder, and the proxy, all aiohttp apps on free 127.0.0.1 ports inside the
test's event loop. Each node sits behind a :class:`FaultProxy` (a TCP relay) so a
test can stop a node or cut a response in the middle of its body.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from ring import RingBuilder
from tests.cluster_harness import free_port, free_ports


class FaultProxy:
    """A TCP relay in front of a node: can refuse connections or cut responses.

    ``cut_after`` (bytes of response) makes the next relayed response stop after that
    many bytes with an abrupt close, once; ``down`` refuses new connections; ``stalled``
    takes new connections and never answers on them (a node stopped with SIGSTOP).
    """

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port if port is not None else free_port()
        self.down = False
        self.stalled = False
        self.cut_after: int | None = None
        self.cuts = 0
        self._armed = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def arm_cut(self, after_bytes: int) -> None:
        """Cut the next response bytes passing through after ``after_bytes`` more bytes."""
        self._armed += 1
        self.cut_after = after_bytes

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port,
                                                  reuse_address=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self.kill_connections()
            await self._server.wait_closed()
            self._server = None

    def kill_connections(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def set_down(self, down: bool) -> None:
        """Down: close the listening socket (connection refused) and every connection."""
        self.down = down
        if down:
            await self.stop()
        elif self._server is None:
            await self.start()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.transport.abort()
            return
        if self.stalled:
            self._writers.add(writer)
            with contextlib.suppress(ConnectionError, OSError):
                while await reader.read(65536):
                    pass  # take what is sent, answer nothing
            self._writers.discard(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       downstream: bool) -> None:
            sent = 0
            armed = self._armed
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    if armed != self._armed:  # count from the moment a cut was armed
                        armed, sent = self._armed, 0
                    if downstream and self.cut_after is not None:
                        room = self.cut_after - sent
                        if len(data) >= room:
                            dst.write(data[:max(room, 0)])
                            await dst.drain()
                            self.cut_after = None
                            self.cuts += 1
                            writer.transport.abort()
                            up_writer.transport.abort()
                            return
                    sent += len(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))
        self._writers.discard(writer)
        self._writers.discard(up_writer)


@dataclass
class Cluster:
    root: Path
    conf: dict
    proxy_port: int
    node_ports: list[int]
    faults: list[FaultProxy]
    runners: list[web.AppRunner] = field(default_factory=list)
    proxy_app: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def auth_url(self) -> str:
        return f"{self.url}/auth/v1.0"

    def object_file_count(self) -> int:
        """How many .data files the nodes hold (to prove a bad request stored nothing)."""
        return sum(1 for _ in self.root.glob("node*/*/objects/**/*.data"))


async def _serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
    await site.start()
    return runner


async def start_cluster(root: Path, *, nodes: int = 4, replicas: int = 3,
                        auth: dict | None = None, proxy_conf: dict | None = None) -> Cluster:
    """Build a ring and start ``nodes`` storage nodes plus a proxy; stop with stop_cluster."""
    from swiftlike.proxy.server import make_app as make_proxy_app
    from swiftlike.storage.server import make_app as make_node_app
    from swiftlike.storage.server import start_node_server

    *ports, proxy_port = free_ports(2 * nodes + 1)
    node_ports = ports[:nodes]
    faults = [FaultProxy(port, relay) for port, relay in zip(node_ports, ports[nodes:],
                                                             strict=True)]
    builder = RingBuilder(part_power=6, replicas=replicas, min_part_hours=0)
    for i, fault in enumerate(faults):
        builder.add_dev({"region": 1, "zone": i + 1, "ip": "127.0.0.1", "port": fault.port,
                         "device": f"d{i + 1}", "weight": 100.0})
    builder.rebalance(seed=1)
    ring_path = root / "cluster.ring"
    builder.save_ring(ring_path)
    cluster_conf = {"hash_path_prefix": "pre", "hash_path_suffix": "suf",
                    "ring": str(ring_path)}
    conf = {
        "cluster": cluster_conf,
        "proxy": {"bind_ip": "127.0.0.1", "bind_port": proxy_port, "node_timeout": 5.0,
                  "pipeline": ["catch_errors", "gatekeeper", "healthcheck", "tempauth", "copy"],
                  "conn_timeout": 0.5, **(proxy_conf or {})},
        "auth": {"secret": "test-secret", "token_life": 3600, **(auth or {})},
    }
    cluster = Cluster(root, conf, proxy_port, node_ports, faults)
    for i, port in enumerate(node_ports):
        devices = root / f"node{i + 1}"
        (devices / f"d{i + 1}").mkdir(parents=True)
        node_conf = {"cluster": cluster_conf,
                     "node": {"bind_ip": "127.0.0.1", "bind_port": port,
                              "devices": str(devices), "mount_check": False, "fsync": True}}
        if os.environ.get("SWIFTLIKE_NODE_HTTP", "lean") == "lean":
            cluster.runners.append(await start_node_server(node_conf))  # type: ignore[arg-type]
        else:
            cluster.runners.append(await _serve(make_node_app(node_conf), port))
        await faults[i].start()
    app = make_proxy_app(conf)
    cluster.proxy_app = app
    cluster.runners.append(await _serve(app, proxy_port))
    return cluster


async def stop_cluster(cluster: Cluster) -> None:
    for fault in cluster.faults:
        await fault.stop()
    for runner in reversed(cluster.runners):
        await runner.cleanup()
