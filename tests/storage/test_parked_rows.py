"""Object rows parked beside their container database (storage/pending_rows.py).

Real node servers on 127.0.0.1, real files and SQLite: a row is acknowledged once
appended and flushed, every read (the node's listing, a daemon's reader, a restarted
node) folds the parked rows first, a torn or foreign record never hides the rows
around it, and a fold in progress sends rows through SQLite instead of waiting.
"""

from __future__ import annotations

import fcntl
import glob
import os
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from swiftlike.daemons.db_replicator import read_db
from swiftlike.storage.container_db import ContainerBroker
from swiftlike.storage.container_server import ContainerServer
from swiftlike.storage.group_commit import DeviceFlusher
from swiftlike.storage.pending_rows import (
    append_records,
    decode_rows,
    encode_rows,
    pending_path,
)
from swiftlike.storage.routing import Route
from swiftlike.storage.server import RunningNode, start_node_server
from tests.storage.conftest import make_conf

names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
rows_strategy = st.lists(st.fixed_dictionaries({
    "name": names | st.just("caf\udce9"),  # a surrogate-escaped byte survives too
    "created_at": st.integers(1, 2**40).map(lambda n: f"{n:016d}.00000"),
    "size": st.integers(0, 2**50), "content_type": st.text(max_size=20),
    "etag": st.text("0123456789abcdef", max_size=32), "deleted": st.sampled_from([0, 1])}),
    max_size=12)


@given(rows_strategy)
def test_records_decode_to_the_rows_they_encode(rows):
    assert decode_rows(encode_rows(rows)) == (rows, 0)


@given(rows_strategy, st.data())
def test_a_torn_or_foreign_record_hides_only_itself(rows, data):
    """A crash tears at most the last append; later appends land behind the tear."""
    records = [encode_rows([row]) for row in rows]
    cut = data.draw(st.integers(0, len(records)))
    damage = data.draw(st.sampled_from(["torn", "zeros", "flipped"]))
    if cut < len(records) and damage == "torn":
        bad = records[cut][:data.draw(st.integers(0, len(records[cut]) - 1))]
    elif cut < len(records) and damage == "flipped":
        spot = data.draw(st.integers(0, len(records[cut]) - 1))
        bad = bytearray(records[cut])
        bad[spot] ^= 0x5A
        bad = bytes(bad)
    else:
        bad = b"\0" * data.draw(st.integers(1, 64))
    kept = rows[:cut] + rows[cut + 1:] if cut < len(records) else rows
    blob = b"".join(records[:cut]) + bad + b"".join(records[cut + 1:])
    decoded, skipped = decode_rows(blob)
    assert decoded == kept
    assert skipped == len(bad)


def _broker(tmp_path, name: str = "c.db") -> ContainerBroker:
    broker = ContainerBroker(str(tmp_path / "db" / name), fsync=True)
    broker.create(str(tmp_path / "tmp"), "AUTH_t", "c", "0000000001.00000")
    return broker


def _row(name: str, stamp: int, size: int = 3, deleted: int = 0) -> dict:
    return {"name": name, "created_at": f"{stamp:010d}.00000", "size": size,
            "content_type": "a/b", "etag": "e", "deleted": deleted}


def test_every_reader_folds_the_parked_rows_first(tmp_path):
    broker = _broker(tmp_path)
    path = pending_path(broker.db_path)
    assert append_records(path, encode_rows([_row("a", 2), _row("b", 3, size=5)])) > 0
    assert append_records(path, encode_rows([_row("a", 4, deleted=1)])) > 0
    # a daemon's reader: its own broker, opened without fsync
    info, rows = read_db("container", broker.db_path, 0, 10)
    assert (info["object_count"], info["bytes_used"]) == (1, 5)
    assert sorted((r["name"], r["deleted"]) for r in rows) == [("a", 1), ("b", 0)]
    assert os.path.getsize(path) == 0
    # folding again (a crash between commit and truncation) changes nothing
    append_records(path, encode_rows([_row("b", 3, size=5), _row("a", 2)]))
    assert [r["name"] for r in broker.list_objects(10)] == ["b"]
    assert broker.get_info()["object_count"] == 1
    assert not broker.is_empty()


def test_an_append_never_waits_for_a_fold(tmp_path):
    broker = _broker(tmp_path)
    path = pending_path(broker.db_path)
    append_records(path, encode_rows([_row("a", 2)]))
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a fold holds while it merges
        assert append_records(path, encode_rows([_row("b", 2)])) is None
    finally:
        os.close(fd)
    assert [r["name"] for r in broker.list_objects(10)] == ["a"]


