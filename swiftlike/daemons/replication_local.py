"""What an object replication pass does on its own device: each call is one thread hop.

Kept apart from :mod:`swiftlike.daemons.replicator`, which plans and talks to peers:
these read and remove local files only, many partitions per call, and report errors per
partition instead of raising.
"""

from __future__ import annotations

from swiftlike.storage import replication_store as store
from swiftlike.storage.hashes import get_suffix_hashes
from swiftlike.storage.partition_removal import remove_delivered


def hashes_of(device_path: str, requested: dict[str, list[str]],
               rehashed: dict[str, set[str]] | None = None
               ) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Local suffix hashes of many partitions in one thread hop; errors per partition.

    ``rehashed`` (when given) collects per partition the suffixes recomputed here.
    """
    hashes: dict[str, dict[str, str]] = {}
    errors: dict[str, str] = {}
    for part, suffixes in requested.items():
        done: set[str] | None = None if rehashed is None else rehashed.setdefault(part, set())
        try:
            hashes[part] = get_suffix_hashes(device_path, part, suffixes, rehashed=done)
        except OSError as err:
            errors[part] = f"{type(err).__name__}: {err}"
    return hashes, errors


def rehash_and_list(device_path: str, requested: dict[str, list[str]], reclaim_age: float,
                     fresh_already: dict[str, set[str]] | None = None
                     ) -> tuple[dict, dict[str, dict[str, list[store.OfferedObject]]], dict]:
    """Fresh hashes of the named suffixes, then their files grouped by suffix.

    Suffixes in ``fresh_already`` were rehashed earlier in this pass: only the journal
    is folded in for them, they are not recomputed again.
    """
    fresh_already = fresh_already or {}
    fresh, errors = hashes_of(device_path, {
        part: [s for s in suffixes if s not in fresh_already.get(part, ())]
        for part, suffixes in requested.items()})
    offers: dict[str, dict[str, list[store.OfferedObject]]] = {}
    for part, suffixes in requested.items():
        if part in errors:
            continue
        try:
            listed = store.list_partition_offers(device_path, part, suffixes, reclaim_age)
        except OSError as err:
            errors[part] = f"{type(err).__name__}: {err}"
            continue
        grouped: dict[str, list[store.OfferedObject]] = {}
        for offer in listed:
            grouped.setdefault(offer.suffix, []).append(offer)
        offers[part] = grouped
    return fresh, offers, errors


def remove_if_delivered(device_path: str, delivered: dict[str, dict[str, str]]
                         ) -> list[str]:
    """Remove each handoff partition still holding just what was delivered (see
    :mod:`swiftlike.storage.partition_removal`); the partitions removed."""
    return [part for part, hashes in delivered.items()
            if remove_delivered(device_path, part, hashes)]
