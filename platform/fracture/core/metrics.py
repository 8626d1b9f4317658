"""Metric names and pure binary-classification metrics (numpy + scikit-learn only).

Every component that selects a model (ASHA, Tune, checkpoint keeping, early stopping, registry,
champion) ranks by `ranked(cfg)`, in MODE: the study's objective (search.objective), or its
bootstrap lower bound (search.rank_by). PRIMARY / BEST are the default objective's names.
A prediction is positive when `prob >= threshold`, the same rule as sklearn's roc_curve, so a
threshold taken from choose_threshold reproduces the ROC point it was chosen at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

PRIMARY = "val_auc"
MODE = "max"
BEST = "best_" + PRIMARY  # the best PRIMARY a trial has reached so far, reported every epoch
EPOCHS_DONE = "epochs_done"  # reported with every epoch; ASHA counts its rungs in it

# search.objective -> the per-epoch val metric it names. Both are reported every epoch, whichever ranks.
OBJECTIVES = {"auroc": PRIMARY, "specificity_at_sensitivity": "val_spec_at_sens"}
LOWER = "_lower"  # suffix of a metric's bootstrap 95% lower bound on val, reported beside it
# Fixed resamples and seed: the same predictions always get the same bound, and every epoch and
# trial is judged on the same resamples, so their bounds differ by the model, not by the draw.
# 200 resamples of ~600 val images cost a few ms (tests/test_metrics.py measures it).
LOWER_BOUND_RESAMPLES = 200
LOWER_BOUND_SEED = 0


def objective(cfg) -> str:
    """The val metric that search.objective names (cfg: a Config): val_auc or val_spec_at_sens."""
    return OBJECTIVES[cfg.search.objective]


def ranked(cfg) -> str:
    """The metric every selection ranks by: the objective, or its lower bound when search.rank_by is lower_bound."""
    return objective(cfg) + (LOWER if cfg.search.rank_by == "lower_bound" else "")


def best(cfg) -> str:
    """The best `ranked(cfg)` a trial has reached so far, reported every epoch (BEST by default)."""
    return "best_" + ranked(cfg)


# The keys binary_metrics returns besides "threshold"; bootstrap_ci accepts any of them.
METRIC_NAMES = ("auc", "auprc", "sensitivity", "specificity", "balanced_accuracy", "f1", "accuracy")
# PPV / NPV at the threshold (predictive_values). Not in binary_metrics: they follow the prevalence
# of the images scored, so a per-epoch val value would read as a property of the model.
PREDICTIVE_NAMES = ("ppv", "npv")
# bootstrap_ci also takes spec_at_sens, the threshold-free objective (spec_at_sensitivity), and PPV / NPV.
BOOTSTRAP_NAMES = (*METRIC_NAMES, "spec_at_sens", *PREDICTIVE_NAMES)


def _as_arrays(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).ravel().astype(np.int64)  # accepts (N,), (N, 1), floats 0.0/1.0
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and probs differ in length: {y.size} vs {p.size}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return y, p


def _div(a, b):
    """a / b elementwise, nan where b == 0 (no warnings)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.full(np.broadcast(a, b).shape, np.nan), where=b != 0)


def _from_counts(tp, fn, tn, fp) -> dict[str, np.ndarray]:
    """Threshold metrics from confusion counts (scalars or arrays); nan where undefined."""
    sens, spec = _div(tp, tp + fn), _div(tn, tn + fp)
    f1 = _div(2 * tp, 2 * tp + fp + fn)
    return {
        "sensitivity": sens,
        "specificity": spec,
        "balanced_accuracy": (sens + spec) / 2,
        # f1 follows sklearn's zero_division=0: no positives predicted nor present -> 0.
        "f1": np.nan_to_num(f1, nan=0.0),
        "accuracy": _div(tp + tn, tp + fn + tn + fp),
    }


