"""A container's database: its object rows, counts, metadata and timestamps.

Object rows are merged by timestamp (``merge_items``), field by field as in Swift: the
data (size, etag, deleted) from the row with the newest ``created_at``, the content type
from the one with the newest ``ctype_timestamp``. A POST that changes an object's
Content-Type sends a row carrying only the type (``created_at`` 0, deleted, its own
``ctype_timestamp``); it changes the type of the stored row without touching its data,
and one that arrives before its object's row waits as a deleted, unlisted row. Updates
arriving late or twice (async pending, replication) converge. Deleted rows stay as
tombstones so replication can carry deletions. Object count and bytes used are kept in
the stat row inside the same transaction.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from swiftlike.common.timestamp import Timestamp
from swiftlike.storage.db import DatabaseBroker, add_column

CONTAINER_SCHEMA = """
CREATE TABLE container_stat (
    account TEXT NOT NULL,
    container TEXT NOT NULL,
    created_at TEXT NOT NULL,
    put_timestamp TEXT NOT NULL DEFAULT '0',
    delete_timestamp TEXT NOT NULL DEFAULT '0',
    status_changed_at TEXT NOT NULL DEFAULT '0',
    object_count INTEGER NOT NULL DEFAULT 0,
    bytes_used INTEGER NOT NULL DEFAULT 0,
    metadata TEXT NOT NULL DEFAULT '{}',
    account_host TEXT NOT NULL DEFAULT '',
    account_partition TEXT NOT NULL DEFAULT '',
    account_device TEXT NOT NULL DEFAULT '',
    reported_put_timestamp TEXT NOT NULL DEFAULT '0',
    reported_delete_timestamp TEXT NOT NULL DEFAULT '0',
    reported_object_count INTEGER NOT NULL DEFAULT 0,
    reported_bytes_used INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE object (
    name TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    size INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    etag TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    ctype_timestamp TEXT NOT NULL DEFAULT '0'
);
"""

OBJECT_COLUMNS = ("name", "created_at", "size", "content_type", "etag", "deleted",
                  "ctype_timestamp")
ZERO = Timestamp(0)


def content_type_row(name: str, content_type: str, timestamp: str) -> dict[str, Any]:
    """The row of a POST that set ``content_type`` at ``timestamp``: the type alone."""
    return {"name": name, "created_at": ZERO.internal, "size": 0,
            "content_type": content_type, "etag": "", "deleted": 1,
            "ctype_timestamp": timestamp}


def _ctype_stamp(created_at: Timestamp, ctype_timestamp: str | None) -> Timestamp:
    """A row's content-type time: its own stamp, or its data's (rows of an older
    release, and every PUT, carry none)."""
    stamp = Timestamp(ctype_timestamp or 0)
    return stamp if stamp > created_at else created_at


class ContainerBroker(DatabaseBroker):
    """The SQLite database of one container (blocking; use the db thread pool)."""

    stat_table = "container_stat"
    item_table = "object"
    item_columns = OBJECT_COLUMNS
    parks_rows = True
    # a row that only carries a content type (created_at 0) waits for its object's row
    # until its own stamp is old too
    reclaimable = "deleted = 1 AND created_at < :cutoff AND ctype_timestamp < :cutoff"

    def schema(self) -> str:
        return CONTAINER_SCHEMA

    def create(self, tmp_dir: str, account: str, container: str, put_timestamp: str) -> bool:
        now = Timestamp.now().internal
        return self.initialize(tmp_dir, {
            "account": account, "container": container, "created_at": now,
            "put_timestamp": put_timestamp, "delete_timestamp": "0",
            "status_changed_at": now})

    def upgrade_schema(self, conn: sqlite3.Connection) -> None:
        super().upgrade_schema(conn)
        add_column(conn, "object", "ctype_timestamp", "TEXT NOT NULL DEFAULT '0'")

    def merge_items(self, rows: list[dict[str, Any]], deferred_sync: bool = False,
                    incoming: tuple[str, int] | None = None, full_sync: bool = False) -> int:
        """Apply object rows field by field; returns how many changed the database.

        Each row: name, created_at, size, content_type, etag, deleted (0/1) and
        optionally ctype_timestamp (see the module docstring). ``incoming``: a
        replication peer's (database id, last ROWID), recorded in the same transaction.
        """
        changed = 0
        with self.transaction(deferred_sync, full_sync) as conn:
            count_delta = 0
            bytes_delta = 0
            for row in rows:
                stamp = Timestamp(row["created_at"])
                ctype_stamp = _ctype_stamp(stamp, row.get("ctype_timestamp"))
                deleted = 1 if row.get("deleted") else 0
                size = int(row.get("size") or 0)
                content_type, etag = row.get("content_type") or "", row.get("etag") or ""
                old = conn.execute(
                    "SELECT created_at, size, deleted, content_type, etag, ctype_timestamp "
                    "FROM object WHERE name = ?", (row["name"],)).fetchone()
                if old is not None:
                    old_stamp = Timestamp(old[0])
                    old_ctype_stamp = _ctype_stamp(old_stamp, old[5])
                    newer_data = stamp > old_stamp
                    newer_type = ctype_stamp > old_ctype_stamp
                    if not (newer_data or newer_type):
                        continue
                    if not newer_data:
                        stamp, size, deleted, etag = old_stamp, old[1], old[2], old[4]
                    if not newer_type:
                        content_type, ctype_stamp = old[3], old_ctype_stamp
                    if not old[2]:
                        count_delta -= 1
                        bytes_delta -= old[1]
                if not deleted:
                    count_delta += 1
                    bytes_delta += size
                conn.execute(
                    "INSERT OR REPLACE INTO object (name, created_at, size, content_type, etag, "
                    "deleted, ctype_timestamp) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (row["name"], stamp.internal, size, content_type, etag, deleted,
                     ctype_stamp.internal))
                changed += 1
            if count_delta or bytes_delta:
                conn.execute("UPDATE container_stat SET object_count = object_count + ?, "
                             "bytes_used = bytes_used + ?", (count_delta, bytes_delta))
            self.record_incoming(conn, incoming)
        return changed

    def merge_parked(self, rows: list[dict[str, Any]]) -> None:
        self.merge_items(rows, full_sync=True)

    def put_object(self, name: str, timestamp: str, size: int, content_type: str,
                   etag: str) -> int:
        return self.merge_items([{"name": name, "created_at": timestamp, "size": size,
                                  "content_type": content_type, "etag": etag, "deleted": 0}])

    def delete_object(self, name: str, timestamp: str) -> int:
        return self.merge_items([{"name": name, "created_at": timestamp, "size": 0,
                                  "content_type": "", "etag": "", "deleted": 1}])

    def list_objects(self, limit: int, marker: str = "", end_marker: str = "",
                     prefix: str = "", delimiter: str = "", reverse: bool = False,
                     path: bool = False) -> list[dict[str, Any]]:
        """Listing entries: object dicts, or ``{"subdir": ...}`` roll-ups (none with
        ``path``, Swift's listing of one pseudo-directory's own objects, which also
        leaves out the directory's marker object, named ``prefix`` itself)."""
        rows = self.list_rows("name, created_at, size, content_type, etag", limit, marker,
                              end_marker, prefix, delimiter, reverse, rollups=not path,
                              skip=prefix if path else None)
        entries: list[dict[str, Any]] = []
        for row in rows:
            if isinstance(row, tuple):
                entries.append({"subdir": row[0]})
            else:
                entries.append({"name": row["name"], "created_at": row["created_at"],
                                "bytes": row["size"], "content_type": row["content_type"],
                                "hash": row["etag"]})
        return entries

    def set_account_target(self, host: str, partition: str, device: str) -> None:
        """Remember where this container's account lives, for deferred account updates."""
        with self.transaction() as conn:
            conn.execute("UPDATE container_stat SET account_host = ?, account_partition = ?, "
                         "account_device = ?", (host, partition, device))

    def mark_reported(self, info: dict[str, Any]) -> None:
        """Record what the account servers were last told (the updater skips unchanged)."""
        with self.transaction() as conn:
            conn.execute("UPDATE container_stat SET reported_put_timestamp = ?, "
                         "reported_delete_timestamp = ?, reported_object_count = ?, "
                         "reported_bytes_used = ?",
                         (info["put_timestamp"], info["delete_timestamp"],
                          info["object_count"], info["bytes_used"]))

    def is_empty(self) -> bool:
        self.fold_pending()
        with self.lock:
            row = self.connection().execute(
                "SELECT 1 FROM object WHERE deleted = 0 LIMIT 1").fetchone()
        return row is None
