"""Extending a finished study: `jobs/tune.py --extend` adds trials whose Optuna sampler knows the earlier
ones (the study's optuna.db), under the same MLflow parent run, and the study's view covers them all.

Both runs go through study.run in this process, as jobs/tune.py calls it (one Ray start instead of two);
the job itself is checked on a refusal, which ends before Ray starts."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import optuna
import pytest

from fracture import resume, study
from fracture.core.storage import StudyPaths
from fracture.track import tags

pytestmark = pytest.mark.integration


def test_a_finished_study_extended_by_two_has_four_trials_in_one_parent_run(ray_local, tiny_config, run_job, tmp_path):
    cfg = tiny_config("name=ext", "train.epochs=1")  # 1 epoch: ASHA has nothing to prune
    study.preflight(cfg)
    study.run(cfg)
    paths = StudyPaths.of(cfg)
    parent = json.loads(open(paths.record).read())["parent_run_id"]

    more = resume.extend_config(paths.root, overrides=["search.num_trials=2"])
    study.preflight(more, resume=paths.root)
    summary = study.run(more, extend=paths.root)
    assert len(summary["trials"]) == 4 and summary["study_dir"] == paths.extended(1).tune

    # One Optuna study holds all four: the extension's sampler asked it for trial numbers 2 and 3,
    # after the first two, and did not propose the first run's points again.
    trials = optuna.load_study(study_name="ext", storage=f"sqlite:///{paths.optuna}").trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(t.params not in [t.params for t in trials[:2]] for t in trials[2:])

    client = mlflow.MlflowClient(tracking_uri=summary["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    trial_runs = [r for r in runs if tags.TRIAL_TAG in r.data.tags]
    assert sorted(r.info.run_name for r in trial_runs) == ["trial_001", "trial_002", "trial_003", "trial_004"]
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {parent}
    assert [r.info.run_id for r in runs if tags.TRIAL_TAG not in r.data.tags] == [parent]
    assert client.get_run(parent).info.status == "FINISHED"
    assert json.loads(open(paths.record).read())["finished"] is True
    # The extension's trials ran in tune_ext1/ and carry on the numbering there.
    names = sorted(p.name.rsplit("_", 1)[0] for p in Path(paths.extended(1).tune).glob("trial_*") if p.is_dir())
    assert names == ["trial_003", "trial_004"]

    # The parent run's trials table covers the whole study; each run registered its best.
    table = client.download_artifacts(parent, f"{tags.STUDY_ARTIFACT}/trials.csv", str(tmp_path))
    rows = open(table).read().strip().splitlines()[1:]
    assert len(rows) == 4 and all(row.split(",")[1] for row in rows), rows  # every trial has its run id
    assert len(client.search_model_versions(f"name = '{cfg.tracking.model_name}'")) == 2

    # The job: extending with another epoch count is refused with one error line, before Ray starts.
    refused = run_job("tune.py", "--extend", paths.root, "search.num_trials=2", "train.epochs=3")
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode == 2 and len(errors) == 1 and "train.epochs=3" in errors[0], refused.stderr[-3000:]
