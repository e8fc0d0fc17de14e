"""Removing a delivered handoff partition: exactly the files that were delivered, no more.

Why not ``rmtree``: a handoff partition is written to while its primaries are away, and
it can still be written to while the replicator removes it. A PUT whose primary is down
lands here, and so does a replication push. ``rmtree`` after a check deletes whatever
arrived between the check and the unlink, and that may be an object a client was just
told is stored.

So the removal lists the partition afresh and compares the listing's suffix hashes
with the hashes every primary was brought up to. Only if they are equal does it
unlink, and then only the files in that listing. Directories go with ``rmdir``, which
fails on anything new in them. A file that arrives after the listing keeps its
directories, and its partition's journal is told which suffixes the removal changed.
The partition directory goes last, under the partition lock, once no suffix is left.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping

from swiftlike.storage.diskfile import SIDECAR_EXT
from swiftlike.storage.hashes import (
    HASHES_FILE,
    INVALID_FILE,
    LOCK_FILE,
    invalidate_suffixes,
    is_suffix,
    list_suffix_dir,
    listing_digest,
    partition_lock,
)

#: files of the partition itself, besides its suffix directories
PARTITION_FILES = (HASHES_FILE, HASHES_FILE + ".tmp", INVALID_FILE, LOCK_FILE)

PartitionListing = dict[str, dict[str, list[str]]]  # suffix -> hash dir -> file names


def partition_listing(partition_dir: str) -> PartitionListing:
    """Every suffix's files, read from disk now (no cached hashes, no journal)."""
    try:
        names = os.listdir(partition_dir)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return {suffix: list_suffix_dir(os.path.join(partition_dir, suffix))
            for suffix in sorted(names) if is_suffix(suffix)}


def listing_hashes(listing: PartitionListing) -> dict[str, str]:
    """The suffix hashes of a listing, as :func:`hashes.get_suffix_hashes` reports them."""
    found = {}
    for suffix, hash_dirs in listing.items():
        digest = listing_digest(hash_dirs)
        if digest is not None:
            found[suffix] = digest
    return found


def remove_delivered(device_path: str, partition: str, delivered: Mapping[str, str],
                     kind: str = "objects") -> bool:
    """Remove a handoff partition whose content now hashes exactly to ``delivered``.

    ``delivered``: the suffix hashes every primary has been brought up to (empty for a
    partition that held nothing). False, with nothing touched, when the partition
    holds anything else now; True once the listed files are gone (the directory
    itself stays if something arrived since the listing).
    """
    partition_dir = os.path.join(device_path, kind, partition)
    listing = partition_listing(partition_dir)
    if listing_hashes(listing) != dict(delivered):
        return False
    remove_listed(partition_dir, listing)
    return True


def remove_listed(partition_dir: str, listing: PartitionListing) -> bool:
    """Unlink the listed files, then every directory left empty; True if it all went."""
    for suffix, hash_dirs in listing.items():
        suffix_dir = os.path.join(partition_dir, suffix)
        for hash_dir, names in hash_dirs.items():
            object_dir = os.path.join(suffix_dir, hash_dir)
            for name in names:
                for victim in (name, name + SIDECAR_EXT):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(object_dir, victim))
            with contextlib.suppress(OSError):  # not empty: something arrived since
                os.rmdir(object_dir)
        with contextlib.suppress(OSError):
            os.rmdir(suffix_dir)
    try:
        remaining = [name for name in os.listdir(partition_dir) if is_suffix(name)]
    except FileNotFoundError:
        return True
    if remaining:
        # the files removed changed those suffixes: their cached hashes must go
        invalidate_suffixes(partition_dir, sorted(listing))
        return False
    return _remove_partition_dir(partition_dir)


def _remove_partition_dir(partition_dir: str) -> bool:
    """Drop an emptied partition's own files and directory, unless a writer came back.

    Under the partition lock, so no rehash rewrites ``hashes.msgpack`` meanwhile. A
    writer that makes a suffix directory after the check keeps the directory (rmdir
    fails); it then has no cached hashes, and the next read rehashes every suffix, so
    an invalidation of its that went with the journal is not missed.
    """
    with contextlib.suppress(FileNotFoundError), partition_lock(partition_dir):
        if any(is_suffix(name) for name in os.listdir(partition_dir)):
            return False
        for name in PARTITION_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(partition_dir, name))
        with contextlib.suppress(OSError):
            os.rmdir(partition_dir)
    return not os.path.exists(partition_dir)
