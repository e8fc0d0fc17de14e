"""Account verbs of a storage node, and the container rows container servers report.

A container row for an account that has no database yet creates it (the account
autocreate Swift deployments with tempauth run with): a container can only exist because
a proxy accepted it, so its account exists too. A deleted account refuses rows (404).
"""

from __future__ import annotations

import os
from typing import Any

from aiohttp import web

from swiftlike.common.timestamp import Timestamp
from swiftlike.storage.account_db import AccountBroker
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
from swiftlike.storage.node import StorageNode, error_response, request_timestamp
from swiftlike.storage.routing import Route

META_PREFIXES = ("x-account-meta-", "x-account-sysmeta-")
META_EXACT = frozenset({"x-account-access-control"})


class AccountServer:
    """Account databases of this node; ``node`` supplies settings and pools."""

    def __init__(self, node: StorageNode) -> None:
        self.node = node
        self.brokers = make_broker_cache(node, AccountBroker)
        self.batcher = RowBatcher(node)

    def broker(self, device_path: str, route: Route) -> AccountBroker:
        path = db_path(self.node, device_path, "accounts", route.partition, route.account)
        return self.brokers.get(path)  # type: ignore[return-value]

    async def handle(self, request: web.Request, route: Route, device_path: str
                     ) -> web.StreamResponse:
        return await quarantining_damage(
            self.node, self.broker(device_path, route).db_path,
            lambda: self._dispatch(request, route, device_path))

    async def _dispatch(self, request: web.Request, route: Route, device_path: str
                        ) -> web.StreamResponse:
        method = request.method
        if route.container is not None:
            if method in ("PUT", "DELETE"):
                return await self.container_row(request, route, device_path)
            return error_response(405, f"{method} not allowed on account rows")
        handler = {"PUT": self.put, "GET": self.get_or_head, "HEAD": self.get_or_head,
                   "POST": self.post, "DELETE": self.delete}.get(method)
        if handler is None:
            return error_response(405, f"{method} not allowed on accounts")
        return await handler(request, route, device_path)

    def _headers(self, info: dict[str, Any]) -> dict[str, str]:
        return {**backend_headers(info), **metadata_headers(info),
                "X-Account-Container-Count": str(info["container_count"]),
                "X-Account-Object-Count": str(info["object_count"]),
                "X-Account-Bytes-Used": str(info["bytes_used"])}

    async def _ensure(self, broker: AccountBroker, device_path: str, account: str,
                      timestamp: Timestamp) -> bool:
        if broker.exists():
            return False
        return await self.node.run_db(broker.create, os.path.join(device_path, "tmp"),
                                      account, timestamp.internal)

    async def put(self, request: web.Request, route: Route, device_path: str
                  ) -> web.StreamResponse:
        timestamp = request_timestamp(request)
        if timestamp is None:
            return error_response(400, "Missing or invalid X-Timestamp")
        broker = self.broker(device_path, route)
        created = await self._ensure(broker, device_path, route.account, timestamp)
        if not created:
            info = await self.node.run_db(broker.merge_timestamps, timestamp.internal,
                                          None, False)
            if broker.is_deleted_info(info):
                # as Swift's: no undelete. The reaper is emptying it; once the
                # replicator has removed the database, a PUT makes a new account.
                return error_response(403, "Recently deleted", {
                    **backend_headers(info), "X-Account-Status": "Deleted"})
        changes = metadata_from_headers(request, META_PREFIXES, META_EXACT, timestamp)
        await self.node.run_db(broker.update_metadata, changes)
        return web.Response(status=201 if created else 202)

    async def get_or_head(self, request: web.Request, route: Route, device_path: str
                          ) -> web.StreamResponse:
        broker = self.broker(device_path, route)
        info = await load_info(self.node, broker)
        if info is None:
            return web.Response(status=404)
        if broker.is_deleted_info(info):
            return web.Response(status=404, headers={**backend_headers(info),
                                                     "X-Account-Status": "Deleted"})
        headers = self._headers(info)
        if request.method == "HEAD":
            return web.Response(status=204, headers=headers)
        return await listing_response(request, self.node, "account", route.account,
                                      broker, broker.list_containers, self._headers)

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
        if timestamp <= Timestamp(info["put_timestamp"]):
            return error_response(409, "The account was created after this DELETE",
                                  backend_headers(info))
        await self.node.run_db(broker.delete_db, timestamp.internal)
        return web.Response(status=204)

    async def container_row(self, request: web.Request, route: Route, device_path: str
                            ) -> web.StreamResponse:
        """A container's report: X-Put-Timestamp, X-Delete-Timestamp, counts."""
        headers = request.headers
        try:
            put = Timestamp(headers.get("X-Put-Timestamp") or 0)
            delete = Timestamp(headers.get("X-Delete-Timestamp") or 0)
            stamp = request_timestamp(request) or max(put, delete)
        except ValueError:
            return error_response(400, "Invalid X-Put-Timestamp or X-Delete-Timestamp")
        if request.method == "DELETE":
            delete = max(delete, stamp)
        if max(put, delete) == Timestamp(0):
            return error_response(400, "Missing X-Put-Timestamp / X-Delete-Timestamp")
        count, used = headers.get("X-Object-Count", "0"), headers.get("X-Bytes-Used", "0")
        if not count.isdigit() or not used.isdigit():
            return error_response(400, "Invalid X-Object-Count or X-Bytes-Used")
        broker = self.broker(device_path, route)
        if not broker.exists():
            # as Swift's account server: the report waits (async_pending) until this
            # replica has the account, made by its PUT or brought by replication. One
            # made here would hold this container alone, answer listings and counts
            # with it after a rebalance, and bring a reclaimed account back to life.
            return error_response(404, "No such account")
        info = await self.node.run_db(broker.get_info)
        if broker.is_deleted_info(info) and delete <= put:
            # a deleted account still takes the deletion of a container (the reaper's),
            # so it empties and can be removed; nothing it takes brings one back
            return error_response(404, "Account is deleted", {
                **backend_headers(info), "X-Account-Status": "Deleted"})
        await self.batcher.merge(broker, {
            "name": route.container, "put_timestamp": put.internal,
            "delete_timestamp": delete.internal, "object_count": int(count),
            "bytes_used": int(used), "reported_at": stamp.internal}, device_path)
        return web.Response(status=204 if delete > put else 201)

    async def close(self) -> None:
        await self.node.run_db(self.brokers.close_all)
