"""The internal HTTP client that proxies and daemons use to talk to storage nodes.

Requests with a bytes body or none go through :mod:`swiftlike.common.backend_http`, a
lean keep-alive HTTP/1.1 client (see there why); streamed uploads go through one
shared aiohttp ``ClientSession``. Either way a small request to a node costs one round
trip on an open socket, not a TCP handshake. Every call has two timeouts:
``conn_timeout`` to get a connection and ``node_timeout`` for each read from the node.
Bodies are never decompressed here (a stored object may carry
``Content-Encoding: gzip``; we pass its bytes verbatim).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from yarl import URL

from swiftlike.common.backend_http import BackendPool, NodeResponse, has_plain_body
from swiftlike.common.nodes import node_key  # noqa: F401  (its callers' import path)

#: Exceptions meaning "this node did not answer properly": try another one.
NODE_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    TimeoutError,
    ConnectionError,
    OSError,
)


def node_path(
    node: Mapping[str, Any],
    part: int,
    account: str,
    container: str | None = None,
    obj: str | None = None,
) -> str:
    """The percent-encoded backend path ``/<device>/<part>/<a>[/<c>[/<o>]]``."""
    parts = [node["device"], str(part), account]
    if container is not None:
        parts.append(container)
        if obj is not None:
            parts.append(obj)
    return "/" + "/".join(p if _NEEDS_NO_QUOTING(p) else
                          quote(p.encode("utf-8", "surrogateescape"), safe="") for p in parts)


#: names made only of the characters ``quote(..., safe="")`` leaves alone (most names):
#: a regex match is several times cheaper than encoding and quoting them
_NEEDS_NO_QUOTING = re.compile(r"[A-Za-z0-9_.~-]*").fullmatch


class BackendRequest(aiohttp.ClientRequest):
    """A client request without aiohttp's automatic headers.

    Nodes need none of ``Accept``, ``Accept-Encoding`` or ``User-Agent``; leaving them
    out here (rather than through ``skip_auto_headers``, which builds a header
    dictionary for every request) saves work on both ends of every backend call.
    """

    def update_auto_headers(self, skip_auto_headers: Any) -> None:
        return None


class NodeClient:
    """Pooled HTTP access to storage nodes with per-call timeouts.

    Create it inside a running event loop (or call :meth:`start` from one) and
    :meth:`close` it on shutdown.
    """

    def __init__(
        self,
        conn_timeout: float = 0.5,
        node_timeout: float = 10.0,
        pool_size: int = 512,
        pool_per_host: int = 64,
        socket_dir: str | None = None,
    ) -> None:
        self.conn_timeout = conn_timeout
        self.socket_dir = socket_dir  # nodes of this host on Unix sockets (BackendPool)
        self.node_timeout = node_timeout
        self._pool_size = pool_size
        self._pool_per_host = pool_per_host
        self._session: aiohttp.ClientSession | None = None
        self._pool: BackendPool | None = None
        self.timeout = aiohttp.ClientTimeout(
            total=None,
            connect=None,
            sock_connect=conn_timeout,
            sock_read=node_timeout,
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._pool_size,
                limit_per_host=self._pool_per_host,
                keepalive_timeout=30.0,
                ttl_dns_cache=300,
                enable_cleanup_closed=False,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),  # nodes set no cookies: skip the jar
                timeout=self.timeout,
                auto_decompress=False,
                request_class=BackendRequest,
                raise_for_status=False,
                read_bufsize=1024 * 1024,  # streamed GET bodies in ~1 MiB pieces
            )
        return self._session

    async def start(self) -> None:
        _ = self.session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
        if self._pool is not None:
            await self._pool.close()
        self._pool = None

    def request(
        self,
        node: Mapping[str, Any],
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        body: bytes | AsyncIterator[bytes] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> Any:
        """Start ``method path`` on ``node``; await it (or ``async with``) for the response.

        ``path`` must already be percent-encoded (see :func:`node_path`). The caller
        must read or release the response.
        """
        if has_plain_body(body):
            target = path
            if query:
                target += "?" + urlencode(query, quote_via=quote)
            return _PendingResponse(self._plain_request(node, method, target, headers, body,
                                                        timeout))
        url = f"http://{node['ip']}:{node['port']}{path}"
        if query:
            url += "?" + urlencode(query, quote_via=quote)
        return self.session.request(
            method,
            URL(url, encoded=True),
            headers=headers,
            data=body,
            timeout=timeout or self.timeout,
            allow_redirects=False,
            compress=None,
        )

    async def _plain_request(self, node: Mapping[str, Any], method: str, target: str,
                             headers: Mapping[str, str] | None, body: Any,
                             limits: aiohttp.ClientTimeout | None) -> NodeResponse:
        pool = self._pool
        if pool is None:
            pool = self._pool = BackendPool(self.conn_timeout, self.node_timeout,
                                            idle_per_node=self._pool_per_host,
                                            socket_dir=self.socket_dir)
        read_timeout = conn_timeout = None
        if limits is not None:
            read_timeout = limits.sock_read or limits.total
            conn_timeout = limits.sock_connect or limits.connect or limits.total
        return await pool.request(node["ip"], int(node["port"]), method, target,
                                  headers or {}, body, read_timeout=read_timeout,
                                  conn_timeout=conn_timeout)


class _PendingResponse:
    """What :meth:`NodeClient.request` returns: await it, or ``async with`` it."""

    __slots__ = ("_coro", "_response")

    def __init__(self, coro: Any) -> None:
        self._coro = coro
        self._response: NodeResponse | None = None

    def __await__(self) -> Any:
        return self._coro.__await__()

    async def __aenter__(self) -> NodeResponse:
        self._response = await self._coro
        return self._response

    async def __aexit__(self, *exc_info: object) -> None:
        if self._response is not None:
            self._response.release()
