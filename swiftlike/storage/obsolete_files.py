"""Removing the files a newer write made obsolete, without stalling the event loop.

Why: a small write (a DELETE's tombstone, a POST's .meta, a small overwrite) is
published on the node's event loop, and it used to unlink what it made obsolete there
too. Unlinking a big file is not a small lookup: the file system frees its extents and,
mounted with ``discard``, trims them, and measured on this VM one such unlink held the
loop for 1-20 ms. During a run of 16 MiB DELETEs the unlinks kept one node's loop busy
for 40% of the time, every other request on that node waiting behind them. So small
obsolete files are still removed on the loop (a thread hop costs more than their
unlink), and big ones go to a worker thread.
"""

from __future__ import annotations

import os

from swiftlike.storage.diskfile import SIDECAR_EXT, gather_ondisk_files
from swiftlike.storage.hashes import invalidate_suffix

#: obsolete files with more than this many bytes allocated are unlinked off the loop
INLINE_UNLINK_BYTES = 256 * 1024


def remove_small_obsolete(object_dir: str, inline_bytes: int = INLINE_UNLINK_BYTES
                          ) -> list[str]:
    """Unlink the obsolete files of ``object_dir`` that are small (and their sidecars);
    returns the names of the big ones, left for :func:`remove_files`."""
    big: list[str] = []
    for name in gather_ondisk_files(object_dir).obsolete:
        path = os.path.join(object_dir, name)
        try:
            allocated = os.stat(path).st_blocks * 512
        except FileNotFoundError:
            allocated = 0  # gone already; its sidecar may not be
        if allocated > inline_bytes:
            big.append(name)
        else:
            remove_files(object_dir, [name])
    return big


def remove_files(object_dir: str, names: list[str]) -> None:
    """Unlink ``names`` (and their sidecars) from ``object_dir``; missing ones are fine
    (another writer's cleanup may have taken them first)."""
    for name in names:
        for victim in (name, name + SIDECAR_EXT):
            try:
                os.unlink(os.path.join(object_dir, victim))
            except FileNotFoundError:
                pass


def invalidate_object_suffix(object_dir: str) -> None:
    """Record that ``object_dir``'s suffix changed: called after its obsolete files are
    gone, so a rehash that ran between the publish and the unlinks (and counted the old
    file) is not the last word on the suffix."""
    suffix_dir = os.path.dirname(object_dir)
    invalidate_suffix(os.path.dirname(suffix_dir), os.path.basename(suffix_dir))
