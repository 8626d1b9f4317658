"""Ends a local Ray instance's processes when the driver that started it dies without shutting it down.

`ray.init()` on a laptop starts GCS, raylet, agents and workers. A driver that exits, even on
Ctrl-C, shuts them down; one killed with SIGKILL (or by the OOM killer) cannot, and Ray's
dashboard and runtime-env agents then live on for minutes, holding ports. So the driver starts
this small watcher: it polls the driver's pid and, once it is gone, ends every process the driver
started (see Owned), SIGTERM first, then SIGKILL. Linux only (it reads /proc); elsewhere it does nothing.

    python -m fracture.runtime.reaper DRIVER_PID
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
        [sys.executable, "-m", "fracture.runtime.reaper", str(driver_pid)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, MARK: ""},  # the watcher must not find itself
        close_fds=True,
    )


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time in clock ticks) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[19])


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def _table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, start time) of every live process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) and stat[0] != "Z":
            table[int(entry.name)] = stat[1:]
    return table


def descendants(roots: set[int], table: dict[int, tuple[int, int]]) -> set[int]:
    """Every process below roots in the process tree (roots excluded)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    stack = list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found - roots


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


class Owned:
    """The driver's processes, known two ways, because either alone can miss one.

    The environment mark finds processes that were reparented to init when their parent died,
    but not one whose environment cannot be read or was replaced (an exec with a fresh env). The
    process tree finds those, but only while their parents live: so the tree is recorded while the
    driver runs (pid and start time, which tells a reused pid apart) and walked again at reap time.
    """

    def __init__(self, driver_pid: int):
        self.driver_pid = driver_pid
        self.seen: dict[int, int] = {}  # pid -> start time

    def record(self) -> None:
        table = _table()
        self.seen = {pid: start for pid, start in self.seen.items() if table.get(pid, (0, -1))[1] == start}
        for pid in descendants({self.driver_pid}, table):
            self.seen[pid] = table[pid][1]

    def now(self) -> set[int]:
        table = _table()
        roots = {pid for pid, start in self.seen.items() if table.get(pid, (0, -1))[1] == start}
        roots |= {pid for pid in marked(self.driver_pid) if pid in table}
        return (roots | descendants(roots, table)) - {os.getpid()}


def reap(owned: Owned, rounds: int = 5) -> None:
    """SIGTERM, then SIGKILL what is left; again while owned processes remain (a dying raylet may
    still be starting a worker when the first round looks)."""
    for _ in range(rounds):
        if not owned.now():
            return
        for signum, wait_s in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, 0.5)):
            for pid in owned.now():
                try:
                    os.kill(pid, signum)
                except OSError:
                    pass
            deadline = time.time() + wait_s
            while owned.now() and time.time() < deadline:
                time.sleep(0.2)


def main() -> None:
    owned = Owned(int(sys.argv[1]))
    while _alive(owned.driver_pid):
        owned.record()
        time.sleep(POLL_S)
    reap(owned)


if __name__ == "__main__":
    main()
