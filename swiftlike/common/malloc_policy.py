"""How glibc's allocator treats the MiB-sized buffers of big object bodies.

Why: a big GET or PUT moves its body through 256 KiB-1 MiB buffers that live for a
moment. Under glibc's defaults each such buffer is its own ``mmap``: its pages fault in
one by one, the kernel zeroes every one of them, and ``free`` unmaps them again. glibc
raises that threshold by itself only after freeing such a mapping, and it gives freed
heap back to the kernel as soon as 2x the threshold is free at its top, so under load
the buffers kept cycling through the kernel: ``perf`` during 16 MiB GETs showed the
kernel zeroing pages (``clear_page``) at about 6% of the whole machine. With both
thresholds set once, at startup, the buffers come from the heap and are reused; a
process keeps up to ``trim`` bytes of freed heap per arena instead of returning it.

Measured with all-in-one ``swiftlike serve`` on 2 cores, 16 MiB GETs, 3 A/B pairs (see
docs/performance.md): server CPU per GET 25-29 -> 20-24 ms.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from dataclasses import dataclass

LOG = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_MIB = 1024 * 1024


@dataclass(frozen=True)
class MallocPolicy:
    """Bytes of free heap top kept before trimming, and the smallest mmap-ed request.

    0 leaves that glibc default (and its self-tuning) alone.
    """

    trim_threshold: int = 64 * _MIB
    mmap_threshold: int = 32 * _MIB  # glibc's own ceiling for the self-tuned value


def malloc_policy_from(section: dict[str, object]) -> MallocPolicy:
    """``malloc_trim_threshold_mib`` / ``malloc_mmap_threshold_mib`` of a config table."""
    default = MallocPolicy()
    values = {}
    for field, key in (("trim_threshold", "malloc_trim_threshold_mib"),
                       ("mmap_threshold", "malloc_mmap_threshold_mib")):
        raw = section.get(key)
        if raw is None:
            values[field] = getattr(default, field)
            continue
        try:
            mib = int(str(raw))
        except ValueError:
            raise ValueError(f"{key} must be a whole number of MiB, not {raw!r}") from None
        if not 0 <= mib <= 1024:
            raise ValueError(f"{key} must be between 0 and 1024, not {mib}")
        values[field] = mib * _MIB
    return MallocPolicy(**values)


def apply_malloc_policy(policy: MallocPolicy) -> bool:
    """Set the thresholds for this process (every thread: they are global to glibc).

    False, with a warning, where the C library has no ``mallopt`` (not glibc) or
    refuses a value; nothing changes then.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        LOG.warning("malloc policy: this C library has no mallopt")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = True
    for param, value, name in ((_M_TRIM_THRESHOLD, policy.trim_threshold, "trim"),
                               (_M_MMAP_THRESHOLD, policy.mmap_threshold, "mmap")):
        if value and mallopt(param, value) != 1:
            LOG.warning("malloc policy: mallopt refused %s threshold %d", name, value)
            applied = False
    return applied
