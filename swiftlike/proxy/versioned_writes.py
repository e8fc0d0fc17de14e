"""Legacy object versioning: ``X-Versions-Location`` (stack) and ``X-History-Location``.

A container names an archive container. Before an object in it is overwritten, the
current version is copied into the archive as ``<len(name) as 3 hex digits><name>/
<timestamp>`` (Swift's naming, so archives sort per object and by age). In stack mode
a DELETE restores the newest archived version (and removes it from the archive); in
history mode a DELETE archives the current version, writes a delete marker and leaves
nothing in place. Copies stream through GET/PUT subrequests below this middleware.
"""

from __future__ import annotations

from urllib.parse import unquote

from swiftlike.common.timestamp import Timestamp
from swiftlike.proxy.info_generations import info_generations
from swiftlike.proxy.mw_util import InfoCache, conf_section
from swiftlike.proxy.pipeline import (
    Handler,
    SwiftRequest,
    SwiftResponse,
    error_response,
    info_registry,
)
from swiftlike.proxy.subrequest import (
    container_headers,
    copy_object,
    delete_object,
    discard,
    forget_container_headers,
    internal_subrequest,
    list_container,
    object_path,
)

SOURCE = "VW"
DELETE_MARKER_TYPE = "application/x-deleted;swift_versions_deleted=1"
ENABLED_SYSMETA = "X-Container-Sysmeta-Versions-Enabled"
FLAGS = ("X-Versions-Location", "X-History-Location")


def archive_prefix(obj: str) -> str:
    """``<3 hex digits of the name's UTF-8 length><name>/``: one object's archive rows."""
    return f"{len(obj.encode('utf-8', 'surrogateescape')):03x}{obj}/"


def archive_name(obj: str, timestamp: Timestamp) -> str:
    return archive_prefix(obj) + timestamp.internal


def passes_through(req: SwiftRequest) -> bool:
    """Legacy versioning acts on writes only (see pipeline.Bypass)."""
    return req.method in ("GET", "HEAD")


