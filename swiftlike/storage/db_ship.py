"""Whole-database shipping: a replica that has no copy of a database gets the file.

Why: database replication otherwise ships rows, ``per_diff`` at a time, each batch a
round trip and a SQLite transaction on the peer: about ten thousand rows a second. A
node that a rebalance makes a new primary of a container with ten million rows would
take most of an hour per container. Swift rsyncs the database file in that case; here
the sender takes a consistent snapshot with SQLite's backup API (writers go on), sends
it in one streamed ``REPLICATE``, and the peer checks it and links it into place.

What the receiver checks before a file becomes a replica: SQLite's ``quick_check``, a
stat row naming the account (and container) whose hash is the one in the request path,
the table of the right kind. What it changes: the file gets its own replication id
(peers key their sync points by it, and two files must never share one), and it
records that it holds the sender's rows up to the snapshot's highest ROWID. The
points the file carries for other databases stay true: it holds every row the sender
had merged from them. It also remembers what it is a clone of (``clone_of``: the
sender's id and that ROWID): its own rows up to there are the sender's, ROWID for
ROWID, so a third replica that has the sender's rows to some point has this file's to
the same point, and is not sent them all again when this file first syncs to it.
It is installed with ``link``, which never replaces a file: if
a database appeared at the path meanwhile (a container PUT, another sender's ship),
the ship is refused and the sender falls back to shipping rows.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from typing import Any

from ring.hashing import hash_path_hex
from swiftlike.storage.db import DatabaseBroker
from swiftlike.storage.db_files import place_database, remove_if_present

#: the item table a database of each kind must have
ITEM_TABLES = {"account": "container", "container": "object"}


class ShipRefused(ValueError):
    """The shipped file is not a sound database of the name in the request path."""


def snapshot(broker: DatabaseBroker, tmp_dir: str) -> tuple[str, int]:
    """A consistent copy of ``broker``'s database in ``tmp_dir`` (parked rows folded in
    first) and its highest item ROWID; the caller removes the file."""
    broker.fold_pending()
    os.makedirs(tmp_dir, exist_ok=True)
    path = os.path.join(tmp_dir, f"ship-{uuid.uuid4().hex}.db")
    target = sqlite3.connect(path)
    try:
        with broker.lock:
            broker.connection().backup(target)
        row = target.execute(f"SELECT MAX(ROWID) FROM {broker.item_table}").fetchone()
    finally:
        target.close()
    return path, int(row[0] or 0)


def clone_of(broker: DatabaseBroker) -> tuple[str, int] | None:
    """(origin id, ROWID) when this file was shipped in as a copy of another database."""
    with broker.lock:
        row = broker.connection().execute(
            "SELECT value FROM sync_state WHERE key = 'clone_of'").fetchone()
    if row is None:
        return None
    origin, _, point = str(row[0]).partition(" ")
    return origin, int(point)


def max_row(broker: DatabaseBroker) -> int:
    """The highest item ROWID: how many rows a peer without the database would need."""
    with broker.lock:
        row = broker.connection().execute(
            f"SELECT MAX(ROWID) FROM {broker.item_table}").fetchone()
    return int(row[0] or 0)


def _check(conn: sqlite3.Connection, server_type: str, db_hash: str, hash_prefix: bytes,
           hash_suffix: bytes) -> None:
    if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
        raise ShipRefused("the shipped file fails SQLite's quick_check")
    tables = {row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    stat_table = f"{server_type}_stat"
    if ITEM_TABLES[server_type] not in tables or stat_table not in tables:
        raise ShipRefused(f"the shipped file is not a {server_type} database")
    cursor = conn.execute(f"SELECT * FROM {stat_table}")
    rows = cursor.fetchall()
    if len(rows) != 1:
        raise ShipRefused("the shipped file has no single stat row")
    stat = dict(zip([col[0] for col in cursor.description], rows[0], strict=True))
    names = [stat.get("account")] + ([stat.get("container")] if server_type == "container"
                                     else [])
    if not all(isinstance(name, str) and name for name in names):
        raise ShipRefused("the shipped file's stat row names nothing")
    if hash_path_hex(*names, prefix=hash_prefix, suffix=hash_suffix) != db_hash:
        raise ShipRefused(f"the shipped file is the database of {'/'.join(names)!r}, "
                          f"not of {db_hash}")


def install_shipped(tmp_path: str, target: str, server_type: str, db_hash: str,
                    broker_class: type[DatabaseBroker], hash_prefix: bytes,
                    hash_suffix: bytes, sender_id: str, point: int, fsync: bool
                    ) -> dict[str, Any]:
    """Check a received file and link it into place at ``target``; ``{"installed":
    False}`` when a database is already there. Removes ``tmp_path`` in any case.
    ShipRefused for a file that must not become a replica.
    """
    try:
        conn = sqlite3.connect(tmp_path)
        try:
            _check(conn, server_type, db_hash, hash_prefix, hash_suffix)
        except sqlite3.DatabaseError as err:
            raise ShipRefused(f"the shipped file is not a database: {err}") from err
        finally:
            conn.close()
        broker = broker_class(tmp_path, fsync=fsync)
        try:
            with broker.transaction() as conn:  # opening it brings its schema up to date
                conn.execute("DELETE FROM sync_state WHERE key = 'id'")
                broker.record_incoming(conn, (sender_id, point))
                conn.execute("INSERT OR REPLACE INTO sync_state (key, value) "
                             "VALUES ('clone_of', ?)", (f"{sender_id} {point}",))
            broker.checkpoint()
        finally:
            broker.close()
        if fsync:
            with open(tmp_path, "rb") as handle:
                os.fsync(handle.fileno())
        if not place_database(tmp_path, target, fsync):
            return {"installed": False}
        return {"installed": True, "point": point}
    finally:
        for leftover in (tmp_path, tmp_path + "-wal", tmp_path + "-shm"):
            remove_if_present(leftover)
