"""A container's database: its object rows, counts, metadata and timestamps.

Object rows are merged by timestamp (``merge_items``): a row replaces the stored one only
when it is newer, so updates arriving late or twice (async pending, replication) converge.
Deleted rows stay as tombstones so replication can carry deletions. Object count and
bytes used are kept in the stat row inside the same transaction.
"""

from __future__ import annotations

from typing import Any

from swiftlike.common.timestamp import Timestamp
from swiftlike.storage.db import DatabaseBroker

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
    deleted INTEGER NOT NULL DEFAULT 0
);
"""

OBJECT_COLUMNS = ("name", "created_at", "size", "content_type", "etag", "deleted")


class ContainerBroker(DatabaseBroker):
    """The SQLite database of one container (blocking; use the db thread pool)."""

    stat_table = "container_stat"
    item_table = "object"
    item_columns = OBJECT_COLUMNS

    def schema(self) -> str:
        return CONTAINER_SCHEMA

    def create(self, tmp_dir: str, account: str, container: str, put_timestamp: str) -> bool:
        now = Timestamp.now().internal
        return self.initialize(tmp_dir, {
            "account": account, "container": container, "created_at": now,
            "put_timestamp": put_timestamp, "delete_timestamp": "0",
            "status_changed_at": now})

    def merge_items(self, rows: list[dict[str, Any]], deferred_sync: bool = False) -> int:
        """Apply object rows by timestamp; returns how many changed the database.

        Each row: name, created_at, size, content_type, etag, deleted (0/1).
        """
        changed = 0
        with self.transaction(deferred_sync) as conn:
            count_delta = 0
            bytes_delta = 0
            for row in rows:
                stamp = Timestamp(row["created_at"])
                old = conn.execute("SELECT created_at, size, deleted FROM object WHERE name = ?",
                                   (row["name"],)).fetchone()
                if old is not None and Timestamp(old[0]) >= stamp:
                    continue
                deleted = 1 if row.get("deleted") else 0
                size = int(row.get("size") or 0)
                if old is not None and not old[2]:
                    count_delta -= 1
                    bytes_delta -= old[1]
                if not deleted:
                    count_delta += 1
                    bytes_delta += size
                conn.execute(
                    "INSERT OR REPLACE INTO object (name, created_at, size, content_type, etag, "
                    "deleted) VALUES (?, ?, ?, ?, ?, ?)",
                    (row["name"], stamp.internal, size, row.get("content_type") or "",
                     row.get("etag") or "", deleted))
                changed += 1
            if count_delta or bytes_delta:
                conn.execute("UPDATE container_stat SET object_count = object_count + ?, "
                             "bytes_used = bytes_used + ?", (count_delta, bytes_delta))
        return changed

    def put_object(self, name: str, timestamp: str, size: int, content_type: str,
                   etag: str) -> int:
        return self.merge_items([{"name": name, "created_at": timestamp, "size": size,
                                  "content_type": content_type, "etag": etag, "deleted": 0}])

    def delete_object(self, name: str, timestamp: str) -> int:
        return self.merge_items([{"name": name, "created_at": timestamp, "size": 0,
                                  "content_type": "", "etag": "", "deleted": 1}])

    def list_objects(self, limit: int, marker: str = "", end_marker: str = "",
                     prefix: str = "", delimiter: str = "", reverse: bool = False
                     ) -> list[dict[str, Any]]:
        """Listing entries: object dicts, or ``{"subdir": ...}`` roll-ups."""
        rows = self.list_rows("name, created_at, size, content_type, etag", limit, marker,
                              end_marker, prefix, delimiter, reverse)
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
        with self.lock:
            row = self.connection().execute(
                "SELECT 1 FROM object WHERE deleted = 0 LIMIT 1").fetchone()
        return row is None
