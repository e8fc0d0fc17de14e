"""The storage node process: one aiohttp app serving every device of the node.

``make_app(conf)`` builds an aiohttp app (for embedders); ``start_node_server(conf)``
serves the same dispatcher with the node's own HTTP/1.1 server (:mod:`.node_http`),
which ``run_node(conf)`` (the CLI) binds to [node] bind_ip/bind_port until cancelled;
``[node] http_server = "aiohttp"`` serves it with aiohttp's low-level server instead.
Requests are dispatched by X-Backend-Server-Type, else by the number of path segments
(see docs/internal-protocol.md); replication verbs, /healthcheck and /recon/* are routed first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time

from aiohttp import web

from swiftlike.common.backend_http import local_socket_path
from swiftlike.common.gc_tuning import settle_after_startup
from swiftlike.storage.account_server import AccountServer
from swiftlike.storage.container_server import ContainerServer
from swiftlike.storage.db import DatabaseNotFound
from swiftlike.storage.node import DeviceUnavailable, StorageNode, error_response
from swiftlike.storage.node_http import BODY_STALL_SECONDS, IDLE_SECONDS, NodeHTTPServer
from swiftlike.storage.object_server import ObjectServer
from swiftlike.storage.recon import handle_recon
from swiftlike.storage.replication_server import handle_replication, replication_verb
from swiftlike.storage.routing import BadPath, parse_route

LOG = logging.getLogger(__name__)

NODE_KEY = web.AppKey("storage_node", StorageNode)
SERVERS_KEY = web.AppKey("storage_servers", dict)


#: How long a device found present is trusted without another stat (seconds).
DEVICE_CHECK_INTERVAL = 1.0


class NodeDispatcher:
    """Routes one request to the account, container or object server.

    The device check (a stat, or a mount check) runs on the event loop; on a disk busy
    with fsyncs one stat can stall the whole node, so a device found present is
    trusted for ``DEVICE_CHECK_INTERVAL`` seconds. A missing device is re-checked on
    every request; a device that vanishes within the interval fails its file
    operations instead.
    """

    def __init__(self, node: StorageNode) -> None:
        self.node = node
        self.servers = {"object": ObjectServer(node), "container": ContainerServer(node),
                        "account": AccountServer(node)}
        self._devices_seen: dict[str, tuple[float, str]] = {}

    def serve_address(self, ip: str, port: int) -> None:
        """The address this node listens on: container rows for it stay in-process."""
        containers = self.servers["container"]
        containers.serve_address(ip, port, self.device_path)
        self.servers["object"].updates.deliver_locally(containers)

    def device_path(self, device: str) -> str:
        """The device's directory; DeviceUnavailable when it is not there."""
        now = time.monotonic()
        seen = self._devices_seen.get(device)
        if seen is not None and seen[0] > now:
            return seen[1]
        path = self.node.device_path(device)
        if len(self._devices_seen) > 4096:
            self._devices_seen.clear()
        self._devices_seen[device] = (now + DEVICE_CHECK_INTERVAL, path)
        return path

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/healthcheck":
            return web.Response(text="OK")
        if path.startswith("/recon/"):
            return await handle_recon(request, self.node)
        if replication_verb(request) is not None:
            return await handle_replication(request, self.node)
        try:
            server_type, route = parse_route(request.raw_path,
                                             request.headers.get("X-Backend-Server-Type"))
        except BadPath as err:
            return error_response(400, f"Invalid path: {err}")
        try:
            device_path = self.device_path(route.device)
        except DeviceUnavailable:
            return error_response(507, f"{route.device} is not mounted")
        try:
            return await self.servers[server_type].handle(request, route, device_path)
        except DatabaseNotFound:
            # the replicator removed the database while this request waited to write
            # to it (DatabaseBroker.remove_if): not here, as for any missing database
            return error_response(404, "No such database here")


# read_bufsize: a streamed object body arrives in pieces of up to ~1 MiB, not 64 KiB, so
# the loop pauses/resumes the socket and wakes the PUT far less often.
#: the bytes of a body are stored as sent, whatever its Content-Encoding says
HANDLER_ARGS = {"max_field_size": 16384, "read_bufsize": 1024 * 1024,
                "auto_decompress": False}


async def close_dispatcher(dispatcher: NodeDispatcher) -> None:
    """Stop the servers' background work, then the node's pools and sessions."""
    await dispatcher.servers["object"].close()
    await dispatcher.servers["container"].close()
    await dispatcher.servers["account"].close()
    await dispatcher.node.close()