@dataclass
class OneNode:
    """A node server with device sda, where container AUTH_t/c lives in partition 2."""

    running: RunningNode
    devices: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.running.port}"

    @property
    def sda(self) -> str:
        return os.path.join(self.devices, "sda")

    @property
    def flusher(self) -> DeviceFlusher:
        return self.running.dispatcher.node.flusher(self.sda)

    @property
    def containers(self) -> ContainerServer:
        return self.running.dispatcher.servers["container"]

    @property
    def db_path(self) -> str:
        return self.containers.broker(self.sda, Route("sda", "2", "AUTH_t", "c")).db_path


@pytest.fixture
async def node(tmp_path) -> AsyncIterator[OneNode]:
    devices = str(tmp_path / "node")
    os.makedirs(os.path.join(devices, "sda"))
    # no account reports during the test: they read (and so fold) the database
    running = await start_node_server(make_conf(devices, account_update_interval=600),
                                      "127.0.0.1", 0)
    try:
        yield OneNode(running, devices)
    finally:
        await running.cleanup()


ROW = {"X-Backend-Server-Type": "container", "X-Size": "3", "X-Etag": "e"}


async def _create_container(session: aiohttp.ClientSession, base: str, ts) -> None:
    async with session.put(f"{base}/sda/2/AUTH_t/c", headers={"X-Timestamp": ts()}) as r:
        assert r.status == 201


def _sqlite_names(db_path: str) -> list[str]:
    conn = sqlite3.connect(db_path)
    try:
        return sorted(r[0] for r in conn.execute("SELECT name FROM object"))
    finally:
        conn.close()


async def test_a_row_is_parked_flushed_and_listed(node, ts):
    base = node.base
    async with aiohttp.ClientSession() as session:
        await _create_container(session, base, ts)
        flushes = node.flusher.flushes
        for name in ("x", "y"):
            async with session.put(f"{base}/sda/2/AUTH_t/c/{name}",
                                   headers={"X-Timestamp": ts(), **ROW}) as r:
                assert r.status == 201
        assert node.flusher.flushes > flushes  # acknowledged after a flush
        assert node.containers.batcher.rows_parked == 2
        assert os.path.getsize(pending_path(node.db_path)) > 0  # noqa: ASYNC240
        assert _sqlite_names(node.db_path) == []  # not merged yet
        async with session.head(f"{base}/sda/2/AUTH_t/c") as r:
            assert r.headers["X-Container-Object-Count"] == "2"
        async with session.get(f"{base}/sda/2/AUTH_t/c", params={"format": "json"}) as r:
            assert [row["name"] for row in await r.json()] == ["x", "y"]
    assert _sqlite_names(node.db_path) == ["x", "y"]
    assert os.path.getsize(pending_path(node.db_path)) == 0  # noqa: ASYNC240


async def test_a_held_parking_file_sends_the_row_through_sqlite(node, ts):
    async with aiohttp.ClientSession() as session:
        await _create_container(session, node.base, ts)
        fd = os.open(pending_path(node.db_path), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            async with session.put(f"{node.base}/sda/2/AUTH_t/c/held",
                                   headers={"X-Timestamp": ts(), **ROW}) as r:
                assert r.status == 201
        finally:
            os.close(fd)
    assert node.containers.batcher.rows_parked == 0
    assert _sqlite_names(node.db_path) == ["held"]


async def test_a_failed_flush_is_not_acknowledged_and_later_rows_fsync_alone(node, ts):
    base, flusher = node.base, node.flusher
    async with aiohttp.ClientSession() as session:
        await _create_container(session, base, ts)

        def broken(_fd: int) -> None:
            raise OSError(5, "Input/output error")

        real, flusher.sync_func = flusher.sync_func, broken
        async with session.put(f"{base}/sda/2/AUTH_t/c/lost",
                               headers={"X-Timestamp": ts(), **ROW}) as r:
            assert r.status >= 500
        flusher.sync_func = real
        flushes = flusher.flushes
        async with session.put(f"{base}/sda/2/AUTH_t/c/after",
                               headers={"X-Timestamp": ts(), **ROW}) as r:
            assert r.status == 201
        assert flusher.flushes == flushes  # committed with SQLite's own fsync
        async with session.get(f"{base}/sda/2/AUTH_t/c", params={"format": "json"}) as r:
            assert sorted(row["name"] for row in await r.json()) == ["after", "lost"]
    assert node.containers.batcher.rows_parked == 1  # "lost", before its flush failed


async def test_parked_rows_outlive_the_node(tmp_path, ts):
    devices = str(tmp_path / "node")
    os.makedirs(os.path.join(devices, "sda"))
    conf = make_conf(devices, account_update_interval=600)
    first = OneNode(await start_node_server(conf, "127.0.0.1", 0), devices)
    try:
        async with aiohttp.ClientSession() as session:
            await _create_container(session, first.base, ts)
            async with session.put(f"{first.base}/sda/2/AUTH_t/c/kept",
                                   headers={"X-Timestamp": ts(), **ROW}) as r:
                assert r.status == 201
        assert first.containers.batcher.rows_parked == 1
    finally:
        await first.running.cleanup()
    again = OneNode(await start_node_server(conf, "127.0.0.1", 0), devices)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{again.base}/sda/2/AUTH_t/c",
                                   params={"format": "json"}) as r:
                assert [row["name"] for row in await r.json()] == ["kept"]
    finally:
        await again.running.cleanup()


