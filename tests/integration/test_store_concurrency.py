"""Several jobs on one fresh sqlite MLflow store at once: a study and three evaluation loggers.

MLflow creates a sqlite store lazily, on a process's first use, by running its schema migrations;
two processes doing that at once leave the store half-migrated for good (issue #15, item 2). Here
four processes start together on a store that does not exist yet: jobs/train.py (a one-trial
study, so trial runs, metrics and a registered model) and three processes that log evaluation
runs through fracture.track, as jobs/evaluate.py does after scoring. The three meet at one
instant, so their first touches of the store really coincide, and keep logging while the study
trains. All four must succeed and the store must stay usable.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from procs import job_env, stop_session

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
LOGGERS = 3

# One evaluation logger: wait for the shared start instant (imports done), then log an evaluation
# run (metrics + a file) every few seconds until the study has ended (the stop file), at least twice.
LOGGER = """
import sys, time
from pathlib import Path

from fracture.core.config import load
from fracture.track import study_runs

start, n, stop, storage = float(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
cfg = load(sys.argv[5], sys.argv[6:])
note = storage / f"note-{n}.txt"
note.write_text(f"logger {n}")
while time.time() < start:
    time.sleep(0.01)
logged = 0
while logged < 2 or not stop.exists():
    values = {f"test_metric_{k}": k * 0.01 + n for k in range(40)}
    tags = {"fracture.evaluation": "concurrent"}
    study_runs.log_evaluation(cfg, f"evaluate-{n}-{logged}", values, [note], params={"logger": n}, tags=tags)
    logged += 1
    time.sleep(5)
print("logged", logged)
"""


def test_a_study_and_three_evaluations_share_a_fresh_sqlite_store(tmp_path, synthetic_root, tiny_args):
    storage, db, stop = tmp_path / "runs", tmp_path / "store" / "shared.db", tmp_path / "study-ended"
    storage.mkdir()
    uri = f"sqlite:///{db}"
    overrides = tiny_args(synthetic_root, storage, f"tracking.uri={uri}")
    study_yaml = str(ROOT / "jobs" / "studies" / "demo.yaml")
    start = time.time() + 20  # after the loggers' imports (mlflow, pandas) on a busy 2-core machine
    commands = {"train": [str(ROOT / "jobs" / "train.py"), *overrides]}
    for n in range(LOGGERS):
        args = [str(start), str(n), str(stop), str(storage), study_yaml, *overrides]
        commands[f"logger-{n}"] = ["-c", LOGGER, *args]
    procs = {}
    try:
        for name, command in commands.items():  # output to files: a full pipe would stall a job
            with (tmp_path / f"{name}.log").open("w") as out:
                procs[name] = subprocess.Popen(
                    [sys.executable, *command],
                    cwd=ROOT,
                    env=job_env(),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # so a failed test can end the job's Ray with it
                )
        codes = {"train": procs["train"].wait(timeout=400)}
        stop.touch()
        codes |= {name: p.wait(timeout=120) for name, p in procs.items()}
    finally:
        for p in procs.values():
            stop_session(p.pid)
    failed = {name: (tmp_path / f"{name}.log").read_text()[-3000:] for name, rc in codes.items() if rc != 0}
    assert not failed, "\n\n".join(f"--- {name} (exit {codes[name]}):\n{log}" for name, log in failed.items())

    # The store is whole: every run is there, and a new process can read and write it.
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("test")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    evaluations = [r for r in runs if r.data.tags.get("fracture.evaluation") == "concurrent"]
    logs = [(tmp_path / f"logger-{n}.log").read_text() for n in range(LOGGERS)]
    logged = [int(re.findall(r"^logged (\d+)$", text, re.M)[-1]) for text in logs]
    assert len(evaluations) == sum(logged), logged
    assert all(r.info.status == "FINISHED" and len(r.data.metrics) == 40 for r in evaluations)
    assert sum(r.data.tags.get("fracture.trial_id") is not None for r in runs) == 1
    assert client.get_model_version_by_alias("fracture", "champion")
    after = "import sys, mlflow; mlflow.MlflowClient(sys.argv[1]).create_experiment('after')"
    check = subprocess.run([sys.executable, "-c", after, uri], env=job_env(), capture_output=True, text=True)
    assert check.returncode == 0, check.stderr[-3000:]
