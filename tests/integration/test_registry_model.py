"""The registered model as a user meets it: loaded from the registry, any batch size, both flavors.

One tiny study (conftest's one_trial_study: 1 trial x 1 epoch at 32 px, real local Ray, sqlite
MLflow) registers a version; every test here reads that version back the way a user would and
compares it with the project's own checkpoint loader.
"""

from __future__ import annotations

import mlflow
import mlflow.pyfunc
import mlflow.pytorch
import numpy as np
import pandas as pd
import pytest
import torch

from fracture.core import metrics
from fracture.model import checkpoint
from fracture.track import registry, store, tags

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registered(one_trial_study):
    """(cfg, summary) of the finished one-trial study; MLflow's fluent API points at its store meanwhile."""
    cfg, summary = one_trial_study
    with store.fluent(summary["tracking_uri"]):
        yield cfg, summary


def _images(n: int, size: int) -> np.ndarray:
    return np.random.default_rng(n).random((n, 3, size, size), dtype=np.float32)


def _checkpoint_probability(summary, x: np.ndarray) -> np.ndarray:
    net, _ = checkpoint.load_model(summary["checkpoint"])
    with torch.no_grad():
        return torch.sigmoid(net(torch.from_numpy(x))).reshape(-1).numpy()


@pytest.mark.parametrize("n", [1, 5])
def test_pytorch_flavor_takes_any_batch_and_returns_the_checkpoints_logits(registered, n):
    cfg, summary = registered
    net = mlflow.pytorch.load_model(f"models:/{cfg.tracking.model_name}@{registry.CHAMPION}")
    x = _images(n, cfg.data.image_size)
    with torch.no_grad():
        logits = net(torch.from_numpy(x))
    assert logits.shape == (n, 1)
    np.testing.assert_allclose(
        torch.sigmoid(logits).reshape(-1).numpy(), _checkpoint_probability(summary, x), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("n", [1, 5])
def test_pyfunc_returns_probability_and_decision_at_the_stored_threshold(registered, n):
    cfg, summary = registered
    model = mlflow.pyfunc.load_model(f"models:/{cfg.tracking.model_name}@{registry.CHAMPION}")
    x = _images(n, cfg.data.image_size)
    out = model.predict(x)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == ["probability", "fracture"] and len(out) == n
    np.testing.assert_allclose(out["probability"], _checkpoint_probability(summary, x), rtol=1e-5, atol=1e-6)
    assert out["fracture"].dtype == bool
    assert (out["fracture"] == (out["probability"] >= summary["threshold"])).all()


def test_pyfunc_threshold_is_the_models_and_can_be_overridden_at_load(registered):
    cfg, summary = registered
    uri = f"models:/{cfg.tracking.model_name}/{summary['version']}"
    assert mlflow.pyfunc.load_model(uri).model_config["threshold"] == pytest.approx(summary["threshold"])
    everything = mlflow.pyfunc.load_model(uri, model_config={"threshold": 0.0})
    assert everything.predict(_images(3, cfg.data.image_size))["fracture"].all()


def test_version_describes_input_output_threshold_metrics_and_study(registered):
    cfg, summary = registered
    client = mlflow.MlflowClient()
    version = client.get_model_version(cfg.tracking.model_name, summary["version"])
    size = cfg.data.image_size
    text = version.description
    for expected in (
        f"N×3×{size}×{size}",
        f"{size} px",
        "[0, 1]",
        "probability",
        "fracture",
        "logits",
        f"{summary['threshold']:.6f}",
        "sensitivity",
        "specificity",
        cfg.name,
        summary["study"]["parent_run_id"],
        str(summary["study_dir"]),
    ):
        assert expected in text, (expected, text)
    assert float(version.tags["threshold"]) == pytest.approx(summary["threshold"], abs=1e-6)
    assert float(version.tags["val_auc"]) == pytest.approx(summary["val_auc"], abs=1e-6)
    assert version.tags["study"] == cfg.name and version.tags["image_size"] == str(size)


def test_runs_link_to_the_version_and_trial_charts_stay_per_epoch(registered):
    cfg, summary = registered
    client = mlflow.MlflowClient()
    trial = client.get_run(summary["run_id"])
    parent = client.get_run(summary["study"]["parent_run_id"])
    name = f"{cfg.tracking.model_name}/{summary['version']}"
    for run in (trial, parent):
        assert run.data.tags[tags.REGISTERED_TAG] == name
        assert run.data.tags[tags.REGISTERED_URI_TAG] == f"models:/{name}"
    note = parent.data.tags[tags.RUN_NOTE_TAG]  # the UI's run description
    assert f"**{name}**" in note and "1 trial (1 finished)" in note and "@champion" in note
    # Registration adds no point to the trial's per-epoch best_val_auc chart.
    history = client.get_metric_history(summary["run_id"], metrics.BEST)
    assert [m.step for m in history] == list(range(len(history)))
    assert trial.data.tags[tags.SELECTED_EPOCH_TAG] == str(summary["epoch"])
    assert (
        trial.info.end_time < client.get_model_version(cfg.tracking.model_name, summary["version"]).creation_timestamp
    )


def test_parent_run_holds_space_trials_table_plots_and_the_experiment_opens_on_runs(registered, tmp_path):
    cfg, summary = registered
    client = mlflow.MlflowClient()
    parent_id = summary["study"]["parent_run_id"]
    params = client.get_run(parent_id).data.params
    assert params["space.model.dropout"] == "uniform[0.2, 0.6]"
    assert set(params) >= {f"space.{k}" for k in cfg.search.space}

    local = mlflow.artifacts.download_artifacts(
        run_id=parent_id, artifact_path=tags.STUDY_ARTIFACT, dst_path=str(tmp_path)
    )
    table = pd.read_csv(f"{local}/trials.csv")
    assert len(table) == 1 and table.loc[0, "run_id"] == summary["run_id"]
    assert table.loc[0, "best_val_auc"] == pytest.approx(summary["val_auc"])
    assert set(table.columns) >= {"trial_id", "status", "epochs", *cfg.search.space}
    files = {p.name for p in tmp_path.rglob("*.png")}
    # One trial: nothing to rank the hyperparameters by, so no importance plot.
    assert files == {"optuna_optimization_history.png", "optuna_parallel_coordinate.png"}, files

    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    assert experiment.tags[tags.EXPERIMENT_KIND_TAG] == tags.CUSTOM_MODEL_KIND
    # MLflow 3.17's UI goes by the page's query, not the tag: the link a user gets carries it.
    assert summary["ui_route"] == f"/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
