"""What the container and account quota middlewares share: sizing a write.

A quota is checked before the write starts, from the request's ``Content-Length``
(0 for a chunked upload, as in Swift) or, for a server-side copy (``COPY`` or
``PUT`` with ``X-Copy-From``), from the size of the source object.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import unquote

from swiftlike.proxy.mw_util import split_v1
from swiftlike.proxy.pipeline import Handler, SwiftRequest, SwiftResponse

QUOTA_EXCEEDED = b"Upload exceeds quota."


def write_target(req: SwiftRequest) -> tuple[str, str, str] | None:
    """``(account, container, object)`` an object write lands in, or None."""
    account, container, obj = split_v1(req.path)
    if account is None or container is None or obj is None:
        return None
    if req.method == "PUT":
        return account, container, obj
    if req.method == "COPY":
        dest = unquote(req.headers.get("Destination", "")).lstrip("/")
        dest_container, _, dest_obj = dest.partition("/")
        if not dest_container or not dest_obj:
            return None
        dest_account = unquote(req.headers.get("Destination-Account", "")) or account
        return dest_account, dest_container, dest_obj
    return None


async def write_size(app: Handler, req: SwiftRequest) -> int | None:
    """Bytes the write adds; None when the copy source cannot be read (let it fail)."""
    account, _container, _obj = split_v1(req.path)
    source: str | None = None
    if req.method == "COPY":
        source = req.path
    elif req.headers.get("X-Copy-From"):
        src = unquote(req.headers["X-Copy-From"]).lstrip("/")
        src_account = unquote(req.headers.get("X-Copy-From-Account", "")) or account
        source = f"/v1/{src_account}/{src}"
    if source is None:
        return req.content_length or 0
    head = await app(req.make_subrequest("HEAD", source))
    await head.read()
    if not head.is_success:
        return None
    try:
        return int(head.headers.get("Content-Length", "0"))
    except ValueError:
        return 0


def quota_response(req: SwiftRequest, acl: dict | None = None) -> SwiftResponse:
    """413, unless the user may not write here at all (then their 401/403, as Swift)."""
    authorize = req.environ.get("swift.authorize")
    if authorize is not None:
        saved = req.environ.get("swift.acl")
        if acl is not None:
            req.environ["swift.acl"] = acl
        denial = authorize(req)
        if acl is not None:
            req.environ["swift.acl"] = saved
        if denial is not None:
            return denial
    return SwiftResponse(413, {"Content-Type": "text/plain; charset=UTF-8"}, QUOTA_EXCEEDED)


class QuotaExceededInStream(Exception):
    """Raised inside a chunked upload's body once it passes the quota."""


def cap_chunked_body(req: SwiftRequest, allowed: int) -> bool:
    """For an upload of unknown length: abort it once it passes ``allowed`` bytes.

    Swift counts a chunked upload as 0 bytes and lets it through; we count the
    bytes as they stream, so the quota holds for chunked uploads too. The proxy
    aborts the backend writes when the body raises, so nothing is stored.
    Returns whether the body was wrapped.
    """
    body = req.body
    if body is None or req.content_length is not None or req.headers.get("X-Copy-From") \
            or req.method != "PUT":
        return False

    async def counted() -> AsyncIterator[bytes]:
        total = 0
        async for chunk in body:
            total += len(chunk)
            if total > allowed:
                raise QuotaExceededInStream
            yield chunk

    req.body = counted()
    return True
