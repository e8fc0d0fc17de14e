"""The CPU scheduling policy of server processes: ``SCHED_BATCH`` unless told otherwise.

One client request crosses several processes on the same host (proxy worker, storage
nodes, container servers), and each hop is a socket write that wakes the next one.
Under the normal policy the woken process preempts the writer at once, so a proxy
worker is switched out in the middle of its event-loop iteration for every backend
request it sends, and nobody gets to handle more than one ready request per wake-up.
A ``SCHED_BATCH`` process does not preempt on wake-up: it runs when the current one
blocks or its time slice ends, by which time several requests are usually waiting for
it. Measured with all-in-one ``swiftlike serve`` on 2 cores (A/B, 3 rounds, see
docs/performance.md): small PUTs +10-24% per second with 4.1-4.8 -> 3.8-4.1 ms of
server CPU per PUT, small GETs 0-9%, HEADs 3-16%. The price is a little latency when
a machine is otherwise idle, which these servers, built for throughput, accept.

Threads inherit the policy of the thread that creates them, and child processes that
of their parent: call :func:`apply_cpu_policy` first thing in a server process.
"""

from __future__ import annotations

import logging
import os

LOG = logging.getLogger(__name__)
POLICIES = ("batch", "normal")


def cpu_policy_from(section: dict[str, object]) -> str:
    """The ``cpu_policy`` setting of a config table, checked (``"batch"`` by default)."""
    value = str(section.get("cpu_policy", "batch")).strip().lower()
    if value not in POLICIES:
        raise ValueError(f"cpu_policy must be one of {', '.join(POLICIES)}, not {value!r}")
    return value


def apply_cpu_policy(policy: str) -> bool:
    """Put the calling thread (and so every thread and process it starts) under
    ``policy``. False, with a warning, where the platform refuses or lacks it."""
    if policy not in POLICIES:
        raise ValueError(f"unknown cpu_policy {policy!r}")
    wanted = getattr(os, "SCHED_BATCH" if policy == "batch" else "SCHED_OTHER", None)
    if wanted is None or not hasattr(os, "sched_setscheduler"):
        LOG.warning("cpu_policy %s: not available on this platform", policy)
        return False
    try:
        os.sched_setscheduler(0, wanted, os.sched_param(0))
    except OSError as err:
        LOG.warning("cpu_policy %s: cannot set it (%s)", policy, err)
        return False
    return True
