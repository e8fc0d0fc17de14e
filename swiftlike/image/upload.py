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
from collections.abc import AsyncIterator
from dataclasses import dataclass

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
        # Shielded: a client that hangs up may cancel this handler, but its bytes must go.
        await asyncio.shield(discard(store, container, name, written))
        if verifier.refused is not None and exc is not verifier.refused:
            raise verifier.refused from exc  # what the store client wrapped (400/413)
        raise
    return loc, result


async def discard(store: SwiftStore, container: str, name: str,
                  known_segments: list[Segment] | None = None) -> bool:
    """Delete every object an upload of ``name`` may have written (best effort, logged);
    True when every delete and the listing got through.

    Segments this process knows it wrote are deleted by name, so an orphan cannot hide
    behind a container listing that has not caught up yet; the listing then sweeps up
    any others (e.g. from an earlier upload attempt that crashed).
    """
    seg_container = f"{container}_segments"
    names = {seg.name for seg in known_segments or ()}
    targets = [(container, name)]
    complete = True
    try:
        names.update(await store.list_objects(seg_container, prefix=f"{name}/"))
    except Exception:  # the known ones are still deleted below
        LOG.exception("could not list the segments of %s/%s", container, name)
        complete = False
    targets += [(seg_container, seg_name) for seg_name in sorted(names)]
    for target_container, target in targets:
        try:  # one failure must not leave every later segment behind
            await store.delete_object(target_container, target)
        except Exception:  # the caller's error matters more; leave a trace for operators
            LOG.exception("could not remove %s/%s of a failed upload", target_container,
                          target)
            complete = False
    return complete


async def verify_stored(
    store: SwiftStore, loc: Location, verifier: Verifier
) -> UploadResult:
    """Re-read stored bytes through a verifier (the ``glance-direct`` import step)."""
    async for _chunk in verifier.wrap(store.iter_location(loc)):
        pass
    return verifier.finish()
