"""The database replicator reclaims: old deleted rows, old deleted databases, delivered
handoffs; and a removal never takes a row or a re-creation that arrived after its check.

Four whole node servers on 127.0.0.1 (account and container servers included), driven
over HTTP the way proxies and object servers drive them; the replicator runs its real
passes against them.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time

import aiohttp
import pytest

from ring.hashing import hash_path_hex
from swiftlike.common.timestamp import Timestamp
from swiftlike.daemons.db_replicator import DatabaseReplicator
from swiftlike.storage.container_db import ContainerBroker
from swiftlike.storage.db import DatabaseNotFound
from swiftlike.storage.db_replication_server import db_file_path
from swiftlike.storage.pending_rows import append_records, encode_rows, pending_path
from tests.daemons.mini_cluster import PREFIX, SUFFIX, MiniCluster

ACCOUNT, CONTAINER = "AUTH_r", "box"
RECLAIM_AGE = 100.0


def stamp(offset: float) -> str:
    return Timestamp(time.time() + offset).internal


@pytest.fixture
def cluster(full_cluster):
    return full_cluster


def _url(dev: dict, part: int, *names: str) -> str:
    return f"http://127.0.0.1:{dev['port']}/{dev['device']}/{part}/" + "/".join(names)


def _account_headers(cluster: MiniCluster) -> dict[str, str]:
    part, nodes = cluster.ring.get_nodes(ACCOUNT)
    return {"X-Account-Host": ",".join(f"127.0.0.1:{n['port']}" for n in nodes),
            "X-Account-Partition": str(part),
            "X-Account-Device": ",".join(n["device"] for n in nodes)}


async def _send(session: aiohttp.ClientSession, method: str, url: str,
                headers: dict[str, str], ok: tuple[int, ...]) -> None:
    async with session.request(method, url, headers=headers) as resp:
        assert resp.status in ok, (method, url, resp.status, await resp.text())


async def make_account_and_container(cluster: MiniCluster, session: aiohttp.ClientSession,
                                     created: str) -> None:
    apart, anodes = cluster.ring.get_nodes(ACCOUNT)
    for dev in anodes:
        await _send(session, "PUT", _url(dev, apart, ACCOUNT), {"X-Timestamp": created},
                    (201, 202))
    part, nodes = cluster.ring.get_nodes(ACCOUNT, CONTAINER)
    # each primary gets the account headers (only one would from a proxy: the same here)
    for dev in nodes:
        await _send(session, "PUT", _url(dev, part, ACCOUNT, CONTAINER),
                    {"X-Timestamp": created, **_account_headers(cluster)}, (201, 202))


async def make_and_delete_container(cluster: MiniCluster, session: aiohttp.ClientSession
                                    ) -> list[dict]:
    """A container made long ago and deleted on every replica, its account told; returns
    the replicas' devices."""
    await make_account_and_container(cluster, session, stamp(-2000))
    part, nodes = cluster.ring.get_nodes(ACCOUNT, CONTAINER)
    for dev in nodes:
        await _send(session, "DELETE", _url(dev, part, ACCOUNT, CONTAINER),
                    {"X-Timestamp": stamp(-1000), **_account_headers(cluster)}, (204,))
    return nodes


async def send_row(cluster: MiniCluster, session: aiohttp.ClientSession, method: str,
                   name: str, timestamp: str, **headers: str) -> None:
    part, nodes = cluster.ring.get_nodes(ACCOUNT, CONTAINER)
    for dev in nodes:
        await _send(session, method, _url(dev, part, ACCOUNT, CONTAINER, name),
                    {"X-Backend-Server-Type": "container", "X-Timestamp": timestamp,
                     **headers}, (201, 202, 204))


def container_db(cluster: MiniCluster, dev: dict) -> str:
    part, _ = cluster.ring.get_nodes(ACCOUNT, CONTAINER)
    db_hash = hash_path_hex(ACCOUNT, CONTAINER, prefix=PREFIX.encode(), suffix=SUFFIX.encode())
    return db_file_path(cluster.node_of(dev).device_path, "container", str(part), db_hash)


