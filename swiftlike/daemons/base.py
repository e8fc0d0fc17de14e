"""What every daemon of a storage node shares: config, ring, local devices, HTTP client.

One :class:`DaemonContext` is built per process and handed to each daemon (no module
state). A daemon's devices are the ring devices whose ip/port are this node's
``[node] bind_ip``/``bind_port`` and whose directory exists under ``[node] devices``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ring import Ring
from swiftlike.common.config import conf_bool, hash_salts
from swiftlike.common.nodes import update_target_headers
from swiftlike.storage.recon_files import save_device_stats

if TYPE_CHECKING:
    from swiftlike.common.node_client import NodeClient

T = TypeVar("T")
LOG = logging.getLogger(__name__)
LOCAL_ANY = {"0.0.0.0", "::", ""}


class DaemonContext:
    """Per-process dependencies of the daemons."""

    def __init__(self, conf: dict[str, Any], ring: Ring | None = None,
                 client: NodeClient | None = None, io_threads: int = 8) -> None:
        self.conf = conf
        node = conf.get("node", {})
        self.devices = str(node.get("devices", "/srv/node"))
        self.bind_ip = str(node.get("bind_ip", "127.0.0.1"))
        self.bind_port = int(node.get("bind_port", 6200))
        self.mount_check = conf_bool(node.get("mount_check"), False)
        self.fsync = conf_bool(node.get("fsync"), True)
        self.use_xattr = conf_bool(node.get("xattr"), True)
        self.hash_prefix, self.hash_suffix = hash_salts(conf)
        if ring is None:
            ring_path = conf.get("cluster", {}).get("ring")
            if not ring_path:
                raise ValueError("[cluster] ring is required for the daemons")
            ring = Ring(ring_path, hash_prefix=self.hash_prefix, hash_suffix=self.hash_suffix)
        self.ring = ring
        self._client = client
        self.executor = ThreadPoolExecutor(io_threads, thread_name_prefix="daemon-io")

    @property
    def client(self) -> NodeClient:
        """The pooled node client, built on first use: importing aiohttp's client costs a
        short-lived ``--once`` process a third of a CPU second it often does not need."""
        if self._client is None:
            from swiftlike.common.node_client import NodeClient

            daemons = self.conf.get("daemons", {})
            self._client = NodeClient(
                conn_timeout=float(daemons.get("conn_timeout", 1.0)),
                node_timeout=float(daemons.get("node_timeout", 20.0)))
        return self._client

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.conf.get(name, {}))

    async def run_io(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(func, *args,
                                                                           **kwargs))

    def is_local(self, dev: dict[str, Any]) -> bool:
        ips = {dev.get("ip"), dev.get("replication_ip")}
        if int(dev.get("port", -1)) != self.bind_port and \
                int(dev.get("replication_port", -1) or -1) != self.bind_port:
            return False
        return self.bind_ip in LOCAL_ANY or self.bind_ip in ips

    def local_devices(self) -> list[dict[str, Any]]:
        """Ring devices served by this node whose directory is present (mounted)."""
        found = []
        for dev in self.ring.devs:
            if not dev or not self.is_local(dev):
                continue
            path = self.device_path(dev["device"])
            if self.mount_check and not os.path.ismount(path):
                continue
            if os.path.isdir(path):
                found.append(dev)
        return found

    def device_path(self, device: str) -> str:
        return os.path.join(self.devices, device)

    async def node_status(self, node: dict[str, Any], method: str, path: str,
                          headers: dict[str, str], budget: NodeBudget | None = None
                          ) -> int | None:
        """``method path`` on one node: its status (the body read and dropped), or None
        when the node could not be reached or did not answer in time (or ``budget``
        says it failed too often already this pass: then nothing is sent)."""
        from swiftlike.common.node_client import NODE_ERRORS

        if budget is not None and budget.exhausted(node):
            return None
        try:
            async with self.client.request(node, method, path, headers=headers) as resp:
                await resp.read()
                return int(resp.status)
        except NODE_ERRORS as err:
            LOG.info("%s %s to %s:%s failed: %r", method, path, node["ip"], node["port"], err)
            if budget is not None:
                budget.failed(node)
            return None


    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        self.executor.shutdown(wait=False, cancel_futures=True)


class NodeBudget:
    """How many times each node failed during one daemon pass; past ``limit`` the pass
    stops asking it. Why: a hung node costs node_timeout per request, and a pass that
    sends it thousands of deletes would take hours (the proxy's error limiter does the
    same for client requests). What it was spared is retried on the next pass."""

    def __init__(self, limit: int = 10) -> None:
        self.limit = limit
        self._failures: dict[tuple[str, int], int] = {}

    def failed(self, node: dict[str, Any]) -> None:
        key = (str(node["ip"]), int(node["port"]))
        self._failures[key] = self._failures.get(key, 0) + 1

    def exhausted(self, node: dict[str, Any]) -> bool:
        return self._failures.get((str(node["ip"]), int(node["port"])), 0) >= self.limit


async def delete_object_everywhere(ctx: DaemonContext, account: str, container: str,
                                   obj: str, headers: dict[str, str],
                                   budget: NodeBudget | None = None) -> list[int | None]:
    """``DELETE`` of an object on each of its primaries, with ``headers`` and the
    container-update headers, at once; the statuses (None: no answer)."""
    from swiftlike.common.node_client import node_path

    part, nodes = ctx.ring.get_nodes(account, container, obj)
    cpart, cnodes = ctx.ring.get_nodes(account, container)
    path_names = (account, container, obj)
    return list(await asyncio.gather(*(
        ctx.node_status(node, "DELETE", node_path(node, part, *path_names),
                        {"X-Backend-Server-Type": "object", **headers,
                         **update_headers_for("Container", index, cpart, cnodes)}, budget)
        for index, node in enumerate(nodes))))


def all_settled(statuses: list[int | None], settled: Collection[int]) -> bool:
    """Has every node answered 2xx or one of the ``settled`` statuses (nothing left for
    it to do)? A node that did not answer (None) has not."""
    return all(s is not None and (200 <= s < 300 or s in settled) for s in statuses)


def update_headers_for(prefix: str, index: int, part: int, replicas: list[dict[str, Any]]
                       ) -> dict[str, str]:
    """The update headers of a write sent to the ``index``-th of its nodes: each names a
    different one of the database ``replicas``, as the proxy's writes do."""
    if not replicas:
        return {}
    return update_target_headers(prefix, part, [replicas[index % len(replicas)]])


