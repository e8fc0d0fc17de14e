"""Glance v2 image records: create, list, show, update (JSON patch), delete, tags, actions.

Why the rules look the way they do: they follow the Glance v2 API reference and its
default policy (owner or admin changes an image; only admins publicize; read-only
attributes answer 403; disk/container formats are fixed once data exists).
"""

from __future__ import annotations

import csv
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from swiftlike.image import schemas
from swiftlike.image.api_data import IMPORT_METHODS
from swiftlike.image.context import (
    container_for,
    ctx,
    http_error,
    identity,
    image_view,
    json_response,
    read_json,
    require_owner,
    require_writer,
    visible_image,
)
from swiftlike.image.registry import (
    STATUS_COLUMNS,
    USER_COLUMNS,
    ImageIdTaken,
    ImageRecord,
    utc_now,
)
from swiftlike.image.store import Location, StoreError
from swiftlike.image.upload import discard_image

LOG = logging.getLogger("swiftlike.image.api")
PATCH_TYPES = (
    "application/openstack-images-v2.1-json-patch",
    "application/openstack-images-v2.0-json-patch",
)
SORT_KEYS = (
    "id", "name", "status", "container_format", "disk_format", "size", "virtual_size",
    "min_disk", "min_ram", "owner", "created_at", "updated_at", "visibility",
)
_LIST_PARAMS = (
    "limit", "marker", "sort", "sort_key", "sort_dir", "name", "status", "visibility",
    "owner", "tag", "disk_format", "container_format", "size_min", "size_max",
    "member_status", "protected", "os_hidden", "id", "created_at", "updated_at",
    "min_disk", "min_ram", "virtual_size", "checksum", "os_hash_algo", "os_hash_value",
)
#: image attributes a listing may filter on by equality (Glance: "most image attributes")
_INT_FILTERS = ("min_disk", "min_ram", "virtual_size")
_TEXT_FILTERS = ("checksum", "os_hash_algo", "os_hash_value")


def _check_publicize(request: web.Request, visibility: Any) -> None:
    if visibility == "public" and not identity(request).is_admin:
        raise http_error(403, "You are not authorized to complete publicize_image action.")


def _refuse_unsettable(name: str) -> None:
    """403 for an attribute no request may set, change or remove: read-only ones, the
    reserved names, and Glance's own ``os_glance*`` namespace."""
    if name in schemas.READ_ONLY:
        raise http_error(403, f"Attribute '{name}' is read-only.")
    if name in schemas.RESERVED or name.startswith(schemas.RESERVED_PREFIX):
        raise http_error(403, f"Attribute '{name}' is reserved.")


def _apply_attribute(request: web.Request, image: ImageRecord, name: str, value: Any) -> None:
    """Set one attribute after the read-only / reserved / policy checks."""
    _refuse_unsettable(name)
    error = schemas.validate_attribute(name, value)
    if error:
        raise http_error(400, error)
    if name == "visibility":
        _check_publicize(request, value)
    if name == "owner" and value != image.owner and not identity(request).is_admin:
        raise http_error(403, "Only an admin may change the owner of an image.")
    if name in ("disk_format", "container_format") and image.status != "queued":
        if getattr(image, name) != value:
            raise http_error(
                403, f"Attribute {name} can be only replaced for a queued image."
            )
    if name == "tags":
        tags = list(dict.fromkeys(value))
        if len(tags) > ctx(request).settings.image_tag_quota:
            raise http_error(413, "Maximum number of tags exceeded.")
        image.tags = tags
    elif name in schemas.SETTABLE:
        setattr(image, name, value)
    else:
        if name not in image.extra and (
            len(image.extra) >= ctx(request).settings.image_property_quota
        ):
            raise http_error(413, "Maximum number of image properties exceeded.")
        image.extra[name] = value


async def create_image(request: web.Request) -> web.Response:
    require_writer(request, "create images")
    body = await read_json(request)
    if not isinstance(body, dict):
        raise http_error(400, "Image create body must be a JSON object.")
    image_id = body.pop("id", None)
    if image_id is not None:
        try:
            image_id = str(uuid.UUID(str(image_id)))
        except ValueError as exc:
            raise http_error(400, f"Invalid image id {image_id!r}: not a UUID") from exc
    who = identity(request)
    image = ImageRecord(id=image_id or str(uuid.uuid4()), owner=who.project)
    for name, value in body.items():
        _apply_attribute(request, image, name, value)
    try:
        await ctx(request).repo.add(image)
    except ImageIdTaken as err:  # live or deleted: an id never changes hands
        raise http_error(409, f"Image with identifier {image.id} already exists!") from err
    LOG.info("image %s created by %s", image.id, who.project)
    # openstacksdk and the CLI decide from this header whether they may import
    return json_response(image_view(image), 201, {
        "Location": f"/v2/images/{image.id}",
        "OpenStack-image-import-methods": ",".join(IMPORT_METHODS)})


