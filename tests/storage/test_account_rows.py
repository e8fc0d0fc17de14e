"""Account container rows: what replication ships, and how reports merge in any order."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swiftlike.common.timestamp import Timestamp
from swiftlike.storage.account_db import AccountBroker
from swiftlike.storage.container_db import ContainerBroker
from swiftlike.storage.db import add_column

PUT = Timestamp(1_700_000_000).internal


def make_account(tmp_path, name: str) -> AccountBroker:
    broker = AccountBroker(str(tmp_path / name / "a.db"), fsync=False)
    broker.create(str(tmp_path / "tmp"), "AUTH_test", PUT)
    return broker


def report(count: int, at: float, name: str = "c") -> dict:
    return {"name": name, "put_timestamp": PUT, "delete_timestamp": "0",
            "object_count": count, "bytes_used": count * 10,
            "reported_at": Timestamp(1_700_000_000 + at).internal}


def container_row(broker: AccountBroker, name: str = "c") -> dict:
    return {r["name"]: r for r in broker.list_containers(100)}[name]


def test_rows_for_replication_carry_their_rowid_under_one_key(tmp_path):
    # SQLite 3.40 names an un-aliased ROWID column "rowid"; the replicator reads "ROWID"
    account = make_account(tmp_path, "a")
    account.merge_items([report(1, 1), report(2, 2, name="d")])
    rows = account.get_items_since(0, 10)
    assert [r["ROWID"] for r in rows] == sorted(r["ROWID"] for r in rows)
    assert [r["name"] for r in rows] == ["c", "d"]
    container = ContainerBroker(str(tmp_path / "c" / "c.db"), fsync=False)
    container.create(str(tmp_path / "tmp"), "AUTH_test", "c", PUT)
    container.put_object("o", Timestamp(1_700_000_001).internal, 3, "text/plain", "e" * 32)
    assert [r["ROWID"] for r in container.get_items_since(0, 10)] == [1]


def test_an_older_report_replicated_late_does_not_undo_a_newer_count(tmp_path):
    stale, fresh = make_account(tmp_path, "a"), make_account(tmp_path, "b")
    stale.merge_items([report(0, 1)])  # the container's creation, no objects yet
    fresh.merge_items([report(90, 5)])
    fresh.merge_items(stale.get_items_since(0, 100))  # stale replica pushes to fresh
    assert container_row(fresh)["count"] == 90
    assert fresh.get_info()["object_count"] == 90
    stale.merge_items(fresh.get_items_since(0, 100))
    assert container_row(stale)["count"] == 90
    assert stale.get_info()["object_count"] == 90


def test_replicas_in_step_stop_shipping_rows(tmp_path):
    """A row that would not change is not rewritten: a rewrite means a new ROWID, which the
    next pass ships back, for ever."""
    a, b = make_account(tmp_path, "a"), make_account(tmp_path, "b")
    a.merge_items([report(3, 1), report(4, 2, name="d")])
    assert b.merge_items(a.get_items_since(0, 100)) == 2
    high_a = max(r["ROWID"] for r in a.get_items_since(0, 100))
    high_b = max(r["ROWID"] for r in b.get_items_since(0, 100))
    assert a.merge_items(b.get_items_since(0, 100)) == 0
    assert b.merge_items(a.get_items_since(0, 100)) == 0
    assert a.get_items_since(high_a, 100) == [] and b.get_items_since(high_b, 100) == []


def test_a_deleted_container_stays_listed_while_it_reports_objects(tmp_path):
    """As Swift's account broker: a row is deleted only by a report that says deleted and
    empty. A deleted container whose replicas still report objects (rows that reached a
    replica late) stays listed, with its count, until a report says it is empty; the
    account reaper relies on that to come back for those objects."""
    account = make_account(tmp_path, "a")
    account.merge_items([report(5, 1)])
    deleted_at = Timestamp(1_700_000_100).internal
    gone = {**report(0, 2), "delete_timestamp": deleted_at}
    account.merge_items([gone, report(7, 3)])
    info = account.get_info()
    assert (info["container_count"], info["object_count"]) == (1, 7)
    account.merge_items([{**report(0, 4), "delete_timestamp": deleted_at}])
    info = account.get_info()
    assert (info["container_count"], info["object_count"]) == (0, 0)
    assert account.list_containers(100) == []


def test_a_database_of_an_older_release_gains_the_report_column(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE account_stat (account TEXT, created_at TEXT, put_timestamp TEXT,
            delete_timestamp TEXT, status_changed_at TEXT, container_count INTEGER,
            object_count INTEGER, bytes_used INTEGER, metadata TEXT);
        CREATE TABLE container (name TEXT NOT NULL UNIQUE, put_timestamp TEXT NOT NULL,
            delete_timestamp TEXT NOT NULL, object_count INTEGER NOT NULL DEFAULT 0,
            bytes_used INTEGER NOT NULL DEFAULT 0, deleted INTEGER NOT NULL DEFAULT 0);
        INSERT INTO account_stat VALUES ('AUTH_test', '1', '1', '0', '1', 1, 4, 40, '{}');
    """)
    conn.execute("INSERT INTO container VALUES ('c', ?, '0', 4, 40, 0)", (PUT,))
    conn.commit()
    conn.close()
    broker = AccountBroker(str(path), fsync=False)
    assert broker.merge_items([report(6, 1)]) == 1  # any report beats one never stamped
    assert container_row(broker)["count"] == 6
    assert broker.get_info()["object_count"] == 6
    assert broker.get_items_since(0, 10)[0]["reported_at"] == report(6, 1)["reported_at"]


@settings(max_examples=60, deadline=None)
@given(st.permutations(range(6)), st.lists(st.integers(0, 5), min_size=2, max_size=6))
def test_replicas_agree_on_the_newest_report_whatever_the_order(tmp_path_factory, order,
                                                                 split):
    """Reports spread over three replicas and replicated in any order: every replica ends
    with the newest report's counts and totals that add up."""
    tmp_path = tmp_path_factory.mktemp("acct")
    replicas = [make_account(tmp_path, f"r{i}") for i in range(3)]
    reports = [report(count=10 * at + 1, at=at) for at in order]
    for index, row in enumerate(reports):
        replicas[split[index % len(split)] % 3].merge_items([row])
    for _ in range(2):
        for source in replicas:
            for target in replicas:
                if target is not source:
                    target.merge_items(source.get_items_since(0, 100))
    for replica in replicas:
        assert container_row(replica)["count"] == 51
        assert replica.get_info()["object_count"] == 51
        assert replica.get_info()["container_count"] == 1


def test_a_column_added_meanwhile_by_another_opener_is_not_an_error(tmp_path):
    """Two openers of an older database may both see the column missing; the second
    ALTER then finds it there, which is what it wanted."""
    path = tmp_path / "t.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE container (name TEXT)")
    conn.execute("ALTER TABLE container ADD COLUMN reported_at TEXT NOT NULL DEFAULT '0'")

    class SawNoColumns:  # what the loser of the race read before the winner's ALTER
        def execute(self, sql: str, *args):
            if sql.startswith("PRAGMA table_info"):
                return []
            return conn.execute(sql, *args)

    add_column(SawNoColumns(), "container", "reported_at", "TEXT NOT NULL DEFAULT '0'")
    with pytest.raises(sqlite3.OperationalError):
        add_column(SawNoColumns(), "nosuchtable", "x", "TEXT")
    conn.close()