def confusion(labels, probs, threshold: float) -> dict[str, int]:
    """Confusion counts at one threshold (fracture when prob >= threshold): {tp, fn, tn, fp}."""
    y, p = _as_arrays(labels, probs)
    pred, pos = p >= threshold, y == 1
    return {
        "tp": int((pred & pos).sum()),
        "fn": int((~pred & pos).sum()),
        "tn": int((~pred & ~pos).sum()),
        "fp": int((pred & ~pos).sum()),
    }


def binary_metrics(labels, probs, threshold: float) -> dict[str, float]:
    """Ranking metrics plus metrics at one operating point.

    Args:
        labels: 0/1 ground truth, shape (N,).
        probs: predicted fracture probabilities, shape (N,) or (N, 1).
        threshold: predict fracture when prob >= threshold.

    Returns:
        auc, auprc (nan when only one class is present), sensitivity, specificity (nan when
        there are no positives / negatives), balanced_accuracy, f1, accuracy and the threshold.
    """
    y, p = _as_arrays(labels, probs)
    both = np.unique(y).size == 2
    out = {
        "auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "auprc": float(average_precision_score(y, p)) if both else float("nan"),
    }
    out |= {k: float(v) for k, v in _from_counts(**confusion(y, p, threshold)).items()}
    return out | {"threshold": float(threshold)}


def choose_threshold(labels, probs, *, method: str = "youden", target_sensitivity: float = 0.9) -> float:
    """Pick an operating threshold, normally on the validation split.

    Args:
        method: "youden" maximises TPR - FPR; "sensitivity" takes the highest threshold whose
            sensitivity is >= target_sensitivity (the most specific such point).

    Returns:
        The threshold, clamped to [0, 1]; 0.5 when only one class is present.
    """
    y, p = _as_arrays(labels, probs)
    if np.unique(y).size < 2:
        return 0.5
    # drop_intermediate=False: the first point reaching the target sensitivity can sit on a
    # vertical ROC segment, which the default would drop.
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)  # thresholds decreasing
    if method == "youden":
        i = int(np.argmax(tpr - fpr))  # ties: the first, i.e. highest threshold
    elif method == "sensitivity":
        i = int(np.argmax(tpr >= target_sensitivity - 1e-12))  # tpr ends at 1, so always found
    else:
        raise ValueError(f"unknown threshold method {method!r} (youden | sensitivity)")
    return float(np.clip(thresholds[i], 0.0, 1.0))  # thresholds[0] is inf


def _spec_at(tpr: np.ndarray, fpr: np.ndarray, target: float) -> np.ndarray:
    """1 - FPR where each ROC (rows of (B, K) points from (0, 0), TPR non-decreasing) first reaches TPR = target.

    Linear between the last point below the target and the first at or above it, so a target that
    falls inside a run of tied scores (a diagonal ROC segment) gets the matching fraction of its
    negatives. nan for a row whose ROC never reaches the target (no positives: nan TPR).
    """
    reached = tpr >= target - 1e-12  # float noise: 9/10 must count as reaching 0.9
    i = np.argmax(reached, axis=1)  # the first point reaching it; >= 1, as the origin has TPR 0
    rows = np.arange(len(tpr))
    t0, t1, f0, f1 = tpr[rows, i - 1], tpr[rows, i], fpr[rows, i - 1], fpr[rows, i]
    frac = np.clip(_div(target - t0, t1 - t0), 0.0, 1.0)
    spec = 1.0 - (f0 + frac * (f1 - f0))
    spec[~reached.any(axis=1) | (i == 0)] = np.nan
    return spec


def spec_at_sensitivity(labels, probs, target: float = 0.9) -> float:
    """Specificity where sensitivity first reaches `target`, on the linearly interpolated ROC.

    The objective search.objective=specificity_at_sensitivity: how many healthy images a model
    clears while it still catches `target` of the fractures. Threshold-free like the AUROC, but it
    scores only the part of the ROC that the clinical operating point can use. A target exactly
    on an ROC point gives that point's (highest) specificity.

    Returns:
        The specificity in [0, 1]; nan when only one class is present.
    """
    if not 0 < target <= 1:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    y, p = _as_arrays(labels, probs)
    if np.unique(y).size < 2:
        return float("nan")
    fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)  # from (0, 0), ends at (1, 1)
    return float(_spec_at(tpr[None], fpr[None], target)[0])


