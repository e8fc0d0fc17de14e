"""The proxy server: core app (routing to controllers), aiohttp glue, process runner.

``make_app(conf)`` builds an aiohttp application whose single catch-all route turns
the aiohttp request into a :class:`SwiftRequest` once, runs the middleware pipeline
around :class:`ProxyApp`, and streams the :class:`SwiftResponse` back.
``run_proxy(conf)`` serves it with ``reuse_port`` so several worker processes share
one port (start each worker with ``uvloop.run(run_proxy(conf))``), and hands Swift API
requests to the pipeline without aiohttp's router (:class:`SwiftFront`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

from aiohttp import web
from aiohttp.http import HttpVersion11

from ring import Ring
from swiftlike.common.config import hash_salts
from swiftlike.common.constraints import (
    Limits,
    check_account_name,
    check_container_name,
    check_utf8,
)
from swiftlike.common.gc_tuning import settle_after_startup
from swiftlike.common.node_client import NodeClient
from swiftlike.proxy.account_controller import AccountController
from swiftlike.proxy.base_controller import ProxyContext
from swiftlike.proxy.container_controller import ContainerController
from swiftlike.proxy.info import info_response, register_core_info
from swiftlike.proxy.info_generations import INFO_GENERATIONS_KEY, info_generations
from swiftlike.proxy.node_pool import ErrorLimiter, ReadOrder
from swiftlike.proxy.object_controller import ObjectController
from swiftlike.proxy.pipeline import (
    DEFAULT_PIPELINE,
    FIRST_QUERY_VALUES,
    Handler,
    InfoRegistry,
    SwiftRequest,
    SwiftResponse,
    build_pipeline,
    error_response,
    info_registry,
)

log = logging.getLogger("swiftlike.proxy")

HANDLER_KEY = web.AppKey("swiftlike_proxy_handler", object)
CONTEXT_KEY = web.AppKey("swiftlike_proxy_context", ProxyContext)
CLIENT_TIMEOUT_KEY = web.AppKey("swiftlike_proxy_client_timeout", float)
BODY_CHUNK = 1024 * 1024  # client body bytes the server buffers before it pauses reading


class ProxyApp:
    """The innermost handler: validates the path and hands it to a controller."""

    def __init__(self, ctx: ProxyContext, registry: InfoRegistry) -> None:
        self.ctx = ctx
        self.registry = registry
        self.accounts = AccountController(ctx)
        self.containers = ContainerController(ctx)
        self.objects = ObjectController(ctx)

    async def __call__(self, req: SwiftRequest) -> SwiftResponse:
        path = req.path
        if path == "/info":
            return info_response(req, self.registry)
        if not check_utf8(path):
            return error_response(412, "Invalid UTF8 or contains NULL")
        version, account, container, obj = req.split_path()
        if version != "v1" or not account:
            return error_response(404, "Bad URL")
        limits = self.ctx.limits
        message = check_account_name(account, limits)
        if message:
            return error_response(400, message)
        if obj:
            if not container:
                return error_response(400, "Container name cannot be empty")
            message = check_container_name(container, limits)
            if message:
                return error_response(400, message)
            return await self.objects.handle(req, account, container, obj)
        if container:
            message = check_container_name(container, limits)
            if message:
                return error_response(400, message)
            return await self.containers.handle(req, account, container)
        if container == "" and obj is not None:
            return error_response(400, "Container name cannot be empty")
        return await self.accounts.handle(req, account)


def build_context(conf: dict, ring: Any | None = None) -> ProxyContext:
    """The shared state of one proxy app from its config."""
    proxy_conf = conf.get("proxy", {})
    if ring is None:
        prefix, suffix = hash_salts(conf)
        ring = Ring(conf["cluster"]["ring"], hash_prefix=prefix, hash_suffix=suffix)
    client = NodeClient(
        conn_timeout=float(proxy_conf.get("conn_timeout", 0.5)),
        node_timeout=float(proxy_conf.get("node_timeout", 10.0)),
        socket_dir=conf.get("cluster", {}).get("local_socket_dir"),
    )
    limiter = ErrorLimiter(
        interval=float(proxy_conf.get("error_suppression_interval", 60.0)),
        limit=int(proxy_conf.get("error_suppression_limit", 10)),
    )
    return ProxyContext(
        ring=ring,
        client=client,
        limiter=limiter,
        limits=Limits.from_conf(proxy_conf),
        account_autocreate=bool(proxy_conf.get("account_autocreate", True)),
        info_ttl=float(proxy_conf.get("container_info_ttl", 3.0)),
        post_quorum_timeout=float(proxy_conf.get("post_quorum_timeout", 0.5)),
        read_order=ReadOrder(str(proxy_conf.get("sorting_method", "shuffle"))),
        generations=info_generations(conf),
    )


def make_app(conf: dict, *, ring: Any | None = None) -> web.Application:
    """The proxy as an aiohttp application (conf: parsed TOML with [cluster], [proxy], [auth])."""
    conf = dict(conf)
    conf.pop("_info_registry", None)
    conf.pop(INFO_GENERATIONS_KEY, None)
    registry = info_registry(conf)
    ctx = build_context(conf, ring)
    register_core_info(registry, ctx.limits, ctx.account_autocreate)
    names = list(conf.get("proxy", {}).get("pipeline", DEFAULT_PIPELINE))
    handler = build_pipeline(ProxyApp(ctx, registry), conf, names)
    app = web.Application(
        handler_args={"max_field_size": ctx.limits.max_header_size,
                      "max_line_size": ctx.limits.max_request_line,
                      # up to ~1 MiB of a large upload waits in memory (see BODY_CHUNK)
                      "read_bufsize": BODY_CHUNK},
    )
    app[HANDLER_KEY] = handler
    app[CONTEXT_KEY] = ctx
    app[CLIENT_TIMEOUT_KEY] = float(conf.get("proxy", {}).get("client_timeout", 60.0))

    async def close_client(_app: web.Application) -> None:
        await ctx.client.close()
        ctx.generations.close()

    app.on_cleanup.append(close_client)
    app.router.add_route("*", "/{tail:.*}", _aiohttp_entry)
    return app


async def _timed_body(request: web.Request, stall_limit: float) -> AsyncIterator[bytes]:
    """The client's body in chunks; TimeoutError when the client stalls (-> 408)."""
    content = request.content
    while True:
        # readchunk hands over each received piece as it is; read(n) would join the
        # pieces that piled up into a new bytes object, a copy of every body byte
        async with asyncio.timeout(stall_limit):
            chunk, end_of_http_chunk = await content.readchunk()
        if chunk:
            yield chunk
        elif not end_of_http_chunk:
            return


