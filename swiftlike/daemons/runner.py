"""Running the daemons: one pass (``--once``), forever in their own process, or inside a node.

``swiftlike replicate|audit|update|expire|reap --config X [--once]`` calls :func:`run_daemon`;
a storage node with ``[daemons] enabled = true`` runs :func:`run_daemons` beside its
HTTP server, so every daemon loops on its own interval in the node's event loop.
``[daemons]`` may switch single daemons off: ``replicator = false`` etc.
Each daemon's module is imported when it is first run, so a ``--once`` process loads
only what its pass needs (start-up time counts when a rebuild runs one per node).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from swiftlike.common.config import conf_bool
from swiftlike.daemons.base import DaemonContext

LOG = logging.getLogger(__name__)

#: CLI verb or config name -> canonical daemon name.
ALIASES = {
    "replicate": "replicator", "replicator": "replicator", "replication": "replicator",
    "audit": "auditor", "auditor": "auditor",
    "update": "updater", "updater": "updater",
    "expire": "expirer", "expirer": "expirer",
    "reap": "reaper", "reaper": "reaper",
}


async def run_pass(name: str, ctx: DaemonContext, audit_mode: str = "full") -> dict[str, Any]:
    """One pass of one daemon with an existing context; returns its per-device stats."""
    canonical = ALIASES.get(name)
    if canonical == "replicator":
        from swiftlike.daemons.db_replicator import DatabaseReplicator
        from swiftlike.daemons.replicator import ObjectReplicator

        objects = await ObjectReplicator(ctx).run_once()
        databases = await DatabaseReplicator(ctx).run_once()
        return {"objects": objects, "databases": databases}
    if canonical == "auditor":
        from swiftlike.daemons.auditor import ObjectAuditor

        return await ObjectAuditor(ctx).run_once(audit_mode)
    if canonical == "updater":
        from swiftlike.daemons.updater import ObjectUpdater

        return await ObjectUpdater(ctx).run_once()
    if canonical == "expirer":
        from swiftlike.daemons.expirer import ObjectExpirer

        return await ObjectExpirer(ctx).run_once()
    if canonical == "reaper":
        from swiftlike.daemons.reaper import AccountReaper

        return await AccountReaper(ctx).run_once()
    raise ValueError(f"unknown daemon {name!r}")


async def _replicate_forever(ctx: DaemonContext) -> None:
    from swiftlike.daemons.db_replicator import DatabaseReplicator
    from swiftlike.daemons.replicator import ObjectReplicator

    objects, databases = ObjectReplicator(ctx), DatabaseReplicator(ctx)
    await asyncio.gather(objects.run_forever(), databases.run_forever())


def _forever(canonical: str, ctx: DaemonContext) -> Any:
    if canonical == "replicator":
        return _replicate_forever(ctx)
    from swiftlike.daemons.auditor import ObjectAuditor
    from swiftlike.daemons.expirer import ObjectExpirer
    from swiftlike.daemons.reaper import AccountReaper
    from swiftlike.daemons.updater import ObjectUpdater

    cls = {"auditor": ObjectAuditor, "updater": ObjectUpdater, "expirer": ObjectExpirer,
           "reaper": AccountReaper}
    return cls[canonical](ctx).run_forever()


async def run_daemon(name: str, conf: dict[str, Any], once: bool = False) -> int:
    """Run one daemon: a single pass when ``once`` (exit code 0 / 1 on errors), else forever."""
    canonical = ALIASES.get(name)
    if canonical is None:
        raise ValueError(f"unknown daemon {name!r}")
    ctx = DaemonContext(conf)
    try:
        if once:
            result = await run_pass(canonical, ctx)
            errors = _count_errors(result)
            LOG.info("%s --once finished: %s errors", canonical, errors)
            return 1 if errors else 0
        await _forever(canonical, ctx)
        return 0
    finally:
        await ctx.close()


def _count_errors(result: Any) -> int:
    if isinstance(result, dict):
        if "counts" in result and isinstance(result["counts"], dict):
            return int(result["counts"].get("errors", 0))
        return sum(_count_errors(v) for v in result.values())
    return 0


async def run_daemons(conf: dict[str, Any]) -> None:
    """Every enabled daemon, forever, on its own interval (a storage node runs this)."""
    section = conf.get("daemons", {})
    ctx = DaemonContext(conf)
    tasks = [
        asyncio.ensure_future(_forever(canonical, ctx))
        for canonical in ("replicator", "auditor", "updater", "expirer", "reaper")
        if conf_bool(section.get(canonical), True)
    ]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ctx.close()
