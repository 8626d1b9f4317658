"""A one-worker trial trains in its Tune trial's own process (fracture.train.session.TrialSession). When that
process dies (SIGKILL: the OOM killer, a segfault in a native library, a lost node), cluster.max_failures
decides what happens, as it does for a TorchTrainer's worker group:

- max_failures >= 1: Tune starts the trial again in a new process, which resumes from the newest
  checkpoint in the trial's run directory; no epoch is trained twice, and the restored epoch's
  report comes again (marked replayed) so that Tune and MLflow hold every epoch once.
- max_failures = 0: the trial fails with Ray's "actor died" error, its checkpoints stay on disk.

The kill comes from a Tune callback on the driver, right after the trial's first epoch reached it:
the epoch's checkpoint is complete by then (the session writes it before it reports).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import ray.tune

from fracture import study
from fracture.core.storage import StudyPaths
from fracture.data import pipeline
from fracture.train import session
from fracture.tune import search

pytestmark = [pytest.mark.integration]

EPOCHS = 3


class KillAfterFirstEpoch(ray.tune.Callback):
    """SIGKILL the trial's process once, when its first epoch's result arrives."""

    def __init__(self, marker: Path):
        self.marker = marker

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("epoch") == 0 and not self.marker.exists():
            self.marker.write_text(str(result["pid"]))
            os.kill(result["pid"], signal.SIGKILL)


def _fit(cfg, tmp_path: Path):
    study.preflight(cfg)
    marker = tmp_path / "killed"
    tuner = search.build_tuner(
        cfg,
        pipeline.build_datasets(cfg),
        pipeline.pos_weight(cfg),
        callbacks=[KillAfterFirstEpoch(marker)],
        search=False,
    )
    (result,) = tuner.fit()
    assert marker.exists(), "the trial was never killed"
    return result, int(marker.read_text())


def test_a_killed_trial_process_restarts_from_its_last_checkpoint(ray_local, tiny_config, tmp_path):
    cfg = tiny_config("name=dies", f"train.epochs={EPOCHS}", "cluster.max_failures=1")
    result, killed = _fit(cfg, tmp_path)

    assert result.error is None, result.error
    rows = result.metrics_dataframe
    assert killed not in set(rows["pid"][rows["epoch"] > 0]), "the trial went on in the killed process"
    # After the restart: epoch 0 again as a replay of its checkpoint (not retrained), then the rest.
    epochs = [(int(e), bool(r) if r == r else False) for e, r in zip(rows["epoch"], rows.get("replayed"), strict=True)]
    assert [e for e, replayed in epochs if not replayed] == list(range(EPOCHS)), epochs
    assert result.metrics["epoch"] == EPOCHS - 1
    run_dir = Path(StudyPaths.of(cfg).train) / f"{cfg.name}-trial_{result.metrics['trial_id']}"
    states = session.saved_checkpoints(str(run_dir))
    newest = list(states.values())[-1]
    assert [h["epoch"] for h in newest["history"]] == list(range(EPOCHS))  # one history, no restart from scratch


def test_without_max_failures_a_killed_trial_fails_and_keeps_its_checkpoint(ray_local, tiny_config, tmp_path):
    cfg = tiny_config("name=dies0", f"train.epochs={EPOCHS}", "cluster.max_failures=0")
    result, _ = _fit(cfg, tmp_path)

    assert result.error is not None
    assert "died" in str(result.error).lower(), result.error
    run_dir = Path(StudyPaths.of(cfg).train) / f"{cfg.name}-trial_{result.metrics['trial_id']}"
    assert [s["epoch"] for s in session.saved_checkpoints(str(run_dir)).values()] == [0]