def to_swift_request(request: web.Request, client_timeout: float = 60.0) -> SwiftRequest:
    raw_path, _, raw_query = request.raw_path.partition("?")
    path = unquote_to_bytes(raw_path).decode("utf-8", "surrogateescape")
    if path.startswith("/v1.0/") and len(path) > 6:
        # Swift's other spelling of the API version: one spelling from here on, so no
        # middleware (auth above all) can take /v1.0/ for "not the Swift API"
        path = "/v1/" + path[6:]
    query: dict[str, str] = {}
    firsts: dict[str, str] = {}
    if raw_query:
        # a repeated parameter takes its last value, as Swift's (WebOb's) requests do;
        # the first values of repeated ones are kept for tempurl, which reads those
        for key, value in parse_qsl(raw_query, keep_blank_values=True,
                                    errors="surrogateescape"):
            if key in query:
                firsts.setdefault(key, query[key])
            query[key] = value
    body = _timed_body(request, client_timeout) if request.body_exists else None
    peer = request.transport.get_extra_info("peername") if request.transport else None
    req = SwiftRequest(
        request.method, path, query=query, headers=request.headers, body=body,
        host=request.host, scheme=request.scheme,
        remote=peer[0] if peer else None,
        # when the client's request arrived: shared HEADs started later may answer it
        environ={"swift.arrival": time.monotonic(), FIRST_QUERY_VALUES: firsts},
    )
    if req.method == "HEAD" and "Range" in req.headers:
        # as Swift's: a HEAD describes the whole object (a client sizing it with a
        # ranged HEAD must not get the range's length)
        req.headers.popall("Range", None)
        req.headers.popall("If-Range", None)
    return req


async def _aiohttp_entry(request: web.Request) -> web.StreamResponse:
    handler: Handler = request.app[HANDLER_KEY]  # type: ignore[assignment]
    req = to_swift_request(request, request.app[CLIENT_TIMEOUT_KEY])
    resp = await handler(req)
    return await send_response(request, resp)


