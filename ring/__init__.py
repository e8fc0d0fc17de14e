"""Placement math: ring builder, ring lookup, path hashing and the ring file format.

Pure: no sockets, no asyncio. Imports only stdlib, xxhash, msgpack and numpy.
The builder is imported on first use: every daemon and proxy process needs the ring
lookup, only operators' tools need the builder.
"""

from typing import Any

from .ring import NodeDict, Ring
from .ringfile import RingFileError

_BUILDER_NAMES = ("RebalanceReport", "RingBuilder", "RingBuilderError", "UnknownDeviceError")

__all__ = [
    "NodeDict",
    "RebalanceReport",
    "Ring",
    "RingBuilder",
    "RingBuilderError",
    "RingFileError",
    "UnknownDeviceError",
]


def __getattr__(name: str) -> Any:
    if name in _BUILDER_NAMES:
        from . import builder
        return getattr(builder, name)
    raise AttributeError(f"module 'ring' has no attribute {name!r}")
