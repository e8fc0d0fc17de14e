"""Receive buffers that are not zero-filled first.

Why: ``bytearray(n)`` writes n zero bytes before a socket or file read overwrites them.
For the MiB-sized reads of a big GET that zero-fill (plus the cache misses it causes)
showed up as 5-8% of the whole machine's CPU in ``perf``, in the proxy and the nodes
alike. CPython's C API can make a bytearray without touching its bytes; the caller must
overwrite every byte it later exposes (a read into it, then a cut to what was read).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _load_uninitialized() -> Callable[[None, int], bytearray] | None:
    try:
        make = ctypes.pythonapi.PyByteArray_FromStringAndSize
    except (AttributeError, OSError):  # not CPython
        return None
    make.restype = ctypes.py_object
    make.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
    return make  # type: ignore[no-any-return]


_UNINITIALIZED = _load_uninitialized()


def read_buffer(size: int) -> bytearray:
    """A writable ``size``-byte buffer for a read to fill; its old bytes are garbage.

    Never hand out more of it than the read filled.
    """
    if _UNINITIALIZED is None or size <= 0:
        return bytearray(size)
    return _UNINITIALIZED(None, size)
