"""What every image API handler shares: settings, dependencies, errors, views, access rules.

Why one small module: the handler modules (images, members, data) all need the same
access checks and the same image representation; keeping those here means one place
decides who may see or change an image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web

from swiftlike.image.auth import Identity
from swiftlike.image.registry import CORE_COLUMNS, ImageRecord, ImageRepository, MemberRecord
from swiftlike.image.store import SwiftStore


@dataclass
class ImageSettings:
    """The [image] config table, with Glance's defaults."""

    container_prefix: str = "glance_"
    limit_param_default: int = 25
    api_limit_max: int = 1000
    image_size_cap: int = 1024**4  # Glance's default: 1 TiB
    image_tag_quota: int = 128
    image_member_quota: int = 128
    image_property_quota: int = 128
    hash_algo: str = "sha512"
    #: seconds an upload, stage or import holds its image without renewing (it renews
    #: every third of that); a holder silent for longer is presumed dead
    upload_lease: float = 300.0
    #: seconds between two looks for images whose holder died (and once at start)
    sweep_interval: float = 60.0
    #: which URLs the web-download import may fetch (image/web_download.py): an
    #: "allowed" list, when not empty, is the whole rule for its part of the URL
    web_download_allowed_schemes: tuple[str, ...] = ("http", "https")
    web_download_disallowed_schemes: tuple[str, ...] = ()
    web_download_allowed_hosts: tuple[str, ...] = ()
    web_download_disallowed_hosts: tuple[str, ...] = ()
    web_download_allowed_ports: tuple[int, ...] = (80, 443)
    web_download_disallowed_ports: tuple[int, ...] = ()
    #: seconds a web-download waits to connect, and for each next piece of the body
    web_download_timeout: float = 60.0
    #: hours a finished import's task stays visible (Glance's task_time_to_live)
    task_time_to_live: float = 48.0


@dataclass
class ImageContext:
    """The dependencies handlers use; built once per application."""

    settings: ImageSettings
    repo: ImageRepository
    store: SwiftStore
    validator: Any  # auth.TokenValidator-like: async validate(token) -> Identity


CTX_KEY = web.AppKey("image_context", ImageContext)


def ctx(request: web.Request) -> ImageContext:
    return request.config_dict[CTX_KEY]


IDENTITY_KEY = web.RequestKey("image_identity", Identity)


def identity(request: web.Request) -> Identity:
    return request[IDENTITY_KEY]


def http_error(status: int, message: str) -> web.HTTPException:
    """An error response shaped like Glance's (webob) plain-text error pages."""
    reason = HTTPStatus(status).phrase
    body = f"{status} {reason}\n\n{message}\n\n   "
    cls = web.HTTPException
    for candidate in _ERROR_CLASSES:
        if candidate.status_code == status:
            cls = candidate
            break
    # two of aiohttp's classes take required arguments of their own
    if cls is web.HTTPRequestEntityTooLarge:
        exc: web.HTTPException = cls(max_size=0, actual_size=0, text=body,
                                     content_type="text/plain")
    elif cls is web.HTTPMethodNotAllowed:
        exc = cls(method="", allowed_methods=(), text=body, content_type="text/plain")
    else:
        exc = cls(text=body, content_type="text/plain")
    exc.set_status(status, reason)
    return exc


_ERROR_CLASSES = (
    web.HTTPBadRequest, web.HTTPUnauthorized, web.HTTPForbidden, web.HTTPNotFound,
    web.HTTPMethodNotAllowed, web.HTTPConflict, web.HTTPGone, web.HTTPRequestEntityTooLarge,
    web.HTTPUnsupportedMediaType, web.HTTPRequestRangeNotSatisfiable,
    web.HTTPInternalServerError, web.HTTPServiceUnavailable,
)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, headers=headers,
                        content_type="application/json")


async def read_json(request: web.Request) -> Any:
    try:
        return json.loads(await request.read() or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise http_error(400, f"Malformed JSON in request body: {exc}") from exc


def image_view(image: ImageRecord) -> dict[str, Any]:
    """The Glance v2 representation of an image (custom properties at the top level)."""
    view: dict[str, Any] = dict(image.extra)
    for col in CORE_COLUMNS:
        view[col] = getattr(image, col)
    view["tags"] = list(image.tags)
    view["self"] = f"/v2/images/{image.id}"
    view["file"] = f"/v2/images/{image.id}/file"
    view["schema"] = "/v2/schemas/image"
    return view


def member_view(member: MemberRecord) -> dict[str, Any]:
    return {
        "image_id": member.image_id,
        "member_id": member.member_id,
        "status": member.status,
        "created_at": member.created_at,
        "updated_at": member.updated_at,
        "schema": "/v2/schemas/member",
    }


async def visible_image(request: web.Request, image_id: str) -> ImageRecord:
    """The image if the caller may see it; 404 otherwise (never reveal others' images)."""
    image = await ctx(request).repo.get(image_id)
    if image is None or not await can_see(request, image):
        raise http_error(404, f"No image found with ID {image_id}")
    return image


async def can_see(request: web.Request, image: ImageRecord) -> bool:
    who = identity(request)
    if who.is_admin or image.owner == who.project:
        return True
    if image.visibility in ("public", "community"):
        return True
    if image.visibility == "shared":
        return await ctx(request).repo.get_member(image.id, who.project) is not None
    return False


def require_owner(request: web.Request, image: ImageRecord, action: str) -> None:
    """Changing an image is for its owner's members or an admin (Glance's default
    policy); its owner's readers only read it."""
    who = identity(request)
    if not (who.is_admin or (image.owner == who.project and who.can_write)):
        raise http_error(403, f"You are not permitted to {action} this image.")


def require_writer(request: web.Request, action: str) -> None:
    """Creating images and answering shares is for a project's members, not readers."""
    if not identity(request).can_write:
        raise http_error(403, f"You are not permitted to {action}: your role in project "
                              f"{identity(request).project} only reads images.")


def container_for(settings: ImageSettings, owner: str) -> str:
    """Bytes of one owner's images live in one container of the service account."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in owner)
    return f"{settings.container_prefix}{safe}"
