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
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import precision_recall_curve, roc_curve

    y = np.asarray(labels).ravel().astype(int)
    p = np.asarray(probs, dtype=float).ravel()
    out_dir = Path(out_dir)
    m, counts = metrics.binary_metrics(y, p, threshold), metrics.confusion(y, p, threshold)
    head = f"{title}: " if title else ""
    op = f"threshold {threshold:.2f}"
    paths = {}

    fig = figure(figsize=(5, 5))
    ax = fig.subplots()
    fpr, tpr, _ = roc_curve(y, p)
    ax.plot(fpr, tpr, lw=2, label=f"ROC (AUC = {m['auc']:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="chance")
    ax.plot(
        1 - m["specificity"],
        m["sensitivity"],
        "o",
        c="red",
        ms=8,
        label=f"{op}: sens {m['sensitivity']:.2f}, spec {m['specificity']:.2f}",
    )
    ax.set(
        xlabel="False positive rate (1 - specificity)",
        ylabel="True positive rate (sensitivity)",
        title=f"{head}ROC curve",
        xlim=(0, 1),
        ylim=(0, 1.02),
        aspect="equal",
    )
    ax.legend(loc="lower right", fontsize=8)
    paths["roc"] = _save(fig, out_dir / "roc.png")

    fig = figure(figsize=(5, 5))
    ax = fig.subplots()
    precision, recall, _ = precision_recall_curve(y, p)
    ax.step(recall, precision, where="post", lw=2, label=f"PR (AP = {m['auprc']:.3f})")
    ax.axhline(y.mean(), ls="--", c="grey", lw=1, label=f"prevalence ({y.mean():.2f})")
    n_pred = counts["tp"] + counts["fp"]
    if n_pred:  # precision is undefined with no positive calls
        ax.plot(m["sensitivity"], counts["tp"] / n_pred, "o", c="red", ms=8, label=op)
    ax.set(
        xlabel="Recall (sensitivity)",
        ylabel="Precision",
        title=f"{head}Precision-recall curve",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.legend(loc="lower left", fontsize=8)
    paths["pr"] = _save(fig, out_dir / "pr.png")

    fig = figure(figsize=(4.5, 4))
    ax = fig.subplots()
    cm = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]])  # rows: actual, cols: predicted
    ax.imshow(cm, cmap="Blues")
    for (i, j), count in np.ndenumerate(cm):
        ax.text(
            j, i, str(count), ha="center", va="center", fontsize=14, color="white" if count > cm.max() / 2 else "black"
        )
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=CLASS_NAMES,
        yticklabels=CLASS_NAMES,
        xlabel="Predicted",
        ylabel="Actual",
        title=f"{head}Confusion matrix ({op})",
    )
    paths["confusion"] = _save(fig, out_dir / "confusion.png")

    fig = figure(figsize=(5, 6))
    ax, hist = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    strategy = calibration_bins(p)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy=strategy)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfectly calibrated")
    bins = "deciles of scores" if strategy == "quantile" else "10 equal bins"
    ax.plot(prob_pred, prob_true, "o-", lw=2, label=f"model ({bins})")
    ax.set(ylabel="Observed fracture fraction", title=f"{head}Calibration (reliability)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    hist.hist([p[y == 0], p[y == 1]], bins=20, range=(0, 1), stacked=True, label=CLASS_NAMES)
    hist.axvline(threshold, c="red", lw=1)
    hist.set(xlabel="Predicted fracture probability", ylabel="Count")
    hist.legend(fontsize=8)
    paths["calibration"] = _save(fig, out_dir / "calibration.png")
    return paths


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
