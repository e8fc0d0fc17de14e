"""Server processes keep MiB-sized buffers on the heap (see swiftlike.common.malloc_policy)."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys

import pytest

from swiftlike.common.config import ConfigError
from swiftlike.common.malloc_policy import MallocPolicy, malloc_policy_from

MIB = 1024 * 1024


def _has_mallinfo2() -> bool:
    try:
        ctypes.CDLL(None).mallinfo2  # noqa: B018 - glibc 2.33+
    except AttributeError:
        return False
    return True


# Allocates 40 one-MiB buffers, frees them, and reports glibc's view of the heap:
# hblks counts live mmap-ed blocks, arena the bytes the main heap holds from the kernel.
_PROBE = """
import ctypes, json, sys
from swiftlike.cli import _apply_process_policies
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena ordblks smblks hblks hblkhd usmblks "
                                               "fsmblks uordblks fordblks keepcost").split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
conf = json.loads(sys.argv[1])
if conf is not None:
    _apply_process_policies(conf, "node")
before = libc.mallinfo2()
buffers = [bytearray(1 << 20) for _ in range(40)]
live = libc.mallinfo2()
del buffers
freed = libc.mallinfo2()
print(json.dumps({"mmapped_while_live": live.hblks - before.hblks,
                  "heap_kept_after_free": freed.arena}))
"""


def _probe(conf: dict | None) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(conf)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


@pytest.mark.skipif(not _has_mallinfo2(), reason="glibc 2.33+ only")
def test_buffers_come_from_the_heap_and_stay_there():
    untuned = _probe(None)
    assert untuned["mmapped_while_live"] >= 30  # glibc's default: one mmap per buffer
    tuned = _probe({"node": {}})
    assert tuned["mmapped_while_live"] == 0
    assert tuned["heap_kept_after_free"] >= 40 * MIB  # not trimmed back to the kernel


@pytest.mark.skipif(not _has_mallinfo2(), reason="glibc 2.33+ only")
def test_zero_leaves_glibc_defaults():
    off = _probe({"node": {"malloc_trim_threshold_mib": 0, "malloc_mmap_threshold_mib": 0}})
    assert off["mmapped_while_live"] >= 30


def test_settings_are_read_and_checked():
    assert malloc_policy_from({}) == MallocPolicy(64 * MIB, 32 * MIB)
    assert malloc_policy_from({"malloc_trim_threshold_mib": "8",
                               "malloc_mmap_threshold_mib": 0}) == MallocPolicy(8 * MIB, 0)
    with pytest.raises(ValueError, match="malloc_trim_threshold_mib must be a whole number"):
        malloc_policy_from({"malloc_trim_threshold_mib": "lots"})
    with pytest.raises(ValueError, match="between 0 and 1024"):
        malloc_policy_from({"malloc_mmap_threshold_mib": -1})


def test_a_bad_setting_stops_the_server_with_its_table_named():
    from swiftlike.cli import _apply_process_policies

    with pytest.raises(ConfigError, match=r"\[proxy\] malloc_mmap_threshold_mib"):
        _apply_process_policies({"proxy": {"malloc_mmap_threshold_mib": "x"}}, "proxy")
