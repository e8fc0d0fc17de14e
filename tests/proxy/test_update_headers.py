"""update_headers: which database replicas each write slot updates (X-Container-*)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from swiftlike.proxy.base_controller import update_headers


def _node(host: int, device: str = "d") -> dict:
    return {"ip": f"127.0.0.{host}", "port": 6000 + host, "device": f"{device}{host}"}


def _groups(headers: list[dict[str, str]]) -> list[list[str]]:
    return [h["X-Container-Host"].split(",") if h else [] for h in headers]


# writers on distinct nodes (a ring spreads a partition's replicas over nodes first)
_WRITERS = st.lists(st.integers(1, 8), min_size=1, max_size=5, unique=True)
_TARGETS = st.lists(st.integers(1, 8), min_size=0, max_size=5, unique=True)


@given(writers=_WRITERS, targets=_TARGETS)
def test_every_target_is_updated_once_and_the_slots_stay_even(writers, targets):
    headers = update_headers([_node(h) for h in writers], [_node(h) for h in targets], 7,
                             "Container")
    groups = _groups(headers)
    assert len(groups) == len(writers)
    assigned = sorted(host for group in groups for host in group)
    assert assigned == sorted(f"127.0.0.{h}:{6000 + h}" for h in targets)
    sizes = [len(group) for group in groups]
    assert max(sizes) - min(sizes) <= 1
    for header, group in zip(headers, groups, strict=True):
        if group:
            assert header["X-Container-Partition"] == "7"
            assert len(header["X-Container-Device"].split(",")) == len(group)


@given(writers=_WRITERS, targets=_TARGETS)
def test_a_writer_on_a_target_node_updates_that_target(writers, targets):
    groups = _groups(update_headers([_node(h) for h in writers],
                                    [_node(h) for h in targets], 7, "Container"))
    for slot, host in enumerate(writers):
        if host in targets:
            assert f"127.0.0.{host}:{6000 + host}" in groups[slot]


def test_without_shared_nodes_targets_keep_ring_order():
    headers = update_headers([_node(1), _node(2), _node(3)],
                             [_node(4), _node(5), _node(6), _node(7)], 3, "Account")
    assert [h.get("X-Account-Host") for h in headers] == [
        "127.0.0.4:6004,127.0.0.7:6007", "127.0.0.5:6005", "127.0.0.6:6006"]
    assert headers[0]["X-Account-Device"] == "d4,d7"


def test_the_all_in_one_shape_keeps_each_local_update_local():
    # 4 nodes, 3 replicas: object writes on nodes 1, 2, 4; container replicas on 2, 3, 4
    groups = _groups(update_headers([_node(1), _node(2), _node(4)],
                                    [_node(2), _node(3), _node(4)], 0, "Container"))
    assert groups == [["127.0.0.3:6003"], ["127.0.0.2:6002"], ["127.0.0.4:6004"]]
