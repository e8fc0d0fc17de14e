"""``GET /healthcheck`` -> 200 ``OK``: what load balancers poll.

With ``[proxy] disable_path`` set, the check answers 503 ``DISABLED BY FILE`` while
that file exists, so an operator can drain a proxy without stopping it.
"""

from __future__ import annotations

import os

from swiftlike.proxy.pipeline import Handler, SwiftRequest, SwiftResponse


def passes_through(req: SwiftRequest) -> bool:
    """Everything but ``/healthcheck`` goes on untouched (see pipeline.Bypass)."""
    return req.path != "/healthcheck"


def make_middleware(app: Handler, conf: dict) -> Handler:
    disable_path = conf.get("proxy", {}).get("disable_path", "")

    async def healthcheck(req: SwiftRequest) -> SwiftResponse:
        if passes_through(req):
            return await app(req)
        if disable_path and os.path.exists(disable_path):  # noqa: ASYNC240 (one stat)
            return SwiftResponse(503, {"Content-Type": "text/plain"}, b"DISABLED BY FILE")
        return SwiftResponse(200, {"Content-Type": "text/plain"}, b"OK")

    return healthcheck
