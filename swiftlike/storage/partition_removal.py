"""Removing a delivered handoff partition: exactly the files that were delivered, no more.

Why not ``rmtree``: a handoff partition is written to while its primaries are away, and
it can still be written to while the replicator removes it. A PUT whose primary is down
lands here, and so does a replication push. ``rmtree`` after a check deletes whatever
arrived between the check and the unlink, and that may be an object a client was just
told is stored.

So the removal lists the partition afresh and compares the listing's suffix hashes
with the hashes every primary was brought up to. Only if they are equal does it
unlink, and then only the files in that listing. Directories go with ``rmdir``, which
fails on anything new in them. Each object's directory is looked at again right
before its unlinks, and any name not in the listing there (a POST's ``.meta``, a newer
write) keeps that whole directory. The listed suffixes are invalidated in the
partition's journal, and the partition directory goes last, under the partition lock,
once no suffix is left. What arrived since is delivered by the next pass.

Left open: a few system calls between that second look and the unlinks, in which a
POST's ``.meta`` could still land and lose its ``.data``. Closing it would mean moving
the directory aside first, and a crash could then strand an acknowledged file there.
"""

from __future__ import annotations

import contextlib
import os
import time
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

#: seconds before a sidecar whose file is missing counts as left over (see _remove_hash_dir)
ORPHAN_SIDECAR_AGE = 24 * 3600.0

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
    holds anything else now; True once it is gone. In between (False too): the listed
    files went, and something that arrived since keeps its directories.
    """
    partition_dir = os.path.join(device_path, kind, partition)
    listing = partition_listing(partition_dir)
    found = listing_hashes(listing)
    if found != dict(delivered):
        # whatever differs gets rehashed: a cached hash that disagrees with the disk (a
        # removal or a writer that died before its invalidation) must not keep this
        # partition, or an undelivered file in it, for ever
        invalidate_suffixes(partition_dir, sorted(
            s for s in set(found) | set(delivered) if found.get(s) != delivered.get(s)))
        return False
    return remove_listed(partition_dir, listing)


def remove_listed(partition_dir: str, listing: PartitionListing) -> bool:
    """Unlink the listed files, then every directory left empty; True if it all went."""
    # before the unlinks too: a removal that dies halfway leaves no cached hash behind
    invalidate_suffixes(partition_dir, sorted(listing))
    for suffix, hash_dirs in listing.items():
        suffix_dir = os.path.join(partition_dir, suffix)
        for hash_dir, names in hash_dirs.items():
            _remove_hash_dir(os.path.join(suffix_dir, hash_dir), names)
        with contextlib.suppress(OSError):  # not empty: something arrived since
            os.rmdir(suffix_dir)
    # the files removed changed those suffixes: no cached hash of theirs may survive,
    # whether the partition goes now or a newcomer keeps it
    invalidate_suffixes(partition_dir, sorted(listing))
    try:
        remaining = [name for name in os.listdir(partition_dir) if is_suffix(name)]
    except FileNotFoundError:
        return True
    return not remaining and _remove_partition_dir(partition_dir)


def _remove_hash_dir(object_dir: str, listed: list[str]) -> None:
    """Unlink one object's listed files unless something else arrived in its directory.

    Looked at again right before the unlinks: a ``.meta`` a POST wrote since the
    partition was listed describes the listed ``.data``, and unlinking that would leave
    metadata nobody can offer. So an unlisted name keeps the whole directory (the next
    pass delivers it with its data). A sidecar whose file is missing goes once it is a
    day old: a write writes it before it links its file, and a flush in between may
    take long on a loaded disk, so only a much older one is surely left over from a
    write that failed.
    """
    try:
        present = set(os.listdir(object_dir))
    except (FileNotFoundError, NotADirectoryError):
        return
    expected = set(listed) | {name + SIDECAR_EXT for name in listed}
    leftovers = {name for name in present - expected
                 if _is_stale_orphan_sidecar(object_dir, name, present)}
    if present - expected - leftovers:
        return
    for name in expected | leftovers:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(object_dir, name))
    with contextlib.suppress(OSError):  # not empty: something arrived since
        os.rmdir(object_dir)


def _is_stale_orphan_sidecar(object_dir: str, name: str, present: set[str]) -> bool:
    if not name.endswith(SIDECAR_EXT) or name[:-len(SIDECAR_EXT)] in present:
        return False
    try:
        return time.time() - os.stat(os.path.join(object_dir, name)).st_mtime \
            >= ORPHAN_SIDECAR_AGE
    except FileNotFoundError:
        return False


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
