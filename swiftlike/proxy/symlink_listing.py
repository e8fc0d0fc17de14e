"""Symlinks in container listings: ``symlink_path`` (and a static link's etag and size).

Why in the content type: a container row carries name, size, etag and content type only.
As Swift does, a link's PUT asks the object server (through the
``X-Object-Sysmeta-Container-Update-Override-Content-Type`` it honours) to list the link
with its target appended as content-type parameters; a listing that passes through the
symlink middleware takes them off again and shows them as ``symlink_path``,
``symlink_etag`` and ``symlink_bytes``. JSON and XML listings are both rewritten (XML is
asked for as JSON and rendered here); a plain listing shows names only.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, unquote

from swiftlike.common.listing import negotiate_listing, render_rows
from swiftlike.proxy.pipeline import Handler, SwiftRequest, SwiftResponse

OVERRIDE_TYPE = "X-Object-Sysmeta-Container-Update-Override-Content-Type"
_PARAMS = ("symlink_target", "symlink_target_account", "symlink_target_etag",
           "symlink_target_bytes")


def listed_content_type(content_type: str, target: str, account: str | None,
                        etag: str | None, size: str | None) -> str:
    """The content type a link is listed with: its own, plus its target as parameters."""
    parts = [content_type, f"symlink_target={quote(target)}"]
    if account:
        parts.append(f"symlink_target_account={quote(account)}")
    if etag:
        parts.append(f"symlink_target_etag={quote(etag)}")
        parts.append(f"symlink_target_bytes={size or 0}")
    return ";".join(parts)


def clean_row(row: dict[str, Any], account: str) -> dict[str, Any]:
    """A listing row with the link parameters turned into Swift's symlink_* fields."""
    content_type = row.get("content_type")
    if not isinstance(content_type, str) or ";symlink_target=" not in content_type:
        return row
    kept, found = [], {}
    for part in content_type.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key in _PARAMS:
            found[key] = unquote(value)
        else:
            kept.append(part)
    row = {**row, "content_type": ";".join(kept)}
    target_account = found.get("symlink_target_account") or account
    row["symlink_path"] = quote(f"/v1/{target_account}/{found['symlink_target']}")
    if "symlink_target_etag" in found:
        row["symlink_etag"] = found["symlink_target_etag"]
        row["symlink_bytes"] = int(found.get("symlink_target_bytes") or 0)
    return row


async def list_with_links(app: Handler, req: SwiftRequest, account: str,
                          container: str) -> SwiftResponse:
    """A container GET whose JSON or XML rows show links as Swift lists them."""
    try:
        negotiated = negotiate_listing(req.query, req.headers.get("Accept"))
    except ValueError:
        negotiated = None
    if req.method != "GET" or negotiated is None or negotiated[0] == "plain":
        return await app(req)  # the controller answers 400/406 for an Accept it refuses
    fmt, negotiated_type = negotiated
    chosen_by_accept = not req.query.get("format")
    if fmt == "xml":
        if "versions" in req.query:
            return await app(req)  # listed in JSON alone: object_versioning answers 406
        req.query = {**req.query, "format": "json"}
    resp = await app(req)
    if resp.status != 200:
        return resp
    raw = await resp.read()  # kept as the response's body
    if fmt == "json" and b";symlink_target=" not in raw:
        return resp  # no link listed: the container server's bytes as they are
    try:
        rows = json.loads(raw)
    except ValueError:
        return resp
    if not isinstance(rows, list):
        return resp
    rows = [clean_row(row, account) if isinstance(row, dict) else row for row in rows]
    body, _ = render_rows("container", container, rows, fmt)
    resp.body = body
    resp.content_length = len(body)
    resp.headers["Content-Type"] = negotiated_type  # text/xml when that was asked for
    if chosen_by_accept:
        resp.headers["Vary"] = "Accept"  # the query's format= was ours, not the client's
    return resp
