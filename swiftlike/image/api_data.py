"""Image data: upload (``PUT /file``), download (``GET /file``), stage and import.

Why the status dance: Glance's lifecycle is queued -> saving -> active for uploads and
queued -> uploading -> importing -> active for the interoperable import. Every
transition is a conditional write in the registry, so two uploads racing for one image
cannot both win, and a failed or interrupted upload returns the image to ``queued``
after deleting whatever bytes it had written.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from swiftlike.image.api_tasks import import_task, new_request_id, record_task, run_as_task
from swiftlike.image.context import (
    ImageContext,
    ImageSettings,
    container_for,
    ctx,
    http_error,
    identity,
    json_response,
    read_json,
    require_owner,
    visible_image,
)
from swiftlike.image.registry import DATA_COLUMNS, ImageRecord, utc_now
from swiftlike.image.store import Location, StoreError
from swiftlike.image.sweeper import (
    Lease,
    LeaseLost,
    held_lease,
    reset_to_queued,
    still_held,
)
from swiftlike.image.upload import (
    UploadRefused,
    UploadResult,
    Verifier,
    attempt_name,
    discard,
    parse_content_md5,
    store_stream,
    verify_stored,
)
from swiftlike.image.web_download import (
    UriFilter,
    UriRefused,
    fetch_into_store,
    shown,
    without_userinfo,
)

LOG = logging.getLogger("swiftlike.image.data")
CHUNK = 64 * 1024
IMPORT_METHODS = ("glance-direct", "web-download")
TASKS_KEY: web.AppKey[set[asyncio.Task[None]]] = web.AppKey("image_import_tasks")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


async def _request_body(request: web.Request) -> AsyncIterator[bytes]:
    """The client's bytes in chunks; a short body (client gone) raises, never ends cleanly."""
    async for chunk in request.content.iter_chunked(CHUNK):
        yield chunk
    if request.content_length is not None and not request.content.at_eof():
        raise ConnectionResetError("client closed the connection mid-upload")


def _declared_size(request: web.Request) -> int | None:
    return request.content_length if request.content_length is not None else None


async def _receive(request: web.Request, image: ImageRecord, from_status: str,
                   busy_status: str, done_status: str) -> None:
    """Shared body of upload and stage: claim, stream, verify, record or roll back."""
    c = ctx(request)
    require_owner(request, image, "upload data to")
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type != "application/octet-stream":  # as Glance: a missing one too
        raise http_error(415, f"Unsupported Content-Type {content_type or None!r}: image "
                              "data is sent as application/octet-stream")
    if not image.disk_format or not image.container_format:
        raise http_error(400, "Properties disk_format, container_format must be set prior "
                              "to saving data.")
    if image.status != from_status:
        raise http_error(409, f"Image status transition from {image.status} to "
                              f"{busy_status} is not allowed")
    expected_md5 = parse_content_md5(request.headers.get("Content-MD5"))
    declared = _declared_size(request)
    if declared is not None and declared > c.settings.image_size_cap:
        raise http_error(413, f"Image exceeds the storage quota of "
                              f"{c.settings.image_size_cap} bytes")
    image.status = busy_status
    image.updated_at = utc_now()
    image.busy_until = claimed = time.time() + c.settings.upload_lease
    if not await c.repo.save(image, expect_status=from_status,
                             columns=DATA_COLUMNS):
        raise http_error(409, f"Image {image.id} is already receiving data.")
    container = container_for(c.settings, image.owner)
    name = attempt_name(image.id)
    verifier = Verifier(image.disk_format, expected_size=declared, expected_md5=expected_md5,
                        hash_algo=c.settings.hash_algo, size_cap=c.settings.image_size_cap)
    lease = Lease(claimed)
    try:
        async with held_lease(c.repo, image.id, busy_status, c.settings.upload_lease,
                              claimed) as lease:
            loc, result = await store_stream(c.store, container, name,
                                             _request_body(request), verifier, declared)
    except BaseException as exc:
        await _revert(request, image, busy_status, lease.until)
        if isinstance(exc, UploadRefused):
            LOG.warning("upload to image %s refused: %s", image.id, exc)
            raise http_error(exc.status, str(exc)) from exc
        if isinstance(exc, StoreError):
            LOG.error("upload to image %s failed in the store: %s", image.id, exc)
            raise http_error(503, "The object store failed to store the data.") from exc
        if isinstance(exc, LeaseLost):  # store_stream has deleted this attempt's objects
            raise await _claim_lost(c, image.id) from exc
        raise
    _record_result(image, loc, result, done_status)
    if not await c.repo.save(image, expect_status=busy_status, columns=DATA_COLUMNS,
                             expect_lease=lease.until):
        # Taken over (this process stalled past its lease; a sweeper, and maybe a newer
        # upload, has the image now) or deleted meanwhile: either way these objects are
        # this attempt's alone. Its segments by name (a listing may not show them yet),
        # then whatever the listing has.
        await asyncio.shield(discard(c.store, container, name, loc.segments))
        raise await _claim_lost(c, image.id)


