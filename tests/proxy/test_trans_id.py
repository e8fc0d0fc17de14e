"""Transaction ids: Swift's shape, unique per request, the client's extra appended."""

from __future__ import annotations

import random
import re

from swiftlike.proxy.catch_errors import new_trans_id

SHAPE = re.compile(r"^tx[0-9a-f]{21}-[0-9a-f]{10}$")


def test_trans_ids_have_swifts_shape_and_do_not_repeat():
    rng = random.Random()
    ids = [new_trans_id(rng) for _ in range(5000)]
    assert all(SHAPE.match(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_two_workers_seeded_from_the_os_do_not_collide():
    first, second = random.Random(), random.Random()
    assert {new_trans_id(first) for _ in range(500)}.isdisjoint(
        {new_trans_id(second) for _ in range(500)})


def test_extra_is_appended_and_bounded():
    trans_id = new_trans_id(random.Random(), "-" + "e" * 100)
    assert SHAPE.match(trans_id[:34]) and trans_id[34:] == "-" + "e" * 31