async def show_image(request: web.Request) -> web.Response:
    image = await visible_image(request, request.match_info["image_id"])
    return json_response(image_view(image))


def _patch_path(op: dict[str, Any]) -> str:
    path = op.get("path")
    if not isinstance(path, str) or not path.startswith("/") or path.count("/") > 2:
        raise http_error(400, f"Invalid JSON pointer for this resource: {path!r}")
    name = path[1:].replace("~1", "/").replace("~0", "~")
    if "/" in name and not name.startswith("tags/"):
        raise http_error(400, f"Invalid JSON pointer for this resource: {path!r}")
    return name


def _apply_patch_op(request: web.Request, image: ImageRecord, op: dict[str, Any]) -> None:
    kind = op.get("op")
    name = _patch_path(op)
    if kind not in ("add", "remove", "replace"):
        raise http_error(400, f"Unsupported JSON patch operation: {kind!r}")
    if name.startswith("tags/"):  # add/remove one tag, e.g. {"op":"add","path":"/tags/-"}
        tags = list(image.tags)
        if kind == "remove":
            raise http_error(400, "Remove tags by value with PATCH of /tags or DELETE /tags/x")
        tags.append(op.get("value"))
        _apply_attribute(request, image, "tags", tags)
        return
    if kind != "remove" and "value" not in op:
        raise http_error(400, f"Operation {kind} requires a value")
    _refuse_unsettable(name)
    core = name in schemas.SETTABLE
    if kind == "remove":
        if core:
            raise http_error(403, f"Attribute '{name}' is a base attribute and cannot be removed.")
        if name not in image.extra:
            raise http_error(409, f"Property {name} does not exist.")
        del image.extra[name]
        return
    if kind == "replace" and not core and name not in image.extra:
        raise http_error(409, f"Property {name} does not exist.")
    _apply_attribute(request, image, name, op["value"])


async def update_image(request: web.Request) -> web.Response:
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
    if content_type not in PATCH_TYPES:
        raise http_error(415, f"Unsupported Content-Type {content_type!r}: use "
                              f"{PATCH_TYPES[0]}")
    image = await visible_image(request, request.match_info["image_id"])
    require_owner(request, image, "modify")
    ops = await read_json(request)
    if not isinstance(ops, list) or not all(isinstance(op, dict) for op in ops):
        raise http_error(400, "Request body must be a JSON array of operation objects.")

    def change(fresh: ImageRecord) -> None:
        for op in ops:
            _apply_patch_op(request, fresh, op)
        fresh.updated_at = utc_now()

    return json_response(image_view(await _update_user_attributes(request, image, change)))


async def _update_user_attributes(request: web.Request, image: ImageRecord,
                                  change: Callable[[ImageRecord], None]) -> ImageRecord:
    """Apply a PATCH or tag change to the stored record as it is now, in one transaction,
    writing only what such a call may change (an upload owns the status and data)."""
    updated = await ctx(request).repo.update(image.id, change, USER_COLUMNS)
    if updated is None:
        raise http_error(404, f"No image found with ID {image.id}")
    return updated


async def delete_image(request: web.Request) -> web.Response:
    image = await visible_image(request, request.match_info["image_id"])
    require_owner(request, image, "delete")
    if image.protected:
        raise http_error(403, f"Image {image.id} is protected and cannot be deleted.")
    c = ctx(request)
    try:
        if image.location:  # by name first: a listing may not show them all yet
            await c.store.delete_location(Location.from_json(image.location))
        # then whatever else is under its prefix: a running upload's objects, or those
        # of an attempt whose process died (stalled, taken over, then killed)
        if not await discard_image(c.store, container_for(c.settings, image.owner),
                                   image.id):
            raise StoreError("some objects of its upload attempts are left")
    except StoreError as exc:
        LOG.error("cannot delete bytes of image %s: %s", image.id, exc)
        raise http_error(503, "The image data could not be deleted; try again.") from exc
    await c.repo.remove(image.id)
    LOG.info("image %s deleted by %s", image.id, identity(request).project)
    return web.Response(status=204)


async def add_tag(request: web.Request) -> web.Response:
    image = await visible_image(request, request.match_info["image_id"])
    require_owner(request, image, "modify")
    tag = request.match_info["tag"]

    def change(fresh: ImageRecord) -> None:
        if tag not in fresh.tags:
            _apply_attribute(request, fresh, "tags", [*fresh.tags, tag])
            fresh.updated_at = utc_now()

    await _update_user_attributes(request, image, change)
    return web.Response(status=204)


