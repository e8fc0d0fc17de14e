"""The checksum footer that ends a streamed object PUT from the proxy to a storage node.

Why it exists: the ETag Swift clients check is the md5 of the body, and md5 costs about
2.4 ms per MiB here. Before the footer each of the three replicas hashed every byte
again; now the proxy hashes once, in the pass that also checks a client's ``ETag``,
and sends the digest after the last body byte. The node keeps only its cheap xxh3 body
stamp (its own integrity check of the bytes it wrote) and stores the proxy's md5 as the
ETag. The auditor still recomputes the md5 (see ``swiftlike/daemons/auditor.py``), so a
digest that disagrees with the stored bytes does not go unnoticed.

Wire format (``X-Backend-Body-Footer: md5-v1`` on the request): the request body is the
object's bytes followed by exactly :data:`FOOTER_LEN` bytes::

    b"SLFOOTER1 md5=" + 32 lower-case hex digits + b" len=" + 20 decimal digits + b"\\n"

``len`` is the number of object bytes before the footer. With a Content-Length the
node also sees ``Content-Length = len + FOOTER_LEN``; with chunked transfer the footer's
``len`` is the only length there is. A node commits nothing unless the body ends with a
well-formed footer whose length equals what it received: a cut stream, a missing or
mangled footer all leave nothing behind.
"""

from __future__ import annotations

import re

FOOTER_HEADER = "X-Backend-Body-Footer"
FOOTER_VERSION = "md5-v1"
_PREFIX = b"SLFOOTER1 md5="
_LEN_TAG = b" len="
_LEN_DIGITS = 20
FOOTER_LEN = len(_PREFIX) + 32 + len(_LEN_TAG) + _LEN_DIGITS + 1
_FOOTER_RE = re.compile(rb"SLFOOTER1 md5=([0-9a-f]{32}) len=([0-9]{20})\n\Z")


def make_footer(md5_hex: str, body_length: int) -> bytes:
    """The footer bytes for a body of ``body_length`` bytes whose md5 is ``md5_hex``."""
    if len(md5_hex) != 32 or body_length < 0:
        raise ValueError("footer needs a 32-digit md5 and a non-negative length")
    footer = b"%s%s%s%020d\n" % (_PREFIX, md5_hex.lower().encode("ascii"), _LEN_TAG,
                                 body_length)
    assert len(footer) == FOOTER_LEN
    return footer


def parse_footer(raw: bytes) -> tuple[str, int]:
    """(md5 hex, body length) of a footer; ValueError if it is not exactly one."""
    match = _FOOTER_RE.match(bytes(raw))
    if match is None or len(raw) != FOOTER_LEN:
        raise ValueError("missing or malformed body footer")
    return match.group(1).decode("ascii"), int(match.group(2))


class FooterSplitter:
    """Separates the last FOOTER_LEN bytes of a stream from the body before it.

    The body is handed on as it arrives, minus the bytes that might still turn out to
    be the footer; large pieces pass through as memoryviews, so no body byte is
    copied. Only at the end of the stream is the held-back tail known to be the footer.
    """

    def __init__(self) -> None:
        self._tail: bytes | memoryview = b""
        self.body_bytes = 0

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[bytes | memoryview]:
        """Body pieces that are certainly not part of the footer (maybe none).

        ``chunk`` may be a memoryview (a node's server hands big bodies over as views
        of its receive buffers, which it never reuses while a view of them lives). A
        tail held back from a view stays a view of the same memory, so the pieces
        handed on are still adjacent in memory when they were received that way (the
        object writer joins such pieces for O_DIRECT). A bytearray is copied: its owner
        may reuse it.
        """
        size = len(chunk)
        if size >= FOOTER_LEN:
            out: list[bytes | memoryview] = []
            if self._tail:
                out.append(self._tail)
            view = chunk if isinstance(chunk, memoryview) else memoryview(chunk)
            if size > FOOTER_LEN:
                out.append(view[:size - FOOTER_LEN])
            tail = view[size - FOOTER_LEN:]
            self._tail = tail if isinstance(chunk, memoryview) else tail.tobytes()
        else:
            joined = bytes(self._tail) + bytes(chunk)
            if len(joined) <= FOOTER_LEN:
                self._tail = joined
                return []
            cut = len(joined) - FOOTER_LEN
            out = [joined[:cut]]
            self._tail = joined[cut:]
        self.body_bytes += sum(len(piece) for piece in out)
        return out

    def finish(self) -> tuple[str, int]:
        """At the end of the stream: the footer's (md5 hex, length), checked.

        ValueError when the stream was shorter than a footer, the footer is malformed,
        or its length disagrees with the body bytes that came before it.
        """
        md5_hex, length = parse_footer(bytes(self._tail))
        if length != self.body_bytes:
            raise ValueError(f"body footer says {length} bytes, received {self.body_bytes}")
        return md5_hex, length
