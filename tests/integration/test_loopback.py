"""A local study keeps every Ray port on 127.0.0.1, and leaves no process behind when it ends.

The job runs as a user runs it (jobs/train.py in a fresh interpreter, no Ray settings in its
environment) in a session of its own, so every process it starts, Ray's included, can be found
by session id while `ss` lists the sockets they listen on.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from procs import job_env, session_pids, stop_session

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PID = re.compile(r"pid=(\d+)")


def _listening(pids: set[int]) -> dict[str, str]:
    """address:port -> process name, for the TCP sockets these processes listen on."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        fields = line.split()
        owners = fields[-1] if "users:" in fields[-1] else ""
        if {int(p) for p in PID.findall(owners)} & pids:
            found[fields[3]] = owners.split('"')[1] if '"' in owners else owners
    return found


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]").split("%")[0]
    if host in ("*", "0.0.0.0", "::"):
        return False
    ip = ipaddress.ip_address(host)
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback  # ss shows [::ffff:127.0.0.1]


def test_a_local_study_listens_on_loopback_only_and_exits_clean(tmp_path, synthetic_root):
    env = job_env()
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # the default a user gets
    argv = [
        sys.executable,
        str(ROOT / "jobs" / "train.py"),
        f"data.root={synthetic_root}",
        f"cluster.storage_path={tmp_path / 'runs'}",
        "data.image_size=32",
        "train.epochs=2",
        "train.batch_size_per_worker=8",
        "cluster.num_workers=2",  # two DDP ranks: the rendezvous store and gloo's links
        "cluster.cpus_per_worker=1",
        "tracking.experiment=loopback",
    ]
    log = tmp_path / "job.log"
    with log.open("w") as out:
        job = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    sockets: dict[str, str] = {}
    try:
        deadline = time.time() + 480
        while job.poll() is None and time.time() < deadline:
            sockets |= _listening(set(session_pids(job.pid)))
            time.sleep(1)
        rc = job.wait(timeout=max(1, deadline - time.time()))
        # Ray's daemons are told to exit by the driver's shutdown; they may take a moment.
        leftover = session_pids(job.pid)
        for _ in range(10):
            if not leftover:
                break
            time.sleep(1)
            leftover = session_pids(job.pid)
        names = {p: _name(p) for p in leftover}
    finally:
        stop_session(job.pid)
    assert rc == 0, log.read_text()[-3000:]
    # The job's own Ray ran: its GCS and raylet were seen listening.
    assert {"gcs_server", "raylet"} <= set(sockets.values()), sockets
    exposed = {a: n for a, n in sockets.items() if not _is_loopback(a)}
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert not names, f"still running 10 s after the job ended: {names}"


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "?"
