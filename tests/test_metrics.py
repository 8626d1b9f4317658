"""Metric functions against hand-checked values and sklearn."""

import math
import time

import numpy as np
import pytest

from fracture.core import metrics

LABELS = [0, 0, 1, 1]
PROBS = [0.1, 0.4, 0.35, 0.8]


def test_binary_metrics_hand_checked():
    m = metrics.binary_metrics(LABELS, PROBS, 0.5)
    # AUC: of the 4 (pos, neg) pairs only 0.35 < 0.4 is misordered -> 3/4.
    # AP: ranked 0.8(+) 0.4(-) 0.35(+) 0.1(-) -> 0.5 * 1 + 0.5 * 2/3.
    # At 0.5: tp=1 fn=1 tn=2 fp=0.
    expected = {
        "auc": 0.75,
        "auprc": 5 / 6,
        "sensitivity": 0.5,
        "specificity": 1.0,
        "balanced_accuracy": 0.75,
        "f1": 2 / 3,
        "accuracy": 0.75,
        "threshold": 0.5,
    }
    assert m.keys() == expected.keys()
    for k, v in expected.items():
        assert m[k] == pytest.approx(v), k


def test_confusion_hand_checked_and_inclusive_at_the_threshold():
    assert metrics.confusion(LABELS, PROBS, 0.5) == {"tp": 1, "fn": 1, "tn": 2, "fp": 0}
    # 0.35 >= 0.35 is a fracture call: the positive at exactly the threshold is a true positive
    assert metrics.confusion(LABELS, PROBS, 0.35) == {"tp": 2, "fn": 0, "tn": 1, "fp": 1}


def test_threshold_is_inclusive_and_accepts_column_probs():
    m = metrics.binary_metrics(np.array([[0], [1]]), np.array([[0.2], [0.35]]), 0.35)
    assert m["sensitivity"] == 1.0 and m["specificity"] == 1.0


def test_single_class_gives_nan_not_errors():
    m = metrics.binary_metrics([1, 1, 1], [0.2, 0.6, 0.9], 0.5)
    assert math.isnan(m["auc"]) and math.isnan(m["auprc"]) and math.isnan(m["specificity"])
    assert m["sensitivity"] == pytest.approx(2 / 3)
    m = metrics.binary_metrics([0, 0], [0.2, 0.6], 0.5)
    assert math.isnan(m["sensitivity"]) and m["specificity"] == 0.5
    assert metrics.choose_threshold([0, 0], [0.2, 0.6]) == 0.5
    ci = metrics.bootstrap_ci([1, 1, 1], [0.2, 0.6, 0.9], 0.5, n_boot=50)
    assert all(math.isnan(v) for v in ci["auc"]) and all(math.isnan(v) for v in ci["specificity"])


def test_bad_labels_raise():
    with pytest.raises(ValueError):
        metrics.binary_metrics([0, 2], [0.1, 0.9], 0.5)
    with pytest.raises(ValueError):
        metrics.binary_metrics([0, 1, 1], [0.1, 0.9], 0.5)


def test_youden_threshold_separates_separable_classes():
    labels = [0, 0, 0, 1, 1, 1]
    probs = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]
    t = metrics.choose_threshold(labels, probs)
    assert 0.3 < t <= 0.7
    m = metrics.binary_metrics(labels, probs, t)
    assert m["sensitivity"] == m["specificity"] == 1.0


def test_sensitivity_threshold_is_highest_reaching_target():
    labels = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    probs = [0.95, 0.9, 0.85, 0.8, 0.5, 0.7, 0.4, 0.3, 0.2, 0.1]
    # Sensitivity 0.8 is first reached at 0.8 (4 of 5 positives), 1.0 only at 0.5.
    assert metrics.choose_threshold(labels, probs, method="sensitivity", target_sensitivity=0.8) == 0.8
    assert metrics.choose_threshold(labels, probs, method="sensitivity", target_sensitivity=0.9) == 0.5
    # Consecutive positives sit on a vertical ROC segment that drop_intermediate would remove.
    assert metrics.choose_threshold(labels, probs, method="sensitivity", target_sensitivity=0.4) == 0.9
    with pytest.raises(ValueError):
        metrics.choose_threshold(labels, probs, method="f1")


