"""Image tasks: what became of an import, as Glance's ``GET /v2/images/{id}/tasks`` says.

Why: an import answers 202 and goes on in the background. When it fails (the URL
answers 404, the bytes are not the format the image claims, the store is down), the
image just goes back to ``queued``, and the client needs to see why. Glance records
each import as a task (type ``api_image_import``) with a status (``processing``, then
``success`` or ``failure``) and a message. A finished task is kept for
``task_time_to_live`` hours and then forgotten.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from swiftlike.image.context import ctx, http_error, identity, json_response, visible_image
from swiftlike.image.registry import ImageRecord, ImageRepository, TaskRecord, utc_now

LOG = logging.getLogger("swiftlike.image.tasks")
IMPORT_TASK_TYPE = "api_image_import"
INTERRUPTED = "The import was interrupted: the image service stopped before it ended."


def new_request_id() -> str:
    """An ``x-openstack-request-id`` value, made before the answer so a task can name it."""
    return f"req-{uuid.uuid4()}"


def import_task(request: web.Request, image: ImageRecord, import_req: Any,
                request_id: str) -> TaskRecord:
    """The task record of an import the caller just started."""
    return TaskRecord(id=str(uuid.uuid4()), type=IMPORT_TASK_TYPE, owner=image.owner,
                      image_id=image.id, user_id=identity(request).user,
                      request_id=request_id,
                      input={"image_id": image.id, "import_req": import_req,
                             "backend": None})


async def run_as_task(repo: ImageRepository, task: TaskRecord, ttl_hours: float,
                      work: Awaitable[str | None]) -> None:
    """Await ``work`` (None when it succeeded, else why it failed) and record the outcome.

    The outcome is written even when the service stops meanwhile (shielded): a task
    left ``processing`` for ever would say the import still runs.
    """
    try:
        failure = await work
    except BaseException as exc:
        failure = INTERRUPTED if not isinstance(exc, Exception) else \
            f"The import failed unexpectedly: {type(exc).__name__}"
        await asyncio.shield(_finish(repo, task, ttl_hours, failure))
        raise
    await asyncio.shield(_finish(repo, task, ttl_hours, failure))


async def _finish(repo: ImageRepository, task: TaskRecord, ttl_hours: float,
                  failure: str | None) -> None:
    task.status = "failure" if failure is not None else "success"
    task.message = failure or ""
    task.result = None if failure is not None else {"image_id": task.image_id}
    task.updated_at = utc_now()
    task.expires_at = time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                    time.gmtime(time.time() + ttl_hours * 3600))
    try:
        await repo.finish_task(task)
    except Exception as err:  # the registry is down: the image's own status still tells
        LOG.error("recording the end of task %s (image %s) failed: %r", task.id,
                  task.image_id, err)


def task_view(task: TaskRecord) -> dict[str, Any]:
    """A task as Glance shows it."""
    return {
        "id": task.id, "type": task.type, "status": task.status, "owner": task.owner,
        "image_id": task.image_id, "user_id": task.user_id, "request_id": task.request_id,
        "input": task.input, "result": task.result, "message": task.message,
        "created_at": task.created_at, "updated_at": task.updated_at,
        "expires_at": task.expires_at, "deleted_at": None, "deleted": False,
    }


async def list_image_tasks(request: web.Request) -> web.Response:
    """``GET /v2/images/{image_id}/tasks``: the image's tasks, newest first.

    For the image's own project and admins: a task's input holds what the importer
    sent, a web-download's URL included.
    """
    image = await visible_image(request, request.match_info["image_id"])
    who = identity(request)
    if not (who.is_admin or image.owner == who.project):
        raise http_error(403, "You are not permitted to see the tasks of this image.")
    tasks = await ctx(request).repo.image_tasks(image.id)
    return json_response({"tasks": [task_view(t) for t in tasks]})