class SwiftFront:
    """The serving proxy's request handler: Swift API requests skip aiohttp's router.

    Why: with one catch-all route there is nothing to route, yet an
    :class:`aiohttp.web.Application` resolves every request against its routes and
    sub-applications, builds match info and, once a sub-application with middlewares
    is mounted (the image API), runs a middleware of its own around every handler.
    Measured here with a bare handler and the raw load client: 36 us of server CPU per
    GET with aiohttp's low-level server against 51 us through an application with a
    mounted sub-application (5 alternations, medians). The proxy's own work per small
    GET is about 250 us, so this is about a twentieth of it.

    A request whose path begins like a mounted API (a sub-application's prefix or an
    extra route) still goes through the application, which routes it as before, to
    that API or to the Swift catch-all. The router can only pick a mounted API for a
    path beginning with its prefix, so everything else reaches the pipeline here,
    after the ``Expect`` handling the application would have done.
    """

    def __init__(self, app_handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
                 handler: Handler, client_timeout: float, mounted: Iterable[str] = ()) -> None:
        self.app_handler = app_handler
        self.handler = handler
        self.client_timeout = client_timeout
        self.mounted = tuple(mounted)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        if self.mounted and request.path.startswith(self.mounted):
            return await self.app_handler(request)
        if request.headers.get("Expect"):
            await _expect(request)
        resp = await self.handler(to_swift_request(request, self.client_timeout))
        return await send_response(request, resp)


async def _expect(request: web.BaseRequest) -> None:
    """Answer ``Expect`` as aiohttp's application does: 100 Continue now, else 417."""
    if request.version != HttpVersion11:
        return
    if request.headers.get("Expect", "").lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {request.headers['Expect']}")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the interim answer is not part of the response
    await request.writer.drain()


async def send_response(request: web.Request, resp: SwiftResponse) -> web.StreamResponse:
    """Write a SwiftResponse to the client, streaming iterator bodies chunk by chunk."""
    headers = resp.headers
    length = resp.content_length
    header_length = headers.popall("Content-Length", None)
    if length is None and header_length and header_length[0].isdigit():
        length = int(header_length[0])
    body = resp.body
    if isinstance(body, bytes) and request.method != "HEAD":
        return web.Response(status=resp.status, headers=headers, body=body)
    out = web.StreamResponse(status=resp.status, headers=headers)
    if length is not None and resp.status not in (204, 304):
        out.content_length = length
    try:
        await out.prepare(request)
        if request.method != "HEAD" and body is not None:
            async for chunk in resp.iter_body():
                await out.write(chunk)
        else:
            resp.close()
        await out.write_eof()
    except (asyncio.CancelledError, Exception):
        resp.close()
        if request.transport is not None:
            request.transport.abort()  # never a clean end for a broken body
        raise
    return out


def mount_apis(app: web.Application, extra_apps: dict[str, web.Application],
               extra_routes: dict[str, Any]) -> tuple[str, ...]:
    """Mount other APIs beside the Swift catch-all; returns the paths they begin with.

    Exact GET routes come first, then sub-applications under their prefixes; both take
    precedence over the catch-all route for the paths they match.
    """
    for path, route_handler in extra_routes.items():
        app.router.add_get(path, route_handler)
    for prefix, sub_app in extra_apps.items():
        app.add_subapp(prefix, sub_app)
    return (*extra_routes, *extra_apps)


async def run_proxy(
    conf: dict,
    sock: socket.socket | None = None,
    extra_apps: dict[str, web.Application] | None = None,
    extra_routes: dict[str, Any] | None = None,
) -> None:
    """Serve the proxy until cancelled; several processes may share the port.

    `extra_apps` mounts other APIs (prefix -> app, e.g. the image API at /image) on the
    same port, the all-in-one convention; their prefixes take precedence over the
    Swift API's catch-all route.
    """
    app = make_app(conf)
    mounted = mount_apis(app, extra_apps or {}, extra_routes or {})
    # auto_decompress=False: a body's Content-Encoding is the client's business. Swift
    # (and Glance) store the bytes as sent; aiohttp would decode them.
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           auto_decompress=False)
    await runner.setup()
    server = runner.server
    assert server is not None
    # before the first connection: each connection takes the handler when it opens
    server.request_handler = SwiftFront(  # type: ignore[assignment]
        server.request_handler, app[HANDLER_KEY],  # type: ignore[arg-type]
        app[CLIENT_TIMEOUT_KEY], mounted)
    if sock is not None:
        site: web.BaseSite = web.SockSite(runner, sock)
    else:
        proxy_conf = conf.get("proxy", {})
        site = web.TCPSite(
            runner,
            host=str(proxy_conf.get("bind_ip", "127.0.0.1")),
            port=int(proxy_conf.get("bind_port", 8080)),
            reuse_port=True,
            backlog=1024,
        )
    await site.start()
    settle_after_startup()
    log.info("proxy listening on %s", site.name)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