async def delete_tag(request: web.Request) -> web.Response:
    image = await visible_image(request, request.match_info["image_id"])
    require_owner(request, image, "modify")
    tag = request.match_info["tag"]

    def change(fresh: ImageRecord) -> None:
        if tag not in fresh.tags:
            raise http_error(404, f"Tag {tag} not found")
        fresh.tags = [t for t in fresh.tags if t != tag]
        fresh.updated_at = utc_now()

    await _update_user_attributes(request, image, change)
    return web.Response(status=204)


async def deactivate(request: web.Request) -> web.Response:
    return await _change_activation(request, "active", "deactivated", "deactivate")


async def reactivate(request: web.Request) -> web.Response:
    return await _change_activation(request, "deactivated", "active", "reactivate")


async def _change_activation(request: web.Request, source: str, target: str, action: str
                             ) -> web.Response:
    image = await visible_image(request, request.match_info["image_id"])
    require_owner(request, image, action)
    if image.status == target:
        return web.Response(status=204)
    if image.status != source:
        raise http_error(403, f"Not allowed to {action} image in status '{image.status}'")
    image.status = target
    image.updated_at = utc_now()
    if not await ctx(request).repo.save(image, expect_status=source,
                                        columns=STATUS_COLUMNS):
        raise http_error(409, f"Image {image.id} changed status meanwhile; try again.")
    return web.Response(status=204)


# -- listing -----------------------------------------------------------------------------


def _int_param(query: Any, name: str) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError as exc:
        raise http_error(400, f"{name} param must be an integer") from exc
    if number < 0:
        raise http_error(400, f"{name} param must be positive")
    return number


def _sort_spec(query: Any) -> list[tuple[str, str]]:
    """[(key, dir)] from either ``sort=k:dir,...`` or ``sort_key``/``sort_dir`` pairs."""
    if "sort" in query and ("sort_key" in query or "sort_dir" in query):
        raise http_error(400, "The sort and sort_key/sort_dir parameters cannot be mixed.")
    spec: list[tuple[str, str]] = []
    if "sort" in query:
        for part in query["sort"].split(","):
            key, _, direction = part.strip().partition(":")
            spec.append((key, direction or "desc"))
    else:
        keys = query.getall("sort_key", []) or ["created_at"]
        dirs = query.getall("sort_dir", [])
        if len(dirs) > 1 and len(dirs) != len(keys):
            raise http_error(400, "Number of sort dirs does not match the number of sort keys")
        for i, key in enumerate(keys):
            direction = dirs[i] if len(dirs) > 1 else (dirs[0] if dirs else "desc")
            spec.append((key, direction))
    for key, direction in spec:
        if key not in SORT_KEYS:
            raise http_error(400, f"Invalid sort key: {key}. It should be one of {SORT_KEYS}")
        if direction not in ("asc", "desc"):
            raise http_error(400, f"Invalid sort direction: {direction}")
    if "id" not in [k for k, _ in spec]:
        spec.append(("id", spec[0][1] if spec else "desc"))
    return spec


_TIME_OPS = ("gt", "gte", "lt", "lte", "eq", "neq")


def _time_filter(expr: str, name: str) -> tuple[str, datetime]:
    """``gt:2024-01-01T00:00:00Z`` (or a bare time: equality) as (op, aware datetime).

    Times compare as instants, whatever their offset (``...T05:00:00-05:00`` is
    ``...T10:00:00Z``); a time without an offset is UTC. Anything else is 400.
    """
    op, sep, operand = expr.partition(":")
    if not sep or op not in _TIME_OPS:
        op, operand = "eq", expr
    try:
        when = datetime.fromisoformat(operand.strip())
    except ValueError:
        raise http_error(400, f"Invalid {name} filter {expr!r}: expected [op:]time in "
                              "ISO 8601, op one of " + ", ".join(_TIME_OPS)) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return op, when


def _time_matches(value: str | None, op: str, when: datetime) -> bool:
    if value is None:
        return False
    stored = datetime.fromisoformat(value)
    if stored.tzinfo is None:
        stored = stored.replace(tzinfo=UTC)
    return {
        "gt": stored > when, "gte": stored >= when, "lt": stored < when,
        "lte": stored <= when, "eq": stored == when, "neq": stored != when,
    }[op]


def _in_values(expr: str) -> list[str]:
    """``in:a,b`` -> [a, b]; a value with a comma is quoted, ``in:"glass, darkly",x``."""
    if not expr.startswith("in:"):
        return [expr]
    try:
        return next(csv.reader([expr[3:]], strict=True))
    except (csv.Error, StopIteration):
        raise http_error(400, f"Invalid in: filter {expr!r}: unbalanced quotes") from None


