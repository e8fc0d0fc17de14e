"""Image members: an owner shares a ``shared`` image with another project, which accepts
or rejects it.

Why the split of rights: only the owner (or an admin) adds and removes members; only the
member itself decides its status, as in Glance, so an owner cannot push an image into
someone else's default listing.
"""

from __future__ import annotations

from aiohttp import web

from swiftlike.image import schemas
from swiftlike.image.context import (
    ctx,
    http_error,
    identity,
    json_response,
    member_view,
    read_json,
    require_owner,
    require_writer,
    visible_image,
)
from swiftlike.image.registry import MemberRecord, utc_now


async def add_member(request: web.Request) -> web.Response:
    image = await visible_image(request, request.match_info["image_id"])
    require_owner(request, image, "share")
    if image.visibility != "shared":
        raise http_error(403, f"Only shared images have members; image {image.id} is "
                              f"{image.visibility}.")
    body = await read_json(request)
    member_id = body.get("member") if isinstance(body, dict) else None
    if not isinstance(member_id, str) or not member_id or len(member_id) > 255:
        raise http_error(400, "Request body must be {\"member\": \"<project id>\"}.")
    repo = ctx(request).repo
    if await repo.get_member(image.id, member_id) is not None:
        raise http_error(409, f"Member {member_id} already exists for image {image.id}.")
    if len(await repo.members(image.id)) >= ctx(request).settings.image_member_quota:
        raise http_error(413, "Maximum number of image members exceeded.")
    member = MemberRecord(image.id, member_id)
    await repo.save_member(member)
    return json_response(member_view(member))


async def list_members(request: web.Request) -> web.Response:
    image = await visible_image(request, request.match_info["image_id"])
    if image.visibility != "shared":
        raise http_error(403, f"Only shared images have members; image {image.id} is "
                              f"{image.visibility}.")
    who = identity(request)
    members = await ctx(request).repo.members(image.id)
    if not (who.is_admin or image.owner == who.project):
        members = [m for m in members if m.member_id == who.project]
    return json_response({"members": [member_view(m) for m in members],
                          "schema": "/v2/schemas/members"})


async def _member_for(request: web.Request) -> tuple[MemberRecord, bool]:
    """The member record (404 unless the caller is its owner, admin or the member)."""
    image = await visible_image(request, request.match_info["image_id"])
    member_id = request.match_info["member_id"]
    who = identity(request)
    is_owner = who.is_admin or image.owner == who.project
    member = await ctx(request).repo.get_member(image.id, member_id)
    if member is None or not (is_owner or member_id == who.project):
        raise http_error(404, f"Member {member_id} not found for image {image.id}.")
    return member, is_owner


async def show_member(request: web.Request) -> web.Response:
    member, _ = await _member_for(request)
    return json_response(member_view(member))


async def update_member(request: web.Request) -> web.Response:
    member, _ = await _member_for(request)
    who = identity(request)
    if member.member_id != who.project and not who.is_admin:
        raise http_error(403, "Only the member itself may accept or reject a shared image.")
    require_writer(request, "accept or reject a shared image")
    body = await read_json(request)
    status = body.get("status") if isinstance(body, dict) else None
    if status not in schemas.MEMBER_STATUSES:
        raise http_error(400, f"Invalid status {status!r}: must be one of "
                              f"{schemas.MEMBER_STATUSES}")
    member.status = status
    member.updated_at = utc_now()
    await ctx(request).repo.save_member(member)
    return json_response(member_view(member))


async def delete_member(request: web.Request) -> web.Response:
    image = await visible_image(request, request.match_info["image_id"])
    require_owner(request, image, "unshare")
    if not await ctx(request).repo.remove_member(image.id, request.match_info["member_id"]):
        raise http_error(404, f"Member {request.match_info['member_id']} not found.")
    return web.Response(status=204)