def present(path: str) -> bool:
    return os.path.exists(path)


def rows_of(path: str) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT name, deleted FROM object"))
    finally:
        conn.close()


async def replicate_all(cluster: MiniCluster, **conf: float) -> dict[str, dict]:
    """One database replication pass on every node; device -> its counts."""
    counts = {}
    for node in cluster.nodes:
        ctx = cluster.context(node)
        try:
            result = await DatabaseReplicator(ctx, {"reclaim_age": RECLAIM_AGE, **conf}
                                              ).run_once()
        finally:
            await ctx.close()
        counts[node.device] = result[node.device]["counts"]
    return counts


async def test_old_deleted_rows_go_and_everything_newer_stays(cluster):
    async with aiohttp.ClientSession() as session:
        await make_account_and_container(cluster, session, stamp(-2000))
        row = {"X-Size": "3", "X-Content-Type": "text/plain", "X-Etag": "e" * 32}
        await send_row(cluster, session, "PUT", "old-gone", stamp(-1000), **row)
        await send_row(cluster, session, "DELETE", "old-gone", stamp(-900))
        await send_row(cluster, session, "PUT", "new-gone", stamp(-1000), **row)
        await send_row(cluster, session, "DELETE", "new-gone", stamp(-10))
        await send_row(cluster, session, "PUT", "live", stamp(-1000), **row)
        # a content type whose object row has not arrived: deleted, created_at 0
        await send_row(cluster, session, "POST", "waiting", stamp(-5),
                       **{"X-Content-Type": "image/png"})
    counts = await replicate_all(cluster)
    _, nodes = cluster.ring.get_nodes(ACCOUNT, CONTAINER)
    for dev in nodes:
        assert counts[dev["device"]].get("container_rows_reclaimed") == 1, counts
        assert rows_of(container_db(cluster, dev)) == {"new-gone": 1, "live": 0,
                                                       "waiting": 1}
    # the scan runs at most once per reclaim_interval (default an hour)
    counts = await replicate_all(cluster)
    assert not any(c.get("container_rows_reclaimed") for c in counts.values()), counts


async def test_an_old_deleted_container_is_removed_from_every_replica(cluster):
    async with aiohttp.ClientSession() as session:
        nodes = await make_and_delete_container(cluster, session)
    paths = [container_db(cluster, dev) for dev in nodes]
    assert all(present(p) for p in paths)
    counts = await replicate_all(cluster)
    assert sum(c.get("container_dbs_reclaimed", 0) for c in counts.values()) == 3, counts
    assert not any(present(os.path.dirname(p)) for p in paths)
    # and no replica brought it back to the others
    counts = await replicate_all(cluster)
    assert not any(present(p) for p in paths)


async def test_a_recent_or_unreported_deletion_is_kept(cluster):
    async with aiohttp.ClientSession() as session:
        await make_account_and_container(cluster, session, stamp(-2000))
        part, nodes = cluster.ring.get_nodes(ACCOUNT, CONTAINER)
        recent, unreported = nodes[0], nodes[1]
        await _send(session, "DELETE", _url(recent, part, ACCOUNT, CONTAINER),
                    {"X-Timestamp": stamp(-10), **_account_headers(cluster)}, (204,))
        # no account headers and none stored: the account never hears of this one
        broker = ContainerBroker(container_db(cluster, unreported), fsync=False)
        broker.set_account_target("", "", "")
        broker.close()
        await _send(session, "DELETE", _url(unreported, part, ACCOUNT, CONTAINER),
                    {"X-Timestamp": stamp(-1000)}, (204,))
    for node in cluster.nodes:  # only these two replicas: no pushes between them
        if node.port not in (recent["port"], unreported["port"]):
            await node.stop()
    ctx_nodes = [cluster.node_of(recent), cluster.node_of(unreported)]
    for node in ctx_nodes:
        ctx = cluster.context(node)
        try:
            result = await DatabaseReplicator(ctx, {"reclaim_age": RECLAIM_AGE}).run_once()
        finally:
            await ctx.close()
        assert not result[node.device]["counts"].get("container_dbs_reclaimed"), result
    assert present(container_db(cluster, recent))
    assert present(container_db(cluster, unreported))


