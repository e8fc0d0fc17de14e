"""Keeps internal headers internal: system metadata and backend headers.

Clients must not set ``X-*-Sysmeta-*`` (middlewares store trusted state there, e.g.
large-object manifests) nor any ``X-Backend-*`` header, and must not see them in
responses. Placed right after ``catch_errors`` so everything inside may use them.
"""

from __future__ import annotations

import re

from swiftlike.proxy.pipeline import Handler, SwiftRequest, SwiftResponse

_INTERNAL = re.compile(r"^x-(?:(?:account|container|object)-sysmeta-|backend-)", re.I)
_INBOUND_EXTRA = ("x-timestamp",)


def strip_internal(headers, extra: tuple[str, ...] = ()) -> None:
    for key in [k for k in headers if _INTERNAL.match(k) or k.lower() in extra]:
        headers.popall(key, None)


def make_middleware(app: Handler, conf: dict) -> Handler:
    async def gatekeeper(req: SwiftRequest) -> SwiftResponse:
        strip_internal(req.headers, _INBOUND_EXTRA)
        resp = await app(req)
        strip_internal(resp.headers)
        return resp

    return gatekeeper