def test_a_row_parked_before_its_object_was_durable_needs_the_object(tmp_path):
    """A crash inside the flush an object row rode may keep the row and lose the name."""
    broker = _broker(tmp_path)
    there = tmp_path / "objects" / "1700000001.00000.data"
    there.parent.mkdir()
    there.write_bytes(b"x")
    rows = [{**_row("kept", 2), "check": str(there)},
            {**_row("phantom", 2), "check": str(there.parent / "1700000002.00000.data")},
            _row("plain", 2)]
    append_records(pending_path(broker.db_path), encode_rows(rows))
    assert [r["name"] for r in broker.list_objects(10)] == ["kept", "plain"]
    assert "check" not in broker.get_items_since(0, 10)[0]


async def test_an_object_row_for_its_own_device_rides_the_object_flush(node, ts):
    base = node.base
    os.makedirs(os.path.join(node.devices, "sdb"))
    own = {"X-Container-Host": f"127.0.0.1:{node.running.port}",
           "X-Container-Partition": "2"}
    updates = node.running.dispatcher.servers["object"].updates
    async with aiohttp.ClientSession() as session:
        await _create_container(session, base, ts)
        flushes = node.flusher.flushes
        async with session.put(f"{base}/sda/4/AUTH_t/c/same", data=b"abc", headers={
                "X-Timestamp": ts(), "X-Container-Device": "sda", **own}) as r:
            assert r.status == 201
        # the temp file's flush and the name's: none more for the row
        assert node.flusher.flushes - flushes == 2
        parked = open(pending_path(node.db_path), "rb").read()  # noqa: ASYNC230
        assert b"check" in parked and b"same" in parked
        # an object on another device: its row waits for a flush of the database's own
        async with session.put(f"{base}/sdb/4/AUTH_t/c/other", data=b"abcd", headers={
                "X-Timestamp": ts(), "X-Container-Device": "sda", **own}) as r:
            assert r.status == 201
        async with session.get(f"{base}/sda/2/AUTH_t/c", params={"format": "json"}) as r:
            assert [(row["name"], row["bytes"]) for row in await r.json()] == [
                ("other", 4), ("same", 3)]
    assert updates.rows_local == 2 and updates.rows_sent == 0


def test_a_listing_and_its_counts_come_from_one_read(tmp_path):
    """Rows parked between reading the counts and reading the rows used to show in the
    rows only (a count of 663 over 664 listed rows, under load)."""
    broker = _broker(tmp_path)
    path = pending_path(broker.db_path)
    append_records(path, encode_rows([_row("a", 2)]))

    def info_then_a_new_row() -> dict:
        info = broker.get_info()
        append_records(path, encode_rows([_row("b", 2)]))  # arrives between the reads
        return info

    info, rows = broker.read_together(info_then_a_new_row, lambda: broker.list_objects(10))
    assert info["object_count"] == len(rows) == 1
    assert [r["name"] for r in broker.list_objects(10)] == ["a", "b"]  # next read folds it


async def test_a_small_writes_name_appears_only_after_its_bytes_were_flushed(node, ts):
    """Even a new object's name waits for the flush of its bytes: a named file that a
    crash could tear would let other writers drop or clean up acknowledged versions in
    its favour (a racing streamed PUT, a replication push judged stale)."""
    flusher = node.flusher
    real_sync = flusher.sync_func
    seen: list[list[str]] = []
    object_dirs = os.path.join(node.sda, "objects", "4")

    def recording_sync(fd: int) -> None:
        seen.append(sorted(os.path.basename(path) for path in glob.glob(
            os.path.join(object_dirs, "*", "*", "*.data"))))
        real_sync(fd)

    flusher.sync_func = recording_sync
    first, second = ts(), ts()
    async with aiohttp.ClientSession() as session:
        async with session.put(f"{node.base}/sda/4/AUTH_t/c/o", data=b"old",
                               headers={"X-Timestamp": first}) as r:
            assert r.status == 201
        assert seen == [[], [f"{first}.data"]]
        seen.clear()
        async with session.put(f"{node.base}/sda/4/AUTH_t/c/o", data=b"newer",
                               headers={"X-Timestamp": second}) as r:
            assert r.status == 201
    assert seen == [[f"{first}.data"], [f"{second}.data"]]
