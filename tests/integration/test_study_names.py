"""One name, one study: a second study under a taken name is refused before Ray starts, and
--overwrite starts a new study with a parent run of its own that a resume finds by id.

The --overwrite run is also the suite's --verbose run: Ray's own console output comes back with it.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import mlflow
import pytest
from conftest import _run_job

from fracture.core.storage import STUDY_FILE
from fracture.data import synthetic
from fracture.track import tags

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, synthetic_root, tiny_args):
    """A first study, a second under its name on other images (refused), then that one with --overwrite --verbose."""
    tmp = tmp_path_factory.mktemp("names")
    storage = tmp / "runs"

    def train(root, *extra):
        return _run_job("train.py", *tiny_args(root, storage, experiment="names"), *extra, timeout=600)

    first = train(synthetic_root)
    assert first.returncode == 0, first.stderr[-3000:]
    record = json.loads((storage / "demo" / STUDY_FILE).read_text())
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{storage / 'demo' / 'mlflow.db'}")
    before = client.get_run(record["parent_run_id"]).info  # what the refused and the --overwrite run must not touch
    # Same name, other images: the old study's manifest, cache and parent run must not be reused.
    other = synthetic.generate(tmp / "other", n=60, seed=9, min_size=40, max_size=48)
    refused = train(other)
    again = train(other, "--overwrite", "--verbose")
    return SimpleNamespace(
        client=client, storage=storage, record=record, before=before, other=other, refused=refused, again=again
    )


def test_a_taken_name_is_refused_and_overwrite_starts_a_study_of_its_own(jobs, synthetic_root):
    client, record, before = jobs.client, jobs.record, jobs.before

    refused = jobs.refused
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode == 2 and len(errors) == 1, refused.stderr[-3000:]
    assert "already exists" in errors[0] and "--overwrite" in errors[0] and f"data.root={synthetic_root}" in errors[0]
    assert "Started a local Ray instance" not in refused.stdout + refused.stderr

    assert jobs.again.returncode == 0, jobs.again.stderr[-3000:]
    renewed = json.loads((jobs.storage / "demo" / STUDY_FILE).read_text())
    assert renewed["parent_run_id"] != record["parent_run_id"] and renewed["data"]["root"] == str(jobs.other)
    after = client.get_run(record["parent_run_id"]).info
    assert (after.status, after.end_time) == (before.status, before.end_time) == ("FINISHED", before.end_time)
    parents = client.search_runs(
        [client.get_experiment_by_name("names").experiment_id], f"tags.`{tags.STUDY_TAG}` = 'demo'"
    )
    assert {r.info.run_id for r in parents} == {record["parent_run_id"], renewed["parent_run_id"]}
    assert client.get_run(renewed["parent_run_id"]).data.tags.get(tags.STUDY_DIR_TAG)


def test_verbose_brings_rays_own_output_back(jobs):
    console = jobs.again.stdout + jobs.again.stderr
    assert jobs.again.returncode == 0, console[-4000:]
    # Tune's table appears only when its 30 s report timer fires, so the plan lines are the sure sign
    assert "Execution plan of Dataset" in console, console[-4000:]
    assert re.search(r"INFO fracture.tune.console: trial_001 epoch 1/1  loss ", console), console[-4000:]
