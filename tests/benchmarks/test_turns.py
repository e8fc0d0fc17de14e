"""Turns stop the side not being measured, whole process trees included."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from benchmarks.load_stats import process_tree_pids
from benchmarks.turns import Turns

# A parent that starts a child in a session of its own (as `swiftlike serve` starts its
# nodes), then both sleep.
TREE = ("import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " start_new_session=True)\n"
        "time.sleep(60)\n")


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        raw = fh.read()
    return raw[raw.rindex(")") + 2]


@pytest.fixture
def trees() -> Iterator[dict[str, subprocess.Popen]]:
    procs = {name: subprocess.Popen([sys.executable, "-c", TREE], start_new_session=True)
             for name in ("a", "b")}
    deadline = time.monotonic() + 10
    while any(len(process_tree_pids([p.pid])) < 2 for p in procs.values()):
        assert time.monotonic() < deadline, "the children did not start"
        time.sleep(0.05)
    yield procs
    for proc in procs.values():
        pids = process_tree_pids([proc.pid])
        for pid in pids:
            subprocess.run(["kill", "-CONT", str(pid)], check=False)
            subprocess.run(["kill", "-KILL", str(pid)], check=False)
        proc.wait()


def _states(proc: subprocess.Popen) -> set[str]:
    return {_state(pid) for pid in process_tree_pids([proc.pid])}


def test_a_turn_stops_the_other_tree_and_continues_its_own(trees):
    turns = Turns({name: (lambda p=proc: [p.pid]) for name, proc in trees.items()})
    turns.give("a")
    assert _states(trees["b"]) == {"T"}
    assert "T" not in _states(trees["a"])
    turns.give("b")
    assert _states(trees["a"]) == {"T"}
    assert "T" not in _states(trees["b"])
    turns.give(None)
    assert _states(trees["a"]) == _states(trees["b"]) == {"T"}
    turns.resume_all()
    assert "T" not in _states(trees["a"]) | _states(trees["b"])


def test_keep_idle_running_stops_nothing(trees):
    turns = Turns({name: (lambda p=proc: [p.pid]) for name, proc in trees.items()},
                  pause_idle=False)
    turns.give("a")
    turns.give(None)
    assert "T" not in _states(trees["a"]) | _states(trees["b"])
