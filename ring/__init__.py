"""Placement math: ring builder, ring lookup, path hashing and the ring file format.

Pure: no sockets, no asyncio. Imports only stdlib, xxhash, msgpack and numpy.
"""

from .builder import RebalanceReport, RingBuilder, RingBuilderError, UnknownDeviceError
from .ring import NodeDict, Ring
from .ringfile import RingFileError

__all__ = [
    "NodeDict",
    "RebalanceReport",
    "Ring",
    "RingBuilder",
    "RingBuilderError",
    "RingFileError",
    "UnknownDeviceError",
]
