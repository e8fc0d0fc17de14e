"""Reading an object's body back, and proving it is the body that was written.

Every whole GET checks the bytes it returns; a streamed GET feeds each piece to the
checker and holds the last piece back until the body matches. Reads of pieces that
the page cache holds happen on the event loop (:func:`read_cached`); the others take
a worker-thread hop (:func:`read_chunk`), or O_DIRECT for big uncached bodies;
:class:`BodyPieces` picks per piece. Split from :mod:`diskfile`, which lays the files
out and writes them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from typing import TYPE_CHECKING

import xxhash

from swiftlike.common.buffers import read_buffer
from swiftlike.storage.direct_read import AlignedBuffers, DirectReader

if TYPE_CHECKING:  # the node imports this layer; a runtime import would be circular
    from swiftlike.storage.node import StorageNode

#: Metadata key of an object's xxh3-128 digest, taken over the same bytes as its md5
#: ETag (in the same pass, for a streamed body). A full GET verifies this, not the md5: ~15x
#: cheaper, and it detects any change to the stored bytes just as surely (whoever can
#: rewrite the file can rewrite its metadata too, so md5's strength buys nothing
#: there). The auditor still checks the md5 against the ETag. Never sent to clients.
BODY_CHECKSUM_KEY = "X-Backend-Body-Xxh3"


def body_stamp(body: bytes) -> str:
    """The BODY_CHECKSUM_KEY value of a whole body."""
    return xxhash.xxh3_128_hexdigest(body)


def body_matches(body: bytes, metadata: dict[str, str]) -> bool:
    """Whether a whole body read back is what was written (see :func:`body_verifier`;
    the xxh3 stamp costs a hundredth of an md5 on a 4 KiB read)."""
    hasher, expected = body_verifier(metadata)
    hasher.update(body)  # type: ignore[attr-defined]
    return hasher.hexdigest() == expected  # type: ignore[attr-defined]


def body_verifier(metadata: dict[str, str]) -> tuple[object, str | None]:
    """(hasher, expected hex digest) for checking a whole body read back from disk.

    The xxh3 stamp when the object has one (BODY_CHECKSUM_KEY), else the md5 ETag.
    """
    stamp = metadata.get(BODY_CHECKSUM_KEY)
    if stamp:
        return xxhash.xxh3_128(), stamp
    return hashlib.md5(usedforsecurity=False), metadata.get("ETag")


_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", None)  # Linux 4.14+: fail instead of waiting


def read_cached(fd: int, offset: int, size: int) -> bytearray | None:
    """Up to ``size`` bytes at ``offset`` when the page cache already holds them.

    A read that would wait for the disk returns None instead (``RWF_NOWAIT``), so the
    event loop can afford to call this itself: a cached 1 MiB read costs less than the
    thread hop :func:`read_chunk` needs. Only a cached prefix may come back (a short
    result); an empty one means end of file. None also where the flag is unsupported.
    """
    if _RWF_NOWAIT is None:
        return None
    buf = read_buffer(size)  # not zero-filled: cut to what the read returned
    try:
        got = os.preadv(fd, [buf], offset, _RWF_NOWAIT)
    except BlockingIOError:
        return None
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            return None
        raise
    if got < size:
        del buf[got:]
    return buf


#: How far past an uncached read the kernel is asked to read ahead (see read_chunk).
READAHEAD = 8 * 1024 * 1024
_WILLNEED = getattr(os, "POSIX_FADV_WILLNEED", None)


def read_chunk(fd: int, offset: int, size: int, hasher: object | None = None,
               body_end: int = 0) -> bytes:
    """Read up to ``size`` bytes at ``offset``, feeding ``hasher`` (the xxh3 or md5 of
    :func:`body_verifier`); a worker-thread call.

    A read that reaches this thread was not in the page cache (a big object written with
    O_DIRECT never is). ``body_end`` > 0 asks the kernel to start reading up to
    :data:`READAHEAD` bytes further, up to ``body_end``, in the background: the disk then
    streams the object while the previous piece is sent, instead of one synchronous
    read (and the default 128 KiB readahead window) per MiB.
    """
    if _WILLNEED is not None and body_end > offset:
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, offset, min(body_end, offset + READAHEAD) - offset, _WILLNEED)
    chunk = os.pread(fd, size, offset)
    if hasher is not None:
        hasher.update(chunk)  # type: ignore[attr-defined]
    return chunk


class BodyPieces:
    """Where one GET's next piece comes from.

    From the page cache, on the loop, when it holds the bytes (a thread hop per MiB
    costs more than the copy). Otherwise, with ``direct``, O_DIRECT through a second
    descriptor (opened at the first miss, tried once: refused, it stays refused; see
    direct_read). Otherwise a read in the I/O pool, which also starts the kernel
    reading ahead towards ``body_end``. Every piece is fed to ``hasher``.
    """

    def __init__(self, node: StorageNode, fd: int, body_end: int, hasher: object,
                 buffers: AlignedBuffers, direct: bool) -> None:
        self.node = node
        self.fd = fd
        self.body_end = body_end
        self.hasher = hasher
        self.buffers = buffers
        self.try_direct = direct
        self.direct: DirectReader | None = None

    async def read(self, offset: int, size: int) -> bytes | bytearray:
        if self.direct is None:
            chunk = read_cached(self.fd, offset, size)
            if chunk is not None:
                if self.hasher is not None:
                    self.hasher.update(chunk)  # type: ignore[attr-defined]
                return chunk
            if self.try_direct:
                self.try_direct = False
                self.direct = await self.node.run_io_to_end(
                    DirectReader.open, self.fd, self.buffers,
                    on_cancel=lambda reader: reader and reader.close())
        if self.direct is not None:
            try:
                # to the end even if cancelled: close() shuts its descriptor
                return await self.node.run_io_to_end(self.direct.read, offset, size,
                                                     self.hasher)
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise
                self.close()  # refused here: through the page cache instead
        return await self.node.run_io(read_chunk, self.fd, offset, size,
                                      self.hasher, self.body_end)

    def close(self) -> None:
        if self.direct is not None:
            self.direct.close()
            self.direct = None
