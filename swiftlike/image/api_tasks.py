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

from swiftlike.image.context import ctx, identity, json_response, visible_image
from swiftlike.image.registry import ImageRecord, ImageRepository, TaskRecord, utc_now
from swiftlike.image.web_download import shown

LOG = logging.getLogger("swiftlike.image.tasks")
IMPORT_TASK_TYPE = "api_image_import"
INTERRUPTED = "The import was interrupted: the image service stopped before it ended."
FINISH_ATTEMPTS = 3  # writes of a task's outcome before it is only logged
FINISH_RETRY_SECONDS = 0.5
#: the sweeper's word for a task whose holder stopped renewing its lease
ABANDONED = ("The import was interrupted: the process running it stopped, and the image "
             "was returned to queued.")


def new_request_id() -> str:
    """An ``x-openstack-request-id`` value, made before the answer so a task can name it."""
    return f"req-{uuid.uuid4()}"


def import_task(request: web.Request, image: ImageRecord, import_req: Any,
                request_id: str) -> TaskRecord:
    """The task record of an import the caller just started (a URL's password left out:
    the project's readers see the task too)."""
    if isinstance(import_req, dict) and isinstance(import_req.get("method"), dict) and \
            isinstance(import_req["method"].get("uri"), str):
        method = {**import_req["method"], "uri": shown(import_req["method"]["uri"])}
        import_req = {**import_req, "method": method}
    return TaskRecord(id=str(uuid.uuid4()), type=IMPORT_TASK_TYPE, owner=image.owner,
                      image_id=image.id, user_id=identity(request).user,
                      request_id=request_id,
                      input={"image_id": image.id, "import_req": import_req,
                             "backend": None})


async def record_task(repo: ImageRepository, task: TaskRecord) -> None:
    """Record a starting task; the import goes on without one if the registry fails
    here (its image is already ``importing``: refusing now would strand it)."""
    try:
        await repo.add_task(task)
    except Exception as err:
        LOG.error("recording task %s of image %s failed: %r", task.id, task.image_id, err)


async def run_as_task(repo: ImageRepository, task: TaskRecord, ttl_hours: float,
                      work: Awaitable[str | None]) -> None:
    """Await ``work`` (None when it succeeded, else why it failed) and record the outcome.

    The outcome is written even when the service stops meanwhile (shielded): a task
    left ``processing`` for ever would say the import still runs.
    """
    failure: str | None = INTERRUPTED  # unless the work ends, or fails, on its own
    try:
        failure = await work
    except Exception as exc:
        failure = f"The import failed unexpectedly: {type(exc).__name__}"
        raise
    finally:
        await asyncio.shield(_finish(repo, task, ttl_hours, failure))


async def _finish(repo: ImageRepository, task: TaskRecord, ttl_hours: float,
                  failure: str | None) -> None:
    task.status = "failure" if failure is not None else "success"
    task.message = failure or ""
    task.result = None if failure is not None else {"image_id": task.image_id}
    task.updated_at = utc_now()
    task.expires_at = expiry(ttl_hours)
    for attempt in range(FINISH_ATTEMPTS):
        try:
            await repo.finish_task(task)
            return
        except Exception as err:  # the registry is busy or down
            LOG.error("recording the end of task %s (image %s) failed: %r", task.id,
                      task.image_id, err)
        if attempt + 1 < FINISH_ATTEMPTS:
            await asyncio.sleep(FINISH_RETRY_SECONDS)


def expiry(ttl_hours: float) -> str:
    """When a task ending now is forgotten."""
    return utc_now(time.time() + ttl_hours * 3600)


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

    As Glance: 404 unless the caller may see the image, then the tasks an admin may
    see (all) or that belong to the caller's project (a project the image is shared
    with sees none: a task's input holds what the importer sent).
    """
    image = await visible_image(request, request.match_info["image_id"])
    who = identity(request)
    tasks = await ctx(request).repo.image_tasks(image.id)
    return json_response({"tasks": [task_view(t) for t in tasks
                                    if who.is_admin or t.owner == who.project]})
