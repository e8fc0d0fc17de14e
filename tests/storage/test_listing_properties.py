"""Property tests: listings against a reference model, and timestamp-ordered row merges."""

from __future__ import annotations

import os
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swiftlike.common.timestamp import Timestamp
from swiftlike.storage.container_db import ContainerBroker, content_type_row

ALPHABET = st.sampled_from(list("ab/c-\u00e9"))
NAMES = st.lists(st.text(ALPHABET, min_size=1, max_size=6), min_size=0, max_size=25,
                 unique=True)
SHORT = st.text(ALPHABET, max_size=3)


def reference_listing(names, prefix, delimiter, marker, end_marker, limit, reverse):
    """The listing rules written the slow, obvious way."""
    ordered = sorted(names, reverse=reverse)
    out: list[str] = []
    for name in ordered:
        if not name.startswith(prefix):
            continue
        if reverse:
            if (marker and name >= marker) or (end_marker and name <= end_marker):
                continue
        elif (marker and name <= marker) or (end_marker and name >= end_marker):
            continue
        entry = name
        if delimiter:
            cut = name.find(delimiter, len(prefix))
            if cut >= 0:
                entry = name[:cut + 1]
                if reverse and marker and entry >= marker:
                    continue
                if entry == marker:  # Swift never lists the marker itself, subdir or not
                    continue
        if out and out[-1] == entry:
            continue
        out.append(entry)
    return out[:limit]


def new_broker(directory: str) -> ContainerBroker:
    broker = ContainerBroker(os.path.join(directory, "c", "c.db"), fsync=False)
    broker.create(os.path.join(directory, "tmp"), "a", "c", Timestamp(1).internal)
    return broker


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=NAMES, prefix=SHORT, delimiter=st.sampled_from(["", "/", "-"]), marker=SHORT,
       end_marker=SHORT, limit=st.integers(1, 30), reverse=st.booleans())
def test_listing_matches_reference(names, prefix, delimiter, marker, end_marker, limit,
                                   reverse):
    with tempfile.TemporaryDirectory() as directory:
        broker = new_broker(directory)
        try:
            for index, name in enumerate(names):
                broker.put_object(name, Timestamp(10 + index).internal, 1, "t/p", "e")
            entries = broker.list_objects(limit, marker, end_marker, prefix, delimiter, reverse)
        finally:
            broker.close()
    got = [entry.get("subdir") or entry["name"] for entry in entries]
    assert got == reference_listing(names, prefix, delimiter, marker, end_marker, limit,
                                    reverse)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=NAMES, prefix=SHORT, delimiter=st.sampled_from(["", "/", "-"]),
       page=st.integers(1, 4), reverse=st.booleans())
def test_paging_by_last_entry_ends_and_covers_the_listing(names, prefix, delimiter, page,
                                                          reverse):
    """What swiftclient does: ask again with the last entry (name or subdir) as marker
    until a page comes back empty. It must end, and see each entry once."""
    with tempfile.TemporaryDirectory() as directory:
        broker = new_broker(directory)
        try:
            for index, name in enumerate(names):
                broker.put_object(name, Timestamp(10 + index).internal, 1, "t/p", "e")
            whole = [e.get("subdir") or e["name"]
                     for e in broker.list_objects(1000, "", "", prefix, delimiter, reverse)]
            paged: list[str] = []
            marker = ""
            for _ in range(len(names) + 2):  # bounded: one page per entry at most, plus end
                entries = broker.list_objects(page, marker, "", prefix, delimiter, reverse)
                if not entries:
                    break
                paged += [e.get("subdir") or e["name"] for e in entries]
                marker = paged[-1]
            else:
                raise AssertionError(f"paging did not end: {paged[-6:]}")
        finally:
            broker.close()
    assert paged == whole


@settings(max_examples=60, deadline=None)
@given(events=st.lists(st.tuples(st.sampled_from(["x", "y"]), st.integers(1, 50),
                                 st.booleans(), st.integers(0, 100)), max_size=20))
def test_row_merges_converge_in_any_order(events):
    """Whatever order updates arrive in, the newest timestamp per name wins."""
    expected: dict[str, tuple[int, bool, int]] = {}
    for name, stamp, deleted, size in events:
        if name not in expected or stamp > expected[name][0]:
            expected[name] = (stamp, deleted, size)
    with tempfile.TemporaryDirectory() as directory:
        broker = new_broker(directory)
        try:
            for name, stamp, deleted, size in reversed(events):
                broker.merge_items([{"name": name, "created_at": Timestamp(stamp).internal,
                                     "size": size, "content_type": "t/p", "etag": "e",
                                     "deleted": deleted}])
            live = {e["name"]: e for e in broker.list_objects(100)}
            info = broker.get_info()
        finally:
            broker.close()
    # equal timestamps: the first applied (here: the last event) stays
    for name, _stamp, deleted, size in events:
        if name in expected and expected[name][0] == _stamp:
            expected[name] = (_stamp, deleted, size)
    want = {name: size for name, (_, deleted, size) in expected.items() if not deleted}
    assert {name: entry["bytes"] for name, entry in live.items()} == want
    assert info["object_count"] == len(want)
    assert info["bytes_used"] == sum(want.values())


_OBJECT_EVENTS = st.lists(st.tuples(st.sampled_from(["PUT", "POST", "DELETE"]),
                                    st.sampled_from(["a/p", "b/q", "c/r"]),
                                    st.integers(1, 1000)), min_size=1, max_size=14)


@settings(max_examples=80, deadline=None)
@given(events=_OBJECT_EVENTS, order=st.randoms(use_true_random=False),
       split=st.integers(0, 14))
def test_content_type_posts_converge_in_any_order(events, order, split):
    """A history of PUTs, content-type POSTs and DELETEs of one object, as its rows reach
    two container replicas in any order and are then replicated: both list what the
    history says, the type from the newest PUT or later POST."""
    rows, truth = [], None  # truth: (size, content_type) while the object exists
    for index, (op, ctype, size) in enumerate(events):
        stamp = Timestamp(1_700_000_000 + index).internal
        if op == "PUT":
            truth = (size, ctype)
            rows.append({"name": "o", "created_at": stamp, "size": size,
                         "content_type": ctype, "etag": "e", "deleted": 0})
        elif op == "DELETE":
            truth = None
            rows.append({"name": "o", "created_at": stamp, "size": 0, "content_type": "",
                         "etag": "", "deleted": 1})
        elif truth is not None:  # a POST to a missing object is a 404: no row
            truth = (truth[0], ctype)
            rows.append(content_type_row("o", ctype, stamp))
    order.shuffle(rows)
    with tempfile.TemporaryDirectory() as directory:
        first = new_broker(os.path.join(directory, "1"))
        second = new_broker(os.path.join(directory, "2"))
        try:
            for row in rows[:split]:
                first.merge_items([row])
            for row in rows[split:]:
                second.merge_items([row])
            first.merge_items(second.get_items_since(0, 100))
            second.merge_items(first.get_items_since(0, 100))
            for broker in (first, second):
                listed = [(e["bytes"], e["content_type"]) for e in broker.list_objects(10)]
                assert listed == ([] if truth is None else [truth])
                assert broker.get_info()["object_count"] == (0 if truth is None else 1)
                assert broker.get_info()["bytes_used"] == (0 if truth is None else truth[0])
        finally:
            first.close()
            second.close()
