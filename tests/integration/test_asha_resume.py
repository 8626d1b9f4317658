"""ASHA keeps its rungs across an interrupt and --resume (fracture.tune.search.SchedulerState).

Real Tune, the project's ASHA and callback, trivial trainables so it takes seconds: trial 1 scores
0.9 at every epoch and finishes; the study is interrupted (SIGINT, as from Ctrl-C) as soon as it
does. After Tuner.restore, trial 2 scores 0.1. With trial 1's rungs restored, ASHA stops trial 2 at
the first rung; a scheduler that forgot them would see no competitor and let it run to max_t.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import ray.tune

from fracture.core import metrics
from fracture.core.config import Config
from fracture.tune import search

pytestmark = pytest.mark.integration

EPOCHS = 4


class _InterruptOnce(ray.tune.Callback):
    """SIGINT on the first trial completion; the marker file outlives the pickled copy Tune restores."""

    def __init__(self, marker: Path):
        self.marker = marker

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.marker.exists():
            return
        self.marker.touch()
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            raise RuntimeError("Tune's SIGINT handler is not installed: refusing to interrupt pytest itself")
        os.kill(os.getpid(), signal.SIGINT)


def _epochs_trained(results) -> dict[float, int]:
    return {r.config["score"]: r.metrics[metrics.EPOCHS_DONE] for r in results}


def test_resumed_asha_still_judges_against_results_from_before_the_interrupt(tmp_path, ray_local):
    def trainable(config):  # defined here: Ray pickles it by value (workers cannot import this test module)
        for done in range(1, EPOCHS + 1):
            ray.tune.report({"epochs_done": done, "val_auc": config["score"]})

    cfg = Config().replace(train={"epochs": EPOCHS}, search={"grace_epochs": 1})
    scheduler = search.asha(cfg)
    tuner = ray.tune.Tuner(
        trainable,
        param_space={"score": ray.tune.grid_search([0.9, 0.1])},
        tune_config=ray.tune.TuneConfig(
            metric=metrics.PRIMARY, mode=metrics.MODE, scheduler=scheduler, max_concurrent_trials=1
        ),
        run_config=ray.tune.RunConfig(
            name="study",
            storage_path=str(tmp_path),
            verbose=0,
            callbacks=[_InterruptOnce(tmp_path / "interrupted"), search.SchedulerState(scheduler)],
        ),
    )
    first = tuner.fit()
    assert _epochs_trained(r for r in first if r.metrics.get("done")) == {0.9: EPOCHS}
    assert not any(r.metrics.get("done") for r in first if r.config["score"] == 0.1), "no interrupt happened"

    restored = ray.tune.Tuner.restore(str(tmp_path / "study"), trainable=trainable, resume_errored=True)
    second = restored.fit()
    assert _epochs_trained(second) == {0.9: EPOCHS, 0.1: 1}, "ASHA forgot trial 1's rungs on resume"