def test_threshold_is_clamped_to_unit_interval():
    # All scores tie, so Youden is 0 everywhere and argmax picks roc_curve's inf threshold.
    assert metrics.choose_threshold([0, 1], [0.5, 0.5]) == 1.0


def _scores(n=300, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    return labels, np.clip(0.35 * labels + 0.65 * rng.random(n), 0, 1)


def test_weighted_metrics_match_sklearn_on_repeated_items():
    """The vectorised bootstrap core equals binary_metrics on the explicitly resampled set."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 60)
    probs = np.round(rng.random(60), 1)  # many ties
    counts = rng.integers(0, 4, size=(5, 60))
    got = metrics._weighted_metrics(counts, labels, probs, 0.4, metrics.METRIC_NAMES)
    for b in range(5):
        ref = metrics.binary_metrics(np.repeat(labels, counts[b]), np.repeat(probs, counts[b]), 0.4)
        for k in metrics.METRIC_NAMES:
            assert got[k][b] == pytest.approx(ref[k]), (b, k)


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    labels, probs = _scores()
    point = metrics.binary_metrics(labels, probs, 0.5)
    ci = metrics.bootstrap_ci(labels, probs, 0.5, n_boot=500, seed=7)
    assert ci.keys() == {"auc", "sensitivity", "specificity"}
    for k, (lo, hi) in ci.items():
        assert lo < point[k] < hi, k
    assert metrics.bootstrap_ci(labels, probs, 0.5, n_boot=500, seed=7) == ci
    assert metrics.bootstrap_ci(labels, probs, 0.5, n_boot=500, seed=8) != ci
    with pytest.raises(ValueError):
        metrics.bootstrap_ci(labels, probs, 0.5, metrics=("threshold",))


# Sorted by score: .9+ .8+ .7- then a tie at .6 (one of each) and .2-. Three positives, three
# negatives: the ROC runs (0,0) (0,1/3) (0,2/3) (1/3,2/3), diagonally through the tie to (2/3,1), (1,1).
TIED_LABELS = [1, 1, 0, 1, 0, 0]
TIED_PROBS = [0.9, 0.8, 0.7, 0.6, 0.6, 0.2]


@pytest.mark.parametrize(
    "target, spec",
    [
        (0.5, 1.0),  # on the vertical segment from (0, 1/3) to (0, 2/3)
        (2 / 3, 1.0),  # reached exactly at (0, 2/3): that point's specificity, not a later one's
        (0.9, 1 - (1 / 3 + 0.7 / 3)),  # 70% along the tie's diagonal (1/3, 2/3) -> (2/3, 1): spec 13/30
        (1.0, 1 / 3),  # the whole tie is needed
    ],
)
def test_spec_at_sensitivity_interpolates_the_roc(target, spec):
    assert metrics.spec_at_sensitivity(TIED_LABELS, TIED_PROBS, target) == pytest.approx(spec)


def test_spec_at_sensitivity_is_nan_where_the_target_is_never_reached():
    # The ROC always ends at (1, 1), so only a curve without positives never gets there.
    assert math.isnan(metrics.spec_at_sensitivity([0, 0, 0], [0.1, 0.5, 0.9], 0.9))
    assert math.isnan(metrics.spec_at_sensitivity([1, 1], [0.1, 0.5], 0.9))
    # A curve cut short below the target (the second row) has no point there either.
    tpr = np.array([[0.0, 0.5, 1.0], [0.0, 0.5, 0.8]])
    fpr = np.array([[0.0, 0.2, 0.6], [0.0, 0.2, 0.6]])
    got = metrics._spec_at(tpr, fpr, 0.9)
    assert got[0] == pytest.approx(1 - (0.2 + 0.8 * 0.4)) and math.isnan(got[1])
    with pytest.raises(ValueError, match="target"):
        metrics.spec_at_sensitivity(TIED_LABELS, TIED_PROBS, 0.0)


def test_weighted_spec_at_sensitivity_matches_the_roc_of_the_repeated_items():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 80)
    probs = np.round(rng.random(80), 1)  # many ties: interpolation inside tied runs
    counts = rng.integers(0, 4, size=(6, 80))
    for target in (0.3, 0.9, 0.95):
        got = metrics._weighted_metrics(counts, labels, probs, 0.5, ("spec_at_sens",), target)["spec_at_sens"]
        for b in range(6):
            ref = metrics.spec_at_sensitivity(np.repeat(labels, counts[b]), np.repeat(probs, counts[b]), target)
            assert got[b] == pytest.approx(ref), (target, b)


def _val_like(n=600, seed=0):
    """~600 val predictions with FracAtlas' ~18% fractures and an AUROC near 0.85."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.18).astype(int)
    return labels, np.clip(0.3 * labels + 0.7 * rng.random(n), 0, 1)


def test_lower_bounds_are_deterministic_and_below_the_point_estimates():
    labels, probs = _val_like()
    got = metrics.ranking_metrics(labels, probs, target_sensitivity=0.9)
    assert got.keys() == {"spec_at_sens", "auc_lower", "spec_at_sens_lower"}
    assert metrics.ranking_metrics(labels, probs, target_sensitivity=0.9) == got  # fixed seed
    assert got["spec_at_sens"] == metrics.spec_at_sensitivity(labels, probs, 0.9)
    auc = metrics.binary_metrics(labels, probs, 0.5)["auc"]
    assert 0 < got["auc_lower"] < auc and 0 < got["spec_at_sens_lower"] < got["spec_at_sens"]
    # The bound is the 95% interval's low end: of the same resamples as bootstrap_ci's.
    ci = metrics.bootstrap_ci(
        labels, probs, 0.5, n_boot=metrics.LOWER_BOUND_RESAMPLES, seed=metrics.LOWER_BOUND_SEED, metrics=("auc",)
    )
    assert got["auc_lower"] == ci["auc"][0]
    # Worse predictions of the same images get a lower bound, not just a lower point estimate.
    noisier = np.clip(probs + np.random.default_rng(1).normal(0, 0.3, probs.size), 0, 1)
    assert metrics.ranking_metrics(labels, noisier)["auc_lower"] < got["auc_lower"]


def test_lower_bounds_cost_little_next_to_an_epoch():
    labels, probs = _val_like()
    metrics.ranking_metrics(labels, probs)  # warm
    times = []
    for _ in range(5):
        start = time.perf_counter()
        metrics.ranking_metrics(labels, probs)
        times.append(time.perf_counter() - start)
    cost = sorted(times)[2]
    print(f"ranking_metrics on 600 val predictions, 200 resamples: {cost * 1000:.1f} ms (median of 5)")
    assert cost < 0.5  # an epoch is >= 20 s; a few tens of ms on the 2 shared test cores


def test_prefixed_val_scores_hold_the_primary_metric():
    d = metrics.prefixed({"auc": 0.9, "f1": 0.5}, "val")
    assert d == {"val_auc": 0.9, "val_f1": 0.5}
    assert d[metrics.PRIMARY] == 0.9  # what Tune, checkpoints and early stopping rank trials by


def test_constant_output_loss_is_the_floor_of_a_model_that_learned_nothing():
    import torch

    from fracture.core.metrics import constant_output_loss

    labels = np.array([1] * 178 + [0] * 822)
    w = 822 / 178
    # FracAtlas' collapsed runs sat at 1.1404: p = 0.5 under pos_weight = negatives / positives
    assert constant_output_loss(labels, w) == pytest.approx(2 * 0.822 * np.log(2), rel=1e-6)
    loss = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([w]))
    y = torch.tensor(labels, dtype=torch.float32)
    for logit in (-1.0, -0.1, 0.0, 0.1, 1.0):  # no constant does better
        assert loss(torch.full_like(y, logit), y).item() >= constant_output_loss(labels, w) - 1e-6
    assert constant_output_loss(labels) == pytest.approx(-(0.178 * np.log(0.178) + 0.822 * np.log(0.822)))