def _db_path(tmp_path) -> str:
    """Where a device keeps a container database (removals use the device's tmp/)."""
    return db_file_path(str(tmp_path / "dev"), "container", "7", "0" * 29 + "abc")


def _deleted_container(tmp_path) -> ContainerBroker:
    broker = ContainerBroker(_db_path(tmp_path), fsync=False)
    broker.create(str(tmp_path / "dev" / "tmp"), ACCOUNT, CONTAINER, stamp(-2000))
    broker.delete_db(stamp(-1000))
    return broker


def test_a_write_waiting_on_a_removal_finds_the_database_gone(tmp_path):
    remover = _deleted_container(tmp_path)
    writer = ContainerBroker(remover.db_path, fsync=False)
    writer.get_info()  # its connection is open on the file before the removal starts
    outcome: list[object] = []
    checking = threading.Event()

    def write() -> None:
        checking.wait(10)
        try:
            outcome.append(writer.merge_items([{  # a row that must not be acknowledged
                "name": "late", "created_at": stamp(0), "size": 1, "content_type": "a/b",
                "etag": "e", "deleted": 0}]))
        except DatabaseNotFound as err:
            outcome.append(err)

    thread = threading.Thread(target=write)
    thread.start()

    def check(conn: sqlite3.Connection) -> bool:
        checking.set()
        time.sleep(0.3)  # the writer is now waiting for the write lock held here
        return True

    assert remover.remove_if(check)
    thread.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], DatabaseNotFound), outcome
    assert not os.path.exists(os.path.dirname(remover.db_path))


def test_a_write_before_the_check_keeps_the_database(tmp_path):
    broker = _deleted_container(tmp_path)
    other = ContainerBroker(broker.db_path, fsync=False)
    other.merge_timestamps(stamp(0))  # re-created before the removal looked
    assert not broker.remove_if(lambda conn: broker.is_deleted_info(broker.info_in(conn)))
    assert os.path.exists(broker.db_path)
    assert not other.is_deleted()


def test_rows_parked_after_the_fold_keep_the_database(tmp_path):
    broker = _deleted_container(tmp_path)
    row = {"name": "late", "created_at": stamp(0), "size": 1, "content_type": "a/b",
           "etag": "e", "deleted": 0}
    calls = []

    def check(conn: sqlite3.Connection) -> bool:
        calls.append(1)
        return True

    original_fold = broker.fold_pending

    def fold_then_park() -> int:
        folded = original_fold()
        assert append_records(pending_path(broker.db_path), encode_rows([row]))
        return folded

    broker.fold_pending = fold_then_park  # type: ignore[method-assign]
    assert not broker.remove_if(check)
    assert not calls  # the parked bytes decided it before any check
    assert os.path.exists(broker.db_path)
    broker.fold_pending = original_fold  # type: ignore[method-assign]
    assert [r["name"] for r in broker.list_objects(10)] == ["late"]


def test_an_append_that_gets_the_lock_after_a_removal_parks_nothing(tmp_path, monkeypatch):
    broker = _deleted_container(tmp_path)
    path = pending_path(broker.db_path)
    import fcntl as real_fcntl

    from swiftlike.storage import pending_rows

    real_flock = real_fcntl.flock
    armed = [True]

    def flock_after_removal(fd: int, op: int) -> None:
        if armed.pop() if armed else False:
            # the removal runs between this appender's open and its lock
            assert broker.remove_if(lambda conn: True)
        real_flock(fd, op)

    monkeypatch.setattr(pending_rows.fcntl, "flock", flock_after_removal)
    open(path, "ab").close()
    assert append_records(path, encode_rows([{"name": "lost?", "created_at": stamp(0)}])) \
        is None


