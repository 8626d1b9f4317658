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
import time
import uuid
from pathlib import Path

import mlflow
import pytest
from procs import ray_cli, ray_head

from fracture.track import registry, tags

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
# As cluster.yaml starts its head: `ray job stop` interrupts the study the way Ctrl-C does.
STOP_AS_CTRL_C = {"RAY_JOB_STOP_SIGNAL": "SIGINT", "RAY_JOB_STOP_WAIT_TIME_S": "120"}
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def _status(head, job_id: str) -> str | None:
    out = ray_cli(head, "job", "status", "--address", head.address, job_id)
    text = out.stdout + out.stderr
    ended = re.search(rf"Job '{re.escape(job_id)}' (succeeded|failed|was stopped)", text)
    if ended:
        return {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}[ended.group(1)]
    running = re.search(rf"Status for job '{re.escape(job_id)}': (\w+)", text)
    return running.group(1) if running else None


@pytest.fixture
def head(tmp_path):
    """A one-node cluster started with `ray start --head` on free loopback ports; stopped afterwards."""
    with ray_head(tmp_path, env=STOP_AS_CTRL_C) as started:
        yield started


def _submit(head, *args: str, wait_s: float = 480) -> tuple[str, str]:
    """`ray job submit --working-dir . -- python jobs/tune.py ARGS`, waited for: (final status, job logs)."""
    job_id = _start(head, *args)
    status, deadline = None, time.time() + wait_s
    while status not in TERMINAL and time.time() < deadline:
        time.sleep(5)
        status = _status(head, job_id)
    return status, _logs(head, job_id)


def _logs(head, job_id: str) -> str:
    logs = ray_cli(head, "job", "logs", "--address", head.address, job_id)
    return logs.stdout + logs.stderr


def _start(head, *args: str) -> str:
    """`ray job submit --no-wait` of jobs/tune.py ARGS; returns the job's id."""
    job_id = f"fracture-test-{uuid.uuid4().hex[:8]}"
    submit = ray_cli(
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
    return job_id


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


def test_ray_job_stop_interrupts_a_study_that_resume_then_finishes(head, tmp_path, synthetic_root, tiny_args):
    """`ray job stop` sends SIGINT (RAY_JOB_STOP_SIGNAL, as cluster.yaml sets it): Tune saves the
    study, the job says how to continue it, and `--resume` then finishes every trial."""
    storage = tmp_path / "runs"
    study = tiny_args(synthetic_root, storage, epochs=4, trials=2)
    job_id = _start(head, "--config", "jobs/studies/demo.yaml", *study)
    deadline = time.time() + 300
    while not re.search(r"trial_\d{3} epoch 1/4", _logs(head, job_id)):
        assert _status(head, job_id) not in TERMINAL and time.time() < deadline, _logs(head, job_id)[-3000:]
        time.sleep(3)
    stop = ray_cli(head, "job", "stop", "--address", head.address, job_id, timeout=180)
    assert stop.returncode == 0, stop.stdout[-2000:] + stop.stderr[-2000:]
    status, deadline = _status(head, job_id), time.time() + 150
    while status not in TERMINAL and time.time() < deadline:
        time.sleep(2)
        status = _status(head, job_id)
    output = _logs(head, job_id)
    assert status == "STOPPED", output[-3000:]
    study_dir = storage / "demo" / "tune"
    assert f"interrupted: the study was saved; continue it with: python jobs/tune.py --resume {study_dir}" in output, (
        output[-3000:]
    )
    assert "Traceback" not in output, output[-3000:]

    status, output = _submit(head, "--resume", str(study_dir), wait_s=300)
    assert status == "SUCCEEDED", output[-4000:]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{storage / 'demo' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    trials = [r for r in runs if tags.TRIAL_TAG in r.data.tags]
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials), [r.info for r in trials]
