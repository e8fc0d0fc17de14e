"""The upload pipeline: bytes from the client, through hashing and format inspection, into
the object store, without ever holding an image in memory.

Why one pipeline: ``PUT /file``, ``PUT /stage`` and the ``glance-direct`` import all must
compute the same size/md5/os_hash values and apply the same format safety rules; and all
must leave no bytes behind when they fail.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from swiftlike.image.format_inspector import FormatInspector, ImageFormatError
from swiftlike.image.store import Location, Segment, StoreError, SwiftStore, write_segmented

LOG = logging.getLogger("swiftlike.image.upload")


class UploadRefused(Exception):
    """The data contradicts what the client declared (HTTP 400) or is too big (413)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class UploadResult:
    """What the bytes turned out to be."""

    size: int
    checksum: str
    os_hash_algo: str
    os_hash_value: str
    virtual_size: int | None
    detected_format: str


def parse_content_md5(value: str | None) -> str | None:
    """A declared md5 from ``Content-MD5`` (base64 per RFC 1864, or hex as clients send)."""
    if not value:
        return None
    value = value.strip()
    if len(value) == 32:
        try:
            int(value, 16)
            return value.lower()
        except ValueError:
            pass
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UploadRefused(f"Content-MD5 {value!r} is neither hex nor base64") from exc
    if len(raw) != 16:
        raise UploadRefused(f"Content-MD5 {value!r} is not an md5 digest")
    return raw.hex()


