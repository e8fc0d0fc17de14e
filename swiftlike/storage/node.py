"""Per-process state of a storage node, passed to every server instead of globals.

Holds the settings read from the [cluster] and [node] sections, the thread pools that
keep blocking file and SQLite work off the event loop, and the HTTP client session used
for container/account updates.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from aiohttp import web

from swiftlike.common.node_client import NodeClient
from swiftlike.common.timestamp import Timestamp, header_timestamp
from swiftlike.storage.durable_io import free_bytes, reserve_bytes
from swiftlike.storage.group_commit import DeviceFlusher, group_commit_supported

T = TypeVar("T")
#: how long a free-space check serves small writes (see StorageNode.has_space_for)
SPACE_CHECK_SECONDS = 0.25


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


class DeviceUnavailable(Exception):
    """The device is not here (or not mounted): 507."""


class StorageNode:
    """Settings, thread pools and the client session shared by the node's servers."""

    def __init__(self, conf: dict) -> None:
        cluster = conf.get("cluster", {})
        node = conf.get("node", {})
        self.devices = node.get("devices", "/srv/node")
        self.mount_check = _as_bool(node.get("mount_check", False))
        self.fsync = _as_bool(node.get("fsync", True))
        self.use_xattr = _as_bool(node.get("xattr", True))
        # big bodies go to disk with O_DIRECT from the receive buffers (see direct_write);
        # only with fsync on: without it a synchronous device write buys nothing
        self.direct_io = self.fsync and _as_bool(node.get("direct_io", True))
        self.fallocate_reserve = node.get("fallocate_reserve", 0)
        # device path -> (monotonic time of the check, bytes above the reserve left)
        self._spare_space: dict[str, tuple[float, int]] = {}
        self.hash_prefix = str(cluster.get("hash_path_prefix", "")).encode()
        self.hash_suffix = str(cluster.get("hash_path_suffix", "")).encode()
        self.update_timeout = float(node.get("container_update_timeout", 2.0))
        #: nodes of this host also listen on Unix sockets here (``swiftlike serve``)
        self.local_socket_dir: str | None = cluster.get("local_socket_dir")
        self.account_update_interval = float(node.get("account_update_interval", 1.0))
        self.small_object_limit = int(node.get("small_object_limit", 64 * 1024))
        self.chunk_size = int(node.get("disk_chunk_size", 64 * 1024))
        self.db_cache_size = int(node.get("db_cache_size", 256))
        # the account and container servers' open databases (BrokerCache); a database
        # moved to quarantine must leave all of them, whoever found it damaged
        self.broker_caches: list[Any] = []
        # Metadata lookups (listdir, xattr, small reads) cost tens of microseconds from the
        # page cache, while a thread-pool hop costs hundreds under load: run them inline.
        self.inline_lookups = _as_bool(node.get("inline_lookups", True))
        self.io_pool = ThreadPoolExecutor(int(node.get("io_threads", 16)),
                                          thread_name_prefix="node-io")
        self.db_pool = ThreadPoolExecutor(int(node.get("db_threads", 8)),
                                          thread_name_prefix="node-db")
        # "group": small writes share one syncfs per device (see group_commit); "fsync":
        # each write fsyncs its own file and directories. Both are durable before a 2xx.
        durability = str(node.get("durability", "group")).strip().lower()
        if durability not in ("group", "fsync"):
            raise ValueError(f"[node] durability must be 'group' or 'fsync', not {durability!r}")
        self.group_commit = (self.fsync and durability == "group"
                             and group_commit_supported())
        self.flush_pool = ThreadPoolExecutor(int(node.get("flush_threads", 4)),
                                             thread_name_prefix="node-flush")
        self._flushers: dict[str, DeviceFlusher] = {}
        self._client: NodeClient | None = None
        self.ring_path = cluster.get("ring") or None
        self._ring: Any = None

    @property
    def ring(self) -> Any | None:
        """The cluster's ring when the config names one that exists (loaded on first use;
        it reloads itself when the file changes), else None."""
        if self._ring is None and self.ring_path and os.path.exists(self.ring_path):
            from ring import Ring

            self._ring = Ring(self.ring_path, hash_prefix=self.hash_prefix,
                              hash_suffix=self.hash_suffix)
        return self._ring

    def device_path(self, device: str) -> str:
        """Directory of a device, or DeviceUnavailable (507) when it is not here."""
        path = os.path.join(self.devices, device)
        if self.mount_check:
            if not os.path.ismount(path):
                raise DeviceUnavailable(device)
        elif not os.path.isdir(path):
            raise DeviceUnavailable(device)
        return path

    def has_space_for(self, device_path: str, length: int) -> bool:
        """Would writing ``length`` bytes still leave fallocate_reserve free?

        A small write reuses a check at most :data:`SPACE_CHECK_SECONDS` old, less what
        was admitted since (a ``statvfs`` per replica write was about 1% of a small
        PUT's CPU); a bigger one, and any call of unknown size (0: a chunked body's
        periodic checks), always asks the file system. Either way ENOSPC while writing
        still answers 507.
        """
        length = max(length, 0)
        now = time.monotonic()
        checked = self._spare_space.get(device_path)
        if checked is None or not 0 < length <= self.small_object_limit or \
                now - checked[0] > SPACE_CHECK_SECONDS:
            reserve = reserve_bytes(device_path, self.fallocate_reserve or 0)
            checked = (now, free_bytes(device_path) - reserve)
        spare = checked[1] - length
        self._spare_space[device_path] = (checked[0], spare if spare >= 0 else checked[1])
        return spare >= 0

    def flusher(self, device_path: str) -> DeviceFlusher:
        """The group-commit flusher of a device (one per device directory)."""
        flusher = self._flushers.get(device_path)
        if flusher is None:
            flusher = self._flushers[device_path] = DeviceFlusher(device_path,
                                                                  self.flush_pool)
        return flusher

    async def run_io(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.io_pool, functools.partial(func, *args, **kwargs))

    async def run_io_to_end(self, func: Callable[..., T], *args: Any,
                            on_cancel: Callable[[T], object] | None = None) -> T:
        """run_io, except that cancelling the caller waits for ``func`` to finish.

        A worker thread cannot be stopped: a caller cancelled while it writes (a node
        shutting down) would otherwise close the file under it, and the rest of the
        write would land in whatever file next gets that descriptor number. When the
        call finishes after all, ``on_cancel`` gets its result (to close what it
        opened); then the cancellation goes on.
        """
        future = asyncio.ensure_future(self.run_io(func, *args))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait([future])
            if on_cancel is not None and not future.cancelled() \
                    and future.exception() is None:
                on_cancel(future.result())
            raise

    async def run_lookup(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A short metadata lookup: inline on the loop (inline_lookups), else in the pool."""
        if self.inline_lookups:
            return func(*args, **kwargs)
        return await self.run_io(func, *args, **kwargs)

    async def run_db(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.db_pool, functools.partial(func, *args, **kwargs))

    @property
    def client(self) -> NodeClient:
        """Keep-alive requests to other nodes (container and account updates)."""
        if self._client is None:
            self._client = NodeClient(conn_timeout=self.update_timeout,
                                      node_timeout=self.update_timeout,
                                      socket_dir=self.local_socket_dir)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        self.io_pool.shutdown(wait=False, cancel_futures=True)
        self.flush_pool.shutdown(wait=True)
        for flusher in self._flushers.values():
            flusher.close()
        self.db_pool.shutdown(wait=True)


def request_timestamp(request: web.Request, header: str = "X-Timestamp") -> Timestamp | None:
    """A request's timestamp header; None when missing or malformed (the caller's 400)."""
    return header_timestamp(request.headers, header)


def error_response(status: int, text: str = "", headers: dict[str, str] | None = None
                   ) -> web.Response:
    """A plain-text error with a message that says what was wrong."""
    body = (text + "\n") if text else None
    return web.Response(status=status, text=body, headers=headers)
