"""Numbers from raw load results: per-phase summaries, server CPU, the terminal table.

Server CPU comes from /proc/<pid>/stat: utime+stime of each given process and of all its
descendants, plus cutime+cstime so that a worker which exits and is reaped during a
phase still counts (its time moves to its parent's cutime/cstime).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

MIB = 1024 * 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _read_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, utime+stime+cutime+cstime in ticks) of ``pid``, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after it.
    fields = raw[raw.rindex(")") + 2:].split()
    ppid = int(fields[1])
    ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ppid, ticks


def _process_tree(roots: Iterable[int]) -> dict[int, int]:
    """CPU ticks by PID of the processes ``roots`` and all their living descendants."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read_stat(int(entry))
        if stat is None:
            continue
        children.setdefault(stat[0], []).append(int(entry))
        ticks[int(entry)] = stat[1]
    tree: dict[int, int] = {}
    stack = [pid for pid in roots if pid in ticks]
    while stack:
        pid = stack.pop()
        if pid in tree:
            continue
        tree[pid] = ticks[pid]
        stack.extend(children.get(pid, ()))
    return tree


def process_tree_ticks(roots: Iterable[int]) -> int:
    """CPU ticks of the processes ``roots`` and all their living descendants."""
    return sum(_process_tree(roots).values())


def process_tree_pids(roots: Iterable[int]) -> list[int]:
    """The processes ``roots`` and all their living descendants (servers started in a
    session of their own each, as ``swiftlike serve`` starts its nodes, included)."""
    return list(_process_tree(roots))


class ServerCpu:
    """Samples the server's CPU time before and after a phase."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = tuple(pids)

    def sample(self) -> int | None:
        return process_tree_ticks(self.pids) if self.pids else None

    def delta(self, before: int | None) -> float | None:
        """CPU seconds used since ``before`` (None when no PIDs were given)."""
        if before is None:
            return None
        after = self.sample()
        assert after is not None
        return max(0, after - before) / CLOCK_TICKS


def percentiles_ms(latencies: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99/max of latencies given in seconds, in milliseconds."""
    if not latencies:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    arr = np.asarray(latencies, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(arr.max())}


def summarize_phase(name: str, size: int, parts: Sequence[dict[str, Any]],
                    cpu_seconds: float | None) -> dict[str, Any]:
    """Merge the per-process results of one phase into one summary.

    The phase lasts from the earliest process start to the latest end (the clocks are
    CLOCK_MONOTONIC, shared by all processes of the machine).
    """
    ok = sum(p["ok"] for p in parts)
    errors = sum(p["errors"] for p in parts)
    nbytes = sum(p["bytes"] for p in parts)
    seconds = max(p["end"] for p in parts) - min(p["start"] for p in parts)
    seconds = max(seconds, 1e-9)
    latencies = [lat for p in parts for lat in p["latencies"]]
    op_counts: dict[str, int] = {}
    for p in parts:
        for op, n in p["op_counts"].items():
            op_counts[op] = op_counts.get(op, 0) + n
    samples = [s for p in parts for s in p["error_samples"]][:5]
    return {
        "phase": name,
        "object_size": size,
        "ops": ok,
        "errors": errors,
        "seconds": seconds,
        "ops_per_s": ok / seconds,
        "bytes": nbytes,
        "mib_per_s": nbytes / MIB / seconds,
        "latency_ms": percentiles_ms(latencies),
        "server_cpu_s": cpu_seconds,
        "server_cpu_ms_per_op": (None if cpu_seconds is None or ok == 0
                                 else cpu_seconds * 1000.0 / ok),
        "op_counts": op_counts,
        "error_samples": samples,
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(phases: Sequence[dict[str, Any]], title: str = "") -> str:
    """A fixed-width table of phase summaries for the terminal."""
    header = ("phase", "ops", "err", "ops/s", "MiB/s", "p50 ms", "p90 ms", "p99 ms",
              "max ms", "cpu ms/op")
    rows = [header]
    for p in phases:
        lat = p["latency_ms"]
        rows.append((
            p["phase"], str(p["ops"]), str(p["errors"]), _fmt(p["ops_per_s"]),
            _fmt(p["mib_per_s"]), _fmt(lat["p50"]), _fmt(lat["p90"]), _fmt(lat["p99"]),
            _fmt(lat["max"]), _fmt(p["server_cpu_ms_per_op"], 2),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [title] if title else []
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                               for j, (c, w) in enumerate(zip(row, widths, strict=True))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    for p in phases:
        for sample in p["error_samples"]:
            lines.append(f"  error in {p['phase']}: {sample}")
    return "\n".join(lines)
