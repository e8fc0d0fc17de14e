"""``GET /info``: what this cluster supports, in the keys and shapes of Swift's /info.

The core registers the ``swift`` section (our limits, version and policy); each
middleware registers its own section when it is loaded, so /info lists exactly the
features of the configured pipeline and nothing else.
"""

from __future__ import annotations

import json

from swiftlike import __version__
from swiftlike.common.constraints import DEFAULT_POLICY, Limits
from swiftlike.proxy.pipeline import InfoRegistry, SwiftRequest, SwiftResponse, error_response


def register_core_info(registry: InfoRegistry, limits: Limits, account_autocreate: bool,
                       allow_account_management: bool = True) -> None:
    section = {
        "version": __version__,
        "policies": [{"name": DEFAULT_POLICY, "aliases": DEFAULT_POLICY, "default": True}],
        "allow_account_management": allow_account_management,
        "account_autocreate": account_autocreate,
        "strict_cors_mode": True,
        # X-Open-Expired (reading an expired object) is not offered, as Swift's default
        "allow_open_expired": False,
        **limits.as_info(),
    }
    registry.register_info("swift", section)


INFO_METHODS = "GET, HEAD, OPTIONS"


def info_response(req: SwiftRequest, registry: InfoRegistry) -> SwiftResponse:
    if req.method == "OPTIONS":  # as Swift's info controller: what may be asked of it
        return SwiftResponse(200, {"Allow": INFO_METHODS, "Content-Length": "0"}, b"")
    if req.method not in ("GET", "HEAD"):
        return error_response(405, headers={"Allow": INFO_METHODS})
    body = json.dumps(registry.sections(), sort_keys=True).encode()
    headers = {"Content-Type": "application/json; charset=UTF-8"}
    if req.method == "HEAD":
        return SwiftResponse(200, headers, None, content_length=len(body))
    return SwiftResponse(200, headers, body)