def _weighted_metrics(
    counts: np.ndarray,
    y: np.ndarray,
    p: np.ndarray,
    threshold: float,
    names: Sequence[str],
    target_sensitivity: float = 0.9,
) -> dict[str, np.ndarray]:
    """Metrics of B resamples given as item counts (B, N) over the original items.

    A bootstrap resample is the original set with each item repeated counts[b, i] times, so
    everything reduces to weighted sums: no (B, N) gathers, and ties are handled per distinct
    score exactly as roc_auc_score / average_precision_score do.
    """
    out: dict[str, np.ndarray] = {}
    pos_item, pred = y.astype(bool), p >= threshold

    def cell(mask: np.ndarray) -> np.ndarray:  # (B,) weighted count of one confusion cell
        return counts @ mask.astype(np.int64)

    cells = cell(pos_item & pred), cell(pos_item & ~pred), cell(~pos_item & ~pred), cell(~pos_item & pred)
    out |= _from_counts(*cells) | _predictive(*cells)
    if {"auc", "auprc", "spec_at_sens"} & set(names):
        order = np.argsort(-p, kind="stable")  # descending score
        starts = np.flatnonzero(np.r_[True, np.diff(p[order]) != 0])  # one group per distinct score
        w = counts[:, order]
        pos = np.add.reduceat(w * y[order], starts, axis=1)  # (B, G) positives per group
        neg = np.add.reduceat(w * (1 - y[order]), starts, axis=1)  # (B, G) negatives per group
        n_pos, n_neg = pos.sum(1), neg.sum(1)
        # AUC: each positive beats the negatives in lower groups, and ties count half.
        neg_below = n_neg[:, None] - np.cumsum(neg, axis=1)
        out["auc"] = _div((pos * (neg_below + 0.5 * neg)).sum(1), n_pos * n_neg)
        # AP: sum over thresholds of (recall step) * precision at that threshold.
        tp_cum, fp_cum = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
        ap = (pos * np.nan_to_num(_div(tp_cum, tp_cum + fp_cum))).sum(1)
        out["auprc"] = _div(ap, n_pos)
        # The ROC from (0, 0), one point per distinct score: what roc_curve draws, per resample.
        roc = [
            np.concatenate([np.zeros((len(w), 1)), _div(c, n[:, None])], axis=1)
            for c, n in ((tp_cum, n_pos), (fp_cum, n_neg))
        ]
        out["spec_at_sens"] = _spec_at(roc[0], roc[1], target_sensitivity)
        undefined = (n_pos == 0) | (n_neg == 0)
        out["auc"][undefined] = out["auprc"][undefined] = out["spec_at_sens"][undefined] = np.nan
    return {k: out[k] for k in names}