async def _claim_lost(c: ImageContext, image_id: str) -> web.HTTPException:
    """The answer to an upload whose image was taken over (409) or deleted (410)."""
    if await c.repo.get(image_id) is not None:
        return http_error(409, f"Image {image_id}: this upload lost its claim on the "
                               "image (it stalled past its lease); upload again.")
    return http_error(410, "Image was deleted while its data was being uploaded.")


def _record_result(image: ImageRecord, loc: Location, result: UploadResult, status: str
                   ) -> None:
    image.size = result.size
    image.checksum = result.checksum
    image.os_hash_algo = result.os_hash_algo
    image.os_hash_value = result.os_hash_value
    image.virtual_size = result.virtual_size
    image.location = loc.to_json()
    image.status = status
    image.updated_at = utc_now()
    image.busy_until = None


async def _revert(request: web.Request, image: ImageRecord, busy_status: str,
                  lease: float | None) -> None:
    """Back to queued, with no data (shielded: runs even if the client vanished), unless
    the image is no longer this holder's (``lease`` is the one it last wrote)."""
    reset_to_queued(image)
    await asyncio.shield(ctx(request).repo.save(image, expect_status=busy_status,
                                                columns=DATA_COLUMNS, expect_lease=lease))


async def upload(request: web.Request) -> web.Response:
    image = await visible_image(request, request.match_info["image_id"])
    await _receive(request, image, "queued", "saving", "active")
    LOG.info("image %s active: %s bytes", image.id, image.size)
    return web.Response(status=204)


async def stage(request: web.Request) -> web.Response:
    image = await visible_image(request, request.match_info["image_id"])
    await _receive(request, image, "queued", "uploading", "uploading")
    return web.Response(status=204)


async def import_info(request: web.Request) -> web.Response:
    return json_response({
        "import-methods": {
            "description": "Import methods available.",
            "type": "array",
            "value": list(IMPORT_METHODS),
        }
    })


async def import_image(request: web.Request) -> web.Response:
    c = ctx(request)
    image = await visible_image(request, request.match_info["image_id"])
    require_owner(request, image, "import")
    body = await read_json(request)
    method = (body or {}).get("method", {}) if isinstance(body, dict) else {}
    name = method.get("name") if isinstance(method, dict) else None
    if name not in IMPORT_METHODS:
        raise http_error(400, f"Import method {name!r} is not valid; available: "
                              f"{', '.join(IMPORT_METHODS)}")
    # Glance's order: the image's state (409), its formats (409), then the URI (400)
    if image.status == "active":
        raise http_error(409, "Image with status active cannot be target for import")
    run: Callable[[ImageRecord], Awaitable[str | None]]
    if name == "web-download":
        if image.status != "queued":
            raise http_error(409, "Image needs to be in 'queued' state to use "
                                  "'web-download' method")
        from_status = "queued"
    elif image.status != "uploading" or not image.location:
        raise http_error(409, f"Image {image.id} is not in a valid state for import "
                              f"(status {image.status}): stage its data first.")
    else:
        from_status = "uploading"
    for field in ("container_format", "disk_format"):
        if not getattr(image, field):
            raise http_error(409, f"'{field}' needs to be set before import")
    if name == "web-download":
        uri = method.get("uri")
        fetch_filter = uri_filter(c.settings)
        try:
            if not isinstance(uri, str) or not uri:
                raise UriRefused(f"URI for web-download does not pass filtering: {uri}")
            fetch_filter.check(uri)
        except UriRefused as exc:
            raise http_error(400, str(exc)) from exc

        async def run(claimed: ImageRecord) -> str | None:
            return await _run_web_download(request, claimed, uri, fetch_filter)
    else:
        async def run(claimed: ImageRecord) -> str | None:
            return await _run_import(request, claimed)
    image.status = "importing"
    image.updated_at = utc_now()
    image.busy_until = time.time() + c.settings.upload_lease
    if not await c.repo.save(image, expect_status=from_status, columns=DATA_COLUMNS):
        raise http_error(409, f"Image {image.id} is already being imported.")
    request_id = new_request_id()
    record = import_task(request, image, body, request_id)
    await record_task(c.repo, record)
    task = asyncio.get_running_loop().create_task(
        run_as_task(c.repo, record, c.settings.task_time_to_live, run(image)))
    tasks: set[asyncio.Task[None]] = request.config_dict[TASKS_KEY]
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return web.Response(status=202, headers={"x-openstack-request-id": request_id})


