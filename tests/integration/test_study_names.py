"""One name, one study: a second study under a taken name is refused before Ray starts, and
--overwrite starts a new study with a parent run of its own that a resume finds by id."""

from __future__ import annotations

import json

import mlflow
import pytest
from procs import tiny_job_args

from fracture import synthetic, tracking
from fracture.storage import STUDY_FILE

pytestmark = pytest.mark.integration


def _train(run_job, storage, root, *extra):
    return run_job(
        "train.py",
        *tiny_job_args(root, storage, *extra, experiment="names"),
        timeout=600,
    )


def test_a_taken_name_is_refused_and_overwrite_starts_a_study_of_its_own(tmp_path, run_job, synthetic_root):
    storage = tmp_path / "runs"
    first = _train(run_job, storage, synthetic_root)
    assert first.returncode == 0, first.stderr[-3000:]
    record = json.loads((storage / "demo" / STUDY_FILE).read_text())
    uri = f"sqlite:///{storage / 'demo' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    before = client.get_run(record["parent_run_id"]).info

    # Same name, other images: the old study's manifest, cache and parent run must not be reused.
    other = synthetic.generate(tmp_path / "other", n=60, seed=9, min_size=40, max_size=48)
    refused = _train(run_job, storage, other)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode == 2 and len(errors) == 1, refused.stderr[-3000:]
    assert "already exists" in errors[0] and "--overwrite" in errors[0] and f"data.root={synthetic_root}" in errors[0]
    assert "Started a local Ray instance" not in refused.stdout + refused.stderr

    again = _train(run_job, storage, other, "--overwrite")
    assert again.returncode == 0, again.stderr[-3000:]
    renewed = json.loads((storage / "demo" / STUDY_FILE).read_text())
    assert renewed["parent_run_id"] != record["parent_run_id"] and renewed["data"]["root"] == str(other)
    after = client.get_run(record["parent_run_id"]).info
    assert (after.status, after.end_time) == (before.status, before.end_time) == ("FINISHED", before.end_time)
    parents = client.search_runs(
        [client.get_experiment_by_name("names").experiment_id], f"tags.`{tracking.STUDY_TAG}` = 'demo'"
    )
    assert {r.info.run_id for r in parents} == {record["parent_run_id"], renewed["parent_run_id"]}
    assert client.get_run(renewed["parent_run_id"]).data.tags.get(tracking.STUDY_DIR_TAG)
