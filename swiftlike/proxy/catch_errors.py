"""Outermost middleware: transaction ids and a clean 500 for unexpected errors.

Every response carries ``X-Trans-Id`` and ``X-Openstack-Request-Id`` (the same value)
so a user's report can be matched with the logs of every process that served it;
the id is also forwarded to storage nodes by the controllers.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from swiftlike.proxy.pipeline import Handler, SwiftRequest, SwiftResponse, error_response

log = logging.getLogger("swiftlike.proxy")


def new_trans_id(rng: random.Random, extra: str = "") -> str:
    """``tx`` + 21 random hex + ``-`` + hex seconds, like Swift's transaction ids.

    An id only has to be unique, not secret: a per-worker generator seeded from the OS
    costs no system call per request, as ``secrets`` did.
    """
    trans_id = f"tx{rng.getrandbits(84):021x}-{int(time.time()):010x}"
    if extra:
        trans_id += extra[:32]
    return trans_id


def make_middleware(app: Handler, conf: dict) -> Handler:
    rng = random.Random()  # seeded from os.urandom

    async def catch_errors(req: SwiftRequest) -> SwiftResponse:
        trans_id = req.environ.get("swift.trans_id")
        if not trans_id:
            trans_id = new_trans_id(rng, req.headers.get("X-Trans-Id-Extra", ""))
            req.environ["swift.trans_id"] = trans_id
        try:
            resp = await app(req)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: error handling %s %s", trans_id, req.method, req.path)
            resp = error_response(500, "An error occurred while processing the request.")
        resp.headers["X-Trans-Id"] = trans_id
        resp.headers["X-Openstack-Request-Id"] = trans_id
        return resp

    return catch_errors