def make_middleware(app: Handler, conf: dict) -> Handler:
    info_registry(conf).register_info(
        "versioned_writes", {"allowed_flags": [flag.lower() for flag in FLAGS]})
    # Every object write asks whether its container keeps versions: cached, and
    # invalidated across workers when the container changes (info_generations.py).
    container_info = InfoCache(app, float(conf_section(conf, "versioned_writes").get(
        "info_cache_seconds", 5.0)), SOURCE, info_generations(conf))

    async def versioned_writes(req: SwiftRequest) -> SwiftResponse:
        if passes_through(req):
            return await app(req)
        container_info.observe(req)
        version, account, container, obj = req.split_path()
        if version != "v1" or not account or not container:
            return await app(req)
        if obj is None:
            if req.method in ("PUT", "POST"):
                return await container_update(req, account, container)
            return await app(req)
        if req.method not in ("PUT", "DELETE") or req.query.get("version-id"):
            return await app(req)
        info = await container_info.container(req, account, container)
        if info["status"] // 100 != 2:
            return await app(req)
        location = info["history_location"]
        mode = "history"
        if not location:
            location, mode = info["versions_location"], "stack"
        if not location:
            return await app(req)
        archive = unquote(location)
        if req.method == "PUT":
            failure = await archive_current(req, account, container, obj, archive)
            if failure is not None:
                return failure
            return await app(req)
        if mode == "history":
            return await history_delete(req, account, container, obj, archive)
        return await stack_delete(req, account, container, obj, archive)

    async def container_update(req: SwiftRequest, account: str,
                               container: str) -> SwiftResponse:
        for flag in FLAGS:
            if req.headers.get(f"X-Remove-{flag[2:]}") is not None:
                req.headers.popall(f"X-Remove-{flag[2:]}")
                req.headers[flag] = ""
        given = [flag for flag in FLAGS if req.headers.get(flag)]
        if len(given) > 1:
            return error_response(
                400, "Only one of X-Versions-Location or X-History-Location may be specified")
        if given:
            value = unquote(req.headers[given[0]]).strip()
            if "/" in value or not value:
                return error_response(412, "Container name cannot contain slashes")
            info = await container_headers(app, req, account, container, source=SOURCE)
            if (info.is_success and info.headers.get(ENABLED_SYSMETA) is not None) or \
                    req.headers.get("X-Versions-Enabled") is not None:
                return error_response(
                    400, "Cannot use legacy versioned writes on a container that is "
                    "using object versioning (X-Versions-Enabled)")
            other = FLAGS[1] if given[0] == FLAGS[0] else FLAGS[0]
            req.headers[other] = ""  # one mode at a time
        elif any(flag in req.headers for flag in FLAGS):
            # As Swift, where both are one location with a mode: clearing either
            # turns legacy versioning off, whichever mode it was in.
            for flag in FLAGS:
                req.headers[flag] = ""
        forget_container_headers(req, account, container)
        return await app(req)

    async def archive_current(req: SwiftRequest, account: str, container: str, obj: str,
                              archive: str) -> SwiftResponse | None:
        """Copy the live object into the archive; a response when that fails."""
        path = object_path(account, container, obj)
        head = await app(internal_subrequest(req, "HEAD", path, source=SOURCE))
        discard(head)
        if head.status == 404:
            return None
        if not head.is_success:
            return error_response(head.status if head.status in (401, 403) else 503)
        stamp = _timestamp_of(head)
        status, put = await copy_object(
            app, req, path, object_path(account, archive, archive_name(obj, stamp)),
            source=SOURCE)
        if status == 404 and put is None:
            return None  # the object vanished meanwhile: nothing to keep
        if status == 404:
            # never overwrite what we could not archive
            return error_response(412, f"Versions container {archive} does not exist")
        if status // 100 != 2:
            if status in (401, 403):
                return error_response(status)
            return error_response(
                412 if status == 412 else 503,
                f"Unable to copy the current version into {archive}")
        return None

    async def stack_delete(req: SwiftRequest, account: str, container: str, obj: str,
                           archive: str) -> SwiftResponse:
        status, rows = await list_container(app, req, account, archive,
                                            prefix=archive_prefix(obj), reverse=True,
                                            source=SOURCE)
        if status == 200:
            for row in rows:
                name = row["name"]
                if row.get("content_type", "").startswith("application/x-deleted"):
                    await delete_object(app, req, object_path(account, archive, name),
                                        source=SOURCE)
                    continue
                copied, _ = await copy_object(
                    app, req, object_path(account, archive, name),
                    object_path(account, container, obj), source=SOURCE)
                if copied == 404:
                    continue  # gone meanwhile: try the next older one
                if copied // 100 != 2:
                    return error_response(503, "Unable to restore the previous version")
                await delete_object(app, req, object_path(account, archive, name),
                                    source=SOURCE)
                return SwiftResponse(204, {}, b"")
        return await app(req)

    async def history_delete(req: SwiftRequest, account: str, container: str, obj: str,
                             archive: str) -> SwiftResponse:
        failure = await archive_current(req, account, container, obj, archive)
        if failure is not None:
            return failure
        marker = object_path(account, archive, archive_name(obj, Timestamp.now()))
        put = internal_subrequest(req, "PUT", marker, source=SOURCE, headers={
            "Content-Type": DELETE_MARKER_TYPE, "Content-Length": "0"})
        marker_resp = await app(put)
        discard(marker_resp)
        return await app(req)

    return versioned_writes


def _timestamp_of(head: SwiftResponse) -> Timestamp:
    for key in ("X-Timestamp", "X-Backend-Timestamp"):
        value = head.headers.get(key)
        if value:
            try:
                return Timestamp(value)
            except ValueError:
                continue
    return Timestamp.now()
