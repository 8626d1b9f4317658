"""The registry's decisions without an MLflow store: which checkpoint a study registers, when it is champion."""

from __future__ import annotations

import pandas as pd
import pytest
import ray.tune
import torch

from fracture.core import metrics
from fracture.core.config import Config
from fracture.model import checkpoint
from fracture.model.network import FractureNet
from fracture.track import registry


def _saved(path, cfg: Config, *, epoch: int, threshold: float = 0.3) -> str:
    net = FractureNet(hidden=8, arch="vgg16_bn")
    optimizer = torch.optim.Adam(net.parameters())
    checkpoint.save(path, net, optimizer, {"epoch": epoch, "config": cfg.to_dict(), "threshold": threshold})
    return str(path)


def _trial(frame: pd.DataFrame, trial_id: str = "t1") -> ray.tune.Result:
    last = frame.iloc[-1].to_dict() | {"trial_id": trial_id}
    return ray.tune.Result(
        metrics=last, checkpoint=None, error=None, path=f"/nowhere/{trial_id}", metrics_dataframe=frame
    )


class _Grid(list):
    """The one ResultGrid method registry uses, over a list of Results; `asked` is the metric it ranked by."""

    asked = metrics.PRIMARY

    def get_best_result(self, metric, mode, scope):
        assert (mode, scope) == (metrics.MODE, "all")
        self.asked = metric
        return max(self, key=lambda r: r.metrics_dataframe[metric].max())


@pytest.fixture
def cfg():
    return Config.from_dict({"model": {"hidden": 8, "arch": "vgg16_bn", "weights": "none"}, "data": {"image_size": 32}})


def test_the_best_epoch_whose_checkpoint_is_still_on_disk_is_registered(tmp_path, cfg):
    # Epoch 2 scored best but its checkpoint is gone (num_to_keep): epoch 0, the next best kept one, wins.
    kept = _saved(tmp_path / "e0", cfg, epoch=0, threshold=0.25)
    frame = pd.DataFrame(
        {
            "epoch": [0, 1, 2],
            metrics.PRIMARY: [0.8, 0.7, 0.9],
            "val_sensitivity": [0.6, 0.5, 0.7],
            "checkpoint_path": [kept, None, str(tmp_path / "gone")],
        }
    )
    chosen = registry.candidate(_Grid([_trial(frame)]))
    assert chosen.checkpoint == kept and chosen.trial_id == "t1" and chosen.state["epoch"] == 0
    # The curves logged with it cover the whole trial, past the registered epoch.
    assert [row["epoch"] for row in chosen.history] == [0, 1, 2]

    summary = registry.summary(cfg, chosen, run_id="r", parent_run_id="p", study_dir="/s")
    assert (summary["epoch"], summary["val_auc"], summary["threshold"]) == (0, 0.8, 0.25)
    assert summary["metrics"] == {metrics.PRIMARY: 0.8, "val_sensitivity": 0.6}
    assert summary["image_size"] == 32
    assert summary["study"] == {"name": cfg.name, "parent_run_id": "p", "study_dir": "/s"}

    text = registry.version_description(summary)
    assert "N×3×32×32" in text and "0.250000" in text and "Youden" in text and "trial run `r`" in text
    assert registry.version_tags(summary)[metrics.PRIMARY] == "0.800000"


# Two trials of two epochs, each setting's best somewhere else: (trial, epoch) per row of the parametrize.
RANKED = {
    "t1": {
        metrics.PRIMARY: [0.80, 0.90],
        "val_auc_lower": [0.70, 0.72],
        "val_spec_at_sens": [0.50, 0.55],
        "val_spec_at_sens_lower": [0.45, 0.40],
    },
    "t2": {
        metrics.PRIMARY: [0.85, 0.86],
        "val_auc_lower": [0.78, 0.75],
        "val_spec_at_sens": [0.52, 0.60],
        "val_spec_at_sens_lower": [0.41, 0.43],
    },
}


