"""Account and container listings as Swift renders them: plain, JSON and XML.

Shared by the storage node (which builds listings) and the proxy (which may merge or
re-render them), so the byte format lives in one place.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from swiftlike.common.constraints import DEFAULT_POLICY
from swiftlike.common.timestamp import Timestamp

LISTING_LIMIT = 10000
MAX_MARKER_LENGTH = 1024
CONTENT_TYPES = {
    "plain": "text/plain; charset=utf-8",
    "json": "application/json; charset=utf-8",
    "xml": "application/xml; charset=utf-8",
}


#: What a listing can be, in the order that breaks ties in Accept (Swift's offers)
LISTING_OFFERS = (("text/plain", "plain"), ("application/json", "json"),
                  ("application/xml", "xml"), ("text/xml", "xml"))
_FORMAT_TYPES = {"plain": "text/plain", "json": "application/json", "xml": "application/xml"}


def negotiate_listing(query: Mapping[str, str], accept: str | None
                      ) -> tuple[str, str] | None:
    """(format, Content-Type) of a listing, as Swift picks it: ``format=`` names one
    (an unknown name means plain), else the offer the Accept header rates highest
    (q-values, then specificity); None when it accepts none of them (406). A missing
    Accept header, or ``*/*``, means plain text.

    ValueError for an Accept header that cannot be read (Swift answers 400).
    """
    named = (query.get("format") or "").strip().lower()
    if named:
        mime = _FORMAT_TYPES.get(named, "text/plain")
        return ("plain" if named not in _FORMAT_TYPES else named), f"{mime}; charset=utf-8"
    ranges = _accept_ranges(accept or "*/*")
    best: tuple[float, str, str] | None = None
    for mime, fmt in LISTING_OFFERS:
        quality = _quality(ranges, mime)
        if quality > 0 and (best is None or quality > best[0]):
            best = (quality, mime, fmt)
    if best is None:
        return None
    return best[2], f"{best[1]}; charset=utf-8"


def accepts_json(query: Mapping[str, str], accept: str | None) -> bool:
    """Whether a request takes a JSON answer: ``format=json``, or (without a
    ``format=``) an Accept header that rates ``application/json`` above 0. For what
    Swift serves in JSON alone (a versions listing), anything else being 406.

    ValueError for an Accept header that cannot be read (400).
    """
    named = (query.get("format") or "").strip().lower()
    if named:
        return named == "json"
    return _quality(_accept_ranges(accept or "*/*"), "application/json") > 0


def _accept_ranges(accept: str) -> list[tuple[str, str, float]]:
    ranges = []
    for item in accept.split(","):
        item = item.strip()
        if not item:
            continue
        mime, *params = (part.strip() for part in item.split(";"))
        kind, sep, sub = mime.lower().partition("/")
        if not sep or not kind or not sub:
            raise ValueError(f"bad media range {mime!r}")
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                quality = float(value)  # ValueError for a q that is no number
                if not 0 <= quality <= 1:
                    raise ValueError(f"q out of range in {item!r}")
        ranges.append((kind, sub, quality))
    return ranges


def _quality(ranges: list[tuple[str, str, float]], mime: str) -> float:
    """The q of the most specific range that covers ``mime`` (0 when none does)."""
    kind, _, sub = mime.partition("/")
    best_rank, quality = -1, 0.0
    for range_kind, range_sub, q in ranges:
        if (range_kind, range_sub) == (kind, sub):
            rank = 2
        elif range_kind == kind and range_sub == "*":
            rank = 1
        elif (range_kind, range_sub) == ("*", "*"):
            rank = 0
        else:
            continue
        if rank > best_rank:
            best_rank, quality = rank, q
    return quality


