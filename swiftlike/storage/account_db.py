"""An account's database: one row per container with its counts, plus account totals.

Container rows arrive from container servers (and replication) in any order: each
timestamp only moves forward, and the counts of the latest report win. Totals in the stat
row are maintained in the same transaction.
"""

from __future__ import annotations

from typing import Any

from swiftlike.common.timestamp import Timestamp
from swiftlike.storage.db import DatabaseBroker

ACCOUNT_SCHEMA = """
CREATE TABLE account_stat (
    account TEXT NOT NULL,
    created_at TEXT NOT NULL,
    put_timestamp TEXT NOT NULL DEFAULT '0',
    delete_timestamp TEXT NOT NULL DEFAULT '0',
    status_changed_at TEXT NOT NULL DEFAULT '0',
    container_count INTEGER NOT NULL DEFAULT 0,
    object_count INTEGER NOT NULL DEFAULT 0,
    bytes_used INTEGER NOT NULL DEFAULT 0,
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE container (
    name TEXT NOT NULL UNIQUE,
    put_timestamp TEXT NOT NULL,
    delete_timestamp TEXT NOT NULL,
    object_count INTEGER NOT NULL DEFAULT 0,
    bytes_used INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0
);
"""

CONTAINER_COLUMNS = ("name", "put_timestamp", "delete_timestamp", "object_count",
                     "bytes_used", "deleted")


class AccountBroker(DatabaseBroker):
    """The SQLite database of one account (blocking; use the db thread pool)."""

    stat_table = "account_stat"
    item_table = "container"
    item_columns = CONTAINER_COLUMNS

    def schema(self) -> str:
        return ACCOUNT_SCHEMA

    def create(self, tmp_dir: str, account: str, put_timestamp: str) -> bool:
        now = Timestamp.now().internal
        return self.initialize(tmp_dir, {
            "account": account, "created_at": now, "put_timestamp": put_timestamp,
            "delete_timestamp": "0", "status_changed_at": now})

    def merge_items(self, rows: list[dict[str, Any]], deferred_sync: bool = False) -> int:
        """Apply container rows: timestamps only move forward, newest report's counts win.

        Each row: name, put_timestamp, delete_timestamp, object_count, bytes_used.
        Returns how many rows changed.
        """
        changed = 0
        with self.transaction(deferred_sync) as conn:
            deltas = [0, 0, 0]  # containers, objects, bytes
            for row in rows:
                put = Timestamp(row.get("put_timestamp") or 0)
                delete = Timestamp(row.get("delete_timestamp") or 0)
                count = int(row.get("object_count") or 0)
                used = int(row.get("bytes_used") or 0)
                old = conn.execute(
                    "SELECT put_timestamp, delete_timestamp, object_count, bytes_used, deleted "
                    "FROM container WHERE name = ?", (row["name"],)).fetchone()
                if old is not None:
                    old_put, old_delete = Timestamp(old[0]), Timestamp(old[1])
                    if put < old_put and delete < old_delete:
                        continue  # strictly older report
                    if max(put, delete) < max(old_put, old_delete):
                        count, used = old[2], old[3]
                    put, delete = max(put, old_put), max(delete, old_delete)
                    if not old[4]:
                        deltas[0] -= 1
                        deltas[1] -= old[2]
                        deltas[2] -= old[3]
                deleted = 1 if delete > put else 0
                if deleted:
                    count = used = 0
                else:
                    deltas[0] += 1
                    deltas[1] += count
                    deltas[2] += used
                conn.execute(
                    "INSERT OR REPLACE INTO container (name, put_timestamp, delete_timestamp, "
                    "object_count, bytes_used, deleted) VALUES (?, ?, ?, ?, ?, ?)",
                    (row["name"], put.internal, delete.internal, count, used, deleted))
                changed += 1
            if any(deltas):
                conn.execute("UPDATE account_stat SET container_count = container_count + ?, "
                             "object_count = object_count + ?, bytes_used = bytes_used + ?",
                             tuple(deltas))
        return changed

    def list_containers(self, limit: int, marker: str = "", end_marker: str = "",
                        prefix: str = "", delimiter: str = "", reverse: bool = False
                        ) -> list[dict[str, Any]]:
        """Listing entries: container dicts, or ``{"subdir": ...}`` roll-ups."""
        rows = self.list_rows("name, put_timestamp, object_count, bytes_used", limit, marker,
                              end_marker, prefix, delimiter, reverse)
        entries: list[dict[str, Any]] = []
        for row in rows:
            if isinstance(row, tuple):
                entries.append({"subdir": row[0]})
            else:
                entries.append({"name": row["name"], "count": row["object_count"],
                                "bytes": row["bytes_used"], "created_at": row["put_timestamp"]})
        return entries
