"""HTTP helpers shared by servers: byte ranges and conditional requests, Swift-style.

Both the storage node and the proxy answer Range and If-* headers; keeping the rules
in one place means a client sees the same status whichever layer decides.
"""

from __future__ import annotations

import email.utils
import itertools
import uuid
from collections.abc import Iterable, Mapping

#: Range requests past these are refused (416), as Swift's: RFC 9110 section 14.2 asks
#: servers to reject "egregious" ones, since many small or overlapping ranges cost the
#: server far more than the client
MAX_RANGES = 50
MAX_RANGE_OVERLAPS = 2
MAX_NONASCENDING_RANGES = 8
#: a header naming more ranges than this is not parsed at all (ignored: the whole entity)
MAX_PARSED_RANGES = 1000
"""More ranges than this in one request: serve the whole entity (RFC 7233 section 6.1)."""
#: A read with this header (comma-separated metadata names) is answered whole, as if it
#: had no Range and no If-* headers, when the object has one of those names with a
#: value that is not a false word: a manifest or a link, whose proxy middleware (slo,
#: dlo, symlink) applies the client's headers to what it stands for.
WHOLE_IF_PRESENT = "X-Backend-Whole-If-Metadata-Present"
_FALSE_WORDS = frozenset(("", "false", "no", "off", "0", "f", "n"))


class RangeNotSatisfiable(Exception):
    """Every requested range lies beyond the entity: answer 416."""


def parse_range_header(header: str | None) -> list[tuple[int | None, int | None]] | None:
    """Parse ``bytes=a-b,c-,-d`` into (start, end) pairs; None when the header is invalid.

    An invalid header is ignored (the whole entity is served), as Swift does.
    """
    if not header:
        return None
    unit, sep, spec = header.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    ranges: list[tuple[int | None, int | None]] = []
    for part in spec.split(","):
        part = part.strip()
        first, dash, last = part.partition("-")  # an empty part ("0-9,") is invalid
        if not dash:
            return None
        first, last = first.strip(), last.strip()
        if (first and not first.isdigit()) or (last and not last.isdigit()):
            return None
        if not first and not last:
            return None
        start = int(first) if first else None
        end = int(last) if last else None
        if start is not None and end is not None and end < start:
            return None
        ranges.append((start, end))
    if not ranges or len(ranges) > MAX_PARSED_RANGES:
        return None
    return ranges


def ranges_for_length(
    ranges: list[tuple[int | None, int | None]], length: int
) -> list[tuple[int, int]] | None:
    """Resolve parsed ranges against an entity length into half-open (start, stop) pairs.

    Raises RangeNotSatisfiable when none of them overlaps the entity. None: serve the
    whole entity instead. That is the answer for an empty entity asked for a suffix:
    RFC 9110 calls ``bytes=-5`` satisfiable there, yet no Content-Range can name a
    part of nothing (``bytes 0--1/0`` is not one), so the range is ignored.
    """
    resolved: list[tuple[int, int]] = []
    for start, end in ranges:
        if start is None:
            assert end is not None
            if end == 0:
                continue
            if length == 0:
                return None
            resolved.append((max(0, length - end), length))
        elif start < length:
            stop = length if end is None else min(end + 1, length)
            resolved.append((start, stop))
    if not resolved or _egregious(resolved):
        raise RangeNotSatisfiable()
    return resolved


def _egregious(spans: list[tuple[int, int]]) -> bool:
    """More ranges than a client reading a file needs (see MAX_RANGES)."""
    if len(spans) > MAX_RANGES:
        return True
    if len(spans) >= MAX_NONASCENDING_RANGES and any(
            a > b for a, b in itertools.pairwise(spans)):
        return True
    overlaps = 0
    for i, (start1, stop1) in enumerate(spans):
        for start2, stop2 in spans[i + 1:]:
            # an end of one strictly inside the other (the same range twice is not)
            if start1 < start2 < stop1 or start1 < stop2 < stop1 or \
                    start2 < start1 < stop2 or start2 < stop1 < stop2:
                overlaps += 1
                if overlaps > MAX_RANGE_OVERLAPS:
                    return True
    return False


def content_range(start: int, stop: int, length: int) -> str:
    """The Content-Range value of a half-open range."""
    return f"bytes {start}-{stop - 1}/{length}"


def new_boundary() -> str:
    return uuid.uuid4().hex


def multipart_part_header(boundary: str, content_type: str, start: int, stop: int,
                          length: int) -> bytes:
    """The headers that open one part of a multipart/byteranges body."""
    return (
        f"--{boundary}\r\nContent-Type: {content_type}\r\n"
        f"Content-Range: {content_range(start, stop, length)}\r\n\r\n"
    ).encode("latin-1")


def multipart_closing(boundary: str) -> bytes:
    return f"--{boundary}--".encode("latin-1")


def multipart_length(boundary: str, content_type: str, spans: list[tuple[int, int]],
                     length: int) -> int:
    """The exact Content-Length of a multipart/byteranges body (parts joined by CRLF)."""
    total = 0
    for start, stop in spans:
        total += len(multipart_part_header(boundary, content_type, start, stop, length))
        total += stop - start + 2  # data + CRLF
    return total + len(multipart_closing(boundary))


def _etag_list(header: str) -> list[str]:
    return [tag.strip().removeprefix("W/").strip('"') for tag in header.split(",") if tag.strip()]


def etag_matches(header: str, etag: str | None) -> bool:
    """Does an If-Match / If-None-Match header name this (unquoted) etag or ``*``?"""
    tags = _etag_list(header)
    if "*" in tags:
        return etag is not None
    return etag is not None and etag.strip('"') in tags


def parse_http_date(value: str | None) -> float | None:
    """An HTTP date as epoch seconds, or None when absent or malformed (then ignored)."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    return parsed.timestamp()


def evaluate_conditions(
    headers: dict[str, str] | object, etag: str | None, last_modified: float | None
) -> int | None:
    """Status a conditional GET/HEAD must answer instead of 200 (412 or 304), else None.

    Order follows RFC 7232 section 6: If-Match, If-Unmodified-Since (only without
    If-Match), If-None-Match, If-Modified-Since (only without If-None-Match).
    ``last_modified`` is in whole seconds, as the Last-Modified header shows it.
    """
    get = headers.get  # type: ignore[attr-defined]
    if_match = get("If-Match")
    if if_match is not None:
        if not etag_matches(if_match, etag):
            return 412
    else:
        since = parse_http_date(get("If-Unmodified-Since"))
        if since is not None and last_modified is not None and last_modified > since:
            return 412
    if_none_match = get("If-None-Match")
    if if_none_match is not None:
        if etag_matches(if_none_match, etag):
            return 304
    else:
        since = parse_http_date(get("If-Modified-Since"))
        if since is not None and last_modified is not None and last_modified <= since:
            return 304
    return None


def quote_etag(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'


def join_ranges(spans: Iterable[tuple[int, int]]) -> int:
    """Total bytes of half-open spans (for logging and tests)."""
    return sum(stop - start for start, stop in spans)


def wants_whole(headers: Mapping[str, str], metadata: Mapping[str, str]) -> bool:
    """Whether a read asks for :data:`WHOLE_IF_PRESENT` and this object qualifies."""
    names = headers.get(WHOLE_IF_PRESENT)
    if not names:
        return False
    present = {key.lower() for key, value in metadata.items()
               if value.strip().lower() not in _FALSE_WORDS}
    return any(name.strip().lower() in present for name in names.split(","))
