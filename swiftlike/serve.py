"""`swiftlike serve`: the embedded all-in-one cluster.

With no configuration it builds a small ring over local directories and supervises a
set of storage-node processes and proxy worker processes on one host. Everything it
generates (secrets, ring, per-process TOML files) is written under the data directory
and reused on the next start, so a restart serves the same data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from swiftlike.common.config import ConfigError, conf_bool, dump_toml, load_config, new_secret
from swiftlike.common.ports import free_port, listen_socket, port_is_free

CLUSTER_FILE = "cluster.toml"
RING_FILE = "cluster.ring"
BUILDER_FILE = "cluster.builder"
DEFAULT_PART_POWER = 10
DEFAULT_REPLICAS = 3
#: The tempauth user the image service keeps image bytes under (``.admin`` of its own
#: account only, never a reseller admin).
IMAGE_SERVICE_USER = "glance:glance"


@dataclass
class ServeOptions:
    """What the `serve` command line can change."""

    data_dir: Path = Path("swiftlike-data")
    host: str = "127.0.0.1"
    port: int = 8080
    nodes: int = 4
    workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    replicas: int = DEFAULT_REPLICAS
    part_power: int = DEFAULT_PART_POWER
    node_base_port: int = 0  # 0: pick free ports when the cluster is first created
    daemons: bool = True
    image_segment_size: int | None = None  # None: keep cluster.toml's (or the default)


def prepare_cluster(opts: ServeOptions,
                    listeners: dict[int, socket.socket] | None = None) -> dict[str, Any]:
    """Create (first start) or load (later starts) the cluster under the data directory.

    Returns the cluster description: the shared config and each node's config. A new
    cluster's node ports are chosen by binding them: each one's listening socket goes
    into ``listeners`` (by port), for the node process to inherit.
    """
    data_dir = opts.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    cluster_path = data_dir / CLUSTER_FILE
    if cluster_path.exists():
        conf = load_config(cluster_path)
        existing = conf.get("serve", {}).get("nodes")
        if existing is not None and int(existing) != opts.nodes:
            raise ConfigError(
                f"{data_dir} holds a cluster of {existing} nodes; "
                f"use --nodes {existing} or another --data-dir"
            )
        if configure_image_service(conf, opts):
            _write_atomic(cluster_path, dump_toml(conf))
        return conf
    conf = _new_cluster(opts, data_dir, {} if listeners is None else listeners)
    configure_image_service(conf, opts)
    _write_atomic(cluster_path, dump_toml(conf))
    return conf


def configure_image_service(conf: dict[str, Any], opts: ServeOptions) -> bool:
    """Give the image service its own store account and segment size; True if changed.

    Why a dedicated user: the image service must not hold reseller-admin rights over
    every account just to keep image bytes. ``glance:glance`` (random key) is ``.admin``
    of ``AUTH_glance`` only; tempauth learns it from ``[auth.extra_users]``, which adds
    to the default users instead of replacing them. A cluster created before this
    existed gets the user on its next start; an operator's own ``store_user`` is kept.
    """
    changed = False
    image = conf.setdefault("image", {})
    if "store_user" not in image:
        key = new_secret()
        auth = conf.setdefault("auth", {})
        extra = auth.setdefault("extra_users", {})
        extra[IMAGE_SERVICE_USER] = f"{key} .admin"
        image["store_user"] = IMAGE_SERVICE_USER
        image["store_key"] = key
        changed = True
    size = opts.image_segment_size
    if size is not None:
        if size < 1:
            raise ConfigError("--image-segment-size must be a positive number of bytes")
        if image.get("segment_size") != size:
            image["segment_size"] = size
            changed = True
    return changed


def _node_port(opts: ServeOptions, index: int, used: set[int],
               listeners: dict[int, socket.socket]) -> int:
    """Node ``index``'s port, bound (its socket in ``listeners``): --node-base-port's,
    else 620<index> when free, else any free one."""
    if opts.node_base_port:
        candidates = [opts.node_base_port + index - 1]
    else:
        candidates = [6200 + index, *(free_port(opts.host, used) for _ in range(20))]
    for port in candidates:
        if port in used:
            continue
        sock = listen_socket(opts.host, port)
        if sock is not None:
            listeners[port] = sock
            return port
    raise ConfigError(f"no free port for storage node {index} on {opts.host} "
                      f"(tried {', '.join(map(str, candidates))})")


def _new_cluster(opts: ServeOptions, data_dir: Path,
                 listeners: dict[int, socket.socket]) -> dict[str, Any]:
    from ring import RingBuilder

    if opts.nodes < 1:
        raise ConfigError("--nodes must be at least 1")
    replicas = min(opts.replicas, opts.nodes)
    builder = RingBuilder(opts.part_power, replicas, 1)
    used: set[int] = {opts.port}
    nodes: dict[str, Any] = {}
    for i in range(1, opts.nodes + 1):
        port = _node_port(opts, i, used, listeners)
        used.add(port)
        device = f"d{i}"
        devices_dir = data_dir / f"node{i}"
        (devices_dir / device).mkdir(parents=True, exist_ok=True)
        builder.add_dev(
            {"region": 1, "zone": i, "ip": opts.host, "port": port, "device": device,
             "weight": 100.0}
        )
        nodes[f"node{i}"] = {"bind_ip": opts.host, "bind_port": port, "devices": str(devices_dir)}
    builder.rebalance()
    builder.save(str(data_dir / BUILDER_FILE))
    builder.save_ring(str(data_dir / RING_FILE))
    return {
        "cluster": {
            "hash_path_prefix": new_secret(),
            "hash_path_suffix": new_secret(),
            "ring": str(data_dir / RING_FILE),
        },
        "serve": {"nodes": opts.nodes, "data_dir": str(data_dir)},
        "auth": {"secret": new_secret()},
        "image": {"registry": str(data_dir / "images.sqlite")},
        "nodes": nodes,
    }


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, readable by its owner only (0600): the configs hold
    the auth secret and the image store's key, with which anyone could mint tokens or
    read every image."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a leftover may carry wider permissions: O_CREAT would keep them
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def process_configs(conf: dict[str, Any], opts: ServeOptions) -> dict[str, dict[str, Any]]:
    """One config per process kind: each node's, and the proxy workers' shared one."""
    shared = {k: v for k, v in conf.items() if k in ("cluster", "auth", "image")}
    if conf_bool(conf.get("serve", {}).get("local_sockets"), True):
        # every process here is on one host: the proxy and the nodes reach each node by
        # a Unix socket beside its port (see common.backend_http.BackendPool)
        shared["cluster"] = {**conf.get("cluster", {}), "local_socket_dir": str(
            opts.data_dir.resolve() / "run" / "sockets")}
    node_tables = ("node", "daemons", "replicator", "db_replicator", "auditor", "updater",
                   "expirer", "reaper")
    out: dict[str, dict[str, Any]] = {}
    for name, node in conf.get("nodes", {}).items():
        node_conf = dict(shared)
        for table in node_tables:
            if isinstance(conf.get(table), dict):
                node_conf[table] = dict(conf[table])
        node_conf["node"] = {**node_conf.get("node", {}), **node, "fsync": True,
                             "mount_check": False}
        node_conf["daemons"] = {**node_conf.get("daemons", {}), "enabled": opts.daemons}
        out[name] = node_conf
    # Every other table of cluster.toml ([proxy], [tempurl], [ratelimit], ...) configures
    # the proxy workers, so an operator can tune middlewares of the all-in-one there.
    proxy_conf = {k: v for k, v in conf.items()
                  if k not in ("nodes", "serve", *node_tables)}
    proxy_conf["cluster"] = shared["cluster"]
    proxy_conf["proxy"] = {**conf.get("proxy", {}), "bind_ip": opts.host,
                           "bind_port": opts.port, "workers": opts.workers,
                           # the workers' shared info-cache invalidation counters
                           "info_generations_file": str(
                               opts.data_dir.resolve() / "run" / "proxy-info-generations")}
    out["proxy"] = proxy_conf
    return out


async def wait_healthy(urls: list[str], within: float = 30.0) -> None:
    """Poll each /healthcheck until it answers 200, or fail after `within` seconds."""
    deadline = time.monotonic() + within
    pending = list(urls)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while pending:
            url = pending[0]
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        pending.pop(0)
                        continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not become healthy within {within:.0f}s")
            await asyncio.sleep(0.1)


class Supervisor:
    """Starts the cluster's processes, restarts any that die, stops them all on a signal."""

    def __init__(self, opts: ServeOptions, configs: dict[str, dict[str, Any]],
                 listeners: dict[str, socket.socket] | None = None) -> None:
        self.opts = opts
        self.configs = configs
        # each node's listening socket, held here for its whole life: a restarted node
        # inherits the same one, so its port cannot be lost while it is down
        self.listeners = listeners or {}
        self.conf_dir = opts.data_dir.resolve() / "run"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = False

    def _command(self, name: str) -> list[str]:
        if name.startswith("proxy"):
            conf_path = self.conf_dir / "proxy.toml"
            return [sys.executable, "-m", "swiftlike", "proxy", "--config", str(conf_path)]
        conf_path = self.conf_dir / f"{name}.toml"
        command = [sys.executable, "-m", "swiftlike", "node", "--config", str(conf_path)]
        if name in self.listeners:
            command += ["--listen-fd", str(self.listeners[name].fileno())]
        return command

    def start(self) -> None:
        """Write each process's config, then start nodes and `workers` proxy processes.

        The proxy workers all bind the same port with SO_REUSEPORT, so the kernel spreads
        connections over them and every core serves requests.
        """
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        for name, conf in self.configs.items():
            _write_atomic(self.conf_dir / f"{name}.toml", dump_toml(conf))
        for name in self.configs:
            if name != "proxy":
                self._spawn(name)
        for worker in range(1, max(1, self.opts.workers) + 1):
            self._spawn(f"proxy-{worker}")

    def _spawn(self, name: str) -> None:
        fds = (self.listeners[name].fileno(),) if name in self.listeners else ()
        self.procs[name] = subprocess.Popen(self._command(name), start_new_session=True,
                                            pass_fds=fds)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values()]

    async def watch(self) -> None:
        """Restart a process that exits on its own (with a pause, so a crash loop stays slow).

        A node's listening socket is closed while the node is down, so the proxy gets
        refusals (and goes to another node at once) rather than connections nobody
        will accept; it is bound again just before the node is started again.
        """
        unbound: set[str] = set()
        while not self.stopping:
            await asyncio.sleep(0.5)
            for name in sorted(unbound):
                if self._rebind(name):
                    unbound.discard(name)
                    self._spawn(name)
            for name, proc in list(self.procs.items()):
                if proc.poll() is not None and not self.stopping and name not in unbound:
                    print(f"swiftlike: {name} exited with {proc.returncode}; restarting",
                          file=sys.stderr, flush=True)
                    self._release(name)
                    await asyncio.sleep(1.0)
                    if self.stopping:
                        break
                    if self._rebind(name):
                        self._spawn(name)
                    else:
                        host, port = node_address(self.configs[name])
                        print(f"swiftlike: {name} cannot restart: its port "
                              f"{host}:{port} is taken; retrying",
                              file=sys.stderr, flush=True)
                        unbound.add(name)

    def _release(self, name: str) -> None:
        sock = self.listeners.get(name)
        if sock is not None:
            sock.close()  # connections queued for the dead node are reset

    def _rebind(self, name: str) -> bool:
        """Bind a node's port again (True), or False while someone else holds it.
        Processes without a socket of ours (the proxy workers) need none."""
        if name not in self.listeners:
            return True
        sock = listen_socket(*node_address(self.configs[name]))
        if sock is None:
            return False
        self.listeners[name] = sock
        return True

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping = True
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            remaining = max(0.1, deadline - time.monotonic())
            try:
                proc.wait(remaining)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for sock in self.listeners.values():
            sock.close()


