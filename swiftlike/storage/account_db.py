"""An account's database: one row per container with its counts, plus account totals.

Container rows arrive from container servers (and replication) in any order: each
timestamp only moves forward, and the counts of the latest report win. "Latest" is the
report's own time (``reported_at``, the container server's X-Timestamp when it read its
counts), not the container's put timestamp: that stays the same while the counts change,
so replicas holding different counts under one put timestamp could otherwise overwrite
the newer count with the older one, whichever replicated last. A row that would not
change is not written (a rewrite gives it a new ROWID, and replication would ship it back
and forth for ever). Totals in the stat row are maintained in the same transaction.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from swiftlike.common.timestamp import Timestamp
from swiftlike.storage.db import DatabaseBroker, add_column

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
    deleted INTEGER NOT NULL DEFAULT 0,
    reported_at TEXT NOT NULL DEFAULT '0'
);
"""

CONTAINER_COLUMNS = ("name", "put_timestamp", "delete_timestamp", "object_count",
                     "bytes_used", "deleted", "reported_at")


class AccountBroker(DatabaseBroker):
    """The SQLite database of one account (blocking; use the db thread pool)."""

    stat_table = "account_stat"
    item_table = "container"
    item_columns = CONTAINER_COLUMNS
    reclaimable = "deleted = 1 AND delete_timestamp < :cutoff"

    def schema(self) -> str:
        return ACCOUNT_SCHEMA

    def upgrade_schema(self, conn: sqlite3.Connection) -> None:
        super().upgrade_schema(conn)
        add_column(conn, "container", "reported_at", "TEXT NOT NULL DEFAULT '0'")

    def create(self, tmp_dir: str, account: str, put_timestamp: str) -> bool:
        now = Timestamp.now().internal
        return self.initialize(tmp_dir, {
            "account": account, "created_at": now, "put_timestamp": put_timestamp,
            "delete_timestamp": "0", "status_changed_at": now})

    def merge_items(self, rows: list[dict[str, Any]], deferred_sync: bool = False,
                    incoming: tuple[str, int] | None = None) -> int:
        """Apply container rows: timestamps only move forward, the newest report's counts
        win (ties keep what is stored). Returns how many rows changed.

        Each row: name, put_timestamp, delete_timestamp, object_count, bytes_used and
        reported_at (missing from rows of older releases: the oldest report).
        ``incoming``: a replication peer's (database id, last ROWID), recorded in the
        same transaction.
        """
        changed = 0
        with self.transaction(deferred_sync) as conn:
            deltas = [0, 0, 0]  # containers, objects, bytes
            for row in rows:
                put = Timestamp(row.get("put_timestamp") or 0)
                delete = Timestamp(row.get("delete_timestamp") or 0)
                reported = Timestamp(row.get("reported_at") or 0)
                count = int(row.get("object_count") or 0)
                used = int(row.get("bytes_used") or 0)
                old = conn.execute(
                    "SELECT put_timestamp, delete_timestamp, object_count, bytes_used, deleted, "
                    "reported_at FROM container WHERE name = ?", (row["name"],)).fetchone()
                if old is not None:
                    old_reported = Timestamp(old[5] or 0)
                    if reported <= old_reported:
                        count, used, reported = old[2], old[3], old_reported
                    put = max(put, Timestamp(old[0]))
                    delete = max(delete, Timestamp(old[1]))
                # deleted only when empty, as Swift's account broker: a container whose
                # deleted database still holds rows (replication brought them late) stays
                # listed, so the reaper comes back for its objects
                deleted = 1 if delete > put and not count else 0
                if deleted:
                    count = used = 0
                if old is not None:
                    if (put.internal, delete.internal, count, used, deleted,
                            reported.internal) == (old[0], old[1], old[2], old[3], old[4],
                                                   old[5]):
                        continue
                    if not old[4]:
                        deltas[0] -= 1
                        deltas[1] -= old[2]
                        deltas[2] -= old[3]
                if not deleted:
                    deltas[0] += 1
                    deltas[1] += count
                    deltas[2] += used
                conn.execute(
                    "INSERT OR REPLACE INTO container (name, put_timestamp, delete_timestamp, "
                    "object_count, bytes_used, deleted, reported_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (row["name"], put.internal, delete.internal, count, used, deleted,
                     reported.internal))
                changed += 1
            if any(deltas):
                conn.execute("UPDATE account_stat SET container_count = container_count + ?, "
                             "object_count = object_count + ?, bytes_used = bytes_used + ?",
                             tuple(deltas))
            self.record_incoming(conn, incoming)
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