async def test_a_delivered_handoff_database_is_removed_and_its_rows_are_home(cluster):
    part, nodes = cluster.ring.get_nodes(ACCOUNT, CONTAINER)
    handoff = next(iter(cluster.ring.get_more_nodes(part)))
    row = {"X-Backend-Server-Type": "container", "X-Size": "3",
           "X-Content-Type": "text/plain", "X-Etag": "e" * 32}
    async with aiohttp.ClientSession() as session:
        # the primaries were down when the container was made: only the handoff has it
        await _send(session, "PUT", _url(handoff, part, ACCOUNT, CONTAINER),
                    {"X-Timestamp": stamp(-50)}, (201,))
        await _send(session, "PUT", _url(handoff, part, ACCOUNT, CONTAINER, "o1"),
                    {"X-Timestamp": stamp(-40), **row}, (201,))
        await _send(session, "POST", _url(handoff, part, ACCOUNT, CONTAINER),
                    {"X-Timestamp": stamp(-30), "X-Container-Meta-Colour": "blue"}, (204,))
    node = cluster.node_of(handoff)
    # a former primary, which a rebalance took away, left its point in the sync file
    with open(container_db(cluster, handoff) + ".sync", "w") as handle:  # noqa: ASYNC230
        json.dump({"127.0.0.1:9/gone": {"file_id": "0:0", "row": 0}}, handle)
    ctx = cluster.context(node)
    try:
        result = await DatabaseReplicator(ctx).run_once()
    finally:
        await ctx.close()
    assert result[node.device]["counts"].get("container_handoffs_removed") == 1, result
    assert not present(container_db(cluster, handoff))
    # nor the partition directory it lived in (nothing else was in it)
    assert not present(os.path.join(node.device_path, "containers", str(part)))
    for dev in nodes:
        broker = ContainerBroker(container_db(cluster, dev), fsync=False)
        try:
            assert [r["name"] for r in broker.list_objects(10)] == ["o1"]
            assert broker.get_info()["metadata"]["X-Container-Meta-Colour"][0] == "blue"
        finally:
            broker.close()


def test_a_handoff_changed_after_its_push_is_kept(tmp_path):
    from swiftlike.daemons.db_replicator import read_db, remove_delivered

    broker = ContainerBroker(_db_path(tmp_path), fsync=False)
    broker.create(str(tmp_path / "dev" / "tmp"), ACCOUNT, CONTAINER, stamp(-50))
    broker.put_object("o1", stamp(-40), 1, "a/b", "e")
    shipped, rows = read_db("container", broker.db_path, 0, 10)
    point = rows[-1]["ROWID"]
    broker.update_metadata({"X-Container-Meta-Colour": ("red", stamp(0))})
    assert not remove_delivered("container", broker.db_path, shipped, point)
    shipped, _ = read_db("container", broker.db_path, 0, 10)
    broker.put_object("o2", stamp(0), 1, "a/b", "e")
    assert not remove_delivered("container", broker.db_path, shipped, point)
    assert remove_delivered("container", broker.db_path, shipped, point + 1)
    assert not present(broker.db_path)


@pytest.mark.parametrize("age, down, kept", [
    (-1000, False, False),  # every target 404, for longer than reclaim_age: dropped
    (-10, False, True),     # 404, but recent: the database may still be on its way
    (-1000, True, True),    # one target did not answer: it may still have the database
])
async def test_an_old_update_for_a_reclaimed_container_is_dropped(cluster, age, down, kept):
    from swiftlike.daemons.updater import ObjectUpdater, list_pending
    from swiftlike.storage.updates import (
        UpdateTarget,
        pending_record,
        write_async_pending,
    )

    part, nodes = cluster.ring.get_nodes(ACCOUNT, CONTAINER)  # no container anywhere
    targets = [UpdateTarget(f"127.0.0.1:{n['port']}", str(part), n["device"])
               for n in nodes[:2]]
    if down:
        await cluster.node_of(nodes[1]).stop()
    writer = next(n for n in cluster.nodes if n.runner is not None)
    timestamp = stamp(age)
    record = pending_record("PUT", ACCOUNT, CONTAINER, "o", "container",
                            {"X-Timestamp": timestamp, "X-Size": "1", "X-Etag": "e",
                             "X-Content-Type": "a/b"}, targets)
    write_async_pending(writer.device_path, record, timestamp, PREFIX.encode(),
                        SUFFIX.encode(), fsync=False)
    ctx = cluster.context(writer)
    try:
        result = await ObjectUpdater(ctx, {"reclaim_age": RECLAIM_AGE,
                                           "update_timeout": 1}).run_once()
    finally:
        await ctx.close()
    counts = result[writer.device]["counts"]
    assert bool(list_pending(writer.device_path)) == kept, counts
    assert counts.get("dropped_gone", 0) == (0 if kept else 1), counts


