"""Parsing swift-ring-builder's compact device notation and search patterns.

    r1z1-127.0.0.1:6200/d1_some meta     a device to add (region optional: r defaults to 1)
    d3  z2  z1-10.0.0.1  :6200  /sdb  10.0.0.1   searches; every part optional
"""

from __future__ import annotations

import ipaddress
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


_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class PatternError(ValueError):
    """A device string or search pattern that cannot be parsed."""


def normalize_address(text: str) -> str | None:
    """The one spelling of a device's address, or None if it is no address at all.

    An IP in its canonical form (``[0:0::1]`` and ``::1`` are one host), a host name
    lowercased: duplicate checks and searches compare these, so two spellings of one
    server cannot become two servers.
    """
    if not isinstance(text, str):
        return None
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    name = bare[:-1] if bare.endswith(".") else bare
    if not name or len(name) > 253 or not all(_HOST_LABEL.match(x) for x in name.split(".")):
        return None
    if name.rsplit(".", 1)[-1].isdigit():
        return None  # 1.2.3.999: a broken IP, not a host name
    return name.lower()


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
            bare = value[1:-1] if value.startswith("[") else value
            out[key] = normalize_address(bare) or bare
        else:
            out[key] = value
    return out


def match_devices(devs: list[dict], pattern: str) -> list[dict]:
    """Devices (from ``devs``) that match every field of the search pattern."""
    want = parse_search(pattern)
    return [d for d in devs if all(d.get(k) == v for k, v in want.items())]
