"""Leases for uploads and imports, and the sweep that recovers images whose holder died.

Why: an upload (``saving``), a stage (``uploading`` without data yet) or an import
(``importing``) moves its image out of ``queued`` for as long as it runs, and only that
request or task ever moves it on. If its process dies (``serve`` stopped, a worker
killed) the image stayed in that state for ever, with whatever bytes it had written:
no new upload is accepted in it. Several API worker processes share one registry, so
a process cannot simply reset what it finds at start; another worker may be running
that upload right now.

So the holder keeps a lease in the registry (``busy_until``) and renews it every third
of ``[image] upload_lease`` while it runs, and every API process looks, every
``sweep_interval``, for images whose lease ran out. A sweeper first takes the image
over (``killed``, with a lease of its own, in one conditional write, so one sweeper
wins), then deletes every object the dead holder may have written, and only then puts
the image back to ``queued`` with no data, as a failed upload does. Deleting before
requeueing matters: it deletes by the image's prefix (every attempt's objects), which
would then include a new upload's. A sweeper that dies halfway, or cannot delete
everything (the store failing), leaves ``killed`` with a lease that runs out, and a
later sweep finishes; one that stalled so long that the image moved on deletes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from swiftlike.image.api_tasks import ABANDONED, expiry
from swiftlike.image.context import ImageContext, container_for
from swiftlike.image.registry import DATA_COLUMNS, ImageRecord, ImageRepository, utc_now
from swiftlike.image.store import Location
from swiftlike.image.upload import discard, discard_image

LOG = logging.getLogger("swiftlike.image.sweeper")


@dataclass
class Lease:
    """The lease a holder last wrote (``until``): its final write is conditional on it,
    so a holder that was taken over (its process stalled past the lease) cannot write
    over a sweeper's work, or over a newer upload that claimed the image since."""

    until: float


class LeaseLost(Exception):
    """The image was deleted, or taken over, while its holder was still at work: the
    holder's work was cancelled (see :func:`held_lease`)."""


@contextlib.asynccontextmanager
async def held_lease(repo: ImageRepository, image_id: str, status: str,
                     lease: float, first: float) -> AsyncIterator[Lease]:
    """Renew the lease on ``image_id`` in ``status`` every ``lease / 3`` s while the body
    runs; ``first`` is the value the claim that moved it to ``status`` wrote.

    A renewal that finds the image deleted or taken over cancels the body, which then
    raises :class:`LeaseLost`: a download or upload for an image that is gone would
    otherwise go on for as long as its source lasts, writing objects no registry row
    names (a crash before its end would leave them for good).
    """
    held = Lease(first)
    holder = asyncio.current_task()
    lost = False
    writing: asyncio.Task[bool] | None = None

    async def renew_once(until: float) -> bool:
        if not await repo.renew(image_id, status, held.until, until):
            return False
        held.until = until
        return True

    async def renew() -> None:
        nonlocal lost, writing
        while True:
            await asyncio.sleep(lease / 3)
            # The registry write runs in a thread that a cancel cannot stop: it goes on
            # in a task of its own, which records the new lease when it lands, so the
            # holder's final write (conditional on it) never meets a lease it does not
            # know about.
            writing = asyncio.get_running_loop().create_task(
                renew_once(time.time() + lease))
            writing.add_done_callback(_retrieve)
            try:
                if not await asyncio.shield(writing):
                    lost = True
                    if holder is not None:
                        holder.cancel()
                    return
            except Exception:  # a busy registry: the next renewal may get through
                LOG.exception("renewing the lease on image %s failed", image_id)

    task = asyncio.get_running_loop().create_task(renew())
    try:
        yield held
    except asyncio.CancelledError:
        if lost and holder is not None and holder.uncancel() == 0:
            raise LeaseLost(f"image {image_id} was deleted or taken over") from None
        raise
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if writing is not None and not writing.done():
            await asyncio.wait([writing])  # a renewal landing now: know its lease


def _retrieve(task: asyncio.Task[bool]) -> None:
    """Take a renewal's outcome, so one that failed after its waiter left is not
    reported as an exception nobody retrieved (the next renewal tries again)."""
    if not task.cancelled():
        task.exception()


async def still_held(repo: ImageRepository, image_id: str, status: str, lease: float
                     ) -> bool:
    """Is the image still in ``status`` under the lease its holder last wrote?"""
    current = await repo.get(image_id)
    return current is not None and current.status == status and current.busy_until == lease


def reset_to_queued(image: ImageRecord) -> None:
    """The record of an image whose data is gone: ``queued``, as if never uploaded (a
    failed upload and a swept one end the same way)."""
    image.status = "queued"
    image.size = image.checksum = image.os_hash_value = image.os_hash_algo = None
    image.virtual_size = None
    image.location = None
    image.busy_until = None
    image.updated_at = utc_now()


async def sweep_stale(c: ImageContext, now: float | None = None) -> list[str]:
    """Recover every image whose lease ran out; returns their ids."""
    now = time.time() if now is None else now
    recovered = []
    for image in await c.repo.stale(now):
        lease = time.time() + c.settings.upload_lease
        taken_at = utc_now()  # tasks created later belong to a newer import
        if not await c.repo.take_over(image.id, image.status, now, lease):
            continue  # another sweeper has it, or it was deleted meanwhile
        LOG.warning("image %s was left %s by a holder that stopped renewing its lease: "
                    "removing its bytes and returning it to queued", image.id, image.status)
        try:  # an import's task would otherwise say "processing" for ever
            await c.repo.fail_unfinished_tasks(image.id, ABANDONED,
                                               expiry(c.settings.task_time_to_live),
                                               created_by=taken_at)
        except Exception as err:  # the image matters more than its task's record
            LOG.error("failing the tasks of image %s failed: %r", image.id, err)
        if not await _remove_bytes(c, image, lease):
            continue  # the store is failing: killed until the lease runs out, then again
        reset_to_queued(image)
        if await c.repo.save(image, expect_status="killed", columns=DATA_COLUMNS,
                             expect_lease=lease):
            recovered.append(image.id)
    return recovered


async def _remove_bytes(c: ImageContext, image: ImageRecord, lease: float) -> bool:
    """Every object the holder (or any earlier attempt) may have written: the recorded
    location's by name (a staged import's; a listing may lag), then everything under the
    image's prefix. True when all of it is gone."""
    complete = True
    if image.location:
        loc = Location.from_json(image.location)
        complete = await discard(c.store, loc.container, loc.name, list(loc.segments))

    async def still_ours() -> bool:
        return await still_held(c.repo, image.id, "killed", lease)

    container = container_for(c.settings, image.owner)
    return await discard_image(c.store, container, image.id, still_ours) and complete


async def run_sweeper(c: ImageContext) -> None:
    """Sweep at start, then every ``sweep_interval`` seconds, until cancelled."""
    while True:
        try:
            await sweep_stale(c)
        except Exception:  # the store or registry may be down for now: try again later
            LOG.exception("sweeping images with stale leases failed")
        await asyncio.sleep(c.settings.sweep_interval)
