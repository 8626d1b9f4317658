"""A study on S3: the checkpoints, the Tune experiment and Optuna's study (optuna.db) go to the bucket;
`--resume` of the s3:// path the job prints and `--extend` of the study go on from what is there.

A real S3 API without a network: moto's server, bound to 127.0.0.1. The jobs reach it as they would
AWS, through the AWS SDK's environment (AWS_ENDPOINT_URL, which pyarrow's S3FileSystem honours, and
with it Ray's storage). MLflow, the manifest and the decoded cache stay local, as a study on a
cluster keeps them on its tracking server and shared mount.

The interrupted run stores optuna.db from the driver's local copy; the resume then starts without
that copy (HOME is emptied), as a driver on another machine would, so it must come from the bucket.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from procs import job_env, start_tune, stop_session

from fracture.runtime import cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "fracture-test"
NAME = "s3study"
PREFIX = f"runs/{NAME}"
STUDY = f"s3://{BUCKET}/{PREFIX}"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """(boto3 client, the jobs' AWS environment) of a moto S3 server holding an empty BUCKET."""
    import boto3

    port = cluster.free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.time() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert server.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ENDPOINT_URL_S3": endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata probe for credentials or region
        }
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket=BUCKET)
        yield client, env
    finally:
        server.terminate()  # one process, no children: stop_session would wait on it as a zombie
        server.wait(timeout=30)


def _keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def _optuna_trials(client, tmp: Path) -> list[tuple[int, str]]:
    """(number, state) of each trial in the optuna.db stored in the bucket."""
    local = tmp / "optuna-from-s3.db"
    client.download_file(BUCKET, f"{PREFIX}/optuna.db", str(local))
    with contextlib.closing(sqlite3.connect(local)) as db:
        return db.execute("SELECT number, state FROM trials ORDER BY number").fetchall()


def _job(args: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "tune.py"), *args],
        cwd=ROOT,
        env=job_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _interrupted(args: list[str], env: dict, log: Path) -> tuple[int, str]:
    """Run the study and SIGINT it (as Ctrl-C) once trial_001 has reported its first of two epochs."""
    job = start_tune(args, log, env)
    try:
        deadline = time.time() + 240
        while job.poll() is None and "trial_001 epoch 1/2" not in log.read_text() and time.time() < deadline:
            time.sleep(0.2)
        assert job.poll() is None, f"the study ended before the interrupt:\n{log.read_text()[-4000:]}"
        assert time.time() < deadline, f"trial_001 never reported an epoch:\n{log.read_text()[-4000:]}"
        job.send_signal(signal.SIGINT)
        return job.wait(timeout=120), log.read_text()
    finally:
        stop_session(job.pid)


def test_a_study_on_s3_resumes_and_extends_from_the_bucket(s3, tmp_path, synthetic_root, tiny_args):
    client, aws = s3
    import matplotlib

    home = tmp_path / "home"  # the driver's local copy of optuna.db lives under ~/.fracture/<name>
    # (matplotlib's font cache stays the user's: building one in an empty HOME costs ~10 s a job)
    env = {**aws, "HOME": str(home), "MPLCONFIGDIR": matplotlib.get_cachedir()}
    args = tiny_args(
        synthetic_root,
        f"s3://{BUCKET}/runs",
        f"name={NAME}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"data.manifest={tmp_path / 'manifest.parquet'}",
        "search.grace_epochs=2",  # no ASHA: both trials run both epochs, whatever their AUROC
        epochs=2,
        trials=2,
    )

    # --- 1: interrupted in trial 1: Tune's state and optuna.db go to the bucket ---
    rc, output = _interrupted(args, env, tmp_path / "run1.log")
    assert rc == 130, output[-4000:]
    printed = re.search(r"continue it with: (python jobs/tune.py --resume \S+)", output)
    assert printed and printed[1] == f"python jobs/tune.py --resume {STUDY}/tune", output[-4000:]
    assert f"{PREFIX}/optuna.db" in _keys(client, PREFIX) and f"{PREFIX}/tune/tuner.pkl" in _keys(client, PREFIX)
    assert (home / ".fracture" / NAME / "optuna.db").is_file()
    shutil.rmtree(home / ".fracture")  # the resume starts as on another machine: no local copy

    # --- 2: the printed command, pasted as it is, finishes the study ---
    resumed = _job(shlex.split(printed[1])[2:], env)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    assert _optuna_trials(client, tmp_path) == [(0, "COMPLETE"), (1, "COMPLETE")]

    # --- 3: --extend adds a trial that Optuna's stored study numbers after the two ---
    extended = _job(["--extend", STUDY, "search.num_trials=1"], env)
    assert extended.returncode == 0, (extended.stdout + extended.stderr)[-4000:]
    assert _optuna_trials(client, tmp_path) == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE")]
    assert f"--resume {STUDY}/tune_ext1" in extended.stdout

    keys = _keys(client, PREFIX)
    assert any(k.startswith(f"{PREFIX}/tune_ext1/") for k in keys)
    checkpoints = {k.split("/")[3] for k in keys if k.startswith(f"{PREFIX}/train/") and "/checkpoint_" in k}
    assert len(checkpoints) == 3, sorted(k for k in keys if "/train/" in k)  # one Train run per trial, in the bucket
    assert not any(p.startswith("s3:") for p in os.listdir(ROOT)), "a URI was read as a local path"
