"""Swift's public API limits and the validation of names and metadata.

The defaults are OpenStack Swift's (see ``/info`` of Swift 2.38.3): clients such as
python-swiftclient read them from our ``/info`` and size their requests by them, so
the proxy enforces exactly what it advertises. Every check returns an error message
(``str``) or ``None`` so callers decide the status code the Swift API uses; nothing
here raises for user input.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, fields

#: Header prefixes whose headers count as user metadata of each server type.
#: The one storage policy: every container is in it (3 replicas by the ring).
DEFAULT_POLICY = "Policy-0"

META_PREFIXES = {
    "account": "x-account-meta-",
    "container": "x-container-meta-",
    "object": "x-object-meta-",
}


@dataclass(frozen=True)
class Limits:
    """The ``swift`` section of ``/info``: limits clients may rely on."""

    max_file_size: int = 5 * 1024**3 + 2
    max_meta_name_length: int = 128
    max_meta_value_length: int = 256
    max_meta_count: int = 90
    max_meta_overall_size: int = 4096
    max_header_size: int = 8192
    max_request_line: int = 8192
    max_object_name_length: int = 1024
    container_listing_limit: int = 10000
    account_listing_limit: int = 10000
    max_account_name_length: int = 256
    max_container_name_length: int = 256
    extra_header_count: int = 0

    @classmethod
    def from_conf(cls, section: Mapping[str, object] | None) -> Limits:
        """Limits with any same-named keys of a config section (e.g. ``[proxy]``) applied."""
        section = section or {}
        values = {f.name: int(section[f.name]) for f in fields(cls) if f.name in section}  # type: ignore[call-overload]
        return cls(**values)

    def as_info(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def check_utf8(text: str) -> bool:
    """True when a decoded path component is valid UTF-8 text without NUL bytes.

    Paths are decoded with ``surrogateescape``: a lone surrogate means the client sent
    bytes that are not UTF-8. Swift answers both cases with 412.
    """
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Name lengths count characters, as Swift's proxy does (a name of 600 "é" is 1,200
# bytes, and Swift takes it as an object name); names are valid UTF-8 by then.


def check_account_name(name: str, limits: Limits) -> str | None:
    if len(name) > limits.max_account_name_length:
        return (
            f"Account name length of {len(name)} longer than "
            f"{limits.max_account_name_length}"
        )
    if name in (".", ".."):
        return "Account name cannot be . or .."
    return None


def check_container_name(name: str, limits: Limits) -> str | None:
    length = len(name)
    if length > limits.max_container_name_length:
        return (
            f"Container name length of {length} longer than "
            f"{limits.max_container_name_length}"
        )
    if name in (".", ".."):
        return "Container name cannot be . or .."
    if "/" in name:
        return "Container name cannot contain /"
    return None


def check_object_name(name: str, limits: Limits) -> str | None:
    length = len(name)
    if length > limits.max_object_name_length:
        return f"Object name length of {length} longer than {limits.max_object_name_length}"
    return None


def check_metadata(headers: Mapping[str, str], target: str, limits: Limits) -> str | None:
    """Swift's ``check_metadata``: name/value sizes, item count and total size.

    ``target`` is ``account``, ``container`` or ``object``; only that type's
    ``X-<Type>-Meta-*`` headers count. Returns the 400 message or ``None``.
    """
    prefix = META_PREFIXES[target]
    count = 0
    size = 0
    for key, value in headers.items():
        lower = key.lower()
        if not lower.startswith(prefix):
            continue
        name = key[len(prefix):]
        if not name:
            return "Metadata name cannot be empty"
        if isinstance(value, str) and not check_utf8(value):
            return "Metadata must be valid UTF-8"
        count += 1
        name_len = len(name.encode("utf-8", "surrogateescape"))
        value_len = len(value.encode("utf-8", "surrogateescape"))
        size += name_len + value_len
        if name_len > limits.max_meta_name_length:
            return f"Metadata name too long: {name[:40]}...; max {limits.max_meta_name_length}"
        if value_len > limits.max_meta_value_length:
            return (
                f"Metadata value longer than {limits.max_meta_value_length}: "
                f"{name[:40]}"
            )
        if count > limits.max_meta_count:
            return f"Too many metadata items; max {limits.max_meta_count}"
        if size > limits.max_meta_overall_size:
            return f"Total metadata too large; max {limits.max_meta_overall_size}"
    return None


def check_metadata_after(existing: Mapping[str, str], headers: Mapping[str, str],
                         target: str, limits: Limits) -> str | None:
    """The count and overall-size limits over the metadata as it will be stored:
    ``existing`` (name -> value, e.g. ``container_info``'s ``meta``) with the request's
    additions and removals (an empty value) applied. Why: Swift's account and container
    servers check the merged result, so metadata cannot grow past the limits one
    request at a time."""
    prefix = META_PREFIXES[target]
    merged = {name.lower(): value for name, value in existing.items() if value}
    for key, value in headers.items():
        lower = key.lower()
        if not lower.startswith(prefix):
            continue
        if value:
            merged[lower[len(prefix):]] = value
        else:
            merged.pop(lower[len(prefix):], None)
    if len(merged) > limits.max_meta_count:
        return f"Too many metadata items; max {limits.max_meta_count}"
    size = sum(len(name.encode("utf-8", "surrogateescape"))
               + len(value.encode("utf-8", "surrogateescape"))
               for name, value in merged.items())
    if size > limits.max_meta_overall_size:
        return f"Total metadata too large; max {limits.max_meta_overall_size}"
    return None


def parse_content_length(value: str | None) -> int | None:
    """A Content-Length header as int; ``-1`` when present but not a non-negative int."""
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit():
        return -1
    return int(value)


def check_delete_headers(
    headers: Mapping[str, str], now: float | None = None
) -> tuple[str | None, str | None]:
    """Validate X-Delete-At / X-Delete-After; return ``(error, delete_at)``.

    X-Delete-After is turned into an absolute X-Delete-At like Swift does, so that
    every replica and the expirer agree on one moment.
    """
    now = time.time() if now is None else now
    delete_at: str | None = None
    after = headers.get("X-Delete-After")
    if after is not None:
        after = after.strip()
        if not after.lstrip("-").isdigit():
            return "Non-integer X-Delete-After", None
        seconds = int(after)
        if seconds <= 0:
            return "X-Delete-After in past", None
        delete_at = str(min(int(now) + seconds, MAX_DELETE_AT))
    at = headers.get("X-Delete-At")
    if delete_at is None and at is not None:
        at = at.strip()
        try:
            value = int(at)  # as Swift: "1700000000.5" is refused, not truncated
        except ValueError:
            return "Non-integer X-Delete-At", None
        if value <= now:
            return "X-Delete-At in past", None
        delete_at = str(min(value, MAX_DELETE_AT))
    return None, delete_at


#: The latest X-Delete-At kept (Swift clamps to the same ten digits): later ones mean
#: "never" just as well, and the expirer's queue and its metadata stay within range.
MAX_DELETE_AT = 9999999999


def check_listing_params(query: Mapping[str, str], max_limit: int) -> tuple[str | None, int]:
    """Validate listing query parameters; return ``(error_message, http_status)``."""
    limit = query.get("limit")
    if limit and limit.isdigit() and int(limit) > max_limit:  # other values: ignored
        return f"Maximum limit is {max_limit}", 412
    for key in ("marker", "end_marker", "prefix", "delimiter", "path"):
        value = query.get(key)
        if value is None:
            continue
        if "\x00" in value:
            return f"Invalid UTF8 or contains NULL in {key}", 412
        if not check_utf8(value):
            return f'"{key}" parameter not valid UTF-8', 400
    return None, 200
