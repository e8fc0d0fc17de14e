"""Turns: the side being measured has the machine to itself.

Why: in a side-by-side run both servers stay up for the whole run, so one side's idle
processes run beside the other's measurement. They are not idle in the way that
matters: an idle Swift all-in-one (13 eventlet processes and memcached) woke about
2,500 times a second and used about 8% of a core here, and with it merely running our
small PUTs were 13% and small GETs 17% slower than with it paused (same VM, fresh
``serve`` per run, three alternations each; docs/performance.md). That tax falls
hardest on the faster side, so it is not the same handicap for both. Also, whatever
one side left dirty in the page cache (Swift's container ``.pending`` appends are not
fsynced, for one) would be written back during the other's turn: ours calls
``syncfs``, which flushes the whole file system.

So before each turn every other side's process tree is stopped (SIGSTOP; the
processes keep their memory, sockets and caches), the side whose turn it is is
continued (SIGCONT), and the file system is synced. Both sides get exactly this.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping, Sequence

from benchmarks.load_stats import process_tree_pids


def _signal_tree(roots: Sequence[int], signum: int) -> None:
    for pid in process_tree_pids(roots):
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass  # exited meanwhile


class Turns:
    """Gives one side at a time the machine; ``sides`` maps a name to its server PIDs
    (read at each turn, so a restarted process is found)."""

    def __init__(self, sides: Mapping[str, Callable[[], Sequence[int]]],
                 pause_idle: bool = True) -> None:
        self.sides = dict(sides)
        self.pause_idle = pause_idle

    def give(self, side: str | None) -> None:
        """Continue ``side``, stop every other side (with ``side`` None: stop all), sync."""
        for name, pids in self.sides.items():
            if name == side:
                _signal_tree(pids(), signal.SIGCONT)
            elif self.pause_idle:
                _signal_tree(pids(), signal.SIGSTOP)
        os.sync()

    def resume_all(self) -> None:
        """Continue every side (before stopping them: a stopped process cannot act on
        SIGTERM)."""
        for pids in self.sides.values():
            _signal_tree(pids(), signal.SIGCONT)
