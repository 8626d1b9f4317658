"""Ends a local Ray instance's processes when the driver that started it dies without shutting it down.

`ray.init()` on a laptop starts GCS, raylet, agents and workers. A driver that exits, even on
Ctrl-C, shuts them down; one killed with SIGKILL (or by the OOM killer) cannot, and Ray's
dashboard and runtime-env agents then live on for minutes, holding ports. So the driver starts
this small watcher: it polls the driver's pid and, once it is gone, ends every process that
carries the driver's mark in its environment (all of Ray's processes inherit the driver's
environment), SIGTERM first, then SIGKILL. Linux only (it reads /proc); elsewhere it does nothing.

    python -m fracture.reaper DRIVER_PID
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

MARK = "FRACTURE_RAY_DRIVER"  # environment variable: the pid of the driver that owns the Ray instance
POLL_S = 1.0
GRACE_S = 3.0


def watch(driver_pid: int) -> None:
    """Start the watcher for this process's local Ray instance (call before ray.init, which inherits MARK)."""
    if not Path("/proc").is_dir():
        return
    os.environ[MARK] = str(driver_pid)
    subprocess.Popen(
        [sys.executable, "-m", "fracture.reaper", str(driver_pid)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, MARK: ""},  # the watcher must not find itself
        close_fds=True,
    )


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def marked(driver_pid: int) -> list[int]:
    """Pids of the processes whose environment carries MARK=driver_pid."""
    needle = f"{MARK}={driver_pid}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone, or not ours
            pass
    return found


def reap(driver_pid: int, rounds: int = 5) -> None:
    """SIGTERM, then SIGKILL what is left; again while marked processes remain (a dying raylet may
    still be starting a worker when the first round looks)."""
    for _ in range(rounds):
        if not marked(driver_pid):
            return
        for signum, wait_s in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, 0.5)):
            for pid in marked(driver_pid):
                try:
                    os.kill(pid, signum)
                except OSError:
                    pass
            deadline = time.time() + wait_s
            while marked(driver_pid) and time.time() < deadline:
                time.sleep(0.2)


def main() -> None:
    driver_pid = int(sys.argv[1])
    while _alive(driver_pid):
        time.sleep(POLL_S)
    reap(driver_pid)


if __name__ == "__main__":
    main()
