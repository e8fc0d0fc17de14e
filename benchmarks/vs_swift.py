"""swiftlike against OpenStack Swift: same load, same machine, same run, in alternation.

Installs Swift 2.38.x into its own virtualenv (~/.cache/swiftlike-bench/swift-venv),
writes a Swift all-in-one with the topology of ``swiftlike serve --nodes N`` (N nodes,
one device each, 3 replicas, tempauth, fsync, no background daemons), starts both, runs
``load.run_load`` against each in turn (A B A B ...) and prints both sides, the ratio
per phase (median of the per-round ratios) and each phase as a share of this machine's
limits measured in the same run. Before anything is measured it writes as much memory
as the run's 16 MiB phases will fill, twice over, once (``--no-warm-memory`` skips that; see
``machine_limits.warm_free_memory``): on a new VM the first write to each page is slow,
and the side that happens to run first would pay for it.

Run ``python benchmarks/vs_swift.py --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.load import ALL_PHASES, LoadConfig, run_load
from benchmarks.load_client import CLIENTS
from benchmarks.machine_limits import measure_machine_limits, phase_share, warm_free_memory
from benchmarks.swift_saio import (
    DEFAULT_VENV,
    PIPELINES,
    SwiftCluster,
    ensure_apt_packages,
    ensure_swift_venv,
    free_port,
    make_layout,
    wait_for_auth,
    write_saio,
)
from benchmarks.turns import Turns

# The ratios (ours / Swift) the project aims for, per phase.
TARGETS = {"small-put": 10.0, "small-get": 10.0, "large-put": 2.0, "large-get": 2.0}


def median_ratio(ours: Sequence[float], theirs: Sequence[float]) -> float | None:
    """Median over rounds of ours[i] / theirs[i]; rounds where Swift did nothing are skipped."""
    ratios = [a / b for a, b in zip(ours, theirs, strict=True) if b > 0]
    return statistics.median(ratios) if ratios else None


def _phase_map(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["phase"]: p for p in result["phases"]}


def compare_rounds(rounds: Sequence[dict[str, dict[str, Any]]],
                   limits: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Per phase: medians for each side, the median per-round ratio, shares and target.

    ``rounds`` holds one ``{"swift": load_result, "swiftlike": load_result}`` per round.
    The throughput compared is ops/s (for large objects ops/s and MiB/s give the same
    ratio).
    """
    per_round = [{side: _phase_map(r[side]) for side in ("swift", "swiftlike")} for r in rounds]
    names = [n for n in ALL_PHASES if all(n in r["swift"] and n in r["swiftlike"]
                                          for r in per_round)]
    rows = []
    for name in names:
        row: dict[str, Any] = {"phase": name}
        for side in ("swift", "swiftlike"):
            phases = [r[side][name] for r in per_round]
            cpu = [p["server_cpu_ms_per_op"] for p in phases
                   if p["server_cpu_ms_per_op"] is not None]
            row[side] = {
                "ops_per_s": statistics.median(p["ops_per_s"] for p in phases),
                "mib_per_s": statistics.median(p["mib_per_s"] for p in phases),
                "p50_ms": statistics.median(p["latency_ms"]["p50"] or 0.0 for p in phases),
                "p99_ms": statistics.median(p["latency_ms"]["p99"] or 0.0 for p in phases),
                "cpu_ms_per_op": statistics.median(cpu) if cpu else None,
                "errors": sum(p["errors"] for p in phases),
            }
            if limits is not None:
                row[side]["share_of_machine"] = phase_share(
                    name, row[side]["ops_per_s"], row[side]["mib_per_s"], limits)
        row["ratio"] = median_ratio(
            [r["swiftlike"][name]["ops_per_s"] for r in per_round],
            [r["swift"][name]["ops_per_s"] for r in per_round])
        row["target"] = TARGETS.get(name)
        row["meets_target"] = (None if row["target"] is None or row["ratio"] is None
                               else row["ratio"] >= row["target"])
        rows.append(row)
    return rows


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_comparison(rows: Sequence[dict[str, Any]]) -> str:
    """The side-by-side table printed on the terminal (also pasted in docs/performance.md)."""
    header = ("phase", "Swift ops/s", "ours ops/s", "Swift MiB/s", "ours MiB/s", "ratio",
              "target", "Swift cpu ms/op", "ours cpu ms/op", "Swift %machine", "ours %machine")
    table = [header]
    for r in rows:
        s, o = r["swift"], r["swiftlike"]
        target = "-" if r["target"] is None else (
            f">={r['target']:g}x " + ("ok" if r["meets_target"] else "MISS"))
        share_s = s.get("share_of_machine")
        share_o = o.get("share_of_machine")
        table.append((
            r["phase"], _f(s["ops_per_s"], ".1f"), _f(o["ops_per_s"], ".1f"),
            _f(s["mib_per_s"], ".1f"), _f(o["mib_per_s"], ".1f"),
            _f(r["ratio"], ".2f") + "x" if r["ratio"] is not None else "-", target,
            _f(s["cpu_ms_per_op"], ".2f"), _f(o["cpu_ms_per_op"], ".2f"),
            _f(None if share_s is None else share_s * 100, ".1f"),
            _f(None if share_o is None else share_o * 100, ".1f"),
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for i, row in enumerate(table):
        lines.append(" | ".join(c.ljust(w) if j == 0 else c.rjust(w)
                                for j, (c, w) in enumerate(zip(row, widths, strict=True))))
        if i == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


class SwiftlikeServer:
    """``swiftlike serve`` in a child process, stopped by PID with SIGTERM."""

    def __init__(self, data_dir: Path, port: int, nodes: int, workers: int,
                 command: Sequence[str]) -> None:
        self.cmd = [*command, "serve", "--data-dir", str(data_dir), "--port", str(port),
                    "--nodes", str(nodes), "--workers", str(workers), "--no-daemons"]
        self.port = port
        self.log_path = data_dir.parent / "swiftlike-serve.log"
        self.proc: subprocess.Popen | None = None

    @property
    def auth_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/auth/v1.0"

    def start(self, timeout: float = 60.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for_auth(self.auth_url, timeout)
        except RuntimeError as exc:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"swiftlike serve did not come up: {exc}\n{tail}") from exc

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)   # anything left in its session
        except (ProcessLookupError, PermissionError):
            pass
        self.proc = None


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds (default 3)")
    parser.add_argument("--count", type=int, default=200, help="ops per small-object phase")
    parser.add_argument("--large-count", type=int, default=6, help="ops per 16 MiB phase")
    parser.add_argument("--procs", type=int, default=2, help="load client processes")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight/proc")
    parser.add_argument("--swift-pipeline", choices=sorted(PIPELINES), default="features",
                        help="Swift's proxy middleware: 'features' (the API features of "
                             "swiftlike's default pipeline, the default) or 'minimal' (the "
                             "pipeline of runs before 2026-12-07)")
    parser.add_argument("--client", choices=CLIENTS, default="raw",
                        help="HTTP client of the load, the same for both sides (default "
                             "%(default)s; see benchmarks/raw_http.py)")
    parser.add_argument("--duration", type=float, default=None, help="cap per phase, seconds")
    parser.add_argument("--read-count", type=int, default=None,
                        help="ops per small GET/HEAD phase (default: --count)")
    parser.add_argument("--read-seconds", type=float, default=None,
                        help="cap per small GET/HEAD phase, seconds: with a large "
                             "--read-count both sides read for the same time")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--proxy-workers", type=int, default=max(1, os.cpu_count() or 1))
    parser.add_argument("--phases", default=",".join(ALL_PHASES))
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                        help="virtualenv for OpenStack Swift (default %(default)s)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="parent of the temporary data directory (default: system temp)")
    parser.add_argument("--swiftlike-cmd", default=f"{sys.executable} -m swiftlike",
                        help="command that runs swiftlike (default: %(default)s)")
    parser.add_argument("--swift-only", action="store_true",
                        help="measure only OpenStack Swift (no comparison)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument("--no-warm-memory", action="store_true",
                        help="skip touching the free memory once before measuring (see "
                             "machine_limits.warm_free_memory)")
    parser.add_argument("--keep-idle-running", action="store_true",
                        help="leave the side not being measured running instead of "
                             "stopping it for the other's turn (see benchmarks/turns.py)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return parser


def warmup_bytes(large_count: int, large_size: int = LoadConfig.large_size) -> int:
    """How much memory to write once before a run: what its 16 MiB phases put in the
    page cache (3 replicas, both sides), twice over, and at least 2 GiB."""
    return max(2 << 30, 2 * 2 * 3 * large_count * large_size)


def run_comparison(args: argparse.Namespace, log=print) -> dict[str, Any]:
    """Install, start, measure in alternation, stop; return every number."""
    ensure_apt_packages(["memcached"], log)
    version = ensure_swift_venv(args.venv, log)
    base = Path(tempfile.mkdtemp(prefix="swiftlike-vs-swift-", dir=args.workdir))
    log(f"OpenStack Swift {version}; data under {base}")
    warmup = {"gib": 0.0, "seconds": 0.0, "s_per_gib": 0.0}
    if not args.no_warm_memory:
        log("touching the free memory once (first writes to a new VM's pages are slow)")
        warmup = warm_free_memory(cap_bytes=warmup_bytes(args.large_count))
        log(f"  {warmup['gib']:.1f} GiB in {warmup['seconds']:.1f} s")
    log("measuring this machine's limits")
    limits = measure_machine_limits(base)
    layout = make_layout(base / "swift", nodes=args.nodes, proxy_workers=args.proxy_workers,
                         pipeline=args.swift_pipeline)
    write_saio(layout, str(args.venv / "bin" / "swift-ring-builder"))
    swift = SwiftCluster(layout, args.venv)
    ours = None if args.swift_only else SwiftlikeServer(
        base / "swiftlike" / "data", free_port(), args.nodes, args.proxy_workers,
        args.swiftlike_cmd.split())
    phases = tuple(p for p in args.phases.split(",") if p)
    rounds: list[dict[str, Any]] = []
    turns: Turns | None = None
    failures: list[dict[str, Any]] = []
    try:
        swift.start()
        if ours is not None:
            (base / "swiftlike").mkdir(parents=True, exist_ok=True)
            ours.start()
        targets = [("swift", layout.auth_url, lambda: swift.server_pids)]
        if ours is not None:
            targets.append(("swiftlike", ours.auth_url,
                             lambda: [ours.proc.pid] if ours.proc else []))
        turns = Turns({side: pids for side, _url, pids in targets},
                      pause_idle=not args.keep_idle_running)
        for number in range(1, args.rounds + 1):
            this_round: dict[str, Any] = {}
            for side, auth_url, pids in targets:
                log(f"round {number}/{args.rounds}: {side}")
                turns.give(side)
                if side == "swiftlike" and ours is not None and not ours.running():
                    # serve stops itself when a node does not come up; one hiccup must
                    # not void every later round of ours
                    log(f"round {number}: swiftlike serve was not running, restarting it")
                    failures.append({"round": number, "side": side,
                                     "error": "serve had stopped; restarted"})
                    try:
                        ours.stop()  # whatever is left in its session goes first
                        ours.start()
                    except RuntimeError as exc:
                        log(f"round {number} swiftlike restart failed: {exc}")
                        continue
                config = LoadConfig(
                    auth_url=auth_url, procs=args.procs, concurrency=args.concurrency,
                    count=args.count, large_count=args.large_count, duration=args.duration,
                    read_count=args.read_count, read_seconds=args.read_seconds,
                    phases=phases, server_pids=tuple(pids()), client=args.client)
                try:
                    this_round[side] = run_load(config)
                except RuntimeError as exc:
                    # Recorded, not fatal: the other rounds still count.
                    log(f"round {number} {side} failed: {exc}")
                    failures.append({"round": number, "side": side, "error": str(exc)})
            if len(this_round) == len(targets):
                rounds.append(this_round)
        # Measured again after the rounds: a limit is the best the machine did, so a
        # neighbour's burst during one probe does not understate it.
        log("measuring this machine's limits again")
        turns.give(None)
        again = measure_machine_limits(base)
        limits = {key: max(value, again[key]) for key, value in limits.items()}
    finally:
        if turns is not None:
            turns.resume_all()
        if ours is not None:
            ours.stop()
        swift.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    result: dict[str, Any] = {
        "swift_version": version, "machine_limits": limits, "rounds": rounds,
        "memory_warmup": warmup,
        "failed_runs": failures,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpus": os.cpu_count(),
    }
    if ours is not None and rounds:
        result["comparison"] = compare_rounds(rounds, limits)
    return result


def format_report(result: dict[str, Any]) -> str:
    """Everything a run measured, as terminal tables."""
    from benchmarks.load_stats import format_table

    limits = result["machine_limits"]
    out = [f"machine: {result['cpus']} CPUs; 4 KiB write+fsync+rename "
           f"{limits['small_write_fsync_per_s']:.0f}/s; 16 MiB write+fsync "
           f"{limits['large_write_fsync_mib_per_s']:.0f} MiB/s; page-cache read "
           f"{limits['pagecache_read_mib_per_s']:.0f} MiB/s"]
    warmup = result.get("memory_warmup")
    if warmup and warmup.get("gib"):
        out.append(f"memory warm-up before measuring: {warmup['gib']:.1f} GiB touched in "
                   f"{warmup['seconds']:.1f} s ({warmup['s_per_gib']:.2f} s/GiB)")
    settings = result.get("settings", {})
    if "keep_idle_running" in settings:  # runs before turns.py have no such setting
        out.append("the side not being measured: " + (
            "left running" if settings["keep_idle_running"]
            else "stopped (SIGSTOP) during the other's turn; file system synced before each"))
    for number, rnd in enumerate(result["rounds"], 1):
        for side, res in rnd.items():
            out += ["", format_table(res["phases"], title=f"round {number}: {side}")]
    for failed in result.get("failed_runs", []):
        out.append(f"FAILED: round {failed['round']} {failed['side']}: {failed['error']}")
    if "comparison" in result:
        out += ["", f"swiftlike vs OpenStack Swift {result['swift_version']} "
                    f"(median of {len(result['rounds'])} per-round ratios; %machine = share "
                    "of this machine's limit, writes counted x3 replicas)",
                format_comparison(result["comparison"])]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_arg_parser()
    parser.add_argument("--from-json", type=Path, default=None,
                        help="print the tables of a saved --json result instead of running")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        print(format_report(json.loads(args.from_json.read_text())))
        return 0

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def stop(signum: int, _frame: object) -> None:
        # through run_comparison's finally: a side stopped for the other's turn is
        # continued (SIGCONT) before both are stopped, never left frozen on its ports
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    result = run_comparison(args, log)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
