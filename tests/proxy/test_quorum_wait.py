"""gather_quorum: a write's answers once a quorum agrees, plus a grace period."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swiftlike.proxy.quorum_wait import gather_quorum, has_quorum


async def answer(status: int | None, after: float) -> int | None:
    await asyncio.sleep(after)
    return status


def status_of(value: int | None) -> int | None:
    return value


async def test_stragglers_past_the_grace_are_none_and_keep_running():
    started = time.monotonic()
    slow = asyncio.ensure_future(answer(201, 0.6))
    got = await gather_quorum([answer(201, 0.0), slow, answer(201, 0.01)], 2, 0.1,
                              status_of)
    assert got == [201, None, 201]
    assert time.monotonic() - started < 0.5
    assert not slow.done() and await slow == 201  # not cancelled


async def test_an_answer_inside_the_grace_counts():
    got = await gather_quorum([answer(201, 0.0), answer(201, 0.0), answer(404, 0.05)], 2,
                              0.5, status_of)
    assert got == [201, 201, 404]


async def test_without_a_quorum_every_answer_is_waited_for():
    started = time.monotonic()
    got = await gather_quorum([answer(201, 0.0), answer(None, 0.0), answer(404, 0.3)], 2,
                              0.05, status_of)
    assert got == [201, None, 404]
    assert time.monotonic() - started >= 0.3


async def test_errors_propagate_and_cancelling_cancels_the_requests():
    async def boom() -> int:
        raise ValueError("no")

    with pytest.raises(ValueError):
        await gather_quorum([boom(), answer(201, 0.0), answer(201, 0.0)], 2, 0.1, status_of)
    slow = asyncio.ensure_future(answer(201, 5))
    waiting = asyncio.ensure_future(gather_quorum([slow, answer(None, 0)], 2, 0.1, status_of))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.sleep(0)
    assert slow.cancelled()


@given(st.lists(st.sampled_from([200, 201, 204, 301, 404, 409, 412, 500, 503]),
                max_size=6), st.integers(1, 4))
def test_has_quorum_is_a_class_majority(statuses, quorum):
    classes = [s // 100 for s in statuses if s < 500]
    expected = any(classes.count(c) >= quorum for c in (2, 3, 4))
    assert has_quorum(statuses, quorum) == expected