def bootstrap_ci(
    labels,
    probs,
    threshold: float,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    metrics: Sequence[str] = ("auc", "sensitivity", "specificity"),
    target_sensitivity: float = 0.9,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals, resampling items with replacement.

    Resamples where a metric is undefined (e.g. one class only, for auc) are skipped for that
    metric. Deterministic for a given seed. target_sensitivity is spec_at_sens's target.

    Returns:
        {metric: (low, high)} at level 1 - alpha; (nan, nan) when no resample defines the metric.
    """
    unknown = set(metrics) - set(BOOTSTRAP_NAMES)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {BOOTSTRAP_NAMES}")
    y, p = _as_arrays(labels, probs)
    n, rng = y.size, np.random.default_rng(seed)
    values: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    chunk = max(1, 2**21 // max(n, 1))  # bound memory at ~2M counts per block
    for start in range(0, n_boot, chunk):
        # Multinomial counts are exactly "draw n items with replacement", as (B, N) weights.
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, n_boot - start))
        for k, v in _weighted_metrics(counts, y, p, threshold, metrics, target_sensitivity).items():
            values[k].append(v)
    out = {}
    for k, parts in values.items():
        v = np.concatenate(parts)
        v = v[np.isfinite(v)]
        lo, hi = np.quantile(v, [alpha / 2, 1 - alpha / 2]) if v.size else (np.nan, np.nan)
        out[k] = (float(lo), float(hi))
    return out


def ranking_metrics(labels, probs, *, target_sensitivity: float = 0.9) -> dict[str, float]:
    """What a study can rank by besides the AUROC: spec_at_sens, and both objectives' lower bounds.

    A lower bound is the low end of the 95% percentile bootstrap interval (LOWER_BOUND_RESAMPLES
    resamples, LOWER_BOUND_SEED). Ranking by it prefers a model whose score holds up on another draw
    of the val set over one that got lucky on this draw: on a few hundred val images two AUROCs
    0.01 apart are well within each other's noise.

    Returns:
        spec_at_sens, auc_lower, spec_at_sens_lower (nan when only one class is present).
    """
    names = ("auc", "spec_at_sens")
    ci = bootstrap_ci(
        labels,
        probs,
        0.5,  # no threshold metric is asked for
        n_boot=LOWER_BOUND_RESAMPLES,
        seed=LOWER_BOUND_SEED,
        metrics=names,
        target_sensitivity=target_sensitivity,
    )
    return {"spec_at_sens": spec_at_sensitivity(labels, probs, target_sensitivity)} | {
        k + LOWER: ci[k][0] for k in names
    }


def prefixed(d: Mapping[str, float], prefix: str) -> dict[str, float]:
    """{"auc": x} -> {"<prefix>_auc": x}, e.g. prefix "val" gives PRIMARY's key."""
    return {f"{prefix}_{k}": v for k, v in d.items()}


def constant_output_loss(labels, pos_weight: float = 1.0) -> float:
    """The BCE (with pos_weight) of the best constant prediction: the train loss of a model that learned nothing.

    A train loss that stays at this value means the network collapsed to one output for every image.
    With pos_weight = negatives / positives the best constant is p = 0.5 and the loss 2 (1 - π) ln 2.
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    pi = float(y.mean())
    if pi in (0.0, 1.0):
        return 0.0
    p = pos_weight * pi / (pos_weight * pi + 1 - pi)  # argmin of the expected weighted BCE
    return float(-(pos_weight * pi * np.log(p) + (1 - pi) * np.log(1 - p)))


def _predictive(tp, fn, tn, fp) -> dict[str, np.ndarray]:
    return {"ppv": _div(tp, tp + fp), "npv": _div(tn, tn + fn)}


def predictive_values(labels, probs, threshold: float) -> dict[str, float]:
    """PPV (share of fracture calls that are fractures) and NPV at one threshold; nan where nothing got that call."""
    return {k: float(v) for k, v in _predictive(**confusion(labels, probs, threshold)).items()}


def brier_score(labels, probs) -> float:
    """Mean squared gap between P(fracture) and the 0/1 label: 0 is perfect, 0.25 is a constant 0.5."""
    y, p = _as_arrays(labels, probs)
    return float(np.mean((p - y) ** 2)) if y.size else float("nan")


def expected_calibration_error(labels, probs, n_bins: int = 10) -> float:
    """ECE: per equal-width score bin, |fracture fraction - mean score|, weighted by the bin's share of images.

    Bins [0, 1/n), ..., [(n-1)/n, 1] (a score of 1 falls in the last), as plots' "uniform" reliability
    curve draws them. Pos_weight training shifts scores up, which shows here even when the AUROC is high.
    """
    y, p = _as_arrays(labels, probs)
    if not y.size:
        return float("nan")
    which = np.clip((p * n_bins).astype(np.int64), 0, n_bins - 1)  # (N,) bin of each score
    # sum_b (n_b / N) |mean(y_b) - mean(p_b)| = sum_b |sum(y_b) - sum(p_b)| / N
    gap = np.bincount(which, weights=y, minlength=n_bins) - np.bincount(which, weights=p, minlength=n_bins)
    return float(np.abs(gap).sum() / y.size)