def test_an_append_between_the_unlinks_and_the_rmdir_finds_no_directory(tmp_path,
                                                                       monkeypatch):
    """rmtree in place unlinks the files, then removes the directory: an appender
    creating .pending in between would park acknowledged rows in a file no lock
    covers. The directory is renamed away first, so the path is simply gone."""
    import shutil

    from swiftlike.storage import db_files

    broker = _deleted_container(tmp_path)
    path = pending_path(broker.db_path)
    appended: list[object] = []
    real_rmtree = shutil.rmtree

    def rmtree_with_an_appender(target: str, *args: object, **kwargs: object) -> None:
        for name in os.listdir(target):
            os.unlink(os.path.join(target, name))
        appended.append(append_records(path, encode_rows([{"name": "late",
                                                           "created_at": stamp(0)}])))
        real_rmtree(target, *args, **kwargs)

    monkeypatch.setattr(db_files.shutil, "rmtree", rmtree_with_an_appender)
    assert broker.remove_if(lambda conn: True)
    assert appended == [None]
    assert not present(os.path.dirname(broker.db_path))
    assert os.listdir(tmp_path / "dev" / "tmp") == []  # nothing left in the trash


async def test_a_row_after_a_reclaim_still_replicates(cluster):
    """Reclaiming the row with the highest ROWID would let SQLite give the next row a
    ROWID the peers' points already cover: it would never ship."""
    row = {"X-Size": "3", "X-Content-Type": "text/plain", "X-Etag": "e" * 32}
    async with aiohttp.ClientSession() as session:
        await make_account_and_container(cluster, session, stamp(-2000))
        await send_row(cluster, session, "PUT", "o1", stamp(-1000), **row)
        await send_row(cluster, session, "PUT", "o2", stamp(-1000), **row)
        await send_row(cluster, session, "DELETE", "o2", stamp(-900))
        await replicate_all(cluster, reclaim_age=10**6)  # points set, nothing reclaimed
        await replicate_all(cluster, reclaim_interval=0)  # o2's tombstone is the top row
        part, nodes = cluster.ring.get_nodes(ACCOUNT, CONTAINER)
        for dev in nodes[:2]:  # the third replica misses this update
            await _send(session, "PUT", _url(dev, part, ACCOUNT, CONTAINER, "new"),
                        {"X-Backend-Server-Type": "container", "X-Timestamp": stamp(0),
                         **row}, (201,))
    await replicate_all(cluster)
    for dev in nodes:
        assert rows_of(container_db(cluster, dev)).get("new") == 0, dev


