"""The JSON schemas Glance v2 publishes, and the attribute rules derived from them.

Why here: clients (python-glanceclient validates with them, openstacksdk reads them) and
our own validation must agree, so both come from one table.
"""

from __future__ import annotations

from typing import Any

DISK_FORMATS = ("ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop")
CONTAINER_FORMATS = ("ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed")
VISIBILITIES = ("public", "private", "shared", "community")
STATUSES = (
    "queued", "saving", "active", "killed", "deleted", "uploading", "importing",
    "pending_delete", "deactivated",
)
MEMBER_STATUSES = ("pending", "accepted", "rejected")

#: attributes no user may set (Glance answers 403 "Attribute '<x>' is read-only.")
READ_ONLY = (
    "id", "status", "checksum", "size", "virtual_size", "created_at", "updated_at", "file",
    "self", "schema", "direct_url", "locations", "os_hash_algo", "os_hash_value", "stores",
)
#: attributes that are reserved and may not be used as custom property names
RESERVED = ("deleted", "deleted_at", "location")
#: properties named so belong to Glance itself (import results and the like): a user may
#: neither set nor change them
RESERVED_PREFIX = "os_glance"
#: attributes settable on create and by PATCH (besides custom string properties)
SETTABLE = (
    "name", "visibility", "protected", "disk_format", "container_format", "min_disk",
    "min_ram", "tags", "os_hidden", "owner",
)

_NULLABLE_STRING = {"type": ["null", "string"]}

IMAGE_PROPERTIES: dict[str, Any] = {
    "id": {"type": "string", "readOnly": True, "description": "An identifier for the image",
           "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}"
                      "-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"},
    "name": {"type": ["null", "string"], "maxLength": 255,
             "description": "Descriptive name for the image"},
    "status": {"type": "string", "readOnly": True, "enum": list(STATUSES),
               "description": "Status of the image"},
    "visibility": {"type": "string", "enum": list(VISIBILITIES),
                   "description": "Scope of image accessibility"},
    "protected": {"type": "boolean", "description": "If true, image will not be deletable."},
    "os_hidden": {"type": "boolean",
                  "description": "If true, image will not appear in default image list response."},
    "checksum": {"type": ["null", "string"], "readOnly": True, "maxLength": 32,
                 "description": "md5 hash of image contents."},
    "os_hash_algo": {"type": ["null", "string"], "readOnly": True, "maxLength": 64,
                     "description": "Algorithm to calculate the os_hash_value"},
    "os_hash_value": {"type": ["null", "string"], "readOnly": True, "maxLength": 128,
                      "description": "Hexdigest of the image contents using the algorithm "
                                     "specified by the os_hash_algo"},
    "owner": {"type": ["null", "string"], "maxLength": 255,
              "description": "Owner of the image"},
    "size": {"type": ["null", "integer"], "readOnly": True,
             "description": "Size of image file in bytes"},
    "virtual_size": {"type": ["null", "integer"], "readOnly": True,
                     "description": "Virtual size of image in bytes"},
    "container_format": {"type": ["null", "string"], "enum": [None, *CONTAINER_FORMATS],
                         "description": "Format of the container"},
    "disk_format": {"type": ["null", "string"], "enum": [None, *DISK_FORMATS],
                    "description": "Format of the disk"},
    "created_at": {"type": "string", "readOnly": True,
                   "description": "Date and time of image registration"},
    "updated_at": {"type": "string", "readOnly": True,
                   "description": "Date and time of the last image modification"},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 255},
             "description": "List of strings related to the image"},
    "direct_url": {"type": "string", "readOnly": True,
                   "description": "URL to access the image file kept in external store"},
    "min_ram": {"type": "integer", "minimum": 0,
                "description": "Amount of ram (in MB) required to boot image."},
    "min_disk": {"type": "integer", "minimum": 0,
                 "description": "Amount of disk space (in GB) required to boot image."},
    "self": {"type": "string", "readOnly": True, "description": "An image self url"},
    "file": {"type": "string", "readOnly": True, "description": "An image file url"},
    "stores": {"type": "string", "readOnly": True,
               "description": "Store in which image data resides."},
    "schema": {"type": "string", "readOnly": True, "description": "An image schema url"},
    "locations": {"type": "array", "items": {"type": "object"},
                  "description": "A set of URLs to access the image file kept in external "
                                 "store"},
}

