"""Container ACLs (X-Container-Read / X-Container-Write), tempauth's dialect.

An ACL is a comma-separated list of entries:

* ``.r:<host>`` referrer rules: ``.r:*`` anyone, ``.r:example.com`` one host,
  ``.r:.example.com`` a domain, ``.r:-host`` a denial (later entries win);
* ``.rlistings``: referrer-allowed requests may also list the container;
* ``<account>`` or ``<account>:<user>``: groups of authenticated users.

Only read ACLs may carry referrer rules (Swift rejects them for write ACLs).
"""

from __future__ import annotations

from urllib.parse import urlparse

_REFERRER_ALIASES = (".r", ".ref", ".referer", ".referrer")


def clean_acl(name: str, value: str) -> str:
    """Normalize an ACL header value; ValueError with a message when it is invalid."""
    entries = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        if entry.startswith("."):
            if entry == ".rlistings":
                if name.lower() != "x-container-read":
                    raise ValueError(f"Referrers not allowed in write ACL: {entry!r}")
                entries.append(entry)
                continue
            designator, sep, host = entry.partition(":")
            designator = designator.strip()
            host = host.strip()
            if designator not in _REFERRER_ALIASES:
                raise ValueError(f"Unknown designator {designator!r} in ACL {value!r}")
            if name.lower() != "x-container-read":
                raise ValueError(f"Referrers not allowed in write ACL: {entry!r}")
            if not sep or not host or host in ("-", ".", "-."):
                raise ValueError(f"No host/domain value after referrer designation in ACL "
                                 f"{value!r}")
            if host.startswith("-"):
                host = "-" + host[1:].strip()
            if host in ("*", "-*"):
                host = host
            elif "://" in host:
                raise ValueError(f"Referrer host must not contain a scheme: {host!r}")
            entries.append(f".r:{host}")
        else:
            entries.append(entry)
    return ",".join(entries)


def parse_acl(value: str | None) -> tuple[list[str], list[str]]:
    """``(referrers, groups)`` of an ACL string; ``.rlistings`` is kept among groups."""
    referrers: list[str] = []
    groups: list[str] = []
    if not value:
        return referrers, groups
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        if entry.startswith(".r:"):
            referrers.append(entry[3:].strip())
        else:
            groups.append(entry)
    return referrers, groups


def referrer_allowed(referrer: str | None, rules: list[str]) -> bool:
    """Whether the Referer header passes the ``.r:`` rules (the last matching rule wins)."""
    if not rules:
        return False
    host = urlparse(referrer or "").hostname or "unknown"
    allowed = False
    for rule in rules:
        deny = rule.startswith("-")
        pattern = rule[1:] if deny else rule
        if pattern == "*" or pattern == host or (
            pattern.startswith(".") and host.endswith(pattern)
        ):
            allowed = not deny
    return allowed