async def test_an_emptied_deleted_account_is_removed_and_stays_gone(cluster):
    """A deleted account that lists no live container (the reaper emptied it) goes after
    reclaim_age; a late container report then finds no account (404) rather than making
    one again, live."""
    async with aiohttp.ClientSession() as session:
        await make_and_delete_container(cluster, session)
        apart, anodes = cluster.ring.get_nodes(ACCOUNT)
        for dev in anodes:
            await _send(session, "DELETE", _url(dev, apart, ACCOUNT),
                        {"X-Timestamp": stamp(-900)}, (204,))
        counts = await replicate_all(cluster, reclaim_interval=0)
        assert sum(c.get("account_dbs_reclaimed", 0) for c in counts.values()) == 3, counts
        assert sum(c.get("container_dbs_reclaimed", 0) for c in counts.values()) == 3
        # a late report (a container replica that had missed the deletion) is refused
        await _send(session, "PUT", _url(anodes[0], apart, ACCOUNT, CONTAINER),
                    {"X-Put-Timestamp": stamp(-2000), "X-Delete-Timestamp": "0",
                     "X-Object-Count": "0", "X-Bytes-Used": "0",
                     "X-Timestamp": stamp(0), "X-Backend-Server-Type": "account"}, (404,))
        for dev in anodes:
            async with session.head(_url(dev, apart, ACCOUNT)) as resp:
                assert resp.status == 404


async def test_a_deleted_account_that_still_lists_containers_is_kept(cluster):
    """Until the reaper has deleted its containers, a deleted account keeps its database:
    it is the reaper's only list of what to delete. It refuses reports that would add a
    container, and takes those that delete one."""
    async with aiohttp.ClientSession() as session:
        await make_account_and_container(cluster, session, stamp(-2000))
        apart, anodes = cluster.ring.get_nodes(ACCOUNT)
        for dev in anodes:
            await _send(session, "DELETE", _url(dev, apart, ACCOUNT),
                        {"X-Timestamp": stamp(-900)}, (204,))
        counts = await replicate_all(cluster, reclaim_interval=0)
        assert not any(c.get("account_dbs_reclaimed") for c in counts.values()), counts
        report = {"X-Object-Count": "0", "X-Bytes-Used": "0", "X-Timestamp": stamp(0),
                  "X-Backend-Server-Type": "account"}
        await _send(session, "PUT", _url(anodes[0], apart, ACCOUNT, "another"),
                    {**report, "X-Put-Timestamp": stamp(-10), "X-Delete-Timestamp": "0"},
                    (404,))
        for dev in anodes:
            await _send(session, "PUT", _url(dev, apart, ACCOUNT, CONTAINER),
                        {**report, "X-Put-Timestamp": "0",
                         "X-Delete-Timestamp": stamp(-800)}, (204,))
        counts = await replicate_all(cluster, reclaim_interval=0)
        assert sum(c.get("account_dbs_reclaimed", 0) for c in counts.values()) == 3, counts


async def test_a_container_put_racing_its_reclaim_creates_it(cluster, monkeypatch):
    from swiftlike.storage.container_server import ContainerServer

    async with aiohttp.ClientSession() as session:
        await make_account_and_container(cluster, session, stamp(-2000))
        part, nodes = cluster.ring.get_nodes(ACCOUNT, CONTAINER)
        dev = nodes[0]
        await _send(session, "DELETE", _url(dev, part, ACCOUNT, CONTAINER),
                    {"X-Timestamp": stamp(-1000), **_account_headers(cluster)}, (204,))
        path = container_db(cluster, dev)
        real = ContainerServer._create_or_revive
        calls = []

        async def reclaimed_meanwhile(self, broker, *args):  # type: ignore[no-untyped-def]
            if not calls:  # the replicator wins the race once, after the exists() check
                calls.append(1)
                ContainerBroker(path, fsync=False).remove_if(lambda conn: True)
                broker.exists = lambda: True  # as seen before the removal
                try:
                    return await real(self, broker, *args)
                finally:
                    del broker.exists
            return await real(self, broker, *args)

        monkeypatch.setattr(ContainerServer, "_create_or_revive", reclaimed_meanwhile)
        async with session.put(_url(dev, part, ACCOUNT, CONTAINER),
                               headers={"X-Timestamp": stamp(0)}) as resp:
            assert resp.status == 201, await resp.text()
    assert present(path) and calls == [1]