def make_app(conf: dict) -> web.Application:
    """The storage node app for the [cluster] and [node] sections of ``conf``."""
    node = StorageNode(conf)
    dispatcher = NodeDispatcher(node)
    app = web.Application(client_max_size=1024**2, handler_args=HANDLER_ARGS)
    app[NODE_KEY] = node
    app[SERVERS_KEY] = dispatcher.servers

    async def handle(request: web.Request) -> web.StreamResponse:
        return await dispatcher(request)

    app.router.add_route("*", "/{tail:.*}", handle)

    async def shutdown(_app: web.Application) -> None:
        await close_dispatcher(dispatcher)

    app.on_cleanup.append(shutdown)
    return app


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class RunningNode:
    """A node being served; ``cleanup()`` stops the server, then the node's work."""

    def __init__(self, server: NodeHTTPServer | web.ServerRunner, dispatcher: NodeDispatcher
                 ) -> None:
        self.server = server
        self.dispatcher = dispatcher

    @property
    def port(self) -> int:
        assert isinstance(self.server, NodeHTTPServer)
        return self.server.port

    async def cleanup(self) -> None:
        if isinstance(self.server, NodeHTTPServer):
            await self.server.close()
        else:
            await self.server.cleanup()
        await close_dispatcher(self.dispatcher)


async def start_node_server(conf: dict, host: str | None = None, port: int | None = None,
                            sock: socket.socket | None = None) -> RunningNode:
    """Serve the node for ``conf`` on host:port (default [node] bind_ip/bind_port; port 0
    picks a free one), or on the listening ``sock`` when given, with the node's own HTTP
    server; returns once it listens."""
    node_conf = conf.get("node", {})
    dispatcher = NodeDispatcher(StorageNode(conf))
    server = NodeHTTPServer(dispatcher,  # type: ignore[arg-type]
                            idle_timeout=float(node_conf.get("idle_timeout", IDLE_SECONDS)),
                            body_timeout=float(node_conf.get("client_timeout",
                                                             BODY_STALL_SECONDS)))
    bind_ip = host if host is not None else str(node_conf.get("bind_ip", "127.0.0.1"))
    await server.start(bind_ip,
                       port if port is not None else int(node_conf.get("bind_port", 6200)),
                       sock=sock)
    dispatcher.serve_address(server.host, server.port)
    await _listen_locally(server, conf.get("cluster", {}).get("local_socket_dir"), bind_ip)
    return RunningNode(server, dispatcher)


async def _listen_locally(server: NodeHTTPServer, socket_dir: str | None,
                          bind_ip: str) -> None:
    """The node's Unix socket, named by the address the ring (and so every client)
    knows it by: its configured bind_ip, not what the socket reports. A failure costs
    only the shortcut: clients use the port."""
    path = socket_dir and local_socket_path(socket_dir, bind_ip, server.port)
    if not path:
        if socket_dir:
            LOG.warning("no Unix socket for %s:%s: its path under %s is too long",
                        bind_ip, server.port, socket_dir)
        return
    try:
        os.makedirs(socket_dir, exist_ok=True)
        await server.listen_unix(path)
    except OSError as err:
        LOG.warning("no Unix socket at %s (clients use port %s): %r", path, server.port,
                    err)


async def _start_aiohttp(conf: dict, sock: socket.socket | None = None) -> RunningNode:
    """The same dispatcher on aiohttp's low-level server (no router, no middleware)."""
    node_conf = conf.get("node", {})
    dispatcher = NodeDispatcher(StorageNode(conf))
    server = web.Server(dispatcher, access_log=None, **HANDLER_ARGS)
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    site: web.BaseSite
    if sock is not None:
        site = web.SockSite(runner, sock, backlog=1024)
    else:
        site = web.TCPSite(runner, node_conf.get("bind_ip", "127.0.0.1"),
                           int(node_conf.get("bind_port", 6200)), backlog=1024,
                           reuse_address=True)
    await site.start()
    return RunningNode(runner, dispatcher)


async def run_node(conf: dict, sock: socket.socket | None = None) -> None:
    """Serve the node on [node] bind_ip:bind_port (or the listening ``sock``, bound by a
    supervisor) until cancelled.

    The caller chooses the loop; ``main_node(conf)`` runs this on uvloop.
    """
    node_conf = conf.get("node", {})
    logging.basicConfig(level=str(node_conf.get("log_level", "INFO")).upper())
    kind = str(node_conf.get("http_server", "lean")).strip().lower()
    if kind not in ("lean", "aiohttp"):
        raise ValueError(f"[node] http_server must be 'lean' or 'aiohttp', not {kind!r}")
    running = await (start_node_server(conf, sock=sock) if kind == "lean"
                     else _start_aiohttp(conf, sock))
    settle_after_startup()
    LOG.info("storage node serving %s on %s:%s (%s HTTP server)", node_conf.get("devices"),
             node_conf.get("bind_ip", "127.0.0.1"), node_conf.get("bind_port", 6200), kind)
    try:
        await asyncio.Event().wait()
    finally:
        await running.cleanup()


def main_node(conf: dict) -> None:
    """Blocking entry point: run_node on uvloop (when installed) until interrupted."""
    _install_uvloop()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_node(conf))
