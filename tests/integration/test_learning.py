"""A study that completes is not a model that learns: the real path must learn a learnable signal.

Synthetic X-rays where fractures are a broken, displaced shaft. One trial through the whole
platform (manifest -> Ray Data cache -> Ray Train worker -> Tune -> MLflow) from scratch must drive
the train loss well below the loss of a constant output, which is where a collapsed network sits,
and separate the classes on val.
"""

from __future__ import annotations

import pytest
from ray.tune import ExperimentAnalysis

from fracture import study
from fracture.core import metrics
from fracture.data import pipeline, synthetic

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]


def test_one_trial_learns_the_synthetic_fracture_signal(ray_local, tmp_path):
    from conftest import _tiny

    root = synthetic.generate(tmp_path / "data", n=320, seed=3, min_size=48, max_size=64)
    cfg = _tiny(
        tmp_path / "runs",
        root,
        "name=learns",
        "train.epochs=8",
        "search.num_trials=1",
        "train.batch_size_per_worker=16",
        "train.patience=0",
        "data.augment=light",
        "model.arch=vgg16_bn",
        "optim.lr_head=1.0e-3",
        "optim.lr_backbone=1.0e-4",
    )
    study.preflight(cfg)
    summary = study.run(cfg, search_space=False)

    curve = next(iter(ExperimentAnalysis(summary["study_dir"]).trial_dataframes.values())).sort_values("epoch")
    train_labels = pipeline.split_frame(cfg, "train")["label"]
    floor = metrics.constant_output_loss(train_labels, pipeline.pos_weight(cfg))
    losses, aucs = curve["train_loss"].tolist(), curve["val_auc"].tolist()
    assert len(losses) == cfg.train.epochs
    assert min(losses[-3:]) < 0.6 * floor, f"train loss {losses} never left the constant-output loss {floor:.3f}"
    assert max(aucs) >= 0.9, f"val AUROC per epoch {aucs}"
