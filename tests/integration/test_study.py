"""The real path end to end on tiny data: local Ray, Ray Data, Ray Train, Tune + Optuna + ASHA, sqlite MLflow."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from fracture import checkpoint, data, manifest, presets, registry, search, study, tracking, worker
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
    assert sorted(r.info.run_name for r in trials) == ["trial_001", "trial_002"]  # the console's names
    assert parents[0].data.tags[tracking.STUDY_TAG] == cfg.name and parents[0].info.status == "FINISHED"
    for run in trials:
        history = client.get_metric_history(run.info.run_id, "val_auc")
        assert 1 <= len(history) <= cfg.train.epochs  # ASHA may stop one after the grace epoch
        assert set(run.data.params) >= set(cfg.search.space)  # the sampled hyperparameters
        assert run.info.status == "FINISHED"
    # Tune's progress table shows the first four reported metrics: the ones worth watching.
    results = search.restore_tuner(
        cfg, summary["study_dir"], data.build_datasets(cfg), data.pos_weight(cfg)
    ).get_results()
    assert all(list(r.metrics)[:4] == list(worker.SHOWN_FIRST) for r in results), list(results[0].metrics)
    # The seed point from points_to_evaluate is the first trial.
    seeded = [r for r in trials if float(r.data.params["model.dropout"]) == 0.5]
    assert seeded, "the study's points_to_evaluate did not run"

    version = client.get_model_version_by_alias(cfg.tracking.model_name, tracking.CHAMPION)
    assert int(version.version) == int(summary["version"]) and summary["champion"]
    # Beside its checkpoint, the registered trial's run shows its learning curves as one picture.
    logged = {a.path for a in client.list_artifacts(summary["run_id"])}
    assert {tracking.CURVES_FILE, tracking.CHECKPOINT_ARTIFACT} <= logged, logged

    # The registered checkpoint loads back, weights_only, and predicts exactly as the trained one.
    x = _images(cfg)
    trained, state = checkpoint.load_model(summary["checkpoint"])
    champion, champion_state = checkpoint.load_model(
        tracking.champion_checkpoint(summary["tracking_uri"], cfg.tracking.model_name)[0]
    )
    raw = FractureNet(hidden=cfg.model.hidden, arch=cfg.model.arch).eval()
    raw.load_state_dict(torch.load(f"{summary['checkpoint']}/model.pt", weights_only=True))
    with torch.no_grad():
        expected = trained(x)
        assert torch.equal(champion(x), expected) and torch.equal(raw(x), expected)
    assert champion_state["threshold"] == pytest.approx(summary["threshold"])
    assert champion_state["config"]["name"] == cfg.name and "history" in state

    # A model that does not beat the champion's val AUROC is registered but does not take the alias.
    again = tracking.register(
        cfg, summary["tracking_uri"], tracking.start_study(cfg, summary["study_dir"])[1], registry.candidate(results)
    )
    assert int(again["version"]) == int(summary["version"]) + 1
    assert not again["champion"], (again["val_auc"], again["previous_champion_score"], summary["val_auc"])
    assert int(client.get_model_version_by_alias(cfg.tracking.model_name, tracking.CHAMPION).version) == int(
        version.version
    )


def _with_defects(src, dst):
    """A copy of the synthetic set with FracAtlas' kinds of defect added: the run must train on the rest."""
    shutil.copytree(src, dst)
    csv = dst / "dataset.csv"
    lines = csv.read_text().splitlines()
    negatives = sorted((dst / "images" / "Non_fractured").glob("*.jpg"))
    truncated, text = negatives[0], negatives[1]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    text.write_text("not an image")
    copy_id = "IMG9999999.jpg"
    shutil.copy(negatives[2], negatives[2].with_name(copy_id))
    row = next(line for line in lines if line.startswith(negatives[2].name))
    csv.write_text("\n".join([*lines, row.replace(negatives[2].name, copy_id)]) + "\n")
    return {truncated.name: "truncated", text.name: "unreadable", copy_id: "duplicate"}


def test_train_job_two_ddp_workers_warmup_and_defects(tmp_path, synthetic_root, run_job):
    """jobs/train.py as a user runs it, on data with defects: 2 gloo DDP workers, a head-only warm-up
    epoch then the unfrozen backbone, summary printed, the checkpoint loads back."""
    root = tmp_path / "atlas"
    defects = _with_defects(synthetic_root, root)
    proc = run_job(
        "train.py",
        f"data.root={root}",
        f"cluster.storage_path={tmp_path / 'runs'}",
        "data.image_size=32",
        "train.epochs=2",
        "train.warmup_epochs=1",
        "train.batch_size_per_worker=8",
        "cluster.num_workers=2",
        "cluster.cpus_per_worker=1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "=== best trial ===" in proc.stdout and "now @champion" in proc.stdout
    assert "mlflow ui --backend-store-uri sqlite:///" in proc.stdout

    table = manifest.load(tmp_path / "runs" / "demo" / "manifest.parquet").set_index("image_id")
    for image_id, status in defects.items():
        assert table.loc[image_id, "status"] == status and not table.loc[image_id, "usable"]
    best = proc.stdout.split("checkpoint: ")[1].split()[0]
    checkpoint.load_model(best)
    # The last epoch's checkpoint (kept beside the best) holds the whole history.
    last = max(
        (checkpoint.read_state(d) for d in Path(best).parent.glob("checkpoint_*") if d.is_dir()),
        key=lambda st: st["epoch"],
    )
    assert [h["trainable_blocks"] for h in last["history"]] == [0, 5]  # warm-up, then unfrozen
    assert last["config"]["cluster"]["num_workers"] == 2
