"""The image API application: routes, auth middleware, version document, startup.

``make_app(conf)`` returns an app whose routes are relative ("/", "/v2/images", ...) so
the all-in-one mounts it with ``root.add_subapp("/image", app)``; ``run_image(conf)``
serves it alone under ``[image] prefix`` (default ``/image``) on its own port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from swiftlike.image import api_data, api_images, api_members, api_tasks, schemas
from swiftlike.image.auth import AuthError, TokenValidator
from swiftlike.image.context import (
    CTX_KEY,
    IDENTITY_KEY,
    ImageContext,
    ImageSettings,
    http_error,
    json_response,
)
from swiftlike.image.registry import SqliteImageRepository
from swiftlike.image.store import DEFAULT_SEGMENT_SIZE, SwiftStore
from swiftlike.image.sweeper import run_sweeper

LOG = logging.getLogger("swiftlike.image")
API_VERSIONS = ("2.16", "2.15", "2.14", "2.13", "2.12", "2.11", "2.10", "2.9", "2.8", "2.7",
                "2.6", "2.5", "2.4", "2.3", "2.2", "2.1", "2.0")


def _versions(request: web.Request) -> dict[str, Any]:
    """Glance's version list, with hrefs under wherever this app is mounted."""
    path = request.path
    for suffix in ("/versions", "/"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    base = f"{request.scheme}://{request.host}{path}"
    return {
        "versions": [
            {
                "id": f"v{v}",
                "status": "CURRENT" if i == 0 else "SUPPORTED",
                "links": [{"rel": "self", "href": f"{base}/v2/"}],
            }
            for i, v in enumerate(API_VERSIONS)
        ]
    }


async def versions_multiple_choice(request: web.Request) -> web.Response:
    return json_response(_versions(request), 300)


async def versions_list(request: web.Request) -> web.Response:
    return json_response(_versions(request))


def _schema_handler(make: Callable[[], dict[str, Any]]) -> Any:
    async def handler(request: web.Request) -> web.Response:
        return json_response(make())

    return handler


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every /v2 call needs a valid object-store token (the version document does not)."""
    if "/v2/" in request.path or request.path.endswith("/v2"):
        validator = request.config_dict[CTX_KEY].validator
        try:
            request[IDENTITY_KEY] = await validator.validate(request.headers.get("X-Auth-Token"))
        except AuthError as exc:
            raise http_error(401, f"This server could not verify that you are authorized to "
                                  f"access the document you requested: {exc}") from exc
    return await handler(request)


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Glance names every answer (errors too): openstacksdk and the CLI log this id."""
    response.headers.setdefault("x-openstack-request-id", api_tasks.new_request_id())


#: how long a stopping service waits for cancelled imports to clean up
SHUTDOWN_CLEANUP_SECONDS = 6.0


def image_settings(conf: dict[str, Any]) -> ImageSettings:
    section = conf.get("image", {})
    defaults = ImageSettings()
    return ImageSettings(**{
        name: type(getattr(defaults, name))(section.get(name, getattr(defaults, name)))
        for name in defaults.__dataclass_fields__
    })


async def _cancel_imports(app: web.Application) -> None:
    """Cancel the imports still running and give them a few seconds (less than serve's
    10 s before it kills a worker) to delete what they wrote and put their image back
    to queued. On shutdown, not at cleanup: aiohttp runs cleanup only after every
    request in flight has finished (up to a minute), by when serve has killed us;
    waiting for a download to finish could take hours anyway."""
    tasks = app.get(api_data.TASKS_KEY)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    await asyncio.wait(list(tasks), timeout=SHUTDOWN_CLEANUP_SECONDS)


def _store_url(section: dict[str, Any]) -> str:
    url = section.get("object_store_url") or section.get("swift_url")
    if not url:
        raise ValueError("[image] object_store_url (the proxy's base URL) is required")
    return str(url).rstrip("/")


def make_app(conf: dict[str, Any], *, validator: Any = None) -> web.Application:
    """The Glance v2 API as an aiohttp app with relative routes (mount it under /image).

    ``conf`` is the whole config document; the ``[image]`` table holds:
    ``object_store_url`` (proxy base URL), ``auth_url`` (default ``<that>/auth/v1.0``),
    ``store_user`` / ``store_key`` (the service account holding image bytes),
    ``registry`` (SQLite path) or ``data_dir``, ``segment_size``, ``large_object_mode``
    and Glance's limits (see ``ImageSettings``).
    """
    section = conf.get("image", {})
    base_url = _store_url(section)
    auth_url = str(section.get("auth_url", f"{base_url}/auth/v1.0"))
    registry_path = section.get("registry") or str(
        Path(section.get("data_dir", "swiftlike-data/image")) / "images.sqlite")
    settings = image_settings(conf)
    app = web.Application(middlewares=[auth_middleware], client_max_size=1024**2)
    app.on_response_prepare.append(_add_request_id)

    async def dependencies(app: web.Application) -> AsyncIterator[None]:
        store = SwiftStore(
            auth_url,
            str(section.get("store_user", "admin:admin")),
            str(section.get("store_key", "admin")),
            segment_size=int(section.get("segment_size", DEFAULT_SEGMENT_SIZE)),
            large_object_mode=str(section.get("large_object_mode", "auto")),
        )
        token_validator = validator or TokenValidator(
            auth_url,
            admin_group=str(section.get("admin_group", ".reseller_admin")),
            cache_seconds=float(section.get("token_cache_seconds", 60.0)),
        )
        repo = SqliteImageRepository(registry_path)
        app[CTX_KEY] = ImageContext(settings, repo, store, token_validator)
        tasks: set[asyncio.Task[None]] = set()
        app[api_data.TASKS_KEY] = tasks
        sweeper = asyncio.get_running_loop().create_task(run_sweeper(app[CTX_KEY]))
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await _cancel_imports(app)  # done at shutdown already; in case it was not
            await store.close()
            if validator is None:
                await token_validator.close()
            repo.close()

    app.on_shutdown.append(_cancel_imports)
    app.cleanup_ctx.append(dependencies)
    _add_routes(app)
    return app


def _add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", versions_multiple_choice)
    r.add_get("/versions", versions_list)
    r.add_get("/v2/schemas/image", _schema_handler(schemas.image_schema))
    r.add_get("/v2/schemas/images", _schema_handler(schemas.images_schema))
    r.add_get("/v2/schemas/member", _schema_handler(schemas.member_schema))
    r.add_get("/v2/schemas/members", _schema_handler(schemas.members_schema))
    r.add_get("/v2/info/import", api_data.import_info)
    r.add_post("/v2/images", api_images.create_image)
    r.add_get("/v2/images", api_images.list_images)
    r.add_get("/v2/images/{image_id}", api_images.show_image)
    r.add_patch("/v2/images/{image_id}", api_images.update_image)
    r.add_delete("/v2/images/{image_id}", api_images.delete_image)
    r.add_put("/v2/images/{image_id}/file", api_data.upload)
    r.add_get("/v2/images/{image_id}/file", api_data.download)
    r.add_put("/v2/images/{image_id}/stage", api_data.stage)
    r.add_post("/v2/images/{image_id}/import", api_data.import_image)
    r.add_get("/v2/images/{image_id}/tasks", api_tasks.list_image_tasks)
    r.add_post("/v2/images/{image_id}/actions/deactivate", api_images.deactivate)
    r.add_post("/v2/images/{image_id}/actions/reactivate", api_images.reactivate)
    r.add_put("/v2/images/{image_id}/tags/{tag}", api_images.add_tag)
    r.add_delete("/v2/images/{image_id}/tags/{tag}", api_images.delete_tag)
    r.add_post("/v2/images/{image_id}/members", api_members.add_member)
    r.add_get("/v2/images/{image_id}/members", api_members.list_members)
    r.add_get("/v2/images/{image_id}/members/{member_id}", api_members.show_member)
    r.add_put("/v2/images/{image_id}/members/{member_id}", api_members.update_member)
    r.add_delete("/v2/images/{image_id}/members/{member_id}", api_members.delete_member)


def make_root_app(conf: dict[str, Any], **kwargs: Any) -> web.Application:
    """The image app mounted under ``[image] prefix`` (default ``/image``) of a root app."""
    prefix = str(conf.get("image", {}).get("prefix", "/image")).rstrip("/")
    image_app = make_app(conf, **kwargs)
    if not prefix:
        return image_app
    root = web.Application(client_max_size=1024**2)
    root.router.add_get(prefix, versions_multiple_choice)  # "/image" without the slash
    root.add_subapp(prefix, image_app)
    return root


async def run_image(conf: dict[str, Any]) -> None:
    """Serve the image API alone (``swiftlike image --config``) until cancelled."""
    section = conf.get("image", {})
    host = str(section.get("bind_ip", "127.0.0.1"))
    port = int(section.get("bind_port", 9292))
    # image bytes are stored as sent, whatever their Content-Encoding (as Glance does)
    runner = web.AppRunner(make_root_app(conf), access_log=LOG, auto_decompress=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    LOG.info("image API listening on http://%s:%d%s", host, port,
             section.get("prefix", "/image"))
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
