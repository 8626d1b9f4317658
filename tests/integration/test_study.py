"""The real path end to end on tiny data: local Ray, Ray Data, Ray Train, Tune + Optuna + ASHA, sqlite MLflow."""
from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch

from fracture import checkpoint, data, presets, search, study, tracking
from fracture.model import FractureNet

pytestmark = pytest.mark.integration


def _images(cfg, n=6) -> torch.Tensor:
    frame = data.split_frame(cfg, "val").head(n)
    batch = np.stack([presets.decode_resize(p, cfg.data.image_size) for p in frame[presets.PATH]])
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255)


def test_two_trial_study_tracks_registers_and_reloads(ray_local, tiny_config):
    cfg = tiny_config()
    study.preflight(cfg)
    summary = study.run(cfg)

    client = mlflow.MlflowClient(tracking_uri=summary["tracking_uri"])
    experiment = client.get_experiment_by_name("test")
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if tracking.TRIAL_TAG in r.data.tags]
    parents = [r for r in runs if r.info.run_id == trials[0].data.tags["mlflow.parentRunId"]]
    assert len(trials) == 2 and len(parents) == 1
    assert parents[0].data.tags[tracking.STUDY_TAG] == cfg.name
    for run in trials:
        history = client.get_metric_history(run.info.run_id, "val_auc")
        assert 1 <= len(history) <= cfg.train.epochs          # ASHA may stop one after the grace epoch
        assert set(run.data.params) >= set(cfg.search.space)  # the sampled hyperparameters
        assert run.info.status == "FINISHED"
    # The seed point from points_to_evaluate is the first trial.
    seeded = [r for r in trials if float(r.data.params["model.dropout"]) == 0.5]
    assert seeded, "the study's points_to_evaluate did not run"

    version = client.get_model_version_by_alias(cfg.tracking.model_name, tracking.CHAMPION)
    assert int(version.version) == int(summary["version"]) and summary["champion"]

    # The registered checkpoint loads back, weights_only, and predicts exactly as the trained one.
    x = _images(cfg)
    trained, state = checkpoint.load_model(summary["checkpoint"])
    champion, champion_state = tracking.load_champion(summary["tracking_uri"], cfg.tracking.model_name)
    raw = FractureNet(hidden=cfg.model.hidden).eval()
    raw.load_state_dict(torch.load(f"{summary['checkpoint']}/model.pt", weights_only=True))
    with torch.no_grad():
        expected = trained(x)
        assert torch.equal(champion(x), expected) and torch.equal(raw(x), expected)
    assert champion_state["threshold"] == pytest.approx(summary["threshold"])
    assert champion_state["config"]["name"] == cfg.name and "history" in state

    # A model that does not beat the champion's val AUROC is registered but does not take the alias.
    results = search.restore_tuner(summary["study_dir"], cfg).get_results()
    again = tracking.register_best(results, cfg, summary["tracking_uri"],
                                   tracking.start_study(cfg)[1])
    assert int(again["version"]) == int(summary["version"]) + 1 and not again["champion"]
    assert int(client.get_model_version_by_alias(cfg.tracking.model_name, tracking.CHAMPION).version) == int(version.version)


def test_train_job_single_run_cli(tmp_path, synthetic_root, run_job):
    """jobs/train.py as a user runs it: one trial, no search, summary printed, exit 0."""
    proc = run_job("train.py", f"data.root={synthetic_root}", f"cluster.storage_path={tmp_path}",
                   "data.image_size=32", "train.epochs=1", "train.batch_size_per_worker=8", "cluster.cpus_per_worker=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "=== best trial ===" in proc.stdout and "now @champion" in proc.stdout
    assert "mlflow ui --backend-store-uri sqlite:///" in proc.stdout