async def test_a_queued_update_follows_the_ring_to_the_current_primaries(cluster):
    """A record names the replicas that were primaries when it was queued; after a
    rebalance one of them may not hold the database any more. The update then goes to
    the current primaries, as Swift's updater looks the ring up at every replay."""
    from swiftlike.daemons.updater import ObjectUpdater, list_pending
    from swiftlike.storage.updates import UpdateTarget, pending_record, write_async_pending

    async with aiohttp.ClientSession() as session:
        await make_account_and_container(cluster, session, stamp(-2000))
    part, nodes = cluster.ring.get_nodes(ACCOUNT, CONTAINER)
    # queued for a node that is not (or no longer) a primary of this container
    elsewhere = next(iter(cluster.ring.get_more_nodes(part)))
    stale = UpdateTarget(f"127.0.0.1:{elsewhere['port']}", str(part), elsewhere["device"])
    writer = cluster.node_of(nodes[0])
    timestamp = stamp(-5)
    record = pending_record("PUT", ACCOUNT, CONTAINER, "moved", "container",
                            {"X-Timestamp": timestamp, "X-Size": "4", "X-Etag": "e" * 32,
                             "X-Content-Type": "a/b"}, [stale])
    write_async_pending(writer.device_path, record, timestamp, PREFIX.encode(),
                        SUFFIX.encode(), fsync=False)
    ctx = cluster.context(writer)
    try:
        result = await ObjectUpdater(ctx, {"update_timeout": 2}).run_once()
    finally:
        await ctx.close()
    assert result[writer.device]["counts"].get("successes") == 1, result
    assert not list_pending(writer.device_path)
    for dev in nodes:
        assert rows_of(container_db(cluster, dev)) == {"moved": 0}


async def test_a_container_report_for_an_account_a_replica_lacks_is_refused(cluster):
    """An account database made by a report would hold that one container and answer
    listings and counts with it (after a rebalance moved an account primary); the
    report waits instead, as in Swift, until the replica has the account."""
    apart, anodes = cluster.ring.get_nodes(ACCOUNT)
    async with aiohttp.ClientSession() as session:
        await _send(session, "PUT", _url(anodes[0], apart, ACCOUNT, CONTAINER),
                    {"X-Put-Timestamp": stamp(0), "X-Delete-Timestamp": "0",
                     "X-Object-Count": "1", "X-Bytes-Used": "3", "X-Timestamp": stamp(0),
                     "X-Backend-Server-Type": "account"}, (404,))
        async with session.head(_url(anodes[0], apart, ACCOUNT)) as resp:
            assert resp.status == 404


async def test_a_container_reports_to_the_account_servers_the_ring_names_now(cluster):
    """The account servers a container's PUT named may have moved since (a rebalance, a
    new port): its later reports go where the ring says."""
    async with aiohttp.ClientSession() as session:
        apart, anodes = cluster.ring.get_nodes(ACCOUNT)
        for dev in anodes:
            await _send(session, "PUT", _url(dev, apart, ACCOUNT), {"X-Timestamp": stamp(-9)},
                        (201, 202))
        part, nodes = cluster.ring.get_nodes(ACCOUNT, CONTAINER)
        stale = {"X-Account-Host": "127.0.0.1:9", "X-Account-Partition": str(apart),
                 "X-Account-Device": "gone"}
        for dev in nodes:
            await _send(session, "PUT", _url(dev, part, ACCOUNT, CONTAINER),
                        {"X-Timestamp": stamp(-8), **stale}, (201, 202))
        await send_row(cluster, session, "PUT", "o1", stamp(-1), **{
            "X-Size": "5", "X-Content-Type": "a/b", "X-Etag": "e" * 32})
        deadline = time.monotonic() + 20  # the report follows the row within ~1 s
        while True:
            counts = []
            for dev in anodes:
                async with session.get(_url(dev, apart, ACCOUNT),
                                       params={"format": "json"}) as resp:
                    rows = await resp.json() if resp.status == 200 else []
                counts.append([(r["name"], r["count"]) for r in rows])
            if all(c == [(CONTAINER, 1)] for c in counts) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert all(c == [(CONTAINER, 1)] for c in counts), counts
