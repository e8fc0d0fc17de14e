"""Waiting for the answers of a write sent to every replica: a quorum, then a moment more.

Why: one hung node (stopped, swapping, a disk stuck) answers nothing until the node
timeout, and a write that waited for every answer waited for it: 10-20 s per PUT while
one of the four nodes was stopped. As Swift's proxy does (``post_quorum_timeout``), a
write goes on once a quorum of its answers agree on a class (2xx, 3xx or 4xx) and the
others have had ``grace`` seconds more. Requests still out are not cancelled: they end
on their own (answer or node timeout) and error-limit their node as usual; their
answers just do not count. A 2xx still means a quorum of nodes made the write durable.

Not for streamed object bodies (``object_put.stream_put`` waits for every answer): a big
body left to finish on a slow node lets the client start the next one at once, and the
slow node's backlog grows until its writes time out and it is error-limited.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
LOG = logging.getLogger(__name__)


def has_quorum(statuses: Sequence[int], quorum: int) -> bool:
    """A quorum of the statuses share a class (2xx, 3xx or 4xx)."""
    if len(statuses) < quorum:
        return False
    counts = [0, 0, 0]
    for status in statuses:
        cls = status // 100 - 2
        if 0 <= cls <= 2:
            counts[cls] += 1
    return max(counts) >= quorum


async def gather_quorum(awaitables: Sequence[Awaitable[T]], quorum: int, grace: float,
                        status_of: Callable[[T], int | None]) -> list[T | None]:
    """The answers, in order; None for any still out after quorum + ``grace``.

    ``status_of(answer)``: its HTTP status, or None for a failure (no class). Without a
    quorum this waits for every answer, as a plain gather would.
    """
    loop = asyncio.get_running_loop()
    tasks = [asyncio.ensure_future(aw) for aw in awaitables]
    reached = loop.create_future()
    statuses: list[int] = []
    left = len(tasks)

    def one_done(task: asyncio.Future[T]) -> None:
        nonlocal left
        left -= 1
        if not task.cancelled() and task.exception() is None:
            status = status_of(task.result())
            if status is not None:
                statuses.append(status)
        if not reached.done() and (left == 0 or has_quorum(statuses, quorum)):
            reached.set_result(None)

    for task in tasks:
        task.add_done_callback(one_done)
    try:
        await asyncio.shield(reached)
        if left:
            everyone = loop.create_future()

            def maybe_all(_task: asyncio.Future[T]) -> None:
                if not everyone.done() and left == 0:  # one_done ran first
                    everyone.set_result(None)

            for task in tasks:
                task.add_done_callback(maybe_all)
            timer = loop.call_later(grace, lambda: everyone.done() or everyone.set_result(None))
            try:
                await everyone
            finally:
                timer.cancel()
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()  # as gather would: the caller is gone
        raise
    answers: list[T | None] = []
    for task in tasks:
        if not task.done():
            task.add_done_callback(_retrieve)
            answers.append(None)
        elif task.cancelled():
            answers.append(None)
        else:
            answers.append(task.result())  # an exception propagates, as from gather
    return answers


def _retrieve(task: asyncio.Future[object]) -> None:
    """An answer nobody waits for any more: read its exception so none goes unlogged."""
    if not task.cancelled() and task.exception() is not None:
        LOG.warning("a write answered after its quorum failed: %r", task.exception())