LINKS = [
    {"rel": "self", "href": "{self}"},
    {"rel": "enclosure", "href": "{file}"},
    {"rel": "describedby", "href": "{schema}"},
]


def image_schema() -> dict[str, Any]:
    """``GET /v2/schemas/image``."""
    return {
        "name": "image",
        "properties": IMAGE_PROPERTIES,
        "additionalProperties": {"type": "string"},
        "links": LINKS,
    }


def images_schema() -> dict[str, Any]:
    """``GET /v2/schemas/images``."""
    return {
        "name": "images",
        "properties": {
            "images": {"type": "array", "items": image_schema()},
            "schema": {"type": "string"},
            "first": {"type": "string"},
            "next": {"type": "string"},
        },
        "links": [
            {"rel": "first", "href": "{first}"},
            {"rel": "next", "href": "{next}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    }


MEMBER_PROPERTIES: dict[str, Any] = {
    "member_id": {"type": "string", "description": "An identifier for the image member"},
    "image_id": {"type": "string", "description": "An identifier for the image"},
    "created_at": {"type": "string", "description": "Date and time of image member creation"},
    "updated_at": {"type": "string", "description": "Date and time of last modification"},
    "status": {"type": "string", "enum": list(MEMBER_STATUSES),
               "description": "The status of this image member"},
    "schema": {"type": "string", "readOnly": True},
}


def member_schema() -> dict[str, Any]:
    """``GET /v2/schemas/member``."""
    return {"name": "member", "properties": MEMBER_PROPERTIES}


def members_schema() -> dict[str, Any]:
    """``GET /v2/schemas/members``."""
    return {
        "name": "members",
        "properties": {
            "members": {"type": "array", "items": member_schema()},
            "schema": {"type": "string"},
        },
        "links": [{"rel": "describedby", "href": "{schema}"}],
    }


def validate_attribute(name: str, value: Any) -> str | None:
    """Check one settable attribute's value; returns an error message or None."""
    if name == "name":
        if value is not None and (not isinstance(value, str) or len(value) > 255):
            return "name must be a string of at most 255 characters"
    elif name in ("protected", "os_hidden"):
        if not isinstance(value, bool):
            return f"{name} must be a boolean"
    elif name == "visibility":
        if value not in VISIBILITIES:
            return f"Invalid visibility value: {value}"
    elif name == "disk_format":
        if value is not None and value not in DISK_FORMATS:
            return f"Invalid value '{value}' for disk_format: must be one of {DISK_FORMATS}"
    elif name == "container_format":
        if value is not None and value not in CONTAINER_FORMATS:
            return (f"Invalid value '{value}' for container_format: must be one of "
                    f"{CONTAINER_FORMATS}")
    elif name in ("min_disk", "min_ram"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"{name} must be a non-negative integer"
    elif name == "tags":
        if not isinstance(value, list) or not all(
            isinstance(t, str) and 0 < len(t) <= 255 for t in value
        ):
            return "tags must be a list of strings of at most 255 characters"
    elif name == "owner":
        # Glance's schema allows null (an image of no project); every image here belongs
        # to one, whose rights on it follow, so null is refused rather than stored
        if not isinstance(value, str) or not value or len(value) > 255:
            return "owner must be a project id (a non-empty string of at most 255)"
    else:  # a custom property
        if not isinstance(value, str):
            return f"custom property {name} must be a string"
        if len(name) > 255 or len(value) > 65535:
            return f"custom property {name} is too long"
    return None
