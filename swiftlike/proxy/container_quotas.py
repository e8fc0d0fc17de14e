"""Container quotas: ``X-Container-Meta-Quota-Bytes`` and ``-Quota-Count``.

Anyone who may write a container's metadata may set its quotas (they protect the
owner from their own users, e.g. of a public upload form). A PUT or copy whose
size would take the container past ``Quota-Bytes``, or one more object past
``Quota-Count``, answers 413 "Upload exceeds quota." Non-integer quotas are 400.
"""

from __future__ import annotations

from swiftlike.proxy.info_generations import info_generations
from swiftlike.proxy.mw_util import InfoCache, conf_section, split_v1
from swiftlike.proxy.pipeline import (
    Handler,
    SwiftRequest,
    SwiftResponse,
    error_response,
    info_registry,
)
from swiftlike.proxy.quota_util import (
    QuotaExceededInStream,
    cap_chunked_body,
    quota_response,
    write_size,
    write_target,
)


def passes_through(req: SwiftRequest) -> bool:
    """Quotas bound writes only (see pipeline.Bypass)."""
    return req.method in ("GET", "HEAD")


class ContainerQuotas:
    def __init__(self, app: Handler, conf: dict) -> None:
        self.app = app
        # Whether a container has a quota comes from the shared info cache (a change
        # through any worker of this host invalidates it); only a container that has
        # one costs a fresh HEAD per write, for its current usage.
        self.info = InfoCache(app, float(conf_section(conf, "container_quotas").get(
            "info_cache_seconds", 5.0)), "CQ", info_generations(conf))
        info_registry(conf).register_info("container_quotas", {})

    async def __call__(self, req: SwiftRequest) -> SwiftResponse:
        if passes_through(req):
            return await self.app(req)
        self.info.observe(req)
        _account, container, obj = split_v1(req.path)
        if container is not None and obj is None and req.method in ("PUT", "POST"):
            for header, what in (("X-Container-Meta-Quota-Bytes", "bytes"),
                                 ("X-Container-Meta-Quota-Count", "count")):
                value = req.headers.get(header, "").strip()
                if value and not value.isdigit():
                    return error_response(400, f"Invalid {what} quota.")
            return await self.app(req)
        target = write_target(req)
        if target is None:
            return await self.app(req)
        t_account, t_container, _ = target
        info = await self.info.container(req, t_account, t_container)
        if not info["status"] // 100 == 2 or not _has_quota(info["meta"]):
            return await self.app(req)
        info = await self.info.container(req, t_account, t_container, fresh=True)
        if not info["status"] // 100 == 2:
            return await self.app(req)
        meta = info["meta"]
        acl = {"read": info.get("read_acl", ""), "write": info.get("write_acl", "")}
        quota_bytes = meta.get("quota-bytes", "").strip()
        capped = False
        if quota_bytes.isdigit():
            size = await write_size(self.app, req)
            if size is not None and info["bytes"] + size > int(quota_bytes):
                return quota_response(req, acl)
            capped = cap_chunked_body(req, int(quota_bytes) - info["bytes"])
        quota_count = meta.get("quota-count", "").strip()
        if quota_count.isdigit() and info["object_count"] + 1 > int(quota_count):
            return quota_response(req, acl)
        if not capped:
            return await self.app(req)
        try:
            return await self.app(req)
        except QuotaExceededInStream:
            return quota_response(req, acl)


def _has_quota(meta: dict[str, str]) -> bool:
    return any(meta.get(key, "").strip().isdigit() for key in ("quota-bytes", "quota-count"))


def make_middleware(app: Handler, conf: dict) -> Handler:
    return ContainerQuotas(app, conf)