def ready_message(opts: ServeOptions) -> str:
    base = f"http://{opts.host}:{opts.port}"
    return (
        f"swiftlike ready: {base} (data in {opts.data_dir})\n"
        f"  try: swift -A {base}/auth/v1.0 -U test:tester -K testing stat"
    )


async def serve(opts: ServeOptions) -> int:
    """Run the all-in-one cluster until SIGINT/SIGTERM; returns the exit status."""
    by_port: dict[int, socket.socket] = {}
    try:
        return await _serve(opts, by_port)
    finally:
        for sock in by_port.values():
            sock.close()


def node_address(process_conf: dict[str, Any]) -> tuple[str, int]:
    """Where a node process listens: its [node] bind_ip and bind_port."""
    return process_conf["node"]["bind_ip"], int(process_conf["node"]["bind_port"])


def bind_node_ports(configs: dict[str, dict[str, Any]],
                    by_port: dict[int, socket.socket]) -> dict[str, socket.socket]:
    """Each node's listening socket by process name, bound now where not yet bound.

    ConfigError names the node whose port is taken (another cluster, an old node still
    running): serving anyway would leave that node down, and a health check answered by
    the stranger would hide it.
    """
    listeners: dict[str, socket.socket] = {}
    for name, conf in configs.items():
        if name == "proxy":
            continue
        host, port = node_address(conf)
        sock = by_port.get(port) or listen_socket(host, port)
        if sock is None:
            raise ConfigError(f"{name}'s port {host}:{port} is already in use "
                              "(is another swiftlike serve running on this data?)")
        by_port[port] = listeners[name] = sock
    return listeners


