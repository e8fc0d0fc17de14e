"""Server processes run under SCHED_BATCH (see swiftlike.common.cpu_policy)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from swiftlike.common.cpu_policy import cpu_policy_from

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux only")


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(child) for child in handle.read().split()]


def _thread_policies(pid: int) -> set[int]:
    return {os.sched_getscheduler(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def test_every_thread_of_every_served_process_is_batch(swift_cluster):
    servers = _children(swift_cluster.process.pid)
    assert len(servers) >= 5  # 4 nodes and at least one proxy worker
    for pid in servers:
        assert _thread_policies(pid) == {os.SCHED_BATCH}, pid


@pytest.mark.parametrize("setting, expected", [
    (None, "batch"), ("batch", "batch"), (" Normal ", "normal")])
def test_setting_is_read_and_checked(setting, expected):
    section = {} if setting is None else {"cpu_policy": setting}
    assert cpu_policy_from(section) == expected
    with pytest.raises(ValueError, match="cpu_policy must be one of batch, normal"):
        cpu_policy_from({"cpu_policy": "fifo"})


@pytest.mark.parametrize("policy, expected", [("batch", "SCHED_BATCH"),
                                              ("normal", "SCHED_OTHER")])
def test_apply_covers_threads_started_afterwards(policy, expected):
    code = (
        "import os, threading\n"
        "from swiftlike.common.cpu_policy import apply_cpu_policy\n"
        f"assert apply_cpu_policy({policy!r})\n"
        "seen = []\n"
        "t = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))\n"
        "t.start(); t.join()\n"
        f"assert seen == [os.{expected}] == [os.sched_getscheduler(0)], seen\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_bad_setting_stops_the_server_with_a_message(tmp_path):
    config = tmp_path / "proxy.toml"
    config.write_text('[proxy]\ncpu_policy = "realtime"\n')
    done = subprocess.run([sys.executable, "-m", "swiftlike", "proxy", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "[proxy] cpu_policy must be one of batch, normal, not 'realtime'" in done.stderr
