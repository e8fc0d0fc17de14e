"""Placement math: ring builder, ring lookup, path hashing and the ring file format.

Pure: no sockets, no asyncio. Imports only stdlib, xxhash, msgpack and numpy.
"""
