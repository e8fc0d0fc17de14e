"""What this machine's disk and page cache can do, measured in the benchmark's own run.

A server's numbers only mean something next to the machine's limits: a 3-replica small
PUT cannot beat the rate at which the disk does 4 KiB write+fsync+rename, and a GET
cannot beat reading from the page cache.  These probes run the bare operations from
Python threads (the work is in the kernel, so the GIL does not limit it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

KIB = 1024
MIB = 1024 * 1024


def _small_write_worker(directory: Path, worker: int, deadline: float, max_ops: int) -> int:
    """Write 4 KiB to a temp file, fsync, rename into place, fsync the directory."""
    data = os.urandom(4 * KIB)
    done = 0
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        while done < max_ops and time.monotonic() < deadline:
            tmp = directory / f".tmp-{worker}-{done}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, directory / f"obj-{worker}-{done}")
            os.fsync(dir_fd)
            done += 1
    finally:
        os.close(dir_fd)
    return done


def small_write_fsync_rate(directory: Path, threads: int = 8, seconds: float = 2.0,
                           max_ops: int = 20000) -> float:
    """4 KiB write+fsync+rename(+dir fsync) operations per second with ``threads`` writers."""
    directory.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + seconds
    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        counts = list(pool.map(
            lambda w: _small_write_worker(directory, w, deadline, max_ops // threads),
            range(threads)))
    return sum(counts) / (time.monotonic() - start)


def large_write_fsync_mibps(directory: Path, size: int = 16 * MIB, files: int = 4,
                            threads: int = 2) -> float:
    """MiB/s of writing ``files`` files of ``size`` bytes, each fsynced before it counts."""
    directory.mkdir(parents=True, exist_ok=True)
    block = os.urandom(MIB)

    def write(index: int) -> None:
        fd = os.open(directory / f"large-{index}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            left = size
            while left > 0:
                left -= os.write(fd, block[:min(left, len(block))])
            os.fsync(fd)
        finally:
            os.close(fd)

    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, range(files)))
    return files * size / MIB / (time.monotonic() - start)


def pagecache_read_mibps(directory: Path, size: int = 16 * MIB, repeats: int = 8) -> float:
    """MiB/s of re-reading a file that sits in the page cache, 1 MiB at a time."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "cached"
    path.write_bytes(os.urandom(size))
    buf = bytearray(MIB)
    with open(path, "rb", buffering=0) as fh:
        while fh.readinto(buf):   # warm the cache
            pass
        start = time.monotonic()
        for _ in range(repeats):
            fh.seek(0)
            while fh.readinto(buf):
                pass
        elapsed = time.monotonic() - start
    return repeats * size / MIB / elapsed


def small_read_rate(directory: Path, files: int = 2000, seconds: float = 1.0) -> float:
    """open+read+close of cached 4 KiB files per second (one thread)."""
    directory.mkdir(parents=True, exist_ok=True)
    data = os.urandom(4 * KIB)
    paths = [directory / f"r{i}" for i in range(files)]
    for p in paths:
        p.write_bytes(data)
    done = 0
    start = time.monotonic()
    deadline = start + seconds
    while time.monotonic() < deadline:
        for p in paths[:200]:
            with open(p, "rb", buffering=0) as fh:
                fh.read(8 * KIB)
        done += 200
    return done / (time.monotonic() - start)


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), or None where there is no such file."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * KIB
    except OSError:
        return None
    return None


def warm_free_memory(fraction: float = 0.8, cap_bytes: int | None = None,
                     chunk: int = 256 * MIB) -> dict[str, float]:
    """Touch ``fraction`` of the available memory once, then give it back.

    Why: on a fresh virtual machine the host backs guest memory only when the guest
    first writes a page, and that first write is slow (seen here: 2.7-3.1 s per GiB,
    against 0.5-0.9 s once touched). A server that has run for a while never sees it,
    but a benchmark on a new VM does: every new page-cache page for a 16 MiB PUT, every
    new directory block for a small PUT, lands on memory nobody touched yet, and
    whichever side runs first pays for it. Touching the free memory before any
    measurement makes both sides run on memory that has been written once, like a
    server's. Freed, the pages go back to the kernel's free lists, which hand out
    recently freed pages first; the host may take free pages back later (free page
    reporting: here 4 GiB re-touched 60 s later were still warm, 18 GiB touched 20
    minutes after a full pass were cold again), so this runs right before the
    measurement.
    """
    available = available_memory_bytes()
    target = 0 if available is None else int(available * fraction)
    if cap_bytes is not None:
        target = min(target, cap_bytes)
    held: list[bytearray] = []
    start = time.monotonic()
    touched = 0
    try:
        while touched < target:
            size = min(chunk, target - touched)
            held.append(bytearray(size))  # zero-filled: every page written once
            touched += size
    except MemoryError:
        pass
    finally:
        held.clear()
    seconds = time.monotonic() - start
    gib = touched / (1024 * MIB)
    return {"gib": gib, "seconds": seconds, "s_per_gib": seconds / gib if gib else 0.0}


def measure_machine_limits(workdir: Path | None = None, seconds: float = 2.0) -> dict[str, Any]:
    """All the probes, on the file system that holds ``workdir`` (the servers' disks)."""
    base = Path(tempfile.mkdtemp(prefix="limits-", dir=workdir))
    try:
        return {
            "small_write_fsync_per_s": small_write_fsync_rate(base / "small", seconds=seconds),
            "large_write_fsync_mib_per_s": large_write_fsync_mibps(base / "large"),
            "pagecache_read_mib_per_s": pagecache_read_mibps(base / "read"),
            "small_read_per_s": small_read_rate(base / "smallread", seconds=seconds / 2),
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


def phase_share(phase: str, ops_per_s: float, mib_per_s: float, limits: dict[str, Any],
                replicas: int = 3) -> float | None:
    """A phase's throughput as a fraction of what this machine's disk/cache allows.

    Writes count every replica: a 3-replica PUT of one object is three fsynced writes.
    Phases without a clear single limit (HEAD, listing, mixed, DELETE) get None.
    """
    if phase == "small-put":
        return ops_per_s * replicas / limits["small_write_fsync_per_s"]
    if phase == "large-put":
        return mib_per_s * replicas / limits["large_write_fsync_mib_per_s"]
    if phase == "small-get":
        return ops_per_s / limits["small_read_per_s"]
    if phase == "large-get":
        return mib_per_s / limits["pagecache_read_mib_per_s"]
    return None


if __name__ == "__main__":
    import json

    print(json.dumps(measure_machine_limits(), indent=2))
