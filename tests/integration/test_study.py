"""The real path end to end on tiny data: local Ray, Ray Data, Ray Train, Tune + Optuna + ASHA, sqlite MLflow."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch

from fracture import study
from fracture.core import names
from fracture.data import pipeline, presets
from fracture.model import checkpoint
from fracture.model.network import FractureNet
from fracture.track import registration, registry, study_runs, tags
from fracture.train import worker
from fracture.tune import search

pytestmark = pytest.mark.integration


def _images(cfg, n=6) -> torch.Tensor:
    frame = pipeline.split_frame(cfg, "val").head(n)
    batch = np.stack([presets.decode_resize(p, cfg.data.image_size) for p in frame[names.PATH]])
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255)


def test_two_trial_study_tracks_registers_and_reloads(ray_local, tiny_config):
    cfg = tiny_config()
    study.preflight(cfg)
    summary = study.run(cfg)

    client = mlflow.MlflowClient(tracking_uri=summary["tracking_uri"])
    experiment = client.get_experiment_by_name("test")
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if tags.TRIAL_TAG in r.data.tags]
    parents = [r for r in runs if r.info.run_id == trials[0].data.tags["mlflow.parentRunId"]]
    assert len(trials) == 2 and len(parents) == 1
    assert sorted(r.info.run_name for r in trials) == ["trial_001", "trial_002"]  # the console's names
    assert parents[0].data.tags[tags.STUDY_TAG] == cfg.name and parents[0].info.status == "FINISHED"
    for run in trials:
        history = client.get_metric_history(run.info.run_id, "val_auc")
        assert 1 <= len(history) <= cfg.train.epochs  # ASHA may stop one after the grace epoch
        assert set(run.data.params) >= set(cfg.search.space)  # the sampled hyperparameters
        assert run.info.status == "FINISHED"
    # Tune's progress table shows the first four reported metrics: the ones worth watching.
    results = search.restore_tuner(
        cfg, summary["study_dir"], pipeline.build_datasets(cfg), pipeline.pos_weight(cfg)
    ).get_results()
    assert all(list(r.metrics)[:4] == list(worker.SHOWN_FIRST) for r in results), list(results[0].metrics)
    # The seed point from points_to_evaluate is the first trial.
    seeded = [r for r in trials if float(r.data.params["model.dropout"]) == 0.5]
    assert seeded, "the study's points_to_evaluate did not run"

    version = client.get_model_version_by_alias(cfg.tracking.model_name, registry.CHAMPION)
    assert int(version.version) == int(summary["version"]) and summary["champion"]
    # Beside its checkpoint, the registered trial's run shows its learning curves as one picture.
    logged = {a.path for a in client.list_artifacts(summary["run_id"])}
    assert {tags.CURVES_FILE, tags.CHECKPOINT_ARTIFACT} <= logged, logged

    # The registered checkpoint loads back, weights_only, and predicts exactly as the trained one.
    x = _images(cfg)
    trained, state = checkpoint.load_model(summary["checkpoint"])
    champion, champion_state = checkpoint.load_model(
        registration.champion_checkpoint(summary["tracking_uri"], cfg.tracking.model_name)[0]
    )
    raw = FractureNet(hidden=cfg.model.hidden, arch=cfg.model.arch).eval()
    raw.load_state_dict(torch.load(f"{summary['checkpoint']}/model.pt", weights_only=True))
    with torch.no_grad():
        expected = trained(x)
        assert torch.equal(champion(x), expected) and torch.equal(raw(x), expected)
    assert champion_state["threshold"] == pytest.approx(summary["threshold"])
    assert champion_state["config"]["name"] == cfg.name and "history" in state

    # A model that does not beat the champion's val AUROC is registered but does not take the alias.
    again = registration.register(
        cfg, summary["tracking_uri"], study_runs.start_study(cfg, summary["study_dir"])[1], registry.candidate(results)
    )
    assert int(again["version"]) == int(summary["version"]) + 1
    assert not again["champion"], (again["val_auc"], again["previous_champion_score"], summary["val_auc"])
    assert int(client.get_model_version_by_alias(cfg.tracking.model_name, registry.CHAMPION).version) == int(
        version.version
    )
