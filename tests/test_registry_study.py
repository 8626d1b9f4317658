"""A study's parent run shows the whole study: space params, trials.csv, Optuna's plots; its experiment opens on runs.

Tune's trial results are built as real `ray.tune.Result`s (what a ResultGrid yields), without
running Ray; MLflow is a real sqlite store.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import ray.tune

from fracture.core import metrics
from fracture.core.config import load
from fracture.track import store, study_runs, tags
from fracture.tune import trials

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg(tmp_path):
    return load(
        ROOT / "jobs" / "studies" / "demo.yaml",
        [
            f"cluster.storage_path={tmp_path / 'runs'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "tracking.experiment=test",
            "train.epochs=3",
        ],
    )


def _result(
    cfg, trial_id: str, aucs: list[float], *, error: Exception | None = None, early_stopped=False, **searched
) -> ray.tune.Result:
    """One trial as Tune returns it: last reported metrics (with the trial's config) and its per-epoch frame."""
    config = cfg.to_dict()
    for dotted, value in searched.items():
        section, key = dotted.replace("__", ".").split(".")
        config[section][key] = value
    last = {"trial_id": trial_id, "config": {"config": config}}
    if aucs:
        last |= {
            "val_auc": aucs[-1],
            "best_val_auc": max(aucs),
            "epochs_done": len(aucs),
            "epoch": len(aucs) - 1,
            "early_stopped": early_stopped,
        }
    frame = pd.DataFrame({"val_auc": aucs, "epoch": range(len(aucs))}) if aucs else None
    return ray.tune.Result(
        metrics=last, checkpoint=None, error=error, path=f"/nowhere/{trial_id}", metrics_dataframe=frame
    )


def _study(cfg) -> list[ray.tune.Result]:
    return [
        _result(
            cfg, "a", [0.6, 0.7, 0.65], model__dropout=0.5, model__l2=1e-3, optim__lr_head=1e-3, optim__lr_backbone=1e-4
        ),
        _result(cfg, "b", [0.55], model__dropout=0.3, model__l2=1e-5, optim__lr_head=2e-4, optim__lr_backbone=3e-5),
        _result(
            cfg,
            "c",
            [0.5, 0.52],
            early_stopped=True,
            model__dropout=0.4,
            model__l2=1e-4,
            optim__lr_head=5e-4,
            optim__lr_backbone=2e-5,
        ),
        _result(cfg, "d", [], error=RuntimeError("worker died")),
    ]


def test_trials_table_has_one_row_per_trial_with_status_epochs_best_and_searched_values(cfg):
    table = trials.trials_table(_study(cfg), cfg, {"a": "run-a", "b": "run-b"})
    assert list(table["trial_id"]) == ["a", "b", "c", "d"]
    assert list(table["run_id"]) == ["run-a", "run-b", "", ""]
    assert list(table["status"]) == ["finished", "scheduler_stopped", "early_stopped", "error"]
    assert list(table["epochs"]) == [3, 1, 2, 0]
    assert table["best_val_auc"].iloc[:3].tolist() == [0.7, 0.55, 0.52] and pd.isna(table["best_val_auc"].iloc[3])
    assert table.loc[1, "model.dropout"] == 0.3 and table.loc[2, "optim.lr_backbone"] == 2e-5


def test_parent_run_gets_space_params_trials_csv_and_optuna_plots(cfg, tmp_path):
    uri, parent = study_runs.start_study(cfg, str(tmp_path / "study"))
    client = store.client(uri)
    experiment = client.get_experiment_by_name("test")
    trial_run = client.create_run(experiment.experiment_id, tags={"mlflow.parentRunId": parent, tags.TRIAL_TAG: "a"})

    summary = {
        "study": {"name": cfg.name},
        "trial_id": "a",
        "epoch": 1,
        "val_auc": 0.7,
        "objective": "val_auc",
        "point": 0.7,
        "lower": 0.61,
        "ranked_by": "val_auc",
        "score": 0.7,
        "threshold": 0.42,
        "model_uri": "models:/fracture/3",
        "champion": True,
        "previous_champion_score": None,
    }
    study_runs.log_study_results(_study(cfg), cfg, uri, parent, summary)

    run = client.get_run(parent)
    params = run.data.params
    note = run.data.tags[tags.RUN_NOTE_TAG]
    assert "4 trials (1 finished, 1 scheduler stopped, 1 early stopped, 1 error)" in note
    assert "**fracture/3**" in note and "now `@champion`" in note
    assert "val_auc 0.7000 (95% lower bound 0.6100)" in note
    assert run.data.metrics[metrics.BEST] == 0.7
    assert params["space.model.l2"] == "loguniform[1e-06, 0.001]"
    assert params["space.optim.lr_head"] == "loguniform[0.0001, 0.003]" and params["search.num_trials"] == "4"
    local = Path(
        mlflow.artifacts.download_artifacts(
            run_id=parent, artifact_path=tags.STUDY_ARTIFACT, dst_path=str(tmp_path / "got"), tracking_uri=uri
        )
    )
    assert {p.name for p in local.iterdir()} == {
        "trials.csv",
        "optuna_optimization_history.png",
        "optuna_param_importances.png",
        "optuna_parallel_coordinate.png",
    }
    table = pd.read_csv(local / "trials.csv")
    assert table.set_index("trial_id").loc["a", "run_id"] == trial_run.info.run_id
    assert all((local / name).stat().st_size > 10_000 for name in (p.name for p in local.glob("*.png")))


def test_optuna_study_takes_every_trial_that_reported_and_importances_need_two(cfg, tmp_path, caplog):
    table = trials.trials_table(_study(cfg), cfg, {})
    study = trials.optuna_study(table, cfg)
    assert [t.value for t in study.trials] == [0.7, 0.55, 0.52]  # the errored one has nothing to show
    assert study.best_trial.user_attrs["trial_id"] == "a"

    with caplog.at_level(logging.INFO, logger="fracture.tune.trials"):
        written = trials.optuna_plots(trials.optuna_study(table.head(1), cfg), tmp_path)
    assert {p.name for p in written} == {"optuna_optimization_history.png", "optuna_parallel_coordinate.png"}
    assert "param_importances plot skipped" in caplog.text


def test_optuna_plots_leave_matplotlib_style_as_it_was(cfg, tmp_path):
    import matplotlib

    before = dict(matplotlib.rcParams)
    trials.optuna_plots(trials.optuna_study(trials.trials_table(_study(cfg), cfg, {}), cfg), tmp_path)
    assert dict(matplotlib.rcParams) == before


def test_experiment_opens_on_runs_new_or_existing(cfg, tmp_path):
    uri = cfg.tracking.uri
    client = store.client(uri)
    # made before the tag existed: no kind (its artifacts in tmp, not in ./mlruns of the checkout)
    client.create_experiment("older", artifact_location=(tmp_path / "art").as_uri())
    study_runs.start_study(cfg.replace(tracking={"experiment": "older"}), str(tmp_path / "s1"))
    study_runs.start_study(cfg, str(tmp_path / "s2"))
    for name in ("older", "test"):
        kind = client.get_experiment_by_name(name).tags[tags.EXPERIMENT_KIND_TAG]
        assert kind == tags.CUSTOM_MODEL_KIND


def test_experiment_kind_a_user_chose_is_kept(cfg, tmp_path):
    client = store.client(cfg.tracking.uri)
    client.create_experiment(
        "test", artifact_location=(tmp_path / "art").as_uri(), tags={tags.EXPERIMENT_KIND_TAG: "finetuning"}
    )
    study_runs.start_study(cfg, str(tmp_path / "s"))
    assert client.get_experiment_by_name("test").tags[tags.EXPERIMENT_KIND_TAG] == "finetuning"
