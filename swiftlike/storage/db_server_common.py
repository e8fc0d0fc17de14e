"""What the account and container servers share: broker access, group commits, listings.

Row updates arrive one per object write; committing each alone would cost one fsync per
row. The RowBatcher parks container rows beside their database under group commit
(:mod:`swiftlike.storage.pending_rows`), and otherwise coalesces the rows waiting for
the same database into one transaction, answering every waiter only once that commit is
durable (its own fsync, or under group commit the device's next shared flush).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ring.hashing import hash_path_hex, suffix_of
from swiftlike.common.listing import (
    ListingParamError,
    listing_format,
    listing_params,
    render_listing,
)
from swiftlike.common.timestamp import Timestamp
from swiftlike.storage.db import BrokerCache, DatabaseBroker
from swiftlike.storage.db_files import is_damaged, quarantine_database, still_damaged
from swiftlike.storage.node import StorageNode, error_response, request_timestamp
from swiftlike.storage.pending_rows import FOLD_AT_BYTES, append_records, encode_rows, pending_path

LOG = logging.getLogger(__name__)


def db_path(node: StorageNode, device_path: str, kind: str, partition: str, account: str,
            container: str | None = None) -> str:
    """``<device>/<accounts|containers>/<part>/<suffix>/<hash>/<hash>.db``."""
    db_hash = hash_path_hex(account, container, prefix=node.hash_prefix,
                            suffix=node.hash_suffix)
    return os.path.join(device_path, kind, partition, suffix_of(db_hash), db_hash,
                        f"{db_hash}.db")


def title_header(name: str) -> str:
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def metadata_from_headers(request: web.Request, prefixes: tuple[str, ...],
                          exact: frozenset[str], timestamp: Timestamp
                          ) -> dict[str, tuple[str, str]]:
    """The metadata a PUT/POST sets: ``{Header-Name: (value, timestamp)}``."""
    changes = {}
    for key, value in request.headers.items():
        lowered = key.lower()
        if lowered in exact or lowered.startswith(prefixes):
            changes[title_header(key)] = (value.strip(), timestamp.internal)
    return changes


def metadata_headers(info: dict[str, Any]) -> dict[str, str]:
    """Stored metadata as response headers; empty values are deletions and stay hidden."""
    return {key: value for key, (value, _stamp) in info["metadata"].items() if value}


def backend_headers(info: dict[str, Any]) -> dict[str, str]:
    return {
        "X-Backend-Timestamp": info["created_at"],
        "X-Backend-Put-Timestamp": info["put_timestamp"],
        "X-Backend-Delete-Timestamp": info["delete_timestamp"],
        "X-Backend-Status-Changed-At": info["status_changed_at"],
        "X-Timestamp": Timestamp(info["created_at"]).normal,
        "X-PUT-Timestamp": Timestamp(info["put_timestamp"]).normal,
    }


async def load_info(node: StorageNode, broker: DatabaseBroker) -> dict[str, Any] | None:
    """The stat row, or None when the database does not exist."""
    if not broker.exists():
        return None
    return await node.run_db(broker.get_info)


async def open_live_for_write(node: StorageNode, request: web.Request,
                              broker: DatabaseBroker
                              ) -> tuple[Timestamp, dict[str, Any]] | web.Response:
    """What POST and DELETE of an account or container need before they change anything.

    A valid X-Timestamp (else 400) and a database that exists and is not deleted (else
    404); returns the timestamp and the database info, or the error response.
    """
    timestamp = request_timestamp(request)
    if timestamp is None:
        return error_response(400, "Missing or invalid X-Timestamp")
    info = await load_info(node, broker)
    if info is None or broker.is_deleted_info(info):
        return web.Response(status=404)
    return timestamp, info


async def post_metadata(node: StorageNode, request: web.Request, broker: DatabaseBroker,
                        prefixes: tuple[str, ...], exact: frozenset[str]) -> web.Response:
    """POST on an account or container: merge the metadata headers it names, 204."""
    opened = await open_live_for_write(node, request, broker)
    if isinstance(opened, web.Response):
        return opened
    timestamp, _info = opened
    changes = metadata_from_headers(request, prefixes, exact, timestamp)
    await node.run_db(broker.update_metadata, changes)
    return web.Response(status=204)


async def listing_response(request: web.Request, node: StorageNode, kind: str, owner: str,
                           broker: DatabaseBroker, lister: Callable[..., list[Any]],
                           headers_for: Callable[[dict[str, Any]], dict[str, str]]
                           ) -> web.Response:
    """GET of an account/container: parameters checked, rows listed, body rendered.

    The counts in the headers and the rows come from one read of the database, so a
    listing taken while rows arrive never disagrees with its own object count.
    """
    try:
        params = listing_params(request.query, with_path=kind == "container")
    except ListingParamError as err:
        return error_response(err.status, str(err))
    fmt = listing_format(request.query, request.headers.get("Accept"))
    info, entries = await node.run_db(broker.read_together, broker.get_info,
                                      functools.partial(lister, **params))
    headers = headers_for(info)
    body, content_type = render_listing(kind, owner, entries, fmt)
    if fmt == "plain" and not entries:
        return web.Response(status=204, headers=headers)
    headers = {**headers, "Content-Type": content_type}
    return web.Response(status=200, body=body, headers=headers)


class RowBatcher:
    """Group commit of row merges per database (one transaction for all waiting rows).

    With the node's group commit on, the transaction is not fsynced on its own: it
    waits for the device's next shared flush (the ``syncfs`` the object writes already
    run, see :mod:`swiftlike.storage.group_commit`), so one flush makes a batch of
    rows and the object files around them durable together. Why: SQLite's own fsync of
    the WAL was most of a merge's cost here (about 160 us of CPU per commit of one row
    against 40 without; the all-in-one commits about one batch per small PUT), and rows
    that arrive while a batch waits for its flush join the next, larger batch.
    """

    def __init__(self, node: StorageNode, park_rows: bool = False) -> None:
        self.node = node
        #: under group commit, append rows to the database's parking file instead of
        #: merging them (:mod:`swiftlike.storage.pending_rows`)
        self.park_rows = park_rows
        self._pending: dict[str, list[tuple[dict[str, Any], asyncio.Future[int]]]] = {}
        self._draining: set[str] = set()
        self._folding: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: devices whose shared flush failed once: their commits fsync on their own
        self._failed_devices: set[str] = set()
        self.rows_parked = 0  # observability and tests

    async def merge(self, broker: DatabaseBroker, row: dict[str, Any],
                    device_path: str | None = None) -> int:
        """Merge one row; returns 1 if it changed the database, after the commit."""
        return await self.merge_rows(broker, [row], device_path)

    async def merge_rows(self, broker: DatabaseBroker, rows: list[dict[str, Any]],
                         device_path: str | None = None) -> int:
        """Merge rows (a ``PATCH`` batch) in the next shared transaction.

        Returns 1 if that transaction changed the database, once it is durable.
        ``device_path`` (the database's device) lets the commit share the device's
        flush; without it the commit fsyncs on its own.
        """
        if not rows:
            return 0
        if await self._park(broker, rows, device_path):
            return 1  # unknown until folded: report to the account as if changed
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._pending.setdefault(broker.db_path, []).extend((row, future) for row in rows)
        if broker.db_path not in self._draining:
            self._draining.add(broker.db_path)
            task = loop.create_task(self._drain(broker, device_path))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _park(self, broker: DatabaseBroker, rows: list[dict[str, Any]],
                    device_path: str | None) -> bool:
        """Rows appended to the parking file and durable; False: merge them instead."""
        if device_path is None or not await self.park_unflushed(broker, rows, device_path):
            return False
        try:
            await self.node.flusher(device_path).barrier()
        except Exception:
            # the parked rows may be lost: the caller reports failure (async_pending),
            # and this device's rows are committed with their own fsyncs from now on
            self._failed_devices.add(device_path)
            raise
        return True

    async def park_unflushed(self, broker: DatabaseBroker, rows: list[dict[str, Any]],
                             device_path: str) -> bool:
        """Rows appended to the parking file, not yet durable: the caller acknowledges
        nothing before the device's next flush (an object server marks each row with the
        ``check`` file it rides with, see
        :func:`~swiftlike.storage.pending_rows.settle_checked`). False: nothing parked,
        send the rows the usual way."""
        if not (self.park_rows and broker.parks_rows and self.node.group_commit
                and device_path not in self._failed_devices):
            return False
        size = await self.node.run_lookup(append_records, pending_path(broker.db_path),
                                          encode_rows(rows))
        if size is None:
            return False  # a fold holds the file, or the write failed
        self.rows_parked += len(rows)
        if size >= FOLD_AT_BYTES and broker.db_path not in self._folding:
            self._folding.add(broker.db_path)
            task = asyncio.get_running_loop().create_task(self._fold(broker))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return True

    async def _fold(self, broker: DatabaseBroker) -> None:
        """Keep a busy, unread database's parking file short (reads fold it anyway)."""
        try:
            await self.node.run_db(broker.fold_pending)
        except Exception as err:  # the next read meets the same problem and answers it
            LOG.warning("folding the rows parked for %s failed: %r", broker.db_path, err)
        finally:
            self._folding.discard(broker.db_path)

    async def _drain(self, broker: DatabaseBroker, device_path: str | None) -> None:
        try:
            while self._pending.get(broker.db_path):
                batch = self._pending.pop(broker.db_path)
                shared_flush = (device_path is not None and self.node.group_commit
                                and device_path not in self._failed_devices)
                try:
                    changed = await self.node.run_db(broker.merge_items,  # type: ignore[attr-defined]
                                                     [row for row, _ in batch], shared_flush)
                    if shared_flush:
                        # also when nothing changed: an equal row merged by a batch
                        # still waiting for its flush is not durable yet either
                        assert device_path is not None
                        try:
                            await self.node.flusher(device_path).barrier()
                        except Exception:
                            await self._after_failed_flush(broker, device_path)
                            raise
                except Exception as err:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(err)
                    continue
                for _, future in batch:
                    if not future.done():
                        future.set_result(1 if changed else 0)
        finally:
            self._draining.discard(broker.db_path)

    async def _after_failed_flush(self, broker: DatabaseBroker, device_path: str) -> None:
        """A flush failed after rows were committed without their own fsync.

        Those rows are visible, and the kernel may already count their WAL pages as
        written (a failed writeback leaves them clean), so a retry that finds them would
        be answered with nothing on disk. Copy the WAL into the database file with
        SQLite's own fsyncs (a truncating checkpoint, which also drops the WAL's frames),
        and fsync every later commit on this device itself.
        """
        self._failed_devices.add(device_path)
        try:
            await self.node.run_db(broker.checkpoint)
        except Exception as err:
            LOG.error("checkpoint of %s after a failed flush failed: %r", broker.db_path, err)


def make_broker_cache(node: StorageNode, broker_class: type[DatabaseBroker]) -> BrokerCache:
    cache = BrokerCache(lambda path: broker_class(path, fsync=node.fsync),
                        node.db_cache_size)
    node.broker_caches.append(cache)
    return cache


async def quarantining_damage(node: StorageNode, db_path: str,
                              handler: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``handler``; when it finds the database damaged, quarantine the database and
    run it once more, so the request is answered as on a node without the database
    (a GET 404s, a PUT creates a fresh one, which replication then fills)."""
    try:
        return await handler()
    except sqlite3.DatabaseError as err:
        if not is_damaged(err):
            raise
        LOG.error("database %s is damaged (%s): quarantining it", db_path, err)
    await node.run_db(_forget_and_quarantine, node.broker_caches, db_path)
    return await handler()


def _forget_and_quarantine(caches: list[BrokerCache], db_path: str) -> str | None:
    """Close every cached connection to ``db_path``, then move it if it is damaged.

    Checked again on a fresh connection: the error may have come from a connection to a
    file someone else already moved away, and the file now at the path (rebuilt by
    replication) must stay.
    """
    for cache in caches:
        cache.discard(db_path)
    return quarantine_database(db_path) if still_damaged(db_path) else None
