"""Cross-Origin Resource Sharing for containers, as Swift's proxy does it.

A container opts in with ``X-Container-Meta-Access-Control-Allow-Origin`` (space
separated origins or ``*``), ``-Max-Age`` and ``-Expose-Headers``; operators may add
origins for every container with ``[cors] cors_allow_origin``.

* ``OPTIONS`` is answered here, without auth (a browser's preflight carries no
  token): ``200`` with ``Allow``; with an ``Origin`` it is a preflight and gets the
  ``Access-Control-Allow-*`` headers when the origin and the requested method are
  allowed, ``401`` otherwise.
* Any other request with an ``Origin`` gets ``Access-Control-Allow-Origin`` and
  ``Access-Control-Expose-Headers`` on its response; in ``strict_cors_mode`` (the
  default) only when the container allows that origin.

Swift does this inside its proxy app; here it is one middleware placed before the
auth middleware so preflights are never asked for a token.
"""

from __future__ import annotations

from typing import Any

from swiftlike.proxy.info_generations import info_generations
from swiftlike.proxy.mw_util import InfoCache, conf_bool, conf_list, conf_section, split_v1
from swiftlike.proxy.pipeline import Handler, SwiftRequest, SwiftResponse, info_registry

OBJECT_METHODS = ["COPY", "DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"]
CONTAINER_METHODS = ["DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"]
ACCOUNT_METHODS = CONTAINER_METHODS
SIMPLE_EXPOSE = ("cache-control", "content-language", "content-type", "expires",
                 "last-modified", "pragma", "etag", "x-timestamp", "x-trans-id",
                 "x-openstack-request-id")


def _words(value: str | None) -> list[str]:
    return [w for w in (value or "").split(" ") if w.strip()]


def passes_through(req: SwiftRequest) -> bool:
    """A read without an Origin header is no CORS request (see pipeline.Bypass)."""
    return req.method in ("GET", "HEAD") and "Origin" not in req.headers


class CORS:
    def __init__(self, app: Handler, conf: dict) -> None:
        section = conf_section(conf, "cors")
        proxy = conf.get("proxy", {}) if isinstance(conf.get("proxy"), dict) else {}
        self.app = app
        self.strict = conf_bool(section.get("strict_cors_mode",
                                            proxy.get("strict_cors_mode")), True)
        self.allow_origin = conf_list(section.get("cors_allow_origin",
                                                  proxy.get("cors_allow_origin")), [])
        self.expose = [h.lower() for h in conf_list(
            section.get("cors_expose_headers", proxy.get("cors_expose_headers")), [])]
        self.info = InfoCache(app, float(section.get("info_cache_seconds", 5.0)), "CORS",
                               info_generations(conf))
        info_registry(conf).register_info("swift", {"strict_cors_mode": self.strict})

    def origin_allowed(self, cors: dict[str, Any], origin: str) -> bool:
        allowed = set(_words(cors.get("allow_origin"))) | set(self.allow_origin)
        return origin in allowed or "*" in allowed

    async def __call__(self, req: SwiftRequest) -> SwiftResponse:
        if passes_through(req):
            return await self.app(req)
        self.info.observe(req)
        account, container, obj = split_v1(req.path)
        if account is None:
            return await self.app(req)
        if req.method == "OPTIONS":
            return await self.options(req, account, container, obj)
        origin = req.headers.get("Origin")
        if not origin or container is None or req.environ.get("swift.subrequest"):
            return await self.app(req)
        info = await self.info.container(req, account, container)
        cors = info.get("cors") or {}
        resp = await self.app(req)
        if self.strict and not self.origin_allowed(cors, origin):
            return resp
        if "Access-Control-Expose-Headers" not in resp.headers:
            expose = set(SIMPLE_EXPOSE) | set(self.expose)
            for name in resp.headers:
                lower = name.lower()
                if lower.startswith(("x-container-meta-", "x-object-meta-")):
                    expose.add(lower)
            expose.update(w.strip().lower() for w in _words(cors.get("expose_headers")))
            resp.headers["Access-Control-Expose-Headers"] = ", ".join(sorted(expose))
        if "Access-Control-Allow-Origin" not in resp.headers:
            if (cors.get("allow_origin") or "").strip() == "*":
                resp.headers["Access-Control-Allow-Origin"] = "*"
            else:
                resp.headers["Access-Control-Allow-Origin"] = origin
                _add_vary(resp.headers, "Origin")
        return resp

    async def options(self, req: SwiftRequest, account: str, container: str | None,
                      obj: str | None) -> SwiftResponse:
        methods = OBJECT_METHODS if obj else CONTAINER_METHODS
        headers: dict[str, str] = {"Allow": ", ".join(methods)}
        resp = SwiftResponse(200, headers, b"")
        origin = req.headers.get("Origin")
        if not origin or container is None:
            return resp
        info = await self.info.container(req, account, container)
        cors = info.get("cors") or {}
        if not self.origin_allowed(cors, origin) or req.headers.get(
                "Access-Control-Request-Method") not in methods:
            resp.status = 401
            return resp
        if (cors.get("allow_origin") or "").strip() == "*":
            resp.headers["Access-Control-Allow-Origin"] = "*"
        else:
            resp.headers["Access-Control-Allow-Origin"] = origin
            _add_vary(resp.headers, "Origin")
        if cors.get("max_age") is not None:
            resp.headers["Access-Control-Max-Age"] = cors["max_age"]
        resp.headers["Access-Control-Allow-Methods"] = ", ".join(methods)
        requested = [h.strip() for h in
                     req.headers.get("Access-Control-Request-Headers", "").split(",")
                     if h.strip()]
        if requested:
            resp.headers["Access-Control-Allow-Headers"] = ", ".join(
                dict.fromkeys(requested))
            _add_vary(resp.headers, "Access-Control-Request-Headers")
        return resp


def _add_vary(headers: Any, value: str) -> None:
    if "Vary" in headers:
        headers["Vary"] = headers["Vary"] + ", " + value
    else:
        headers["Vary"] = value


def make_middleware(app: Handler, conf: dict) -> Handler:
    return CORS(app, conf)
