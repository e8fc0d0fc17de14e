# ruff: noqa: ASYNC240
"""A damaged account or container database is quarantined and rebuilt, not served as 500s.

A replica whose file is not a database any more would otherwise answer 500 to every
request and refuse every replication push for ever.
"""

from __future__ import annotations

import os
import shutil
import sqlite3

import msgpack

from ring.hashing import hash_path_hex
from swiftlike.storage import replication_wire as wire
from swiftlike.storage.db_files import is_damaged, still_damaged
from swiftlike.storage.replication_wire import VERB_HEADER
from tests.storage.test_db_servers import listing, make_container, put_row


def damaged_db(node, kind: str, part: str, account: str, container: str | None = None
               ) -> tuple[str, str]:
    """Write junk where the database would be; returns (its path, its hash)."""
    db_hash = hash_path_hex(account, container, prefix=b"pre", suffix=b"suf")
    path = os.path.join(node.devices, "sda", kind, part, db_hash[-3:], db_hash,
                        f"{db_hash}.db")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as handle:
        handle.write(b"this is not a database, whatever its name says" * 200)
    return path, db_hash


def quarantined(node, kind: str, db_hash: str) -> bool:
    return os.path.isdir(os.path.join(node.devices, "sda", "quarantined", kind, db_hash))


async def test_damaged_container_db_is_quarantined_and_recreated(node, ts) -> None:
    path, db_hash = damaged_db(node, "containers", "2", "AUTH_t", "photos")
    status, _ = await listing(node)
    assert status == 404  # answered as a node without the database, not 500
    assert quarantined(node, "containers", db_hash)
    assert not os.path.exists(path)
    assert await make_container(node, ts) == 201  # a fresh one in its place
    assert await put_row(node, ts, "a.jpg") == 201
    status, rows = await listing(node)
    assert status == 200 and [r["name"] for r in rows] == ["a.jpg"]


async def test_damaged_account_db_is_quarantined(node, ts) -> None:
    _, db_hash = damaged_db(node, "accounts", "1", "AUTH_t")
    async with node.session.head(node.url("/sda/1/AUTH_t")) as resp:
        assert resp.status == 404
    assert quarantined(node, "accounts", db_hash)


async def test_replication_push_replaces_a_damaged_replica(node, ts) -> None:
    """The other replicas' pushes are what rebuild it: a sync finds the damage, and the
    database it creates in its place takes every row."""
    _, db_hash = damaged_db(node, "containers", "2", "AUTH_t", "photos")
    url = node.url(f"/sda/2/{db_hash}")
    headers = {"X-Backend-Server-Type": "container", VERB_HEADER: "REPLICATE",
               "Content-Type": wire.MSGPACK_TYPE}
    info = {"account": "AUTH_t", "container": "photos", "put_timestamp": ts(),
            "delete_timestamp": "0", "metadata": {}}
    async with node.session.post(url, data=wire.pack({"op": "sync", "info": info}),
                                 headers=headers) as resp:
        assert resp.status == 200
        assert msgpack.unpackb(await resp.read())["created"] is True
    assert quarantined(node, "containers", db_hash)
    row = {"name": "b.jpg", "created_at": ts(), "size": 3, "content_type": "image/jpeg",
           "etag": "e" * 32, "deleted": 0, "ROWID": 7}
    async with node.session.post(url, data=wire.pack({"op": "merge_items", "rows": [row]}),
                                 headers=headers) as resp:
        assert resp.status == 200
    status, rows = await listing(node)
    assert status == 200 and [r["name"] for r in rows] == ["b.jpg"]


def test_only_damage_counts_as_damage(tmp_path) -> None:
    """Busy, locked or missing is not damage: such a database must never be moved."""
    assert is_damaged(sqlite3.DatabaseError("file is not a database"))
    assert is_damaged(sqlite3.DatabaseError("database disk image is malformed"))
    assert not is_damaged(sqlite3.OperationalError("database is locked"))
    assert not is_damaged(sqlite3.OperationalError("disk I/O error"))
    good = tmp_path / "good.db"
    conn = sqlite3.connect(good)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    assert not still_damaged(str(good))
    assert not still_damaged(str(tmp_path / "missing.db"))
    assert not (tmp_path / "missing.db").exists()  # checking never creates a file
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"junk" * 1000)
    assert still_damaged(str(bad))


async def test_a_database_removed_under_a_cached_connection_is_gone(node, ts) -> None:
    """The replicator removes a delivered handoff database while the node's servers
    still have it open: a write must not land, acknowledged, in the deleted file."""
    assert await make_container(node, ts) == 201
    assert await put_row(node, ts, "a.jpg") == 201  # the broker is cached and open now
    db_hash = hash_path_hex("AUTH_t", "photos", prefix=b"pre", suffix=b"suf")
    shutil.rmtree(os.path.join(node.devices, "sda", "containers", "2", db_hash[-3:],
                               db_hash))
    assert await put_row(node, ts, "ghost.jpg") == 404
    status, _ = await listing(node)
    assert status == 404
    # and one made again in its place is the one used
    assert await make_container(node, ts) == 201
    assert await put_row(node, ts, "b.jpg") == 201
    status, rows = await listing(node)
    assert status == 200 and [r["name"] for r in rows] == ["b.jpg"]
