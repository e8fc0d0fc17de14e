"""A cancelled caller of ``run_io_to_end`` waits for its worker thread to finish.

Why it matters: a node shutting down cancels handlers; one cancelled while a worker
still writes its temp file would otherwise abort (close) that file under the write,
and the rest of the write would land in whatever file next got the descriptor number.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from swiftlike.storage.node import StorageNode
from tests.storage.conftest import make_conf

pytestmark = pytest.mark.asyncio


async def test_cancelling_waits_for_the_thread_and_hands_over_its_result(tmp_path):
    node = StorageNode(make_conf(str(tmp_path)))
    release = threading.Event()
    finished = threading.Event()
    handed: list[str] = []

    def slow_open() -> str:
        release.wait(10)
        finished.set()
        return "descriptor"

    task = asyncio.ensure_future(node.run_io_to_end(slow_open, on_cancel=handed.append))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.sleep(0.1)
    assert not task.done(), "the caller moved on while the thread was still working"
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set() and handed == ["descriptor"]
    node.io_pool.shutdown()


async def test_without_cancellation_it_is_run_io(tmp_path):
    node = StorageNode(make_conf(str(tmp_path)))
    assert await node.run_io_to_end(lambda: 42) == 42
    with pytest.raises(ZeroDivisionError):
        await node.run_io_to_end(lambda: 1 // 0)
    node.io_pool.shutdown()
