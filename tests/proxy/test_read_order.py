"""Reads ask the primaries in a random order (Swift's ``sorting_method = shuffle``).

The end-to-end tests make one replica differ from the others, as a replica that got a
write the others missed, and show that reads through the proxy see both: proof that
reads are spread over the replicas instead of all starting at the first one. With
``sorting_method = "ring"`` every read asks the first primary.
"""

from __future__ import annotations

import random
import time

import aiohttp
import pytest

from swiftlike.common.node_client import node_path
from swiftlike.common.timestamp import Timestamp
from swiftlike.proxy.node_pool import PrimaryNotFound, ReadOrder
from swiftlike.proxy.server import CONTEXT_KEY, build_context
from tests.proxy.test_swift_gaps import auth, call, direct_object

READS = 40  # a replica that is 1 of 3 is never asked first in 40 reads: p = (2/3)^40


def test_shuffle_starts_reads_at_every_primary():
    primaries = [{"id": i} for i in range(3)]
    order = ReadOrder("shuffle", random.Random(7))
    firsts = {order(primaries)[0]["id"] for _ in range(60)}
    assert firsts == {0, 1, 2}
    assert sorted(n["id"] for n in order(primaries)) == [0, 1, 2]
    assert [n["id"] for n in primaries] == [0, 1, 2]  # the caller's list is not reordered


def test_a_miss_stops_at_the_primaries_only_when_one_knows_of_a_deletion():
    primaries = [{"id": i} for i in range(3)]
    handoffs = [{"id": i} for i in range(3, 9)]
    plain = PrimaryNotFound(primaries)
    assert [plain.record(n, False) for n in primaries] == [False, False, False]
    # then handoffs, up to 2 x replicas nodes in all (Swift's request_node_count)
    assert [plain.record(n, False) for n in handoffs[:3]] == [False, False, True]
    deleted = PrimaryNotFound(primaries)
    assert [deleted.record(n, known) for n, known in
            zip(primaries, (False, True, False), strict=True)] == [False, False, True]
    # a handoff's 404s count toward the bound, not toward "every primary said 404"
    mixed = PrimaryNotFound(primaries)
    assert [mixed.record(n, True) for n in (handoffs[0], *primaries[:2])] == [False] * 3
    assert mixed.record(primaries[2], False)


def test_ring_order_keeps_the_ring_order():
    primaries = [{"id": i} for i in range(3)]
    order = ReadOrder("ring")
    assert all(order(primaries) == primaries for _ in range(20))


def test_unknown_sorting_method_is_refused_at_startup(tmp_path):
    with pytest.raises(ValueError, match="sorting_method must be one of shuffle, ring"):
        ReadOrder("timing")
    with pytest.raises(ValueError, match="'fastest'"):
        build_context({"proxy": {"sorting_method": "fastest"}}, ring=object())
    assert build_context({"proxy": {}}, ring=object()).read_order.method == "shuffle"


async def _bodies_read(session, url, token, reads=READS) -> set[bytes]:
    seen = set()
    for _ in range(reads):
        status, _, body = await call(session, "GET", url, token)
        assert status == 200
        seen.add(body)
    return seen


@pytest.mark.asyncio(loop_scope="module")
async def test_object_reads_spread_over_the_replicas(cluster):
    url, token = await auth(cluster)
    path = ("AUTH_test", "spread", "obj")
    _, primaries = cluster.proxy_app[CONTEXT_KEY].ring.get_nodes(*path)
    async with aiohttp.ClientSession() as s:
        assert (await call(s, "PUT", url + "/spread", token))[0] in (201, 202)
        assert (await call(s, "PUT", url + "/spread/obj", token, data=b"older"))[0] == 201
        # the last primary alone got a newer write
        assert await direct_object(cluster, primaries[-1], "PUT", path,
                                   Timestamp(time.time() + 1), b"newer") == 201
        assert await _bodies_read(s, url + "/spread/obj", token) == {b"older", b"newer"}
        cluster.proxy_app[CONTEXT_KEY].read_order = ReadOrder("ring")
        assert await _bodies_read(s, url + "/spread/obj", token) == {b"older"}


async def _direct_container_row(cluster, node, account, container, obj) -> int:
    """Put one listing row into one container replica only (bypassing the proxy)."""
    ring = cluster.proxy_app[CONTEXT_KEY].ring
    part = ring.get_part(account, container)
    url = f"http://{node['ip']}:{node['port']}" + node_path(node, part, account, container,
                                                             obj)
    headers = {"X-Backend-Server-Type": "container",
               "X-Timestamp": Timestamp(time.time()).internal, "X-Size": "5",
               "X-Content-Type": "text/plain", "X-Etag": "d41d8cd98f00b204e9800998ecf8427e"}
    async with aiohttp.ClientSession() as s, s.put(url, headers=headers) as r:
        await r.read()
        return r.status


@pytest.mark.asyncio(loop_scope="module")
async def test_container_listings_spread_over_the_replicas(cluster):
    url, token = await auth(cluster)
    _, primaries = cluster.proxy_app[CONTEXT_KEY].ring.get_nodes("AUTH_test", "lists")
    async with aiohttp.ClientSession() as s:
        assert (await call(s, "PUT", url + "/lists", token))[0] in (201, 202)
        assert (await call(s, "PUT", url + "/lists/shared", token, data=b"x"))[0] == 201
        assert await _direct_container_row(cluster, primaries[-1], "AUTH_test", "lists",
                                           "only-on-one-replica") in (201, 202)
        listings = await _bodies_read(s, url + "/lists", token)
        assert listings == {b"shared\n", b"only-on-one-replica\nshared\n"}
        cluster.proxy_app[CONTEXT_KEY].read_order = ReadOrder("ring")
        assert await _bodies_read(s, url + "/lists", token) == {b"shared\n"}


@pytest.mark.asyncio(loop_scope="module")
async def test_a_copy_on_a_handoff_is_found_unless_a_primary_knows_of_a_deletion(cluster):
    """All primaries saying a plain 404 is what a rebalance that moved every primary of
    a partition looks like until replication catches up: the copy on a handoff (an old
    primary) is served, as Swift's proxy does. A primary holding a tombstone is the
    answer, and the handoff's older copy is not served."""
    url, token = await auth(cluster)
    ctx = cluster.proxy_app[CONTEXT_KEY]
    path = ("AUTH_test", "stray", "obj")
    part = ctx.ring.get_part(*path)
    handoff = next(iter(ctx.ring.get_more_nodes(part)))
    async with aiohttp.ClientSession() as s:
        assert (await call(s, "PUT", url + "/stray", token))[0] in (201, 202)
        assert await direct_object(cluster, handoff, "PUT", path, Timestamp(time.time()),
                                   b"stray copy") == 201
        status, _, body = await call(s, "GET", url + "/stray/obj", token)
        assert (status, body) == (200, b"stray copy")
        assert (await call(s, "HEAD", url + "/stray/obj", token))[0] == 200
        # 404: no primary had the object; each writes its tombstone all the same
        assert (await call(s, "DELETE", url + "/stray/obj", token))[0] in (204, 404)
        # the DELETE reached the primaries only: the handoff keeps its older copy
        for method in ("GET", "HEAD"):
            assert (await call(s, method, url + "/stray/obj", token))[0] == 404
