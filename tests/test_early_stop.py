"""fracture.train.early_stop: when patience stops a trial, and how a restored trial resumes its count."""

import json
import math

from fracture.train.early_stop import Progress


def _run(progress: Progress, aucs: list[float]) -> int | None:
    """Feed aucs epoch by epoch, as the worker does; the 1-based epoch that stopped, or None."""
    for epoch, auc in enumerate(aucs, start=1):
        stop = progress.update(auc)
        progress.record({"val_auc": auc, "best_val_auc": progress.best})
        if stop:
            return epoch
    return None


def test_patience_stops_after_that_many_epochs_without_improvement():
    progress = Progress(patience=2)
    assert _run(progress, [0.5, 0.6, 0.55, 0.58, 0.9]) == 4
    assert progress.best == 0.6 and progress.stale == 2 and progress.stopped
    assert [r["val_auc"] for r in progress.history] == [0.5, 0.6, 0.55, 0.58]


def test_patience_zero_never_stops():
    progress = Progress(patience=0)
    assert _run(progress, [0.9] + [0.1] * 20) is None
    assert progress.stale == 20 and not progress.stopped


def test_an_improvement_resets_the_count():
    progress = Progress(patience=3)
    # two stale epochs, an improvement, then two more: never three in a row
    assert _run(progress, [0.5, 0.4, 0.45, 0.7, 0.6, 0.65]) is None
    assert progress.best == 0.7 and progress.stale == 2
    assert _run(progress, [0.69]) == 1


def test_a_tie_is_not_an_improvement():
    progress = Progress(patience=2)
    assert _run(progress, [0.6, 0.6, 0.6]) == 3
    assert progress.best == 0.6


def test_nan_auc_counts_as_stale():
    progress = Progress(patience=1)
    progress.update(0.6)
    assert progress.update(math.nan) and progress.best == 0.6


def test_restore_continues_the_count_from_the_saved_state():
    before = Progress(patience=3)
    _run(before, [0.5, 0.7, 0.6])  # one stale epoch so far
    saved = json.loads(json.dumps(before.state()))  # as state.json holds it
    assert set(saved) == {"best_val_auc", "stale_epochs", "history"}

    after = Progress.from_state(saved, patience=3)
    assert (after.best, after.stale, len(after.history)) == (0.7, 1, 3)
    assert not after.stopped
    assert _run(after, [0.65]) is None  # 2 stale: an uninterrupted run would not stop here either
    assert _run(after, [0.69]) == 1
    assert len(after.history) == 5


def test_a_restored_finished_run_is_recognised_as_stopped():
    saved = {"best_val_auc": 0.8, "stale_epochs": 2, "history": [{}, {}, {}]}
    assert Progress.from_state(saved, patience=2).stopped
    assert Progress.from_state(saved, patience=1).stopped  # patience lowered since: still finished
    assert not Progress.from_state(saved, patience=3).stopped
    assert not Progress.from_state(saved, patience=0).stopped


def test_empty_state_starts_afresh():
    progress = Progress.from_state({}, patience=2)
    assert (progress.best, progress.stale, progress.history) == (float("-inf"), 0, [])
    assert not progress.stopped
    assert progress.update(0.0) is False and progress.best == 0.0  # any real AUC beats the start


def test_the_count_follows_the_studys_ranking_metric_and_saves_its_best_under_its_name():
    # search.rank_by=lower_bound with the specificity objective: the worker feeds this metric.
    progress = Progress(patience=2, metric="val_spec_at_sens_lower")
    assert _run(progress, [0.40, 0.45, 0.44]) is None
    saved = json.loads(json.dumps(progress.state()))
    assert set(saved) == {"best_val_spec_at_sens_lower", "stale_epochs", "history"}
    after = Progress.from_state(saved, patience=2, metric="val_spec_at_sens_lower")
    assert (after.best, after.stale) == (0.45, 1)
    assert Progress.from_state(saved, patience=2).best == float("-inf")  # best_val_auc: not what was counted
