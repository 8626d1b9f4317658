"""Evaluation plots and training curves are written as readable PNGs."""

import numpy as np
from PIL import Image

from fracture.evaluate import plots


def _check_png(path, min_side=200):
    assert path.is_file() and path.stat().st_size > 5_000
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert min(img.size) >= min_side


def test_save_evaluation_plots(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    probs = np.clip(0.4 * labels + 0.6 * rng.random(200), 0, 1)
    paths = plots.save_evaluation_plots(labels, probs, 0.5, tmp_path / "eval", title="holdout")
    assert set(paths) == {"roc", "pr", "confusion", "calibration"}
    for name, path in paths.items():
        assert path == tmp_path / "eval" / f"{name}.png"
        _check_png(path)


def test_save_training_curves(tmp_path):
    history = [
        {"epoch": e, "train_loss": 0.7 - 0.1 * e, "val_loss": 0.72 - 0.08 * e, "val_auc": 0.6 + 0.05 * e}
        for e in range(4)
    ]
    _check_png(plots.save_training_curves(history, tmp_path / "curves.png"))


def test_training_curves_set_train_loss_beside_the_val_loss_on_its_scale(tmp_path):
    weighted = [{"epoch": 0, "train_loss": 1.1, "val_loss": 0.6, "val_loss_weighted": 1.05, "val_auc": 0.7}]
    assert [key for key, _ in plots.loss_lines(weighted)] == ["train_loss", "val_loss_weighted"]
    older = [{"epoch": 0, "train_loss": 1.1, "val_loss": 0.6}]
    assert plots.loss_lines(older) == [("train_loss", "train_loss"), ("val_loss", "val_loss (unweighted: lower scale)")]
    _check_png(plots.save_training_curves(weighted * 2, tmp_path / "curves.png", chosen_epoch=0))


def test_training_curves_tolerate_missing_keys(tmp_path):
    history = [{"train_loss": 0.7}, {"train_loss": 0.6, "val_auc": 0.7}]
    _check_png(plots.save_training_curves(history, tmp_path / "sub" / "curves.png"))


def test_calibration_bins_follow_the_scores_when_they_crowd_one_bin():
    rng = np.random.default_rng(0)
    assert plots.calibration_bins(rng.random(500)) == "uniform"
    assert plots.calibration_bins(0.4 + 0.05 * rng.random(500)) == "quantile"  # all in [0.4, 0.45)
