"""Keeps internal headers internal: system metadata and backend headers.

Clients must not set ``X-*-Sysmeta-*`` (middlewares store trusted state there, e.g.
large-object manifests), ``X-Object-Transient-Sysmeta-*`` (Swift keeps state such as
encryption keys there, and a client must not be able to plant it) nor any
``X-Backend-*`` header, and must not see them in responses. Placed right after
``catch_errors`` so everything inside may use them.
"""

from __future__ import annotations

import re

from swiftlike.proxy.pipeline import Handler, SwiftRequest, SwiftResponse

_INTERNAL = re.compile(
    r"^x-(?:(?:account|container|object)-sysmeta-|object-transient-sysmeta-|backend-)", re.I)
_INBOUND_EXTRA = ("x-timestamp",)
_X_PREFIXES = frozenset(("x-", "X-"))


def strip_internal(headers, extra: tuple[str, ...] = ()) -> None:
    # Runs twice per request over every header: a cheap prefix test first, the
    # regex only for the few names that can be internal.
    doomed = None
    for key in headers:
        if key[:2] not in _X_PREFIXES:
            continue
        if _INTERNAL.match(key) or (extra and key.lower() in extra):
            if doomed is None:
                doomed = []
            doomed.append(key)
    if doomed:
        for key in doomed:
            headers.popall(key, None)


def make_middleware(app: Handler, conf: dict) -> Handler:
    async def gatekeeper(req: SwiftRequest) -> SwiftResponse:
        strip_internal(req.headers, _INBOUND_EXTRA)
        resp = await app(req)
        strip_internal(resp.headers)
        return resp

    return gatekeeper