class Verifier:
    """Counts, hashes and inspects bytes as they stream through ``wrap``."""

    def __init__(
        self,
        disk_format: str | None,
        *,
        expected_size: int | None = None,
        expected_md5: str | None = None,
        hash_algo: str = "sha512",
        size_cap: int | None = None,
    ) -> None:
        self.expected_size = expected_size
        self.expected_md5 = expected_md5
        self.size_cap = size_cap
        self.hash_algo = hash_algo
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._hash = hashlib.new(hash_algo)
        self._inspector = FormatInspector(disk_format)
        self.size = 0
        #: the refusal raised inside the stream: the HTTP client sending it wraps it in
        #: its own error, so store_stream looks here for what really went wrong
        self.refused: UploadRefused | None = None

    async def wrap(self, source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._checked(source):
                yield chunk
        except UploadRefused as exc:
            self.refused = exc
            raise

    async def _checked(self, source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in source:
            if not chunk:
                continue
            self.size += len(chunk)
            if self.size_cap is not None and self.size > self.size_cap:
                raise UploadRefused(
                    f"Image exceeds the storage quota: more than {self.size_cap} bytes", 413
                )
            if self.expected_size is not None and self.size > self.expected_size:
                raise UploadRefused("Image data is longer than the declared size")
            self._md5.update(chunk)
            self._hash.update(chunk)
            self._inspector.feed(chunk)
            try:
                self._inspector.check_early()
            except ImageFormatError as exc:
                raise UploadRefused(str(exc)) from exc
            yield chunk

    def finish(self) -> UploadResult:
        """Check the complete stream against what was declared."""
        if self.expected_size is not None and self.size != self.expected_size:
            raise UploadRefused(
                f"Image data size {self.size} does not match the declared size "
                f"{self.expected_size}"
            )
        checksum = self._md5.hexdigest()
        if self.expected_md5 is not None and checksum != self.expected_md5:
            raise UploadRefused(
                f"Checksum verification failed: data has md5 {checksum}, the client "
                f"declared {self.expected_md5}"
            )
        try:
            result = self._inspector.result()
        except ImageFormatError as exc:
            raise UploadRefused(str(exc)) from exc
        return UploadResult(self.size, checksum, self.hash_algo, self._hash.hexdigest(),
                            result.virtual_size, result.format)


async def store_stream(
    store: SwiftStore,
    container: str,
    name: str,
    source: AsyncIterator[bytes],
    verifier: Verifier,
    declared_size: int | None,
) -> tuple[Location, UploadResult]:
    """Stream ``source`` through ``verifier`` into the store; on any failure delete it all.

    A declared size that fits one segment goes into a single object; anything else (or an
    unknown, chunked length) is written as segments plus a manifest.
    """
    checked = verifier.wrap(source)
    written: list[Segment] = []
    try:
        if declared_size is not None and declared_size <= store.segment_size:
            await store.ensure_container(container)
            await store.put_object(container, name, checked)
            loc = Location(container, name, verifier.size)
        else:
            loc = await write_segmented(store, container, name, checked,
                                        on_segment=written.append)
        result = verifier.finish()
        if loc.size != result.size:
            raise StoreError(f"stored {loc.size} bytes but {result.size} passed through")
    except BaseException as exc:
        # Waited for to the end even if cancelled meanwhile (a client hanging up, a lost
        # lease, a shutdown): the bytes must go before anyone can take the image on.
        if await _finish_despite_cancel(discard(store, container, name, written)):
            raise asyncio.CancelledError from exc
        if verifier.refused is not None and exc is not verifier.refused:
            raise verifier.refused from exc  # what the store client wrapped (400/413)
        raise
    return loc, result


async def _finish_despite_cancel(cleanup: Awaitable[Any]) -> bool:
    """Run ``cleanup`` to its end; True when this task was cancelled meanwhile (the
    caller then raises the cancellation, after the cleanup, not instead of it)."""
    task = asyncio.ensure_future(cleanup)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if not task.cancelled():
        task.exception()  # discard logs its own failures
    return cancelled


def attempt_name(image_id: str) -> str:
    """The object name one upload attempt of ``image_id`` writes under:
    ``<image id>/<random>``, its segments under ``<image id>/<random>/<n>``.

    Why not the image id itself: an attempt whose holder stalled past its lease (and was
    taken over) may still be writing when a newer attempt runs. Under one shared name
    its last writes replaced the newer attempt's bytes, and its cleanup deleted them.
    Apart, each attempt deletes only its own objects, and everything an image ever
    wrote is still found under the prefix ``<image id>/`` (images stored before this,
    as ``<image id>`` and ``<image id>/<n>``, too).
    """
    return f"{image_id}/{secrets.token_hex(8)}"


async def discard(store: SwiftStore, container: str, name: str,
                  known_segments: list[Segment] | None = None) -> bool:
    """Delete every object one upload attempt (``name``) may have written (best effort,
    logged); True when every delete and the listing got through.

    Segments this process knows it wrote are deleted by name, so an orphan cannot hide
    behind a container listing that has not caught up yet; the listing then sweeps up
    any others.
    """
    seg_container = f"{container}_segments"
    names = {seg.name for seg in known_segments or ()}
    listed = await _listed(store, seg_container, f"{name}/", names)
    targets = [(container, name), *((seg_container, n) for n in sorted(names))]
    return await _delete_each(store, targets) and listed


async def discard_image(store: SwiftStore, container: str, image_id: str,
                        still_ours: Callable[[], Awaitable[bool]] | None = None) -> bool:
    """Delete every object any upload attempt of ``image_id`` may have written (for an
    image no attempt holds any more: swept, or deleted with no recorded data); True when
    every listing and delete got through.

    ``still_ours`` is asked between listing and deleting; False deletes nothing (a
    sweeper that stalled so long that the image went on to a newer upload, whose
    objects the listing may hold, and returns False).
    """
    seg_container = f"{container}_segments"
    prefix = f"{image_id}/"
    names: set[str] = {image_id}  # where images stored before attempt names live
    listed = await _listed(store, container, prefix, names)
    segments: set[str] = set()
    listed = await _listed(store, seg_container, prefix, segments) and listed
    targets = [*((container, n) for n in sorted(names)),
               *((seg_container, n) for n in sorted(segments))]
    if still_ours is not None and not await still_ours():
        return False
    return await _delete_each(store, targets) and listed


async def _listed(store: SwiftStore, container: str, prefix: str, into: set[str]) -> bool:
    """Add the names under ``prefix`` to ``into``; False (logged) when the listing failed:
    the names already known are still deleted."""
    try:
        into.update(await store.list_objects(container, prefix=prefix))
    except Exception:
        LOG.exception("could not list %s under %r", container, prefix)
        return False
    return True


async def _delete_each(store: SwiftStore, targets: list[tuple[str, str]]) -> bool:
    complete = True
    for target_container, target in targets:
        try:  # one failure must not leave every later object behind
            await store.delete_object(target_container, target)
        except Exception:  # the caller's error matters more; leave a trace for operators
            LOG.exception("could not remove %s/%s of an upload", target_container, target)
            complete = False
    return complete


async def verify_stored(
    store: SwiftStore, loc: Location, verifier: Verifier
) -> UploadResult:
    """Re-read stored bytes through a verifier (the ``glance-direct`` import step)."""
    async for _chunk in verifier.wrap(store.iter_location(loc)):
        pass
    return verifier.finish()
