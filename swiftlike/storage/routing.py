"""Parsing and checking a storage node path: ``/<device>/<partition>/<account>[/...]``.

A device name becomes a directory name, so anything that could walk out of the devices
root (``..``, ``/``, NUL) is refused with 400 before it is ever joined to a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

SERVER_TYPES = ("account", "container", "object")


class BadPath(ValueError):
    """The path cannot name anything on this node: 400."""


@dataclass(slots=True)
class Route:
    device: str
    partition: str
    account: str
    container: str | None = None
    obj: str | None = None

    @property
    def segment_count(self) -> int:
        return 3 + (self.container is not None) + (self.obj is not None)


def parse_route(raw_path: str, server_type: str | None) -> tuple[str, Route]:
    """(server type, route) of a request path; BadPath when it is malformed.

    Without X-Backend-Server-Type the number of segments decides: 3 account,
    4 container, 5+ object (object names may contain ``/``).
    """
    path = raw_path.split("?", 1)[0]
    if not path.startswith("/"):
        raise BadPath("path must start with /")
    pieces = path[1:].split("/", 4)
    if "%" in path:
        try:
            segments = [unquote(piece, errors="strict") for piece in pieces]
        except UnicodeDecodeError as err:
            raise BadPath("path is not valid UTF-8") from err
        if any("\x00" in segment for segment in segments):
            raise BadPath("NUL in path")
    else:  # nothing to decode (every request the proxy sends for plain names)
        segments = pieces
        if "\x00" in path:
            raise BadPath("NUL in path")
    if len(segments) < 3:
        raise BadPath("path needs /device/partition/account")
    device, partition = segments[0], segments[1]
    if not device or device in (".", "..") or "/" in device:
        raise BadPath(f"invalid device {device!r}")
    if not partition.isdigit() or not partition.isascii():
        raise BadPath(f"invalid partition {partition!r}")
    for segment in segments[2:4]:
        if not segment:
            raise BadPath("empty account or container name")
    if len(segments) == 5 and not segments[4]:
        raise BadPath("empty object name")
    if partition[0] == "0" and len(partition) > 1:
        partition = str(int(partition))
    route = Route(device, partition, *segments[2:5])
    if server_type:
        server_type = server_type.strip().lower()
        if server_type not in SERVER_TYPES:
            raise BadPath(f"unknown X-Backend-Server-Type {server_type!r}")
        needed = {"account": (3, 4), "container": (4, 5), "object": (5,)}[server_type]
        if route.segment_count not in needed:
            raise BadPath(f"wrong number of path segments for a {server_type} request")
        return server_type, route
    return SERVER_TYPES[route.segment_count - 3], route
