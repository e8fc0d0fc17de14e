"""The ring file: what every proxy and storage node loads.

Layout (all integers little-endian)::

    offset  size  field
    0       8     magic  b"SWLKRING"
    8       2     format version (1)
    10      2     flags (0)
    12      4     metadata length M
    16      8     array length A
    24      8     xxh3_64 of the payload (the M + A bytes that follow)
    32      M     msgpack metadata: part_power, replicas, dtype ("<u2" or "<u4"), devs,
                  devs_with_parts (ids of the devices holding a partition), ...
    32+M    A     replica2part2dev: replicas x 2**part_power device ids, C order

Loading reads the file once, checks the header, lengths and checksum, and maps the
array with ``numpy.frombuffer``: no per-partition Python work. Anything wrong raises
:class:`RingFileError` (a ValueError) that says what is wrong.

Lookups need no numpy: :func:`read_lookup_table` checks the same things and returns the
table partition-major in a stdlib ``array``. Daemons and the proxy load only that, so a
process that never builds a ring neither imports numpy (about 0.1 s of CPU per process
start) nor starts its BLAS threads.
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack
import xxhash

if TYPE_CHECKING:
    import numpy as np

MAGIC = b"SWLKRING"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sHHIQQ")
DTYPES = ("<u2", "<u4")
_TYPECODES = {"<u2": "H", "<u4": "I"}  # array typecodes of those widths (native order)
DEV_KEYS = ("id", "region", "zone", "ip", "port", "device", "weight", "meta")


class RingFileError(ValueError):
    """A ring (or builder) file is missing, truncated, corrupt or of an unknown version."""


@dataclass(frozen=True)
class RingData:
    """The decoded contents of a ring file."""

    part_power: int
    replicas: int
    devs: list[dict | None]
    replica2part2dev: np.ndarray
    meta: dict[str, Any]


@dataclass(frozen=True)
class LookupTable:
    """A ring file's contents for lookups: ``by_part`` holds partition p's device ids,
    in replica order, at p*replicas .. p*replicas+replicas-1."""

    part_power: int
    replicas: int
    devs: list[dict | None]
    by_part: array
    meta: dict[str, Any]


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the new one, never a mix.

    Temp file in the same directory, fsync, rename over, fsync the directory.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".partial", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            # mkstemp makes it 0600; every service on the host, whatever its user,
            # must be able to read the ring (swift-ring-builder writes 0644 too)
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def dtype_for(max_dev_id: int) -> str:
    """The narrowest device-id dtype that holds ``max_dev_id``."""
    return "<u2" if max_dev_id < 0xFFFF else "<u4"


def encode_ring(part_power: int, replicas: int, devs: list[dict | None],
                replica2part2dev: np.ndarray, extra: dict[str, Any] | None = None) -> bytes:
    """Serialise a ring to bytes (see the module docstring for the layout)."""
    import numpy as np

    dtype = dtype_for(max(len(devs) - 1, 0))
    arr = np.ascontiguousarray(replica2part2dev, dtype=dtype)
    if arr.shape != (replicas, 1 << part_power):
        raise ValueError(f"replica2part2dev has shape {arr.shape}, "
                         f"expected {(replicas, 1 << part_power)}")
    if names_unknown_devices(arr, devs):
        raise ValueError("replica2part2dev assigns partitions to unknown devices")
    clean_devs = [None if d is None else {k: d[k] for k in DEV_KEYS} for d in devs]
    holding = np.flatnonzero(np.bincount(arr.ravel(), minlength=len(devs))).tolist()
    meta = {"part_power": part_power, "replicas": replicas, "dtype": dtype,
            "devs": clean_devs, "devs_with_parts": holding, **(extra or {})}
    meta_bytes = msgpack.packb(meta, use_bin_type=True)
    body = arr.tobytes()
    checksum = xxhash.xxh3_64_intdigest(meta_bytes + body)
    header = HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(meta_bytes), len(body), checksum)
    return header + meta_bytes + body


def _checked_parts(blob: bytes, source: str
                   ) -> tuple[dict[str, Any], int, int, str, list, memoryview]:
    """Header, checksum and metadata checks: (meta, part_power, replicas, dtype, devs,
    the array's bytes)."""
    if len(blob) < HEADER.size:
        raise RingFileError(f"{source}: truncated ({len(blob)} bytes, header needs {HEADER.size})")
    magic, version, _flags, meta_len, body_len, checksum = HEADER.unpack_from(blob, 0)
    if magic != MAGIC:
        raise RingFileError(f"{source}: not a swiftlike ring file (bad magic {magic!r})")
    if version != FORMAT_VERSION:
        raise RingFileError(f"{source}: unsupported ring format version {version} "
                            f"(this code reads version {FORMAT_VERSION})")
    expected = HEADER.size + meta_len + body_len
    if len(blob) != expected:
        raise RingFileError(f"{source}: truncated or padded: {len(blob)} bytes, "
                            f"header says {expected}")
    payload = memoryview(blob)[HEADER.size:]
    if xxhash.xxh3_64_intdigest(payload) != checksum:
        raise RingFileError(f"{source}: checksum mismatch (file is corrupt)")
    try:
        meta = msgpack.unpackb(payload[:meta_len], raw=False, strict_map_key=False)
        part_power = int(meta["part_power"])
        replicas = int(meta["replicas"])
        dtype = meta["dtype"]
        devs = meta["devs"]
    except Exception as exc:
        raise RingFileError(f"{source}: bad metadata: {exc}") from exc
    if dtype not in DTYPES or not 0 <= part_power <= 32 or replicas < 1:
        raise RingFileError(f"{source}: bad metadata values (dtype={dtype!r}, "
                            f"part_power={part_power}, replicas={replicas})")
    if body_len != replicas * (1 << part_power) * int(dtype[-1]):
        raise RingFileError(f"{source}: array length {body_len} does not match "
                            f"{replicas} replicas x 2**{part_power} partitions")
    return meta, part_power, replicas, dtype, devs, payload[meta_len:]


def names_unknown_devices(arr: np.ndarray, devs: list[dict | None]) -> bool:
    """True if ``arr`` holds an id that is no device of ``devs``."""
    import numpy as np

    known = np.array([d is not None for d in devs] + [False], dtype=bool)
    return bool(arr.size) and (int(arr.max()) >= len(devs) or not known[arr].all())


def decode_ring(blob: bytes, source: str = "ring file") -> RingData:
    """Parse and verify ring bytes; raise RingFileError with the reason if anything is off."""
    import numpy as np

    meta, part_power, replicas, dtype, devs, body = _checked_parts(blob, source)
    arr = np.frombuffer(body, dtype=dtype).reshape(replicas, 1 << part_power)
    if names_unknown_devices(arr, devs):
        raise RingFileError(f"{source}: partitions assigned to unknown devices")
    return RingData(part_power=part_power, replicas=replicas, devs=devs,
                    replica2part2dev=arr, meta=meta)


def decode_lookup_table(blob: bytes, source: str = "ring file") -> LookupTable:
    """:func:`decode_ring`'s checks, without numpy, into a partition-major table.

    All but one: that every id names a known device. :func:`encode_ring` refuses to
    write a table that does not, and the checksum proves these are the bytes it wrote;
    scanning every id again here without numpy would triple the load time of a large
    ring (`swiftlike-ring <builder> validate`, through :func:`decode_ring`, still does it).
    """
    meta, part_power, replicas, dtype, devs, body = _checked_parts(blob, source)
    rows = array(_TYPECODES[dtype])
    if rows.itemsize != int(dtype[-1]):  # no stdlib typecode of that width here
        raise RingFileError(f"{source}: this platform has no {dtype} array type")
    rows.frombytes(body)
    if sys.byteorder != "little":
        rows.byteswap()
    count = 1 << part_power
    by_part = array(rows.typecode, bytes(len(rows) * rows.itemsize))
    for replica in range(replicas):  # strided copies in C: the transpose
        by_part[replica::replicas] = rows[replica * count:(replica + 1) * count]
    return LookupTable(part_power=part_power, replicas=replicas, devs=devs,
                       by_part=by_part, meta=meta)


def _read_blob(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise RingFileError(f"cannot read ring file {os.fspath(path)!r}: {exc}") from exc


def read_ring_file(path: str | os.PathLike[str]) -> RingData:
    """Load a ring file from disk (see :func:`decode_ring`)."""
    return decode_ring(_read_blob(path), source=os.fspath(path))


def read_lookup_table(path: str | os.PathLike[str]) -> LookupTable:
    """Load a ring file for lookups, without numpy (see :func:`decode_lookup_table`)."""
    return decode_lookup_table(_read_blob(path), source=os.fspath(path))


def write_ring_file(path: str | os.PathLike[str], part_power: int, replicas: int,
                    devs: list[dict | None], replica2part2dev: np.ndarray,
                    extra: dict[str, Any] | None = None) -> None:
    """Atomically write a ring file."""
    atomic_write(path, encode_ring(part_power, replicas, devs, replica2part2dev, extra))
