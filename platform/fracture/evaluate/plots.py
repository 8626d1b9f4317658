"""Evaluation and training-curve figures, written as PNG files.

Figures are built on an explicit Agg canvas (`figure()`), never through pyplot: nothing global
changes (no `matplotlib.use`, no pyplot figure registry), so this is safe in headless workers,
threads and notebooks alike. matplotlib is imported inside functions: `import fracture.evaluate.plots`
costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fracture.core import metrics

DPI = 120
CLASS_NAMES = ("no fracture", "fracture")


def figure(**kwargs):
    """A matplotlib Figure bound to an Agg canvas (no GUI, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(dpi=DPI, layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def save_evaluation_plots(labels, probs, threshold: float, out_dir: str | Path, *, title: str = "") -> dict[str, Path]:
    """ROC, precision-recall, confusion-matrix and calibration plots of one prediction set.

    Args:
        labels: 0/1 ground truth, shape (N,); both classes should be present.
        probs: predicted fracture probabilities, shape (N,) or (N, 1).
        threshold: operating point (predict fracture when prob >= threshold), marked on each plot.
        out_dir: directory to write roc.png, pr.png, confusion.png, calibration.png into.
        title: prefix for every figure title (e.g. "holdout, hand").

    Returns:
        {"roc", "pr", "confusion", "calibration"} -> path written.
    """
    y = np.asarray(labels).ravel().astype(int)
    p = np.asarray(probs, dtype=float).ravel()
    scored = _Scored(y, p, threshold, f"{title}: " if title else "")
    out_dir = Path(out_dir)
    return {
        "roc": _save(_roc(scored), out_dir / "roc.png"),
        "pr": _save(_precision_recall(scored), out_dir / "pr.png"),
        "confusion": _save(_confusion(scored), out_dir / "confusion.png"),
        "calibration": _save(_calibration(scored), out_dir / "calibration.png"),
    }


class _Scored:
    """One prediction set at its operating point, as every evaluation plot draws it."""

    def __init__(self, y: np.ndarray, p: np.ndarray, threshold: float, head: str):
        self.y, self.p, self.threshold, self.head = y, p, threshold, head
        self.m, self.counts = metrics.binary_metrics(y, p, threshold), metrics.confusion(y, p, threshold)
        self.op = f"threshold {threshold:.2f}"


def _roc(s: _Scored):
    from sklearn.metrics import roc_curve

    fig = figure(figsize=(5, 5))
    ax = fig.subplots()
    fpr, tpr, _ = roc_curve(s.y, s.p)
    ax.plot(fpr, tpr, lw=2, label=f"ROC (AUC = {s.m['auc']:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="chance")
    operating = f"{s.op}: sens {s.m['sensitivity']:.2f}, spec {s.m['specificity']:.2f}"
    ax.plot(1 - s.m["specificity"], s.m["sensitivity"], "o", c="red", ms=8, label=operating)
    ax.set(
        xlabel="False positive rate (1 - specificity)",
        ylabel="True positive rate (sensitivity)",
        title=f"{s.head}ROC curve",
        xlim=(0, 1),
        ylim=(0, 1.02),
        aspect="equal",
    )
    ax.legend(loc="lower right", fontsize=8)
    return fig


def _precision_recall(s: _Scored):
    from sklearn.metrics import precision_recall_curve

    fig = figure(figsize=(5, 5))
    ax = fig.subplots()
    precision, recall, _ = precision_recall_curve(s.y, s.p)
    ax.step(recall, precision, where="post", lw=2, label=f"PR (AP = {s.m['auprc']:.3f})")
    ax.axhline(s.y.mean(), ls="--", c="grey", lw=1, label=f"prevalence ({s.y.mean():.2f})")
    n_pred = s.counts["tp"] + s.counts["fp"]
    if n_pred:  # precision is undefined with no positive calls
        ax.plot(s.m["sensitivity"], s.counts["tp"] / n_pred, "o", c="red", ms=8, label=s.op)
    ax.set(
        xlabel="Recall (sensitivity)",
        ylabel="Precision",
        title=f"{s.head}Precision-recall curve",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.legend(loc="lower left", fontsize=8)
    return fig


def _confusion(s: _Scored):
    fig = figure(figsize=(4.5, 4))
    ax = fig.subplots()
    c = s.counts
    cm = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])  # rows: actual, cols: predicted
    ax.imshow(cm, cmap="Blues")
    for (i, j), count in np.ndenumerate(cm):
        color = "white" if count > cm.max() / 2 else "black"
        ax.text(j, i, str(count), ha="center", va="center", fontsize=14, color=color)
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=CLASS_NAMES,
        yticklabels=CLASS_NAMES,
        xlabel="Predicted",
        ylabel="Actual",
        title=f"{s.head}Confusion matrix ({s.op})",
    )
    return fig


def _calibration(s: _Scored):
    from sklearn.calibration import calibration_curve

    fig = figure(figsize=(5, 6))
    ax, hist = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    strategy = calibration_bins(s.p)
    prob_true, prob_pred = calibration_curve(s.y, s.p, n_bins=10, strategy=strategy)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfectly calibrated")
    bins = "deciles of scores" if strategy == "quantile" else "10 equal bins"
    ax.plot(prob_pred, prob_true, "o-", lw=2, label=f"model ({bins})")
    ax.set(ylabel="Observed fracture fraction", title=f"{s.head}Calibration (reliability)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    hist.hist([s.p[s.y == 0], s.p[s.y == 1]], bins=20, range=(0, 1), stacked=True, label=CLASS_NAMES)
    hist.axvline(s.threshold, c="red", lw=1)
    hist.set(xlabel="Predicted fracture probability", ylabel="Count")
    hist.legend(fontsize=8)
    return fig


def calibration_bins(probs: np.ndarray, n_bins: int = 10) -> str:
    """ "uniform" bins, or "quantile" when over half the scores share one uniform bin.

    Models trained with pos_weight on rare positives often put most scores in a narrow band: equal-
    width bins would then show one crowded point and several from a handful of images each.
    """
    counts, _ = np.histogram(np.asarray(probs, dtype=float).ravel(), bins=n_bins, range=(0, 1))
    return "quantile" if counts.size and counts.max() > 0.5 * counts.sum() else "uniform"


def loss_lines(history: Sequence[dict]) -> list[tuple[str, str]]:
    """(metric, legend label) of the losses save_training_curves draws on one axis: train_loss and the
    val loss on its scale (val_loss_weighted), or unweighted val_loss, labelled so, for older histories."""
    present = {k for h in history for k in h}
    lines = [("train_loss", "train_loss")] if "train_loss" in present else []
    if "val_loss_weighted" in present:
        lines.append(("val_loss_weighted", "val_loss (weighted as train)"))
    elif "val_loss" in present:
        lines.append(("val_loss", "val_loss (unweighted: lower scale)"))
    return lines


def save_training_curves(history: Sequence[dict], out_path: str | Path, chosen_epoch: int | None = None) -> Path:
    """Loss (train and val) and val_auc per epoch, as two stacked panels, epochs counted from 1 as the console does.

    The val loss drawn beside train_loss is val_loss_weighted when the history has it: train_loss is
    BCE with pos_weight, and unweighted val_loss sits far below it on FracAtlas (pos_weight ~4.6),
    which reads as a gap that is not there. An older history without it keeps val_loss, labelled so.

    Args:
        history: one dict per epoch, as reported by the worker; x is its 0-based "epoch" key + 1 when
            every row has one, else 1..len(history). Metrics missing from a row plot as gaps.
        out_path: PNG file to write.
        chosen_epoch: the 0-based epoch whose checkpoint was registered, drawn as a dashed line.
    """
    epochs = (
        [int(h["epoch"]) + 1 for h in history]
        if history and all("epoch" in h for h in history)
        else list(range(1, len(history) + 1))
    )

    def series(key: str) -> list[float]:
        return [float(h.get(key, math.nan)) for h in history]

    from matplotlib.ticker import MaxNLocator

    fig = figure(figsize=(6, 6))
    loss_ax, auc_ax = fig.subplots(2, 1, sharex=True)
    for key, label in loss_lines(history):
        loss_ax.plot(epochs, series(key), "o-", label=label)
    loss_ax.set(ylabel="BCE loss (pos_weight on positives)", title="Training curves")
    if any(metrics.PRIMARY in h for h in history):
        auc_ax.plot(epochs, series(metrics.PRIMARY), "o-", c="tab:green", label=metrics.PRIMARY)
    if chosen_epoch is not None:
        for ax in (loss_ax, auc_ax):
            ax.axvline(chosen_epoch + 1, ls="--", c="grey", lw=1, label=f"registered (epoch {chosen_epoch + 1})")
    for ax in (loss_ax, auc_ax):
        if ax.lines:  # legend() warns when nothing was plotted
            ax.legend(fontsize=8)
    auc_ax.set(xlabel="Epoch", ylabel="ROC AUC")
    auc_ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no 0.5-epoch ticks
    return _save(fig, Path(out_path))