async def list_images(request: web.Request) -> web.Response:
    c = ctx(request)
    who = identity(request)
    q = request.query
    limit = _int_param(q, "limit")
    limit = min(limit if limit is not None else c.settings.limit_param_default,
                c.settings.api_limit_max)
    size_min, size_max = _int_param(q, "size_min"), _int_param(q, "size_max")
    spec = _sort_spec(q)
    visibility = q.get("visibility")
    if visibility is not None and visibility not in (*schemas.VISIBILITIES, "all"):
        raise http_error(400, f"Invalid visibility value: {visibility}")
    member_status = q.get("member_status", "accepted")
    if member_status not in (*schemas.MEMBER_STATUSES, "all"):
        raise http_error(400, f"Invalid status value: {member_status}")
    memberships = await c.repo.member_statuses(who.project)
    tags = q.getall("tag", [])
    properties = {k: v for k, v in q.items() if k not in _LIST_PARAMS}
    os_hidden = q.get("os_hidden", "false").lower() == "true"
    time_filters = {attr: _time_filter(q[attr], attr) for attr in ("created_at", "updated_at")
                    if attr in q}
    for name in ("protected", "os_hidden"):
        if name in q and q[name].lower() not in ("true", "false"):
            raise http_error(400, f"Invalid value {q[name]!r} for {name}: true or false")
    equal: dict[str, Any] = {name: q[name] for name in _TEXT_FILTERS if name in q}
    for name in _INT_FILTERS:
        if name in q:
            equal[name] = _int_param(q, name)

    def listed(img: ImageRecord) -> bool:
        mine = img.owner == who.project
        membership = memberships.get(img.id)
        member_ok = membership is not None and member_status in ("all", membership)
        if visibility is None:
            if not (who.is_admin or mine or img.visibility == "public"
                    or (img.visibility == "shared" and member_ok)):
                return False
        elif visibility != "all" and img.visibility != visibility:
            return False
        elif visibility == "shared" and not (who.is_admin or mine or member_ok):
            return False
        elif visibility == "private" and not (who.is_admin or mine):
            return False
        elif visibility == "all" and not (who.is_admin or mine or img.visibility in
                                          ("public", "community") or member_ok):
            return False
        if img.os_hidden != os_hidden:
            return False
        for attr in ("name", "status", "owner", "disk_format", "container_format", "id"):
            if attr in q and getattr(img, attr) not in _in_values(q[attr]):
                return False
        if "protected" in q and str(img.protected).lower() != q["protected"].lower():
            return False
        if any(getattr(img, name) != value for name, value in equal.items()):
            return False
        for attr, (op, when) in time_filters.items():
            if not _time_matches(getattr(img, attr), op, when):
                return False
        if size_min is not None and (img.size is None or img.size < size_min):
            return False
        if size_max is not None and (img.size is None or img.size > size_max):
            return False
        if any(t not in img.tags for t in tags):
            return False
        return all(img.extra.get(k) == v for k, v in properties.items())

    images = [img for img in await c.repo.all_images() if listed(img)]
    for key, direction in reversed(spec):
        images.sort(key=lambda img, k=key: _sort_value(getattr(img, k)),
                    reverse=direction == "desc")
    if "marker" in q:
        images = await _after_marker(request, images, q["marker"], spec)
    page = images[:limit]
    body: dict[str, Any] = {
        "images": [image_view(img) for img in page],
        "first": "/v2/images",
        "schema": "/v2/schemas/images",
    }
    if page and limit < len(images):
        params = [(k, v) for k, v in q.items() if k not in ("marker", "limit")]
        params += [("marker", page[-1].id), ("limit", str(limit))]
        body["next"] = "/v2/images?" + urlencode(params)
    return json_response(body)


async def _after_marker(request: web.Request, images: list[ImageRecord], marker: str,
                        spec: list[tuple[str, str]]) -> list[ImageRecord]:
    """The listed images that sort after the marker image.

    The marker need not pass the filters any more (an image listed as ``queued`` on
    page one may be ``active`` by the time its ``next`` link is followed): like Glance,
    it is looked up by id, and paging goes on from where it sorts.
    """
    try:
        anchor = await visible_image(request, marker)
    except web.HTTPNotFound:
        raise http_error(400, f"Invalid marker. Image {marker} could not be found.") from None

    def after(img: ImageRecord) -> bool:
        for key, direction in spec:
            mine, theirs = _sort_value(getattr(img, key)), _sort_value(getattr(anchor, key))
            if mine != theirs:
                return mine > theirs if direction == "asc" else mine < theirs
        return False  # the marker itself

    return [img for img in images if after(img)]


def _sort_value(value: Any) -> tuple[int, Any]:
    """None sorts before any value, like SQL's NULLs in ascending order."""
    return (0, "") if value is None else (1, value)
