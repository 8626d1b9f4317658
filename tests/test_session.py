"""fracture.train.session's checkpoints for a trial that trains in its own process: where they go, which
one a restart resumes from, which ones are kept. No Ray cluster needed: the files are the contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fracture.train import session


def _save(epoch: int, auc: float, *, complete: bool = True):
    def save(directory: str) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "model.pt").write_bytes(b"weights %d" % epoch)
        if complete:  # checkpoint.save writes state.json last
            (Path(directory) / "state.json").write_text(json.dumps({"epoch": epoch, "metrics": {"val_auc": auc}}))

    return save


def _write(run_dir: Path, epoch: int, auc: float, *, complete: bool = True) -> str:
    location = str(run_dir / f"checkpoint_epoch_{epoch:04d}")
    session.write_checkpoint(location, _save(epoch, auc, complete=complete))
    return location


def test_a_checkpoint_without_its_state_is_not_resumed_from_and_is_rewritten(tmp_path):
    _write(tmp_path, 0, 0.6)
    half = _write(tmp_path, 1, 0.7, complete=False)  # the process died while saving
    assert [Path(p).name for p in session.saved_checkpoints(str(tmp_path))] == ["checkpoint_epoch_0000"]
    trial = session.TrialSession({}, str(tmp_path), ranked="val_auc", keep=2)
    assert Path(trial.latest_checkpoint().path).name == "checkpoint_epoch_0000"
    _write(tmp_path, 1, 0.7)  # the epoch trained again, saved over what was left
    assert list(session.saved_checkpoints(str(tmp_path)).values())[-1]["epoch"] == 1
    assert Path(half, "model.pt").read_bytes() == b"weights 1"


def test_checkpoints_are_ordered_by_epoch_not_by_name(tmp_path):
    # A run begun by a TorchTrainer names its checkpoints by time; a resumed one goes on by epoch.
    for name, epoch in (("checkpoint_2026-12-07_10-00-00.000000", 0), ("checkpoint_epoch_0001", 1)):
        _save(epoch, 0.5)(str(tmp_path / name))
    assert [s["epoch"] for s in session.saved_checkpoints(str(tmp_path)).values()] == [0, 1]


@pytest.mark.parametrize(
    "aucs, kept",
    [
        ([0.6, 0.9, 0.7, 0.5], [1, 2, 3]),  # the best two (0.9, 0.7) and the newest (0.5)
        ([0.6, 0.9, 0.7, 0.8], [1, 3]),  # the newest is among the best two
        ([0.6, float("nan"), 0.7], [0, 2]),  # NaN (one-class val) ranks last
    ],
)
def test_prune_keeps_the_best_and_the_newest_as_ray_train_does(tmp_path, aucs, kept):
    for epoch, auc in enumerate(aucs):
        _write(tmp_path, epoch, auc)
        session.prune(str(tmp_path), "val_auc", keep=2)
    assert [s["epoch"] for s in session.saved_checkpoints(str(tmp_path)).values()] == kept


def test_keep_none_keeps_every_checkpoint(tmp_path):
    for epoch in range(4):
        _write(tmp_path, epoch, 0.5)
        session.prune(str(tmp_path), "val_auc", keep=None)
    assert len(session.saved_checkpoints(str(tmp_path))) == 4


def test_a_fresh_trial_has_nothing_to_resume_from(tmp_path):
    trial = session.TrialSession({}, str(tmp_path / "never_written"), ranked="val_auc", keep=2)
    assert trial.latest_checkpoint() is None and trial.rank == 0 and trial.device.type == "cpu"
