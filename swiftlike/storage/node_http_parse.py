"""Parsing what arrives on a storage node's HTTP/1.1 connection: request heads, chunk sizes.

Pure functions, no I/O, so they can be property-tested on their own. Strict where
leniency lets a request mean two things (request smuggling): no whitespace before a
header's colon, no folded lines, no bare LF, no control characters in values, never
both Content-Length and Transfer-Encoding, one Content-Length value. Every refusal
is a :class:`BadRequest` carrying the status a client should get.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from multidict import CIMultiDict

MAX_LINE = 16 * 1024  # the request line, and each header field
MAX_HEAD = 64 * 1024  # request line and all header fields together

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rf"({_TOKEN}) ([!-~]+) HTTP/1\.([01])\r\n")
#: characters no header name or value may hold (every control character but HTAB)
CONTROL_CHARS = r"[\x00-\x08\x0a-\x1f\x7f]"
_FIELD_LINE = rf"{_TOKEN}:[^{CONTROL_CHARS[1:-1]}]*"  # token ":" value, CRLF not included
# a header block: fields of token ":" value, values without control characters but HTAB
_FIELDS = re.compile(rf"(?:{_FIELD_LINE}\r\n)*")
_FIELD = re.compile(rf"({_TOKEN}):[ \t]*([^\r]*?)[ \t]*\r\n")
# chunk-size [ BWS ";" extensions ]: no leading whitespace, no control characters
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:[ \t]*;[!-~ \t]*)?")
_TRAILER_FIELD = re.compile(_FIELD_LINE.encode())
MAX_LENGTH_DIGITS = 19  # a Content-Length below 10**19 (more than any disk holds)


class BadRequest(Exception):
    """The bytes are not a request we can serve; ``status`` says why to the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class RequestHead:
    """A parsed request line and header block, with how its body is framed."""

    method: str
    target: str
    minor: int  # HTTP/1.<minor>
    headers: CIMultiDict[str]
    length: int | None  # Content-Length, None when absent
    chunked: bool


def parse_head(head: bytes) -> RequestHead:
    """Parse a request line and its header fields (``head`` ends in the last field's CRLF,
    without the blank line). Bytes are decoded as UTF-8, undecodable ones kept as
    surrogates (as aiohttp's server does), so metadata round-trips unchanged."""
    text = head.decode("utf-8", "surrogateescape")
    line = _REQUEST_LINE.match(text)
    if line is None:
        first = text.split("\r\n", 1)[0]
        if len(first) > MAX_LINE:
            raise BadRequest(414, "Request line too long")
        raise BadRequest(400, f"Bad request line {first[:100]!r}")
    if line.end() > MAX_LINE:
        raise BadRequest(414, "Request line too long")
    fields = text[line.end():]
    if not _FIELDS.fullmatch(fields):
        raise BadRequest(400, f"Malformed header field in {_first_bad_field(fields)[:100]!r}")
    pairs = _FIELD.findall(fields)
    if len(fields) > MAX_LINE and any(len(n) + len(v) + 2 > MAX_LINE for n, v in pairs):
        raise BadRequest(431, "Header field too long")
    headers = CIMultiDict(pairs)
    minor = int(line.group(3))
    length, chunked = _framing(headers, minor)
    return RequestHead(line.group(1), line.group(2), minor, headers, length, chunked)


def _first_bad_field(fields: str) -> str:
    for field in fields.split("\r\n"):
        if field and not _FIELDS.fullmatch(field + "\r\n"):
            return field
    return fields


def _framing(headers: CIMultiDict[str], minor: int) -> tuple[int | None, bool]:
    codings = headers.getall("Transfer-Encoding", None)
    lengths = headers.getall("Content-Length", None)
    if codings is not None:
        if lengths is not None:
            raise BadRequest(400, "Both Content-Length and Transfer-Encoding")
        if minor == 0:
            raise BadRequest(400, "Transfer-Encoding in an HTTP/1.0 request")
        if [c.strip().lower() for c in ",".join(codings).split(",")] != ["chunked"]:
            raise BadRequest(501, f"Unsupported Transfer-Encoding {','.join(codings)!r}")
        return None, True
    if lengths is None:
        return None, False
    value = lengths[0]
    if any(other != value for other in lengths) or not (value.isascii() and value.isdigit()) \
            or len(value) > MAX_LENGTH_DIGITS:
        raise BadRequest(400, f"Bad Content-Length {','.join(lengths)[:50]!r}")
    return int(value), False


def check_trailer_field(line: bytes) -> None:
    """A trailer line of a chunked body (CRLF removed) must be a well-formed field;
    anything else (a request line, a control character) is refused, not skipped."""
    if _TRAILER_FIELD.fullmatch(line) is None:
        raise BadRequest(400, f"Bad trailer field {line[:40]!r}")


def parse_chunk_size(line: bytes) -> int:
    """The size in a chunked body's size line (CRLF removed); extensions are ignored."""
    match = _CHUNK_SIZE.fullmatch(line)
    if match is None:
        raise BadRequest(400, f"Bad chunk size line {line[:40]!r}")
    return int(match.group(1), 16)
