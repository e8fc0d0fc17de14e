"""Group commit: many writes on one device share one filesystem flush.

A storage node under load has dozens of small writes in flight per device. Making each
one durable on its own (fsync the file, the hash directory and every new parent) costs
four or five journal commits per object, and the disk serialises them. A
:class:`DeviceFlusher` instead lets every write that reached a durability point wait
for the *next* ``syncfs(2)`` of the device's filesystem: one thread runs the flush, and
all waiters whose request arrived before that flush started wake together when it ends.
``syncfs`` writes back every dirty page and inode of the filesystem and commits the
journal, so it covers file data, xattrs, new directories and renames alike.

The rule a waiter relies on: :meth:`DeviceFlusher.barrier` returns only after a flush
that *began after the call* has completed successfully, so everything the caller did
before calling it is on stable storage. A failed flush raises in every waiter of that
batch (their writes must not be acknowledged).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor

from swiftlike.storage.durable_io import libc_call


def _load_syncfs() -> Callable[[int], None] | None:
    """``syncfs(fd)`` (Linux), or None where the call does not exist."""
    syncfs = getattr(os, "syncfs", None)
    if syncfs is not None:  # Python 3.12+ on Linux
        return syncfs  # type: ignore[no-any-return]
    return libc_call("syncfs", [ctypes.c_int])


SYNCFS = _load_syncfs()


def group_commit_supported() -> bool:
    """True when this platform can flush a whole filesystem (``syncfs``)."""
    return SYNCFS is not None


class DeviceFlusher:
    """Shared ``syncfs`` of one device's filesystem for all the writes waiting on it.

    Lives on the node's event loop (no locks: only the loop touches its state); the
    flush itself runs in ``executor``. At most one flush runs at a time; requests that
    arrive while it runs form the next batch, started as soon as it ends.
    """

    def __init__(self, device_path: str, executor: Executor,
                 sync_func: Callable[[int], None] | None = None) -> None:
        self.device_path = device_path
        self.executor = executor
        self.sync_func = sync_func or SYNCFS
        if self.sync_func is None:
            raise RuntimeError("syncfs is not available on this platform")
        self._fd: int | None = None
        self._next: asyncio.Future[None] | None = None
        self._running = False
        self.flushes = 0  # how many flushes ran (observability and tests)
        self.flush_seconds = 0.0  # time spent inside syncfs, summed

    async def barrier(self) -> None:
        """Return once a flush that started after this call has completed."""
        loop = asyncio.get_running_loop()
        if self._next is None:
            self._next = loop.create_future()
        waiter = self._next
        if not self._running:
            self._start(loop)
        # shield: one cancelled request must not cancel the batch the others wait on
        await asyncio.shield(waiter)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._next = self._next, None
        if batch is None:
            return
        try:
            flush = loop.run_in_executor(self.executor, self._flush)
        except RuntimeError as err:  # the pool is shut down: the node is stopping
            batch.set_exception(err)
            batch.exception()
            return
        self._running = True

        def done(result: asyncio.Future[None]) -> None:
            self._running = False
            self.flushes += 1
            error = result.exception() if not result.cancelled() else \
                asyncio.CancelledError()
            if not batch.done():
                if error is not None:
                    batch.set_exception(error)
                else:
                    batch.set_result(None)
            if batch.done() and not batch.cancelled():
                batch.exception()  # mark retrieved: waiters may all have gone
            if self._next is not None:
                self._start(loop)

        flush.add_done_callback(done)

    def _flush(self) -> None:
        if self._fd is None:
            self._fd = os.open(self.device_path, os.O_RDONLY | os.O_DIRECTORY)
        assert self.sync_func is not None
        started = time.monotonic()
        try:
            self.sync_func(self._fd)
        finally:
            self.flush_seconds += time.monotonic() - started

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
