"""Timestamps: the single arbiter of which write wins.

A Swift timestamp is seconds since the epoch with 5 decimals (10 us resolution),
optionally followed by an offset that orders internal rewrites of the same client
write (``1700000000.12345_0000000000000001``). Every replica compares them as
values, never as wall-clock guesses, so all replicas converge on the same answer.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

PRECISION = 5
_SCALE = 10**PRECISION
_MAX_TICKS = 10**10 * _SCALE


class Timestamp:
    """An immutable, totally ordered X-Timestamp value (ticks of 10 us plus offset).

    The string form is kept once made: a small PUT's node formats its timestamp five
    times (metadata, file name, container row ...), and comparisons are written out
    rather than derived (``functools.total_ordering`` costs two calls per ``<=``).
    """

    __slots__ = ("_internal", "offset", "ticks")

    def __init__(self, value: float | int | str | Timestamp, offset: int = 0) -> None:
        if isinstance(value, Timestamp):
            ticks, base_offset = value.ticks, value.offset
        elif isinstance(value, str):
            ticks, base_offset = _parse(value)
        elif isinstance(value, (int, float)):
            ticks, base_offset = round(float(value) * _SCALE), 0
        else:
            raise TypeError(f"cannot make a Timestamp from {type(value).__name__}")
        if ticks < 0:
            raise ValueError("timestamps cannot be negative")
        if ticks >= _MAX_TICKS:
            # Ten integer digits keep the string forms in value order (file names sort
            # like their timestamps); Swift refuses the same range.
            raise ValueError("timestamp too large")
        total_offset = base_offset + offset
        if total_offset < 0:
            raise ValueError("timestamp offset cannot be negative")
        self.ticks: int = ticks
        self.offset: int = total_offset
        self._internal: str | None = None

    @classmethod
    def now(cls, offset: int = 0) -> Timestamp:
        return cls(time.time(), offset)

    @property
    def timestamp(self) -> float:
        return self.ticks / _SCALE

    @property
    def normal(self) -> str:
        """Ten integer digits and five decimals: what clients see in X-Timestamp."""
        return f"{self.ticks // _SCALE:010d}.{self.ticks % _SCALE:05d}"

    @property
    def internal(self) -> str:
        """The normal form plus ``_<16 hex>`` when there is an offset: file names use it."""
        text = self._internal
        if text is None:
            text = self.normal
            if self.offset:
                text = f"{text}_{self.offset:016x}"
            self._internal = text
        return text

    @property
    def http_date(self) -> str:
        """Last-Modified form: HTTP dates have one-second resolution, rounded up like Swift."""
        seconds = -(-self.ticks // _SCALE)
        return http_date(seconds)

    def __str__(self) -> str:
        return self.internal

    def __repr__(self) -> str:
        return f"Timestamp({self.internal!r})"

    def __float__(self) -> float:
        return self.timestamp

    def _key(self) -> tuple[int, int]:
        return (self.ticks, self.offset)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Timestamp):
            try:
                other = Timestamp(other)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return NotImplemented
        return self._key() == other._key()

    def __lt__(self, other: object) -> bool:
        other = other if isinstance(other, Timestamp) else Timestamp(other)  # type: ignore[arg-type]
        return (self.ticks, self.offset) < (other.ticks, other.offset)

    def __le__(self, other: object) -> bool:
        other = other if isinstance(other, Timestamp) else Timestamp(other)  # type: ignore[arg-type]
        return (self.ticks, self.offset) <= (other.ticks, other.offset)

    def __gt__(self, other: object) -> bool:
        other = other if isinstance(other, Timestamp) else Timestamp(other)  # type: ignore[arg-type]
        return (self.ticks, self.offset) > (other.ticks, other.offset)

    def __ge__(self, other: object) -> bool:
        other = other if isinstance(other, Timestamp) else Timestamp(other)  # type: ignore[arg-type]
        return (self.ticks, self.offset) >= (other.ticks, other.offset)

    def __hash__(self) -> int:
        return hash(self._key())


def _parse(text: str) -> tuple[int, int]:
    text = text.strip()
    offset = 0
    if "_" in text:
        text, _, hex_offset = text.partition("_")
        if not hex_offset or len(hex_offset) > 16:
            raise ValueError(f"invalid timestamp offset in {text!r}")
        offset = int(hex_offset, 16)
    if not text:
        raise ValueError("empty timestamp")
    whole, dot, frac = text.partition(".")
    if not whole.isdigit() or (dot and frac and not frac.isdigit()):
        raise ValueError(f"invalid timestamp {text!r}")
    frac = (frac or "")[: PRECISION + 1].ljust(PRECISION + 1, "0")
    ticks = int(whole) * _SCALE + int(frac[:PRECISION])
    if int(frac[PRECISION]) >= 5:
        ticks += 1
    return ticks, offset


def header_timestamp(headers: Mapping[str, str], name: str = "X-Timestamp"
                     ) -> Timestamp | None:
    """The timestamp a request or response header carries; None when it is missing or
    not a timestamp (the caller decides whether that is a 400)."""
    value = headers.get(name)
    if not value:
        return None
    try:
        return Timestamp(value)
    except ValueError:
        return None


def normalize_timestamp(value: float | int | str | Timestamp) -> str:
    """The normal string form of any timestamp value."""
    return Timestamp(value).normal


_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(seconds: int) -> str:
    """RFC 9110 IMF-fixdate of a Unix time (``Sun, 06 Nov 1994 08:49:37 GMT``).

    Every object GET and HEAD formats one; ``email.utils.formatdate`` builds a datetime
    and a time tuple on the way and costs several times this.
    """
    t = time.gmtime(seconds)
    return (f"{_WEEKDAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")
