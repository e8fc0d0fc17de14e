"""The SQLite base shared by account and container databases.

One database file per account or container, in WAL mode with ``synchronous=FULL`` so a
committed row is on disk before the 2xx (batched row merges instead wait for the
device's group-commit flush, see :meth:`DatabaseBroker.transaction`). A new database is
built in the device's tmp/ and renamed into place, so a half-initialised file is never
seen. Every method blocks:
servers call them through the node's database thread pool, one lock per database.
Metadata is ``{name: [value, timestamp]}`` merged key by key, newest timestamp wins; an
empty value is a deletion that still carries its timestamp (so it replicates).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from swiftlike.common.timestamp import Timestamp
from swiftlike.storage.db_files import place_database, remove_directory, remove_if_present
from swiftlike.storage.pending_rows import (
    ParkedRows,
    parked_bytes,
    pending_path,
    settle_checked,
)

LOG = logging.getLogger(__name__)

LISTING_LIMIT = 10000


class DatabaseNotFound(Exception):
    """No database file at this path."""


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix``."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF and not 0xD7FF <= last < 0xE000:
            return prefix[:-1] + chr(last + 1)
        prefix = prefix[:-1]
    return None


def add_column(conn: sqlite3.Connection, table: str, column: str, declaration: str) -> None:
    """``ALTER TABLE table ADD COLUMN`` unless the column is there already.

    Several connections may open an older database at once (a node's servers, the
    replicator's one-per-peer reads): the one that loses the race finds the column
    added, which is what it wanted, not an error.
    """
    if column in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
        return
    try:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    except sqlite3.OperationalError as err:
        if "duplicate column name" not in str(err).lower():
            raise


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


#: Per file, never replicated: the file's id and, per peer database, how far its rows
#: have been merged here.
SYNC_STATE_SCHEMA = ("CREATE TABLE IF NOT EXISTS sync_state "
                     "(key TEXT PRIMARY KEY, value TEXT NOT NULL)")


class DatabaseBroker:
    """One account or container database; subclasses supply the schema and rows."""

    stat_table = ""
    item_table = ""
    item_columns: tuple[str, ...] = ()
    #: whether rows may be parked beside the database (:mod:`pending_rows`)
    parks_rows = False

    def __init__(self, db_path: str, fsync: bool = True) -> None:
        self.db_path = db_path
        self.fsync = fsync
        self.lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) _conn has open

    # ---- lifecycle ---------------------------------------------------------------------
    def exists(self) -> bool:
        return os.path.exists(self.db_path)

    def schema(self) -> str:
        raise NotImplementedError

    def initialize(self, tmp_dir: str, stat_row: dict[str, Any]) -> bool:
        """Create the database (False if it already exists): build in tmp, link in."""
        with self.lock:
            if self.exists():
                return False
            os.makedirs(tmp_dir, exist_ok=True)
            tmp_path = os.path.join(tmp_dir, f"{uuid.uuid4().hex}.db")
            conn = sqlite3.connect(tmp_path, isolation_level=None)
            try:
                conn.executescript(self.schema())
                columns = ", ".join(stat_row)
                marks = ", ".join("?" for _ in stat_row)
                conn.execute(f"INSERT INTO {self.stat_table} ({columns}) VALUES ({marks})",
                             tuple(stat_row.values()))
                conn.execute("PRAGMA journal_mode=WAL")
            finally:
                conn.close()
            if self.fsync:
                with open(tmp_path, "rb") as handle:
                    os.fsync(handle.fileno())
            try:
                return place_database(tmp_path, self.db_path, self.fsync)
            finally:
                remove_if_present(tmp_path)

    def connection(self) -> sqlite3.Connection:
        """The open connection, reopened when the file at the path is no longer the one
        it has open.

        Why check: a cached broker outlives its file when someone else moves or removes
        it (the replicator dropping a delivered handoff, a quarantine, a rebuild in its
        place). Writes through the old connection would land in a deleted file and be
        acknowledged all the same; one stat per use keeps them off it.
        """
        if self._conn is not None and self._file != _file_id(self.db_path):
            self._conn.close()
            self._conn = None
        if self._conn is None:
            self._file = _file_id(self.db_path)
            if self._file is None:
                raise DatabaseNotFound(self.db_path)
            conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'OFF'}")
            conn.execute("PRAGMA busy_timeout=25000")
            conn.row_factory = sqlite3.Row
            self.upgrade_schema(conn)
            self._conn = conn
        return self._conn

    def upgrade_schema(self, conn: sqlite3.Connection) -> None:
        """Bring a database made by an older release up to :meth:`schema` (on open).

        Subclasses extend it; every database gets :data:`SYNC_STATE_SCHEMA`.
        """
        conn.execute(SYNC_STATE_SCHEMA)

    # ---- replication sync points --------------------------------------------------------
    def sync_id(self) -> str:
        """This database file's own id, which replication peers key their sync points by
        (a rebuilt or replaced file gets a new one, so peers start it over)."""
        with self.lock:
            conn = self.connection()
            row = conn.execute("SELECT value FROM sync_state WHERE key = 'id'").fetchone()
            if row is None:  # first asked: made once, kept for the life of the file
                conn.execute("INSERT OR IGNORE INTO sync_state (key, value) VALUES ('id', ?)",
                             (uuid.uuid4().hex,))
                row = conn.execute("SELECT value FROM sync_state WHERE key = 'id'").fetchone()
            return str(row[0])

    def incoming_point(self, remote_id: str) -> int:
        """The highest ROWID of database ``remote_id`` merged here (0: none yet)."""
        with self.lock:
            row = self.connection().execute("SELECT value FROM sync_state WHERE key = ?",
                                            (f"in:{remote_id}",)).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def record_incoming(conn: sqlite3.Connection, incoming: tuple[str, int] | None) -> None:
        """Inside a merge's transaction: rows of ``remote_id`` up to ``point`` are here.

        Why here and not on the sender: a point kept in this file goes back with it.
        Restored from a backup, or having lost commits, the file tells every sender
        where to resume; a sender's own record of what it pushed cannot know.
        """
        if incoming is None:
            return
        remote_id, point = incoming
        conn.execute("INSERT INTO sync_state (key, value) VALUES (?, ?) ON CONFLICT(key) "
                     "DO UPDATE SET value = excluded.value "
                     "WHERE CAST(excluded.value AS INTEGER) > CAST(value AS INTEGER)",
                     (f"in:{remote_id}", str(int(point))))

    def close(self) -> None:
        with self.lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextlib.contextmanager
    def transaction(self, deferred_sync: bool = False, full_sync: bool = False
                    ) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT under this database's lock.

        ``deferred_sync``: the commit is written to the WAL but not fsynced
        (``synchronous=NORMAL`` for this one transaction); the caller must wait for a
        flush of the device (group commit) before it acknowledges anything. SQLite
        still fsyncs at checkpoints, so the file stays consistent through a crash; only
        the commits no flush has covered yet can be lost, and none was acknowledged.
        ``full_sync``: fsynced even by a broker opened without fsync (a daemon's reader
        folding parked rows, which are dropped from their file right after).
        """
        with self.lock:
            conn = self.connection()
            mode = ("NORMAL" if deferred_sync and self.fsync else
                    "FULL" if full_sync and not self.fsync else None)
            if mode is not None:
                conn.execute(f"PRAGMA synchronous={mode}")
            try:
                conn.execute("BEGIN IMMEDIATE")
                if self._file != _file_id(self.db_path):
                    # removed (or replaced) while this waited for the write lock, which
                    # remove_if holds across its check and the removal: a write now
                    # would land in a deleted file and be acknowledged all the same
                    conn.execute("ROLLBACK")
                    raise DatabaseNotFound(self.db_path)
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            finally:
                if mode is not None:
                    self._restore_sync(conn)

    def checkpoint(self) -> None:
        """Copy the WAL into the database file and empty it, with SQLite's fsyncs."""
        with self.lock:
            busy, _, _ = self.connection().execute(
                "PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                raise sqlite3.OperationalError(f"checkpoint of {self.db_path} was blocked")

    def _restore_sync(self, conn: sqlite3.Connection) -> None:
        """Back to the broker's own ``synchronous`` after a transaction that changed it,
        whatever happened to it; a connection that cannot be reset is dropped (reopened
        with the broker's setting)."""
        try:
            if conn.in_transaction:  # a COMMIT that failed leaves it open
                conn.execute("ROLLBACK")
            conn.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'OFF'}")
        except sqlite3.Error:
            conn.close()
            self._conn = None

    # ---- parked rows (see pending_rows) ------------------------------------------------
    def fold_pending(self) -> int:
        """Merge the rows parked beside this database and empty their file; how many.

        Every read of rows or counts calls it first. The merge commits with its own
        fsync before the file is emptied, so a crash in between only folds the rows
        again, which changes nothing. Skipped inside a transaction of this thread.
        """
        if not self.parks_rows:
            return 0
        path = pending_path(self.db_path)
        if parked_bytes(path) == 0:
            return 0
        with self.lock:
            if self._conn is not None and self._conn.in_transaction:
                return 0
            with ParkedRows(path) as parked:
                if parked.skipped:  # torn by a crash (never acknowledged) or damaged
                    LOG.warning("%s: skipped %d damaged bytes of parked rows", path,
                                parked.skipped)
                rows = settle_checked(parked.rows)
                if rows:
                    self.merge_parked(rows)
                parked.clear()
                return len(rows)

    def merge_parked(self, rows: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def read_together(self, *reads: Callable[[], Any]) -> tuple[Any, ...]:
        """The results of ``reads`` from one snapshot of the database (after one fold):
        rows merged or folded meanwhile show in all of them or in none."""
        self.fold_pending()
        with self.lock:
            conn = self.connection()
            conn.execute("BEGIN")  # a read transaction: folds inside it are skipped
            try:
                return tuple(read() for read in reads)
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")  # nothing was written

    # ---- stat row, timestamps, metadata -----------------------------------------------
    def get_info(self) -> dict[str, Any]:
        self.fold_pending()
        with self.lock:
            return self.info_in(self.connection())

    def info_in(self, conn: sqlite3.Connection) -> dict[str, Any]:
        """The stat row as :meth:`get_info` gives it, read through ``conn`` (inside a
        transaction of the caller's)."""
        info = dict(conn.execute(f"SELECT * FROM {self.stat_table}").fetchone())
        info["metadata"] = json.loads(info.get("metadata") or "{}")
        return info

    @staticmethod
    def is_deleted_info(info: dict[str, Any]) -> bool:
        """Deleted when the delete timestamp is newer than the put timestamp."""
        return Timestamp(info["delete_timestamp"] or 0) > Timestamp(info["put_timestamp"] or 0)

    def is_deleted(self) -> bool:
        return self.is_deleted_info(self.get_info())

    def merge_timestamps(self, put_timestamp: str | None = None,
                         delete_timestamp: str | None = None, revive: bool = True
                         ) -> dict[str, Any]:
        """Raise put/delete timestamps to the newer of ours and theirs (replication too).

        ``revive=False`` leaves a deleted database deleted (its put timestamp as it was),
        decided in the same transaction as the write.
        """
        with self.transaction() as conn:
            row = conn.execute(f"SELECT put_timestamp, delete_timestamp FROM "
                               f"{self.stat_table}").fetchone()
            old_deleted = Timestamp(row[1] or 0) > Timestamp(row[0] or 0)
            new_put = max(Timestamp(row[0] or 0), Timestamp(put_timestamp or 0))
            if old_deleted and not revive:
                new_put = Timestamp(row[0] or 0)
            new_delete = max(Timestamp(row[1] or 0), Timestamp(delete_timestamp or 0))
            now_deleted = new_delete > new_put
            updates = {"put_timestamp": new_put.internal,
                       "delete_timestamp": new_delete.internal}
            if old_deleted != now_deleted:
                updates["status_changed_at"] = Timestamp.now().internal
            assignments = ", ".join(f"{key} = ?" for key in updates)
            conn.execute(f"UPDATE {self.stat_table} SET {assignments}", tuple(updates.values()))
        return self.get_info()

    def update_metadata(self, changes: dict[str, tuple[str, str]]) -> None:
        """Merge ``{name: (value, timestamp)}``; an item wins only with a newer timestamp."""
        if not changes:
            return
        with self.transaction() as conn:
            row = conn.execute(f"SELECT metadata FROM {self.stat_table}").fetchone()
            metadata = json.loads(row[0] or "{}")
            for key, (value, stamp) in changes.items():
                current = metadata.get(key)
                if current is None or Timestamp(stamp) >= Timestamp(current[1]):
                    metadata[key] = [value, stamp]
            conn.execute(f"UPDATE {self.stat_table} SET metadata = ?", (json.dumps(metadata),))

    def delete_db(self, timestamp: str) -> None:
        """Mark the database deleted at ``timestamp``, and every setting with it.

        Each metadata key (ACLs included) is blanked with the delete's timestamp: a
        container created again under the same name must not inherit the old one's
        settings (its old read ACL would make the new one public), and blanks carry
        timestamps, so replication clears them on the other replicas too.
        """
        info = self.get_info()
        self.update_metadata({key: ("", timestamp) for key in info["metadata"]})
        self.merge_timestamps(None, timestamp)

    # ---- reclaiming and removing ------------------------------------------------------
    def reclaim(self, cutoff: str, now: str) -> int:
        """Drop deleted rows older than ``cutoff`` (an internal timestamp); how many.

        Why: a deleted row stays as a tombstone so replication carries the deletion to
        every replica; after ``reclaim_age`` all of them have had it, and a table that
        only grows would keep every name ever deleted. Remembers ``now`` as when it
        last ran (:meth:`last_reclaim`): the scan reads the whole table.
        """
        with self.transaction() as conn:
            # the newest row stays whatever it is: the tables have no AUTOINCREMENT, so
            # with it gone SQLite would give the next row a ROWID at or below a point
            # replication peers already hold, and that row would never ship
            gone = conn.execute(
                f"DELETE FROM {self.item_table} WHERE {self.reclaimable} AND "
                f"ROWID < (SELECT MAX(ROWID) FROM {self.item_table})",
                {"cutoff": cutoff}).rowcount
            conn.execute("INSERT OR REPLACE INTO sync_state (key, value) "
                         "VALUES ('reclaimed_at', ?)", (now,))
        return gone

    #: SQL condition of a row :meth:`reclaim` may drop, against ``:cutoff``
    reclaimable = "0"

    def last_reclaim(self) -> float:
        with self.lock:
            row = self.connection().execute(
                "SELECT value FROM sync_state WHERE key = 'reclaimed_at'").fetchone()
        return float(Timestamp(row[0])) if row else 0.0

    def remove_if(self, still_removable: Callable[[sqlite3.Connection], bool]) -> bool:
        """Remove this database's directory if ``still_removable`` holds while nothing
        can be added to it; whether it was removed.

        Why the locks: the replicator decides that a handoff copy has been delivered,
        or that a deleted database is old enough to go, and then removes it. A row
        merged or parked in between would be acknowledged and then lost with the file.
        So the check runs inside a write transaction (SQLite writers wait, and find the
        file gone when they get their turn, see :meth:`transaction`) and under the
        parking file's lock (appenders merge instead, see
        :func:`~swiftlike.storage.pending_rows.append_records`). ``still_removable``
        gets the connection of that transaction and must read through it alone.
        """
        self.fold_pending()
        with self.lock, contextlib.ExitStack() as held:
            if self.parks_rows:
                # created if missing: an appender opening it later must find this file,
                # the one locked here
                fd = os.open(pending_path(self.db_path),
                             os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                held.callback(os.close, fd)
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_size:
                    return False  # rows parked since the fold: the next pass ships them
            try:
                with self.transaction() as conn:
                    if not still_removable(conn):
                        return False
                    remove_directory(os.path.dirname(self.db_path))
            except DatabaseNotFound:
                return False
            finally:
                self.close()
        return True

    # ---- rows -------------------------------------------------------------------------
    def get_items_since(self, start_rowid: int, count: int) -> list[dict[str, Any]]:
        """Rows changed after ``start_rowid`` (replication ships these), oldest first.

        Each row carries its ``ROWID`` under that exact key: SQLite names an un-aliased
        ``ROWID`` column after the table's own spelling, and that differs by version
        (3.40 answers ``rowid``), so the alias pins it.
        """
        columns = ", ".join(("ROWID AS ROWID", *self.item_columns))
        self.fold_pending()
        with self.lock:
            rows = self.connection().execute(
                f"SELECT {columns} FROM {self.item_table} WHERE ROWID > ? "
                f"ORDER BY ROWID LIMIT ?", (start_rowid, count)).fetchall()
        return [dict(row) for row in rows]

    def list_rows(self, columns: str, limit: int, marker: str = "", end_marker: str = "",
                  prefix: str = "", delimiter: str = "", reverse: bool = False,
                  rollups: bool = True, skip: str | None = None
                  ) -> list[sqlite3.Row | tuple[str]]:
        """Live rows by name, Swift listing rules; a ``(subdir,)`` tuple per roll-up.

        Forward: names > marker and < end_marker; reverse: names < marker and
        > end_marker. Rows sharing ``prefix + ... + delimiter`` collapse into one subdir
        (left out altogether with ``rollups=False``); a row named ``skip`` is left out.
        """
        self.fold_pending()
        results: list[sqlite3.Row | tuple[str]] = []
        prefix_high = prefix_upper_bound(prefix) if prefix else None
        # bounds as (value, inclusive); None means unbounded
        low: tuple[str, bool] | None = (prefix, True) if prefix else None
        high: str | None = prefix_high
        if reverse:
            if marker and (high is None or marker < high):
                high = marker
            extra_low = (end_marker, False) if end_marker else None
        else:
            if marker and (low is None or marker >= low[0]):
                low = (marker, False)
            if end_marker and (high is None or end_marker < high):
                high = end_marker
            extra_low = None
        with self.lock:
            conn = self.connection()
            while len(results) < limit:
                clauses = ["deleted = 0"]
                params: list[Any] = []
                for bound in (low, extra_low):
                    if bound is not None:
                        clauses.append("name >= ?" if bound[1] else "name > ?")
                        params.append(bound[0])
                if high is not None:
                    clauses.append("name < ?")
                    params.append(high)
                batch = limit - len(results)
                rows = conn.execute(
                    f"SELECT {columns} FROM {self.item_table} WHERE {' AND '.join(clauses)} "
                    f"ORDER BY name {'DESC' if reverse else 'ASC'} LIMIT ?",
                    (*params, batch)).fetchall()
                rolled_up = False
                for row in rows:
                    name = row["name"]
                    if prefix and not name.startswith(prefix):
                        if not reverse:
                            return results[:limit]
                        high = name
                        continue
                    if delimiter:
                        cut = name.find(delimiter, len(prefix))
                        # without roll-ups (Swift's path=), a name the delimiter ends
                        # ("dir/") is an entry of this level; only deeper ones are left out
                        if cut >= 0 and (rollups or cut + len(delimiter) < len(name)):
                            subdir = name[:cut + len(delimiter)]
                            # a client paging on with this subdir as its marker must not
                            # get it again: it would ask for the same page for ever
                            if subdir != marker and rollups:
                                results.append((subdir,))
                            if reverse:
                                high = subdir
                            else:
                                skip_to = prefix_upper_bound(subdir)
                                if skip_to is None:
                                    return results[:limit]
                                low = (skip_to, True)
                            rolled_up = True
                            break
                    if name != skip:
                        results.append(row)
                    if reverse:
                        high = name
                    else:
                        low = (name, False)
                if not rolled_up and len(rows) < batch:
                    break
        return results[:limit]


class BrokerCache:
    """An LRU of open databases, so hot containers keep their connection."""

    def __init__(self, factory: Callable[[str], DatabaseBroker], size: int = 256) -> None:
        self.factory = factory
        self.size = size
        self._brokers: OrderedDict[str, DatabaseBroker] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, db_path: str) -> DatabaseBroker:
        with self._lock:
            broker = self._brokers.get(db_path)
            if broker is not None:
                self._brokers.move_to_end(db_path)
                return broker
            broker = self.factory(db_path)
            self._brokers[db_path] = broker
            evicted = []
            while len(self._brokers) > self.size:
                evicted.append(self._brokers.popitem(last=False)[1])
        for old in evicted:
            old.close()
        return broker

    def discard(self, db_path: str) -> None:
        """Forget (and close) the broker of ``db_path``: its file is being moved away."""
        with self._lock:
            broker = self._brokers.pop(db_path, None)
        if broker is not None:
            broker.close()

    def close_all(self) -> None:
        with self._lock:
            brokers = list(self._brokers.values())
            self._brokers.clear()
        for broker in brokers:
            broker.close()