class ListingParamError(ValueError):
    """A listing parameter Swift refuses; carries the status it answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def listing_format(query: Mapping[str, str], accept: str | None) -> str:
    """plain, json or xml: ``format=`` wins, then the Accept header (see
    :func:`negotiate_listing`), else plain."""
    try:
        found = negotiate_listing(query, accept)
    except ValueError:
        return "plain"
    return found[0] if found else "plain"


def listing_params(query: Mapping[str, str], with_path: bool = False) -> dict[str, Any]:
    """limit, marker, end_marker, prefix, delimiter, reverse (and path) from a query
    string. A delimiter may be several characters, as in Swift."""
    raw_limit = query.get("limit")
    limit = LISTING_LIMIT
    if raw_limit and raw_limit.isdigit():  # anything else is ignored, as Swift does
        limit = int(raw_limit)
        if limit > LISTING_LIMIT:
            raise ListingParamError(412, f"Maximum limit is {LISTING_LIMIT}")
    params: dict[str, Any] = {"limit": limit}
    for key in ("marker", "end_marker", "prefix", "delimiter"):
        value = query.get(key, "")
        if "\x00" in value:
            raise ListingParamError(400, f"NUL in {key}")
        if len(value.encode("utf-8", "surrogateescape")) > MAX_MARKER_LENGTH:
            raise ListingParamError(400, f"{key} too long")
        params[key] = value
    path = query.get("path") if with_path else None  # containers only, as in Swift
    if path is not None:
        # Swift's path=: the objects directly in that pseudo-directory, none deeper
        if "\x00" in path or len(path.encode("utf-8", "surrogateescape")) > MAX_MARKER_LENGTH:
            raise ListingParamError(400, "bad path")
        params["prefix"] = path.rstrip("/") + "/" if path else ""
        params["delimiter"] = "/"
        params["path"] = True
    params["reverse"] = query.get("reverse", "").strip().lower() in ("1", "true", "yes", "on",
                                                                     "t", "y")
    return params


def iso_last_modified(stamp: str) -> str:
    """Timestamp as Swift's listing ``last_modified``: ``2024-01-02T03:04:05.123450``.

    Called once per row of every listing (a quarter of a 1,000-row listing's CPU went
    into it): a stored timestamp in the normal form is sliced instead of parsed, and the
    date part is formatted once per second (rows of one upload share it).
    """
    if len(stamp) == 16 and stamp[10] == "." and stamp.isascii() and \
            stamp[:10].isdigit() and stamp[11:].isdigit():
        return f"{_iso_second(int(stamp[:10]))}.{stamp[11:]}0"
    ticks = Timestamp(stamp).ticks
    return f"{_iso_second(ticks // 100000)}.{(ticks % 100000) * 10:06d}"


@functools.lru_cache(maxsize=1024)
def _iso_second(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


#: RFC 2616's separators but the backslash: with controls and space, what a token may
#: not contain (any other character may, non-ASCII and ``\\`` too, as in Swift's parser)
_SEPARATORS = '()<>@,;:"/[]?={} \t'
_TOKEN = "[^" + re.escape(_SEPARATORS) + "\x00-\x1f\x7f]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
#: one ``; key[=value]`` parameter of a Content-Type
_PARAMETER = re.compile(rf"\s*;\s*({_TOKEN})\s*(?:=\s*({_TOKEN}|{_QUOTED}))?")


#: where the parameters the proxy's symlink middleware lists a link with begin (see
#: ``proxy.symlink_listing``): kept verbatim, a target path has slashes in it
LINK_PARAMETERS = ";symlink_target="


def content_type_as_listed(content_type: str) -> str:
    """A stored Content-Type as container listings show it.

    Why: Swift's container server re-assembles a type's parameters when it lists them,
    as ``type;key=value`` with no spaces (a parameter without a value as ``key=``,
    what is not a well-formed parameter left out), and clients comparing listing rows
    with what they uploaded have learnt that form. HEAD and GET keep the type exactly
    as stored.
    """
    if ";" not in content_type:
        return content_type
    own, link, target = content_type.partition(LINK_PARAMETERS)
    main, _, parameters = own.partition(";")
    parts = [main]
    for key, value in _PARAMETER.findall(";" + parameters):
        key = key.strip()
        # a client's own symlink_target* parameter is left out: re-assembled without
        # its spaces it would read as a link's (whose parameters follow LINK_PARAMETERS)
        if key != "swift_bytes" and not key.startswith("symlink_target"):
            parts.append(f";{key}={value.strip()}")
    return "".join(parts) + link + target


#: what a row's stored etag carries after the object's md5 when the object is a static
#: large object (the SLO middleware's container-update override, Swift's form)
SLO_ETAG_PARAMETER = "; slo_etag="


def etag_with_slo_etag(etag: str, slo_etag: str) -> str:
    """The etag a container row keeps for a large object (or a static link to one):
    listings split it back into ``hash`` and ``slo_etag``."""
    return f"{etag}{SLO_ETAG_PARAMETER}{slo_etag}"


def _object_entry(entry: dict[str, Any]) -> dict[str, Any]:
    # Swift's key order (clients may compare bytes)
    row = {"bytes": entry["bytes"], "hash": entry["hash"], "name": entry["name"],
           "content_type": content_type_as_listed(entry["content_type"]),
           "last_modified": iso_last_modified(entry["created_at"])}
    etag, found, slo_etag = row["hash"].partition(SLO_ETAG_PARAMETER)
    if found:  # as Swift lists a manifest: its own md5, and the large object's etag
        row["hash"] = etag
        row["slo_etag"] = f'"{slo_etag}"'
    return row


def _container_entry(entry: dict[str, Any]) -> dict[str, Any]:
    return {"name": entry["name"], "count": entry["count"], "bytes": entry["bytes"],
            "last_modified": iso_last_modified(entry["created_at"]),
            "storage_policy": DEFAULT_POLICY}  # as Swift's account listings name it


def render_listing(kind: str, owner: str, entries: list[dict[str, Any]], fmt: str
                   ) -> tuple[bytes, str]:
    """(body, content type) of a listing. ``kind`` is "container" or "account".

    ``entries`` are the broker's dicts (with ``created_at``) or ``{"subdir": ...}``.
    """
    item_of = _object_entry if kind == "container" else _container_entry
    rows = [entry if "subdir" in entry else item_of(entry) for entry in entries]
    return render_rows(kind, owner, rows, fmt)


#: the fields of a container listing's XML rows, Swift's (the JSON rows' ``slo_etag``,
#: ``symlink_path`` ... are not in its XML)
XML_OBJECT_FIELDS = ("name", "hash", "bytes", "content_type", "last_modified")


def render_rows(kind: str, owner: str, rows: list[dict[str, Any]], fmt: str
                ) -> tuple[bytes, str]:
    """(body, content type) of listing rows already in their client form, or
    ``{"subdir": ...}`` roll-ups. JSON shows every field a row has, in order; XML an
    account row's every field, and a container row's :data:`XML_OBJECT_FIELDS`."""
    if fmt == "json":
        return json.dumps(rows).encode("utf-8"), CONTENT_TYPES["json"]
    if fmt == "xml":
        # Swift's two documents differ: an account's puts each element on a line of its
        # own and its roll-ups are empty elements; a container's is one line
        account = kind == "account"
        tag = "container" if account else "object"
        end = "\n" if account else ""
        parts = ['<?xml version="1.0" encoding="UTF-8"?>\n',
                 f"<{kind} name={quoteattr(owner)}>{end}"]
        for row in rows:
            if "subdir" in row:
                name = quoteattr(row["subdir"])
                parts.append(f"<subdir name={name} />\n" if account else
                             f"<subdir name={name}><name>{escape(row['subdir'])}</name>"
                             "</subdir>")
                continue
            fields = row.items() if account else \
                ((key, row[key]) for key in XML_OBJECT_FIELDS if key in row)
            inner = "".join(f"<{key}>{escape(_xml_text(value))}</{key}>"
                            for key, value in fields)
            parts.append(f"<{tag}>{inner}</{tag}>{end}")
        if not rows and not account:  # as Swift's XML writer closes an empty element
            parts[-1] = f"<{kind} name={quoteattr(owner)} />"
        else:
            parts.append(f"</{kind}>")
        return "".join(parts).encode("utf-8"), CONTENT_TYPES["xml"]
    names = [row.get("subdir") or row["name"] for row in rows]
    body = "".join(name + "\n" for name in names)
    return body.encode("utf-8"), CONTENT_TYPES["plain"]


def _xml_text(value: Any) -> str:
    """Booleans as JSON spells them (``is_latest``), the rest as text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
