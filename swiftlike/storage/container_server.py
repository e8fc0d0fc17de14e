"""Container verbs of a storage node, and the object-row updates object servers send.

A container PUT/DELETE is reported to the account servers named by the proxy
(X-Account-Host/Partition/Device) right away; object-row changes are reported at most once
per ``account_update_interval`` per container, to the account location remembered in the
container database. Reports that fail are queued in async_pending.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from swiftlike.common.timestamp import Timestamp
from swiftlike.storage.container_db import ZERO, ContainerBroker, content_type_row
from swiftlike.storage.db import DatabaseNotFound
from swiftlike.storage.db_server_common import (
    RowBatcher,
    backend_headers,
    db_path,
    listing_response,
    load_info,
    make_broker_cache,
    metadata_from_headers,
    metadata_headers,
    open_live_for_write,
    post_metadata,
    quarantining_damage,
)
from swiftlike.storage.node import (
    DeviceUnavailable,
    StorageNode,
    error_response,
    request_timestamp,
)
from swiftlike.storage.routing import Route
from swiftlike.storage.updates import (
    UpdateTarget,
    account_report_headers,
    object_row,
    parse_update_targets,
    pending_record,
    send_updates,
    targets_in_headers,
    write_async_pending,
)

LOG = logging.getLogger(__name__)
META_PREFIXES = ("x-container-meta-", "x-container-sysmeta-")
META_EXACT = frozenset({"x-container-read", "x-container-write", "x-versions-location",
                        "x-history-location", "x-container-sync-to", "x-container-sync-key"})


class ContainerServer:
    """Container databases of this node; ``node`` supplies settings and pools."""

    def __init__(self, node: StorageNode) -> None:
        self.node = node
        self.brokers = make_broker_cache(node, ContainerBroker)
        self.batcher = RowBatcher(node, park_rows=True)
        self._report_timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._address: tuple[str, int] | None = None
        self._device_path: Callable[[str], str] = node.device_path

    def serve_address(self, ip: str, port: int,
                      device_path: Callable[[str], str] | None = None) -> None:
        """Where this node's server listens: rows for it may skip HTTP (:meth:`merge`).

        Not for a wildcard address: the ring names nodes by the address others reach
        them at, which a wildcard bind does not say. ``device_path``: the dispatcher's
        device check (cached, as for requests), else the node's.
        """
        self._address = None if ip in ("", "0.0.0.0", "::") else (ip.strip("[]"), port)
        self._device_path = device_path or self.node.device_path

    def serves(self, target: UpdateTarget) -> bool:
        if self._address is None:
            return False
        node = target.node
        return (node["ip"], node["port"]) == self._address

    async def merge(self, target: UpdateTarget, account: str, container: str,
                    rows: list[dict[str, Any]]) -> bool:
        """A ``PATCH`` of ``rows`` to a database of this node, without the HTTP."""

        async def apply(route: Route, device_path: str, broker: ContainerBroker) -> bool:
            await self._merge_rows(route, device_path, broker, rows)
            return True

        return await self._on_own_database(target, account, container,
                                           "local container update", apply)

    async def park_unflushed(self, target: UpdateTarget, account: str, container: str,
                             row: dict[str, Any], device_path: str) -> bool:
        """Park ``row`` for a database of this node on ``device_path`` without waiting for
        a flush: the object server's own next flush of that device covers it."""

        async def apply(route: Route, own_device_path: str, broker: ContainerBroker
                        ) -> bool:
            if own_device_path != device_path:
                return False  # another file system: the object's flush would not cover it
            if not await self.batcher.park_unflushed(broker, [row], device_path):
                return False
            self._schedule_report(route, device_path, broker)
            return True

        return await self._on_own_database(target, account, container, "parking a row for",
                                           apply)

    async def _on_own_database(
            self, target: UpdateTarget, account: str, container: str, action: str,
            apply: Callable[[Route, str, ContainerBroker], Awaitable[bool]]) -> bool:
        """``apply`` to the database ``target`` names on this node; False as a failed
        ``PATCH`` would be (the caller queues the row in async_pending or sends it the
        usual way): no such device (507), no such container (404), or an error."""
        try:
            device_path = self._device_path(target.device)
            route = Route(target.device, target.partition, account, container)
            broker = self.broker(device_path, route)
            if not broker.exists():
                return False
            return await apply(route, device_path, broker)
        except DeviceUnavailable:
            return False
        except Exception as err:
            LOG.warning("%s %s/%s on %s failed: %r", action, account, container,
                        target.device, err)
            return False

    def broker(self, device_path: str, route: Route) -> ContainerBroker:
        assert route.container is not None
        path = db_path(self.node, device_path, "containers", route.partition, route.account,
                       route.container)
        return self.brokers.get(path)  # type: ignore[return-value]

    async def handle(self, request: web.Request, route: Route, device_path: str
                     ) -> web.StreamResponse:
        return await quarantining_damage(
            self.node, self.broker(device_path, route).db_path,
            lambda: self._dispatch(request, route, device_path))

    async def _dispatch(self, request: web.Request, route: Route, device_path: str
                        ) -> web.StreamResponse:
        method = request.method
        if route.obj is not None:
            if method in ("PUT", "POST", "DELETE"):
                return await self.object_row(request, route, device_path)
            return error_response(405, f"{method} not allowed on container rows")
        handler = {"PUT": self.put, "GET": self.get_or_head, "HEAD": self.get_or_head,
                   "POST": self.post, "DELETE": self.delete,
                   "PATCH": self.update_rows}.get(method)
        if handler is None:
            return error_response(405, f"{method} not allowed on containers")
        return await handler(request, route, device_path)

    def _headers(self, info: dict[str, Any]) -> dict[str, str]:
        return {**backend_headers(info), **metadata_headers(info),
                "X-Container-Object-Count": str(info["object_count"]),
                "X-Container-Bytes-Used": str(info["bytes_used"]),
                # as Swift's: when the container was last PUT
                "Last-Modified": Timestamp(info["put_timestamp"]).http_date}

    async def put(self, request: web.Request, route: Route, device_path: str
                  ) -> web.StreamResponse:
        timestamp = request_timestamp(request)
        if timestamp is None:
            return error_response(400, "Missing or invalid X-Timestamp")
        broker = self.broker(device_path, route)
        assert route.container is not None
        try:
            opened = await self._create_or_revive(broker, route, device_path, timestamp)
        except DatabaseNotFound:
            # the replicator reclaimed the old, deleted database while this waited to
            # write to it: this PUT makes a new one
            opened = await self._create_or_revive(broker, route, device_path, timestamp)
        if isinstance(opened, web.Response):
            return opened
        created = opened
        changes = metadata_from_headers(request, META_PREFIXES, META_EXACT, timestamp)
        await self.node.run_db(broker.update_metadata, changes)
        targets = targets_in_headers(request.headers, "Account")
        if targets:
            first = targets[0]
            await self.node.run_db(broker.set_account_target,
                                   ",".join(t.host for t in targets), first.partition,
                                   ",".join(t.device for t in targets))
        await self.account_update(route, device_path, broker, targets)
        return web.Response(status=201 if created else 202)

    async def _create_or_revive(self, broker: ContainerBroker, route: Route,
                                device_path: str, timestamp: Timestamp
                                ) -> bool | web.Response:
        """Whether this PUT created the container (or revived a deleted one), or the
        409 for a deletion newer than it."""
        assert route.container is not None
        if not broker.exists() and await self.node.run_db(
                broker.create, os.path.join(device_path, "tmp"), route.account,
                route.container, timestamp.internal):
            return True
        was_deleted = await self.node.run_db(broker.is_deleted)
        info = await self.node.run_db(broker.merge_timestamps, timestamp.internal)
        if broker.is_deleted_info(info):
            return error_response(409, "Container was deleted more recently",
                                  backend_headers(info))
        return bool(was_deleted)

    async def get_or_head(self, request: web.Request, route: Route, device_path: str
                          ) -> web.StreamResponse:
        broker = self.broker(device_path, route)
        info = await load_info(self.node, broker)
        if info is None:
            return web.Response(status=404)
        headers = self._headers(info)
        if broker.is_deleted_info(info) and not (
                request.method == "GET" and
                request.headers.get("X-Backend-Include-Deleted", "").lower() == "true"):
            return web.Response(status=404, headers=backend_headers(info))
        if request.method == "HEAD":
            return web.Response(status=204, headers=headers)
        assert route.container is not None
        return await listing_response(request, self.node, "container", route.container,
                                      broker, broker.list_objects, self._headers)

    async def post(self, request: web.Request, route: Route, device_path: str
                   ) -> web.StreamResponse:
        return await post_metadata(self.node, request, self.broker(device_path, route),
                                   META_PREFIXES, META_EXACT)

    async def delete(self, request: web.Request, route: Route, device_path: str
                     ) -> web.StreamResponse:
        broker = self.broker(device_path, route)
        opened = await open_live_for_write(self.node, request, broker)
        if isinstance(opened, web.Response):
            return opened
        timestamp, info = opened
        if not await self.node.run_db(broker.is_empty):
            return error_response(409, "There was a conflict when trying to complete your "
                                       "request: the container is not empty")
        if timestamp <= Timestamp(info["put_timestamp"]):
            return error_response(409, "The container was created after this DELETE",
                                  backend_headers(info))
        await self.node.run_db(broker.delete_db, timestamp.internal)
        targets = targets_in_headers(request.headers, "Account")
        await self.account_update(route, device_path, broker, targets)
        return web.Response(status=204)

    async def object_row(self, request: web.Request, route: Route, device_path: str
                         ) -> web.StreamResponse:
        """PUT/DELETE of one object row (sent by object servers and the updater); POST
        with X-Content-Type: a new content type alone, stamped X-Timestamp."""
        timestamp = request_timestamp(request)
        if timestamp is None:
            return error_response(400, "Missing or invalid X-Timestamp")
        broker = self.broker(device_path, route)
        if not broker.exists():
            return error_response(404, "No such container")
        if request.method == "PUT" and not request.headers.get("X-Size", "").isdigit():
            return error_response(400, "Missing or invalid X-Size")
        if request.method == "POST" and not request.headers.get("X-Content-Type"):
            return error_response(400, "Missing X-Content-Type")
        assert route.obj is not None
        # the row the object server would have batched, from the same headers
        row = object_row(request.method, route.obj, timestamp, request.headers)
        await self._merge_rows(route, device_path, broker, [row])
        return web.Response(status={"PUT": 201, "POST": 202}.get(request.method, 204))

    async def update_rows(self, request: web.Request, route: Route, device_path: str
                          ) -> web.StreamResponse:
        """``PATCH``: many object rows in one request (object servers batch their updates).

        The body is a JSON list of rows (name, created_at, size, content_type, etag,
        deleted). They join the next shared transaction of this database; each row is
        applied by timestamp (the newest wins, also within one batch). 202 once committed.
        """
        if request_timestamp(request) is None:
            return error_response(400, "Missing or invalid X-Timestamp")
        broker = self.broker(device_path, route)
        if not broker.exists():
            return error_response(404, "No such container")
        try:
            rows = parse_object_rows(await request.read())
        except ValueError as err:
            return error_response(400, f"Invalid PATCH body: {err}")
        await self._merge_rows(route, device_path, broker, rows)
        return web.Response(status=202)

    async def _merge_rows(self, route: Route, device_path: str, broker: ContainerBroker,
                          rows: list[dict[str, Any]]) -> None:
        """Rows into the next shared (durable) commit; a change is reported to the account."""
        if await self.batcher.merge_rows(broker, rows, device_path):
            self._schedule_report(route, device_path, broker)

    # ---- account updates ---------------------------------------------------------------
    def _schedule_report(self, route: Route, device_path: str, broker: ContainerBroker
                         ) -> None:
        if broker.db_path in self._report_timers:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._report_timers.pop(broker.db_path, None)
            task = loop.create_task(self.account_update(route, device_path, broker, None))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self._report_timers[broker.db_path] = loop.call_later(
            self.node.account_update_interval, fire)

    async def account_update(self, route: Route, device_path: str, broker: ContainerBroker,
                             targets: list[UpdateTarget] | None) -> None:
        """Report this container's timestamps and counts to its account servers."""
        info = await self.node.run_db(broker.get_info)
        if targets is None:
            # the ring's account servers: the ones the container's PUT named may have
            # moved since (a rebalance, a device's new address); the stored ones only
            # for a node that has no ring
            targets = self._account_targets(route.account) or parse_update_targets(
                info["account_host"], info["account_partition"], info["account_device"])
        if not targets:
            return
        assert route.container is not None
        headers = account_report_headers(info)
        failed = await send_updates(self.node.client, targets, "PUT", route.account,
                                    route.container, None, headers, self.node.update_timeout)
        if failed:
            record = pending_record("PUT", route.account, route.container, None, "account",
                                    headers, failed)
            await self.node.run_io(write_async_pending, device_path, record,
                                   info["put_timestamp"], self.node.hash_prefix,
                                   self.node.hash_suffix, self.node.fsync)
        else:
            await self.node.run_db(broker.mark_reported, info)

    def _account_targets(self, account: str) -> list[UpdateTarget]:
        ring = self.node.ring
        if ring is None:
            return []
        try:
            part, nodes = ring.get_nodes(account)
        except Exception as err:  # a ring that cannot answer: the stored targets
            LOG.warning("ring lookup for account %s failed: %r", account, err)
            return []
        return UpdateTarget.of_nodes(part, nodes)

    async def close(self) -> None:
        for timer in self._report_timers.values():
            timer.cancel()
        self._report_timers.clear()
        for task in list(self._tasks):
            task.cancel()
        await self.node.run_db(self.brokers.close_all)