def uri_filter(settings: ImageSettings) -> UriFilter:
    """The operator's web-download filter from the ``[image]`` settings."""
    return UriFilter(
        allowed_schemes=tuple(str(v).lower() for v in settings.web_download_allowed_schemes),
        disallowed_schemes=tuple(
            str(v).lower() for v in settings.web_download_disallowed_schemes),
        allowed_hosts=tuple(str(v) for v in settings.web_download_allowed_hosts),
        disallowed_hosts=tuple(str(v) for v in settings.web_download_disallowed_hosts),
        allowed_ports=tuple(int(v) for v in settings.web_download_allowed_ports),
        disallowed_ports=tuple(int(v) for v in settings.web_download_disallowed_ports),
    )


async def _run_web_download(request: web.Request, image: ImageRecord, uri: str,
                            fetch_filter: UriFilter) -> str | None:
    """Fetch ``uri`` into the store as a new attempt, verify, then activate (or revert:
    the image goes back to queued with no bytes kept, as after a failed upload).

    None once active; else why not, for the import's task."""
    c = ctx(request)
    container = container_for(c.settings, image.owner)
    name = attempt_name(image.id)
    verifier = Verifier(image.disk_format, hash_algo=c.settings.hash_algo,
                        size_cap=c.settings.image_size_cap)
    claimed = image.busy_until or 0.0
    lease = Lease(claimed)
    try:
        async with held_lease(c.repo, image.id, "importing", c.settings.upload_lease,
                              claimed) as lease:
            loc, result = await fetch_into_store(uri, fetch_filter, c.store,
                                                 container, name, verifier,
                                                 c.settings.web_download_timeout)
    except BaseException as exc:  # the source, a refused redirect, the bytes, the store,
        # the lease lost, or the service shutting down; store_stream has deleted
        # whatever this attempt wrote
        LOG.warning("web-download of image %s from %s failed: %s", image.id, shown(uri),
                    failure_message(exc))
        await asyncio.shield(_revert_if_held(request, image, lease.until))
        if not isinstance(exc, Exception):
            raise
        return failure_message(exc)
    _record_result(image, loc, result, "active")
    if not await c.repo.save(image, expect_status="importing", columns=DATA_COLUMNS,
                             expect_lease=lease.until):
        # taken over (stalled past the lease) or deleted meanwhile: these objects are
        # this attempt's alone
        await asyncio.shield(discard(c.store, container, name, loc.segments))
        return LOST
    LOG.info("image %s active from web-download: %s bytes", image.id, image.size)
    return None


