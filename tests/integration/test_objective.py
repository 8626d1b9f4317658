"""search.objective and search.rank_by on the real path: a tiny study ranked by a bootstrap lower bound.

Two trials x two epochs at 32 px (local Ray, Tune + Optuna + ASHA, sqlite MLflow), ranked by the
lower bound of val specificity at 90% sensitivity: every epoch reports it, the registered checkpoint
is the best by it, and the registered version carries it as the tag the next study's champion rule reads.
"""

from __future__ import annotations

import math

import mlflow
import pytest

from fracture import study
from fracture.core import metrics
from fracture.data import pipeline
from fracture.model import checkpoint
from fracture.track import registration, registry, study_runs, tags
from fracture.tune import search

pytestmark = pytest.mark.integration

REPORTED = ("val_auc", "val_spec_at_sens", "val_auc_lower", "val_spec_at_sens_lower", "best_val_spec_at_sens_lower")


def test_a_study_ranked_by_the_lower_bound_of_specificity_at_sensitivity(ray_local, tiny_config):
    cfg = tiny_config("search.objective=specificity_at_sensitivity", "search.rank_by=lower_bound")
    ranked = metrics.ranked(cfg)
    assert ranked == "val_spec_at_sens_lower"
    study.preflight(cfg)
    summary = study.run(cfg)

    client = mlflow.MlflowClient(tracking_uri=summary["tracking_uri"])
    experiment = client.get_experiment_by_name("test")
    trials = [r for r in client.search_runs([experiment.experiment_id]) if tags.TRIAL_TAG in r.data.tags]
    assert len(trials) == 2
    scores = []
    for run in trials:
        steps = {k: sorted(m.step for m in client.get_metric_history(run.info.run_id, k)) for k in REPORTED}
        assert 1 <= len(steps["val_auc"]) <= cfg.train.epochs  # ASHA may stop one after the grace epoch
        assert all(s == steps["val_auc"] for s in steps.values()), steps  # every epoch, every one of them
        history = client.get_metric_history(run.info.run_id, ranked)
        assert all(math.isfinite(m.value) for m in history)
        scores += [m.value for m in history]

    # Tune's best trial, its kept checkpoints and the registered epoch are all judged by the lower bound.
    assert summary["ranked_by"] == ranked and summary["objective"] == "val_spec_at_sens"
    assert summary["score"] == pytest.approx(max(scores)) and summary["score"] == summary["lower"]
    _, state = checkpoint.load_model(summary["checkpoint"])
    assert state["metrics"][ranked] == pytest.approx(summary["score"])
    assert state["best_" + ranked] >= summary["score"]  # early stopping counted the same metric

    version = client.get_model_version(cfg.tracking.model_name, summary["version"])
    assert version.tags[ranked] == f"{summary['score']:.{registry.TAG_DIGITS}f}"
    assert float(version.tags["val_spec_at_sens"]) == pytest.approx(summary["point"], abs=1e-6)
    assert summary["champion"] and summary["previous_champion_score"] is None
    parent = client.get_run(trials[0].data.tags["mlflow.parentRunId"])
    assert parent.data.metrics[metrics.best(cfg)] == pytest.approx(summary["score"])

    # Registered again, the same checkpoint does not beat the champion's stored lower bound.
    results = search.restore_tuner(
        cfg, summary["study_dir"], pipeline.build_datasets(cfg), pipeline.pos_weight(cfg)
    ).get_results()
    again = registration.register(
        cfg,
        summary["tracking_uri"],
        study_runs.start_study(cfg, summary["study_dir"])[1],
        registry.candidate(results, ranked),
    )
    assert not again["champion"] and again["previous_champion_score"] == float(version.tags[ranked])
