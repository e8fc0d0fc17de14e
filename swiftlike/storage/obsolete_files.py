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

from swiftlike.storage.diskfile import gather_ondisk_files, remove_files

__all__ = ["INLINE_UNLINK_BYTES", "remove_files", "remove_small_obsolete"]

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

