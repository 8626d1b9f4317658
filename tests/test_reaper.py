"""fracture.runtime.reaper ends every process a SIGKILLed driver started, marked or not, and nothing else."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from procs import job_env, stop_session

from fracture.runtime import reaper

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="the reaper reads /proc")

# A stand-in for a driver that started Ray: one child inherits the mark (like raylet); one was
# started with a fresh environment and has a child of its own (like an agent whose environment
# cannot be read), so only the process tree ties them to the driver.
DRIVER = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from fracture.runtime import reaper
    reaper.watch(os.getpid())
    sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
    marked = subprocess.Popen(sleep)
    fresh = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; "
         "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); time.sleep(120)"],
        env={"PATH": os.environ.get("PATH", "")},
    )
    print(marked.pid, fresh.pid, flush=True)
    time.sleep(120)
    """
)


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_killed_drivers_processes_end_marked_or_not_and_bystanders_live():
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER], env=job_env(), stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        marked_pid, fresh_pid = map(int, driver.stdout.readline().split())
        deadline = time.time() + 10
        while len(reaper.descendants({fresh_pid}, reaper._table())) < 1 and time.time() < deadline:
            time.sleep(0.1)
        (grandchild,) = reaper.descendants({fresh_pid}, reaper._table())
        time.sleep(2 * reaper.POLL_S)  # the watcher has seen the tree
        assert reaper.marked(driver.pid) == [marked_pid]

        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=10)
        ours = [marked_pid, fresh_pid, grandchild]
        deadline = time.time() + reaper.POLL_S + reaper.GRACE_S + 5
        while any(map(_alive, ours)) and time.time() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in ours if _alive(pid)], "outlived the driver"
        assert bystander.poll() is None, "the reaper ended a process that was not the driver's"
    finally:
        stop_session(driver.pid)
        bystander.kill()
