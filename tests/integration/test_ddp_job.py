"""jobs/train.py as a user runs it, with two DDP workers, on data with defects: it trains on the
rest, warms up then unfreezes the backbone, keeps every Ray port on 127.0.0.1, and leaves no process
behind when it ends.

One job serves every test here. It runs in a fresh interpreter (no Ray settings in its environment)
in a session of its own, so every process it starts, Ray's included, can be found by session id
while `ss` lists the sockets they listen on. Two DDP ranks also bring the rendezvous store and
gloo's links, which a one-worker trial never opens.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from procs import job_env, session_pids, stop_session

from fracture.data import manifest
from fracture.model import checkpoint

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


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "?"


def _with_defects(src, dst):
    """A copy of the synthetic set with FracAtlas' kinds of defect added: the run must train on the rest."""
    shutil.copytree(src, dst)
    csv = dst / "dataset.csv"
    lines = csv.read_text().splitlines()
    negatives = sorted((dst / "images" / "Non_fractured").glob("*.jpg"))
    truncated, text = negatives[0], negatives[1]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    text.write_text("not an image")
    copy_id = "IMG9999999.jpg"
    shutil.copy(negatives[2], negatives[2].with_name(copy_id))
    row = next(line for line in lines if line.startswith(negatives[2].name))
    csv.write_text("\n".join([*lines, row.replace(negatives[2].name, copy_id)]) + "\n")
    return {truncated.name: "truncated", text.name: "unreadable", copy_id: "duplicate"}


@pytest.fixture(scope="module")
def ddp_job(tmp_path_factory, synthetic_root, tiny_args):
    tmp = tmp_path_factory.mktemp("ddp")
    root = tmp / "atlas"
    defects = _with_defects(synthetic_root, root)
    env = job_env()
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # the default a user gets
    argv = [
        sys.executable,
        str(ROOT / "jobs" / "train.py"),
        *tiny_args(root, tmp / "runs", experiment="ddp", epochs=2),
        "train.warmup_epochs=1",
        "cluster.num_workers=2",  # two DDP ranks: the rendezvous store and gloo's links
    ]
    log = tmp / "job.log"
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
    return SimpleNamespace(rc=rc, output=log.read_text(), sockets=sockets, leftover=names, defects=defects, tmp=tmp)


def test_a_local_study_listens_on_loopback_only_and_exits_clean(ddp_job):
    assert ddp_job.rc == 0, ddp_job.output[-3000:]
    # The job's own Ray ran: its GCS and raylet were seen listening.
    assert {"gcs_server", "raylet"} <= set(ddp_job.sockets.values()), ddp_job.sockets
    exposed = {a: n for a, n in ddp_job.sockets.items() if not _is_loopback(a)}
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert not ddp_job.leftover, f"still running 10 s after the job ended: {ddp_job.leftover}"


def test_train_job_two_ddp_workers_warmup_and_defects(ddp_job):
    """2 gloo DDP workers, a head-only warm-up epoch then the unfrozen backbone, summary printed, the
    defective images listed and left out, the checkpoint loads back."""
    assert ddp_job.rc == 0, ddp_job.output[-3000:]
    assert "=== best trial ===" in ddp_job.output and "now @champion" in ddp_job.output
    assert "mlflow ui --backend-store-uri sqlite:///" in ddp_job.output

    table = manifest.load(ddp_job.tmp / "runs" / "demo" / "manifest.parquet").set_index("image_id")
    for image_id, status in ddp_job.defects.items():
        assert table.loc[image_id, "status"] == status and not table.loc[image_id, "usable"]
    best = ddp_job.output.split("checkpoint: ")[1].split()[0]
    checkpoint.load_model(best)
    # The last epoch's checkpoint (kept beside the best) holds the whole history.
    last = max(
        (checkpoint.read_state(d) for d in Path(best).parent.glob("checkpoint_*") if d.is_dir()),
        key=lambda st: st["epoch"],
    )
    assert [h["trainable_blocks"] for h in last["history"]] == [0, 5]  # warm-up, then unfrozen
    assert last["config"]["cluster"]["num_workers"] == 2