@pytest.mark.parametrize(
    "objective, rank_by, ranked, trial, epoch",
    [
        ("auroc", "point", "val_auc", "t1", 1),
        ("auroc", "lower_bound", "val_auc_lower", "t2", 0),
        ("specificity_at_sensitivity", "point", "val_spec_at_sens", "t2", 1),
        ("specificity_at_sensitivity", "lower_bound", "val_spec_at_sens_lower", "t1", 0),
    ],
)
def test_the_objective_and_rank_by_pick_the_checkpoint_and_the_champions_score(
    tmp_path, cfg, objective, rank_by, ranked, trial, epoch
):
    cfg = cfg.replace(search={"objective": objective, "rank_by": rank_by})
    assert metrics.ranked(cfg) == ranked and metrics.best(cfg) == "best_" + ranked
    grid = _Grid()
    for trial_id, values in RANKED.items():
        paths = [_saved(tmp_path / trial_id / f"e{e}", cfg, epoch=e) for e in (0, 1)]
        grid.append(_trial(pd.DataFrame({"epoch": [0, 1], **values, "checkpoint_path": paths}), trial_id))

    chosen = registry.candidate(grid, metrics.ranked(cfg))
    assert grid.asked == ranked  # Tune's best trial is judged by the same metric as its epochs
    assert (chosen.trial_id, chosen.state["epoch"]) == (trial, epoch)

    summary = registry.summary(cfg, chosen, run_id="r", parent_run_id="p", study_dir="/s")
    point = metrics.objective(cfg)
    assert summary["score"] == RANKED[trial][ranked][epoch] and summary["ranked_by"] == ranked
    assert (summary["point"], summary["lower"]) == (RANKED[trial][point][epoch], RANKED[trial][point + "_lower"][epoch])
    tags = registry.version_tags(summary)
    assert {metrics.PRIMARY, point, point + "_lower"} <= tags.keys()  # the objective and its bound, for the next study
    assert "lower" in registry.version_description(summary)
    # The next study reads the champion's score back from its tag: the same model must not beat itself.
    champion = float(tags[ranked])
    assert not registry.wins(summary["score"], champion)
    assert registry.wins(summary["score"] + 1e-6, champion) and not registry.wins(summary["score"] - 1e-6, champion)


def test_trial_history_is_one_row_per_epoch_the_replayed_epochs_last_report_winning():
    # Killed after epoch 1's report, resumed from epoch 0's checkpoint: epoch 1 is reported twice.
    frame = pd.DataFrame({"epoch": [0, 1, 1, 2, None], "train_loss": [1.1, 1.0, 0.98, 0.9, None]})
    rows = registry.trial_history(_trial(frame))
    assert [(r["epoch"], r["train_loss"]) for r in rows] == [(0, 1.1), (1, 0.98), (2, 0.9)]
    assert registry.trial_history(_trial(pd.DataFrame({"val_auc": [0.5]}))) == ()


def test_a_champion_whose_score_is_nan_is_beaten():
    assert registry.wins(0.1, float("nan"))
    assert not registry.wins(float("nan"), 0.1)


def test_a_study_with_no_checkpoint_left_registers_nothing(tmp_path):
    frame = pd.DataFrame({"epoch": [0], metrics.PRIMARY: [0.8], "checkpoint_path": [str(tmp_path / "gone")]})
    with pytest.raises(RuntimeError, match="none of its checkpoints is still on disk"):
        registry.best_checkpoint(_Grid([_trial(frame)]))


def test_champion_moves_only_to_a_strictly_better_val_auroc():
    assert registry.wins(0.70, None)  # the first version
    assert registry.wins(0.71, 0.70)
    assert not registry.wins(0.70, 0.70)  # a tie keeps the version people already use
    assert not registry.wins(0.69, 0.70)
    # The champion's AUROC is read back from its 6-decimal tag: the same model must not beat itself.
    assert not registry.wins(23 / 24, float(f"{23 / 24:.6f}"))
    assert registry.wins(0.958334, 0.958333)