class Daemon:
    """What every periodic daemon shares: its config section, the pause between passes,
    how much it does at once, and the loop that runs a pass every ``interval`` seconds.

    Subclasses set ``section`` (their config section), the defaults, and
    ``pass_failed`` (the log line when a pass raises), and implement ``run_once``.
    """

    section = ""
    default_interval = 30.0
    default_concurrency = 16
    pass_failed = "pass failed"

    def __init__(self, ctx: DaemonContext, conf: dict[str, Any] | None = None) -> None:
        conf = conf if conf is not None else ctx.section(self.section)
        self.ctx = ctx
        self.conf = conf
        self.interval = float(conf.get("interval", self.default_interval))
        self.concurrency = max(1, int(conf.get("concurrency", self.default_concurrency)))

    async def run_once(self) -> Any:
        raise NotImplementedError

    async def run_forever(self) -> None:
        log = logging.getLogger(type(self).__module__)
        while True:
            started = time.monotonic()
            try:
                await self.run_once()
            except Exception:
                log.exception(self.pass_failed)
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))


@dataclass
class PassStats:
    """Counters of one daemon pass on one device, saved for recon and logged."""

    daemon: str
    device: str
    started: float = field(default_factory=time.time)
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, key: str, amount: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + amount

    def error(self, message: str) -> None:
        self.add("errors")
        if len(self.errors) < 20:
            self.errors.append(message)

    def as_dict(self) -> dict[str, Any]:
        finished = time.time()
        return {"daemon": self.daemon, "device": self.device, "started": self.started,
                "finished": finished, "duration": round(finished - self.started, 4),
                "counts": dict(self.counts), "recent_errors": list(self.errors)}

    def save(self, device_path: str) -> dict[str, Any]:
        data = self.as_dict()
        try:
            save_device_stats(device_path, self.daemon, data)
        except OSError as err:  # a full or broken device must not stop the daemon
            LOG.warning("%s: cannot save stats on %s: %s", self.daemon, device_path, err)
        LOG.info("%s pass on %s: %s in %.2fs", self.daemon, self.device, data["counts"],
                 data["duration"])
        return data


class RateLimiter:
    """A token bucket: ``await consume(n)`` sleeps so the long-run rate stays <= rate/s.

    rate <= 0 means unlimited. Shared by all tasks of a daemon, so the limit is per
    process, not per connection.
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = float(rate)
        self.capacity = float(burst if burst is not None else max(self.rate, 1.0))
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def consume(self, amount: float) -> None:
        if self.rate <= 0 or amount <= 0:
            return
        async with self._lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            self.tokens -= amount
            if self.tokens < 0:
                await asyncio.sleep(-self.tokens / self.rate)