def parse_object_rows(raw: bytes) -> list[dict[str, Any]]:
    """The rows of a ``PATCH`` body, checked; ValueError says what is wrong."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"not JSON ({err})") from err
    if not isinstance(data, list):
        raise ValueError("expected a JSON list of rows")
    rows = []
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"row {index} is not an object")
        name = item.get("name")
        if not isinstance(name, str) or not name or "\x00" in name:
            raise ValueError(f"row {index} has no valid name")
        stamp = item.get("created_at")
        try:
            created_at = Timestamp(stamp).internal if isinstance(stamp, str) else None
        except ValueError:
            created_at = None
        if created_at is None:
            raise ValueError(f"row {index} has no valid created_at")
        deleted = item.get("deleted", 0)
        size = item.get("size", 0)
        if deleted not in (0, 1) or not isinstance(size, int) or isinstance(size, bool) \
                or size < 0:
            raise ValueError(f"row {index} has an invalid size or deleted flag")
        content_type = item.get("content_type", "")
        etag = item.get("etag", "")
        if not isinstance(content_type, str) or not isinstance(etag, str):
            raise ValueError(f"row {index} has an invalid content_type or etag")
        ctype_stamp = item.get("ctype_timestamp")
        if ctype_stamp is not None:
            try:
                ctype_stamp = Timestamp(ctype_stamp).internal
            except (TypeError, ValueError) as err:
                raise ValueError(f"row {index} has an invalid ctype_timestamp") from err
            rows.append(content_type_row(name, content_type, ctype_stamp)
                        if Timestamp(created_at) == ZERO else
                        {**_data_row(name, created_at, size, content_type, etag, deleted),
                         "ctype_timestamp": ctype_stamp})
            continue
        rows.append(_data_row(name, created_at, size, content_type, etag, deleted))
    return rows


def _data_row(name: str, created_at: str, size: int, content_type: str, etag: str,
              deleted: int) -> dict[str, Any]:
    return {"name": name, "created_at": created_at, "size": size if not deleted else 0,
            "content_type": content_type if not deleted else "",
            "etag": etag.strip('"') if not deleted else "", "deleted": int(deleted)}
