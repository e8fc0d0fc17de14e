"""Parsing swift-ring-builder's compact device notation and search patterns.

    r1z1-127.0.0.1:6200/d1_some meta     a device to add (region optional: r defaults to 1)
    d3  z2  z1-10.0.0.1  :6200  /sdb  10.0.0.1   searches; every part optional
"""

from __future__ import annotations

import re

_DEV = re.compile(
    r"^(?:r(?P<region>\d+))?z(?P<zone>\d+)-(?P<ip>\[[0-9a-fA-F:.]+\]|[^:/\s]+)"
    r":(?P<port>\d+)/(?P<device>[^_\s/]+)(?:_(?P<meta>.*))?$"
)
_SEARCH = re.compile(
    r"^(?:d(?P<id>\d+))?(?:r(?P<region>\d+))?(?:z(?P<zone>\d+))?-?"
    r"(?P<ip>\[[0-9a-fA-F:.]+\]|[0-9A-Za-z.\-]*[0-9A-Za-z])?"
    r"(?::(?P<port>\d+))?(?:/(?P<device>[^_\s/]+))?(?:_(?P<meta>.*))?$"
)


class PatternError(ValueError):
    """A device string or search pattern that cannot be parsed."""


def parse_device(text: str) -> dict:
    """Parse ``r1z1-127.0.0.1:6200/d1_meta`` into a device dict (without weight)."""
    m = _DEV.match(text.strip())
    if not m:
        raise PatternError(f"cannot parse device {text!r}: expected r<region>z<zone>-"
                           f"<ip>:<port>/<device>[_<meta>], e.g. r1z1-127.0.0.1:6200/d1")
    ip = m["ip"]
    if ip.startswith("["):
        ip = ip[1:-1]
    return {"region": int(m["region"] or 1), "zone": int(m["zone"]), "ip": ip,
            "port": int(m["port"]), "device": m["device"], "meta": m["meta"] or ""}


def parse_search(pattern: str) -> dict:
    """Parse a search pattern into the fields it constrains."""
    text = pattern.strip()
    if text.isdigit():
        return {"id": int(text)}
    m = _SEARCH.match(text)
    if not text or not m or not any(v is not None for v in m.groupdict().values()):
        raise PatternError(f"cannot parse search {pattern!r}: expected an id or "
                           f"d<id>r<region>z<zone>-<ip>:<port>/<device>_<meta> (parts optional)")
    out: dict = {}
    for key, value in m.groupdict().items():
        if value is None:
            continue
        if key in ("id", "region", "zone", "port"):
            out[key] = int(value)
        elif key == "ip":
            out[key] = value[1:-1] if value.startswith("[") else value
        else:
            out[key] = value
    return out


def match_devices(devs: list[dict], pattern: str) -> list[dict]:
    """Devices (from ``devs``) that match every field of the search pattern."""
    want = parse_search(pattern)
    return [d for d in devs if all(d.get(k) == v for k, v in want.items())]