async def _run_import(request: web.Request, image: ImageRecord) -> str | None:
    """Re-read the staged bytes, verify format and hashes, then activate (or revert).

    None once active; else why not, for the import's task."""
    c = ctx(request)
    assert image.location is not None
    loc = Location.from_json(image.location)
    staged_md5 = image.checksum
    verifier = Verifier(image.disk_format, expected_size=image.size, expected_md5=staged_md5,
                        hash_algo=c.settings.hash_algo, size_cap=c.settings.image_size_cap)
    claimed = image.busy_until or 0.0
    lease = Lease(claimed)
    try:
        async with held_lease(c.repo, image.id, "importing", c.settings.upload_lease,
                              claimed) as lease:
            result = await verify_stored(c.store, loc, verifier)
    except BaseException as exc:  # any failure (a refusal, the store, a cut connection,
        # the lease lost, the service shutting down)
        LOG.warning("import of image %s failed: %r", image.id, exc)
        await asyncio.shield(_revert_if_held(request, image, lease.until, loc))
        if not isinstance(exc, Exception):
            raise
        return failure_message(exc)
    _record_result(image, loc, result, "active")
    if not await c.repo.save(image, expect_status="importing", columns=DATA_COLUMNS,
                             expect_lease=lease.until):
        if await c.repo.get(image.id) is None:
            await c.store.delete_location(loc)  # deleted meanwhile (taken over: the sweeper's)
        return LOST
    return None


#: a task's message when the image went on without its import (deleted, or its import
#: stalled past the lease and the sweeper took it back)
LOST = "The image was deleted, or taken back from a stalled import, before this import ended."


def failure_message(exc: BaseException) -> str:
    """Why an import failed, for its task and the log, with every URL's
    ``user:password@`` removed (the source's, a redirect's, however a library spelled
    it)."""
    return f"Image import failed: {without_userinfo(str(exc) or type(exc).__name__)}"


async def _revert_if_held(request: web.Request, image: ImageRecord, lease: float,
                          staged: Location | None = None) -> None:
    """A failed import's end: unless the image went on without this holder (deleted,
    or taken over), delete the ``staged`` bytes and return it to queued."""
    c = ctx(request)
    if await still_held(c.repo, image.id, "importing", lease):
        if staged is not None:
            await discard(c.store, staged.container, staged.name, staged.segments)
        await _revert(request, image, "importing", lease)


def _parse_range(header: str, size: int) -> tuple[int, int]:
    """One byte range ``[start, end)`` from a Range header; 416 when unsatisfiable."""
    match = _RANGE_RE.match(header.strip())
    if not match or match.groups() == ("", ""):
        raise http_error(416, f"Invalid Range header {header!r}: one byte range is supported")
    first, last = match.groups()
    if first == "":
        start, end = max(size - int(last), 0), size
    else:
        start = int(first)
        end = size if last == "" else min(int(last) + 1, size)
    if start >= size or start >= end:
        raise http_error(416, f"Requested range {header} is not satisfiable "
                              f"for an image of {size} bytes")
    return start, end


async def download(request: web.Request) -> web.StreamResponse:
    c = ctx(request)
    image = await visible_image(request, request.match_info["image_id"])
    if image.status == "deactivated" and not identity(request).is_admin:
        raise http_error(403, "The requested image has been deactivated. Image data "
                              "download is forbidden.")
    if image.status not in ("active", "deactivated") or not image.location:
        return web.Response(status=204)
    loc = Location.from_json(image.location)
    size = loc.size
    headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
    start, end, status = 0, size, 200
    if "Range" in request.headers and size > 0:
        try:
            start, end = _parse_range(request.headers["Range"], size)
        except web.HTTPRequestRangeNotSatisfiable as exc:
            exc.headers["Content-Range"] = f"bytes */{size}"  # the size, as RFC 9110 says
            raise
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    elif image.checksum:
        headers["Content-MD5"] = image.checksum
    body = c.store.iter_location(loc, start, end, md5=image.checksum)
    try:
        first = await anext(body, b"")  # fail with a status while one can still be sent
    except StoreError as exc:
        LOG.error("image %s data unreadable: %s", image.id, exc)
        raise http_error(503, "The image data could not be read from the store.") from exc
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = end - start
    await response.prepare(request)
    sent = len(first)
    if first:
        await response.write(first)
    try:
        async for chunk in body:
            sent += len(chunk)
            await response.write(chunk)
    except StoreError as exc:  # a segment missing, cut or not the bytes recorded
        LOG.error("image %s data unreadable after %d bytes: %s", image.id, sent, exc)
        sent = -1
    if sent != end - start:  # never end a short body cleanly: the client must see an error
        LOG.error("image %s: store returned %d of %d bytes", image.id, sent, end - start)
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response
