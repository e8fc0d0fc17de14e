"""What an object request's headers mean to a storage node.

Which headers a PUT stores and a POST replaces (and how a ``.meta`` merges over the
data file's metadata), the node's own keys in the stored metadata, and the row a
container listing gets for an object: the vocabulary the verbs (:mod:`.object_server`)
share, kept apart so that module stays about what each verb does.
"""

from __future__ import annotations

import time

from swiftlike.storage import body_io

STORED_HEADERS = {
    "content-type", "content-encoding", "content-disposition", "x-delete-at",
    "x-static-large-object", "x-object-manifest", "cache-control", "content-language",
    "expires", "x-robots-tag",
}
STORED_PREFIXES = ("x-object-meta-", "x-object-sysmeta-", "x-symlink-",
                   "x-object-transient-sysmeta-")
POST_PREFIXES = ("x-object-meta-", "x-object-transient-sysmeta-")
#: what a POST sets, so a .meta replaces as a whole (the data file's values go, whether
#: the POST repeated them or not); Content-Type only when the POST gave one
POST_REPLACED_HEADERS = frozenset((
    "x-delete-at", "content-encoding", "content-disposition", "cache-control",
    "content-language", "expires", "x-robots-tag", "x-object-manifest"))
POST_HEADERS = {"content-type", *POST_REPLACED_HEADERS}
#: Set in a .meta by a POST that changed the Content-Type: later POSTs without one
#: carry the type on (Swift's fast-POST keeps a POSTed type; a .meta replaces the rest)
CONTENT_TYPE_STAMP = "X-Backend-Content-Type-Timestamp"
INTERNAL_KEYS = {"name", body_io.BODY_CHECKSUM_KEY, CONTENT_TYPE_STAMP}
#: A middleware's word on the size a container listing shows (Swift's name): an SLO
#: manifest stores a few hundred bytes of JSON but lists as the whole object.
OVERRIDE_SIZE = "X-Object-Sysmeta-Container-Update-Override-Size"
#: ... and on the type it shows (symlink lists a link's target there, Swift's way)
OVERRIDE_TYPE = "X-Object-Sysmeta-Container-Update-Override-Content-Type"
#: ... and on the etag (an SLO manifest's md5 followed by ``; slo_etag=<etag>``)
OVERRIDE_ETAG = "X-Object-Sysmeta-Container-Update-Override-Etag"


def title_header(name: str) -> str:
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def delete_at_error(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.isdigit():
        return "Non-integer X-Delete-At"
    if int(value) <= time.time():
        return "X-Delete-At in past"
    return None


def listed_size(metadata: dict[str, str]) -> str:
    override = metadata.get(OVERRIDE_SIZE, "")
    return override if override.isdigit() else metadata["Content-Length"]


def row_fields(metadata: dict[str, str]) -> dict[str, str]:
    """What a PUT's container row says of the object, from its stored metadata."""
    return {"X-Size": listed_size(metadata),
            "X-Etag": metadata.get(OVERRIDE_ETAG) or metadata["ETag"],
            "X-Content-Type": metadata.get(OVERRIDE_TYPE) or metadata["Content-Type"]}


def merge_post_metadata(data_meta: dict[str, str], post_meta: dict[str, str]) -> dict[str, str]:
    """Metadata after a POST: what a POST may set comes from the POST alone (as in
    Swift, a POST without ``Cache-Control`` removes the PUT's), the data file's system
    metadata (size, ETag, type unless the POST changed it, sysmeta) stays."""
    merged = {key: value for key, value in data_meta.items()
              if not key.lower().startswith(POST_PREFIXES)
              and key.lower() not in POST_REPLACED_HEADERS}
    for key, value in post_meta.items():
        if key == "X-Timestamp":
            continue
        merged[key] = value
    return merged
