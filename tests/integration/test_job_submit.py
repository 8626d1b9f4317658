"""`ray job submit` of a study to a `ray start` head, as the README does it.

The head runs from this venv, as a user's would after activating it (its PATH starts with the
venv's bin, so the job's `python` is the venv's and imports the installed `fracture`). Token
authentication stays on: the head, the job and the CLI share a token file made for the test
(RAY_AUTH_MODE=token + RAY_AUTH_TOKEN_PATH); the CLI sends no token unless RAY_AUTH_MODE=token.
`--working-dir .` uploads the repo minus what .gitignore names (.venv/, /runs/, /data/, ...),
which Ray honours by default. Everything listens on, and talks to, 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from procs import stop_session

from fracture.runtime import cluster
from fracture.track import registry, tags

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).parent / "ray"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def _cli(head, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(RAY), *args], cwd=ROOT, env=head.env, capture_output=True, text=True, timeout=timeout)


def _status(head, job_id: str) -> str | None:
    out = _cli(head, "job", "status", "--address", head.address, job_id)
    text = out.stdout + out.stderr
    ended = re.search(rf"Job '{re.escape(job_id)}' (succeeded|failed|was stopped)", text)
    if ended:
        return {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}[ended.group(1)]
    running = re.search(rf"Status for job '{re.escape(job_id)}': (\w+)", text)
    return running.group(1) if running else None


@pytest.fixture
def head(tmp_path):
    """A one-node cluster started with `ray start --head` on free loopback ports; stopped afterwards."""
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {
        **os.environ,
        "PATH": f"{RAY.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }  # single machine: Ray keeps to 127.0.0.1
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_API_SERVER_ADDRESS"):
        env.pop(key, None)
    ports = {
        name: cluster.free_port()
        for name in (
            "port",
            "dashboard-port",
            "ray-client-server-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
        )
    }
    log = tmp_path / "head.log"
    with log.open("w") as out:
        # --block keeps `ray start` as the leader of a session of its own: teardown ends that session only.
        proc = subprocess.Popen(
            [
                str(RAY),
                "start",
                "--head",
                "--block",
                "--node-ip-address=127.0.0.1",
                "--dashboard-host=127.0.0.1",
                "--num-cpus=4",
                "--disable-usage-stats",
                *[f"--{name}={port}" for name, port in ports.items()],
            ],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    head = SimpleNamespace(address=f"http://127.0.0.1:{ports['dashboard-port']}", env=env, pid=proc.pid, log=log)
    try:
        deadline = time.time() + 180
        while _cli(head, "job", "list", "--address", head.address).returncode != 0:
            assert proc.poll() is None and time.time() < deadline, f"ray start failed:\n{log.read_text()[-3000:]}"
            time.sleep(2)
        yield head
    finally:
        stop_session(proc.pid)
        proc.wait(timeout=30)
        address_file = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
        if address_file.is_file() and address_file.read_text().strip() == f"127.0.0.1:{ports['port']}":
            address_file.unlink()  # `ray start` pointed "the latest cluster" here


def _submit(head, *args: str, wait_s: float = 480) -> tuple[str, str]:
    """`ray job submit --working-dir . -- python jobs/tune.py ARGS`, waited for: (final status, job logs)."""
    job_id = f"fracture-test-{uuid.uuid4().hex[:8]}"
    submit = _cli(
        head,
        "job",
        "submit",
        "--address",
        head.address,
        "--submission-id",
        job_id,
        "--working-dir",
        ".",
        "--no-wait",
        "--",
        "python",
        "jobs/tune.py",
        *args,
    )
    assert submit.returncode == 0, submit.stdout[-2000:] + submit.stderr[-3000:]
    status, deadline = None, time.time() + wait_s
    while status not in TERMINAL and time.time() < deadline:
        time.sleep(5)
        status = _status(head, job_id)
    logs = _cli(head, "job", "logs", "--address", head.address, job_id)
    return status, logs.stdout + logs.stderr


def test_ray_job_submit_runs_a_study_and_registers_the_champion(head, tmp_path, tmp_path_factory, synthetic_root):
    # The demo's relative paths would point into Ray's temporary copy of the project: refused up front.
    status, output = _submit(head, "--config", "jobs/studies/demo.yaml", wait_s=120)
    assert status == "FAILED" and "error: cluster.storage_path=" in output and "--working-dir uploaded" in output, (
        output[-3000:]
    )
    assert "Traceback" not in output, output[-3000:]

    storage = tmp_path / "runs"
    tiny = [
        f"data.root={synthetic_root}",
        f"cluster.storage_path={storage}",
        f"data.cache_dir={tmp_path_factory.getbasetemp() / 'decoded-cache'}",
        "data.image_size=32",
        "search.num_trials=2",
        "train.epochs=1",
        "train.batch_size_per_worker=8",
        "tracking.experiment=test",
    ]
    # A trial this 4-CPU head can never place: refused at once, where it would otherwise wait for
    # resources forever.
    status, output = _submit(head, "--config", "jobs/studies/demo.yaml", *tiny, "cluster.cpus_per_worker=5", wait_s=180)
    assert status == "FAILED" and "error: one trial needs 5 CPU (5 for the trial" in output, output[-3000:]

    status, output = _submit(head, "--config", "jobs/studies/demo.yaml", *tiny, "cluster.cpus_per_worker=1")
    assert status == "SUCCEEDED", f"job {status}:\n{output[-5000:]}"
    assert "now @champion" in output
    # Workers reach this cluster's State API by its address, not by guessing among local clusters.
    assert "Found multiple active Ray instances" not in output

    # What --working-dir uploaded: the code, not the venv, the data or earlier runs.
    sessions = sorted((Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray").glob(f"session_*_{head.pid}"))
    packages = [p for p in sessions[-1].glob("runtime_resources/working_dir_files/*") if p.is_dir()]
    assert packages and all((p / "platform" / "fracture" / "study.py").is_file() for p in packages)
    for package in packages:
        assert not {".venv", "runs", "data", ".git"} & {p.name for p in package.iterdir()}, sorted(package.iterdir())

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{storage / 'demo' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("test")
    trials = [r for r in client.search_runs([experiment.experiment_id]) if tags.TRIAL_TAG in r.data.tags]
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    assert client.get_model_version_by_alias("fracture", registry.CHAMPION)
