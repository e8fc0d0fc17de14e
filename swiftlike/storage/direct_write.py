"""Writing a big body to its file with O_DIRECT, straight from the receive buffers.

Why: a buffered write copies every byte into the page cache, whose pages must first be
found, charged and zeroed. While the page cache grows (every new object adds to it) that
cost per 16 MiB measured 33-54 ms of CPU here, against 1.5-1.8 ms for the same bytes
written with O_DIRECT from page-aligned memory; on a VM whose memory the host has taken
back, the buffered cost swings even more. A node receives three copies of every big
object, so this is most of a large PUT's storage-side CPU.

How: the node's HTTP server receives a big body into page-aligned arenas and places it so
that a byte's address and its offset in the file agree modulo :data:`ALIGNMENT`. Pieces
that follow each other in memory are joined back into one span, and each span's aligned
middle is written with O_DIRECT. The bytes around it (what came in with the request head,
a span's unaligned edges, the last partial block) go through the page cache as before; a
block is only ever written one way, so the two never overlap. Anything else (read-only
bytes, memory that does not line up, a file system without O_DIRECT) is written
buffered, so the result is always the same file.

Durability is unchanged: O_DIRECT data may sit in the device's volatile cache, and the
commit's fsync flushes that cache and commits the file's new extents, as it does for
buffered bytes.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os

#: File offsets and addresses of direct writes are multiples of this (a page: at least
#: the logical block size of any device we run on).
ALIGNMENT = 4096
#: A span's aligned middle shorter than this waits for more contiguous bytes (a direct
#: write is synchronous; many small ones would cost more than they save).
MIN_DIRECT = 256 * 1024
O_DIRECT = getattr(os, "O_DIRECT", 0)


def buffer_address(view: memoryview) -> int | None:
    """Address of a writable, contiguous, non-empty view's first byte; else None.

    Read-only buffers (bytes) are never direct-write candidates: they are the small
    pieces and the copies, and ctypes cannot take their address without a copy.
    """
    if view.readonly or not view.c_contiguous or not view.nbytes:
        return None
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


class DirectSpanWriter:
    """Appends pieces to ``fd`` in order, with O_DIRECT wherever the memory allows.

    Blocking: call from a worker thread. :meth:`flush` before the file is synced or
    closed; until then the last span's unwritten bytes are still only in memory (the
    span keeps its receive buffer referenced, so the buffer is not reused under it).
    """

    def __init__(self, fd: int, offset: int = 0) -> None:
        self.fd = fd
        self.offset = offset  # file offset of the next byte handed to the kernel
        self.enabled = bool(O_DIRECT)
        self.direct_bytes = 0  # how many bytes went out with O_DIRECT (for tests/stats)
        self._flag_on = False
        self._owner: object | None = None  # the exporter the current span lies in
        self._base: memoryview | None = None  # a view of all of it
        self._base_addr = 0
        self._start = 0  # span [start, end) in _base, not yet handed to the kernel
        self._end = 0

    @property
    def pending(self) -> int:
        """Bytes accepted but not yet in the file."""
        return self._end - self._start

    def feed(self, piece: bytes | bytearray | memoryview) -> None:
        """Take the next piece of the body (it may be written later, see :meth:`drain`)."""
        view = piece if isinstance(piece, memoryview) else memoryview(piece)
        if not view.nbytes:
            return
        addr = buffer_address(view) if self.enabled else None
        if addr is not None and self._base is not None and view.obj is self._owner \
                and addr == self._base_addr + self._end:
            self._end += view.nbytes  # continues the span in memory
            return
        self.drain(final=True)
        if addr is None or (addr - self.offset) % ALIGNMENT:
            self._write(view, direct=False)
            return
        self._owner = view.obj
        self._base = memoryview(view.obj).cast("B")
        self._base_addr = buffer_address(self._base) or 0
        self._start = addr - self._base_addr
        self._end = self._start + view.nbytes

    def drain(self, final: bool = False) -> None:
        """Write the span's aligned middle; with ``final`` its remainder too.

        Without ``final`` an unaligned end (or a middle under :data:`MIN_DIRECT`) is
        kept, to be joined with the pieces that follow it in memory.
        """
        if self._base is None:
            return
        base = self._base
        head = min((-self.offset) % ALIGNMENT, self._end - self._start)
        if head:
            self._write(base[self._start:self._start + head], direct=False)
            self._start += head
        middle = (self._end - self._start) // ALIGNMENT * ALIGNMENT
        if middle and (final or middle >= MIN_DIRECT):
            self._write(base[self._start:self._start + middle], direct=True)
            self._start += middle
        if final and self._end > self._start:
            self._write(base[self._start:self._end], direct=False)
            self._start = self._end
        if self._start == self._end:
            self._forget_span()

    def flush(self) -> None:
        """Everything accepted is handed to the kernel; O_DIRECT is off again."""
        self.drain(final=True)
        self._set_direct(False)

    def discard(self) -> None:
        """Drop what is pending (the file is being thrown away). Any later write fails
        (EBADF) instead of reaching whatever file reuses the descriptor number."""
        self._forget_span()
        self.fd = -1

    def _forget_span(self) -> None:
        # dropped, not released: release() would raise while anything still exports it,
        # and the last reference going frees the receive buffer for reuse all the same
        self._owner = self._base = None
        self._start = self._end = 0

    def _write(self, view: memoryview, direct: bool) -> None:
        direct = direct and self.enabled
        while view.nbytes:
            if direct and (self.offset % ALIGNMENT or view.nbytes % ALIGNMENT):
                direct = False  # a short write left us off the grid: finish buffered
            if not self._set_direct(direct):
                direct = False
            try:
                written = os.write(self.fd, view)
            except OSError as err:
                if not (direct and err.errno == errno.EINVAL):
                    raise
                self.enabled = direct = False  # this file system refuses it: buffered
                continue
            if direct:
                self.direct_bytes += written
            self.offset += written
            view = view[written:]

    def _set_direct(self, on: bool) -> bool:
        if on == self._flag_on:
            return True
        try:
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags | O_DIRECT if on else flags & ~O_DIRECT)
        except OSError as err:
            if not on or err.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            self.enabled = False
            return False
        self._flag_on = on
        return True