async def _serve(opts: ServeOptions, by_port: dict[int, socket.socket]) -> int:
    try:
        conf = prepare_cluster(opts, by_port)
    except ConfigError as exc:
        print(f"swiftlike: {exc}", file=sys.stderr)
        return 2
    configs = process_configs(conf, opts)
    if not port_is_free(opts.host, opts.port):
        print(f"swiftlike: {opts.host}:{opts.port} is already in use (try --port)",
              file=sys.stderr)
        return 2
    try:
        listeners = bind_node_ports(configs, by_port)
    except ConfigError as exc:
        print(f"swiftlike: {exc}", file=sys.stderr)
        return 2
    sup = Supervisor(opts, configs, listeners)
    stop_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_event.set)
    watcher: asyncio.Task[None] | None = None
    try:
        sup.start()  # inside: a spawn failing part-way still stops the ones started
        urls = [
            f"http://{n['node']['bind_ip']}:{n['node']['bind_port']}/healthcheck"
            for name, n in configs.items() if name != "proxy"
        ]
        urls.append(f"http://{opts.host}:{opts.port}/healthcheck")
        health = asyncio.ensure_future(wait_healthy(urls, within=60))
        stopper = asyncio.ensure_future(stop_event.wait())
        done, _ = await asyncio.wait({health, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stopper in done:
            health.cancel()
            return 0
        stopper.cancel()
        health.result()
        # one write: the children log to the same terminal or pipe, and print() makes
        # two when stdout is unbuffered (PYTHONUNBUFFERED), so a log line could land
        # between the command a newcomer copies and its newline
        sys.stdout.write(ready_message(opts) + "\n")
        sys.stdout.flush()
        watcher = asyncio.ensure_future(sup.watch())
        await stop_event.wait()
        return 0
    except TimeoutError as exc:
        print(f"swiftlike: {exc}", file=sys.stderr)
        return 1
    finally:
        if watcher:
            watcher.cancel()
        sup.stop()
        print("swiftlike: stopped", file=sys.stderr, flush=True)
