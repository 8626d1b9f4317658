"""Holdout evaluation: the report of one scored set (overall, 95% CIs, slices, threshold) and run(),
which scores a frame and writes the report, predictions, skipped files and plots into a directory.

The held-out test split is named here and nowhere else (training builds "train" and "val" only, see
data.pipeline.build_datasets). Which rows get scored and their scores come from fracture.evaluate.scoring,
the model from fracture.evaluate.model_source, Grad-CAM examples from fracture.evaluate.gradcam_examples.
No MLflow here and no choice of output paths: jobs/evaluate.py passes the directory to write into.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fracture.core import metrics
from fracture.core.errors import DataError
from fracture.core.names import LABEL, PATH
from fracture.evaluate import gradcam_examples, plots, scoring
from fracture.model import checkpoint
from fracture.model.network import FractureNet

log = logging.getLogger(__name__)

DEFAULT_SPLIT = "test"
CI_METRICS = ("auc", "auprc", "sensitivity", "specificity", "ppv", "npv")
HARDWARE_NAMES = {1: "hardware", 0: "no_hardware", -1: "unknown"}
# A slice below these sizes gets no AUC (4 images can score 1.000) and is flagged as small: its
# sensitivity and specificity are shown, but each rests on a handful of images.
SMALL_SLICE_IMAGES = 20
SMALL_SLICE_PER_CLASS = 5


# ----------------------------------------------------------------------------------------- report


def _slice_row(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    m = metrics.binary_metrics(y, p, threshold)
    positives = int(y.sum())
    small = y.size < SMALL_SLICE_IMAGES or min(positives, y.size - positives) < SMALL_SLICE_PER_CLASS
    return {
        "n": int(y.size),
        "positives": positives,
        "auc": float("nan") if small else m["auc"],
        "sensitivity": m["sensitivity"],
        "specificity": m["specificity"],
        "small": small,
    }


def _slices(values: pd.Series, y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, dict]:
    keys = values.to_numpy()
    return {
        str(name): _slice_row(y[keys == name], p[keys == name], threshold) for name in sorted(pd.unique(keys), key=str)
    }


def report(
    labels, probs, threshold: float, frame: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The evaluation report of one prediction set at the checkpoint's operating threshold.

    Args:
        labels: 0/1 ground truth (N,); probs: fracture probabilities (N,).
        threshold: the checkpoint's stored threshold (state["threshold"], chosen on val).
        frame: the N rows scored (for the body_part / hardware / view slices; absent columns are skipped).
        n_boot, seed: bootstrap resamples for the 95% CIs, and their seed.
    Returns:
        {"images", "positives", "threshold", "overall" (metrics.binary_metrics + ppv / npv), "ci95"
        {metric: [lo, hi]} for CI_METRICS, "confusion" {tp, fn, tn, fp}, "calibration" {brier, ece}, "by_body_part",
        "by_hardware", "by_view" {slice: {n, positives, auc, sensitivity, specificity}}}.
        Undefined values (e.g. AUC of a one-class slice) are nan.
    """
    y = np.asarray(labels).ravel().astype(np.int64)
    p = np.asarray(probs, dtype=np.float64).ravel()
    if len(frame) != y.size:
        raise ValueError(f"{len(frame)} rows but {y.size} labels")
    if y.size == 0 or not np.isin(y, (0, 1)).all():
        raise DataError("evaluation needs labelled images (label 0 or 1): a folder needs its dataset.csv")
    ci = metrics.bootstrap_ci(y, p, threshold, n_boot=n_boot, seed=seed, metrics=CI_METRICS)
    out: dict[str, Any] = {
        "images": int(y.size),
        "positives": int(y.sum()),
        "threshold": float(threshold),
        "overall": metrics.binary_metrics(y, p, threshold) | metrics.predictive_values(y, p, threshold),
        "ci95": {k: [lo, hi] for k, (lo, hi) in ci.items()},
        "confusion": metrics.confusion(y, p, threshold),
        "calibration": {"brier": metrics.brier_score(y, p), "ece": metrics.expected_calibration_error(y, p)},
    }
    for column in scoring.SLICE_COLUMNS:
        if column in frame:
            values = frame[column].reset_index(drop=True)
            if column == "hardware":  # implants are a known shortcut: show how each group fares
                values = values.map(lambda v: HARDWARE_NAMES.get(int(v), str(v)))
            out[f"by_{column}"] = _slices(values, y, p, threshold)
    return out


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_table(rep: dict[str, Any]) -> str:
    """The report as a readable text table (overall with CIs, confusion, slices, Grad-CAM check)."""
    o, c = rep["overall"], rep["confusion"]
    lines = [
        f"{rep['images']} images ({rep['positives']} fractured), threshold {rep['threshold']:.3f}",
        "",
        f"{'metric':<20}{'value':>8}   95% CI",
    ]
    for name in (*metrics.METRIC_NAMES, *metrics.PREDICTIVE_NAMES):
        ci = rep["ci95"].get(name)
        band = f"   [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else ""
        lines.append(f"{name:<20}{_fmt(o[name]):>8}{band}")
    lines += ["", f"confusion: TP {c['tp']}  FN {c['fn']}  TN {c['tn']}  FP {c['fp']}"]
    if "calibration" in rep:
        lines.append(f"calibration: Brier {_fmt(rep['calibration']['brier'])}  ECE {_fmt(rep['calibration']['ece'])}")
    for key in ("by_body_part", "by_hardware", "by_view"):
        if key not in rep:
            continue
        head = key.removeprefix("by_").replace("_", " ")
        lines += ["", f"{head:<18}{'n':>6}{'pos':>6}{'auc':>8}{'sens':>8}{'spec':>8}"]
        for name, row in rep[key].items():
            lines.append(
                f"{name:<18}{row['n']:>6}{row['positives']:>6}{_fmt(row['auc']):>8}"
                f"{_fmt(row['sensitivity']):>8}{_fmt(row['specificity']):>8}"
                + ("   * small" if row.get("small") else "")
            )
    if any(row.get("small") for key in ("by_body_part", "by_hardware", "by_view") for row in rep.get(key, {}).values()):
        lines += [
            "",
            f"* small slice (< {SMALL_SLICE_IMAGES} images or < {SMALL_SLICE_PER_CLASS} of a class): "
            "no AUC, and its sensitivity / specificity rest on a few images",
        ]
    if "explain" in rep:
        lines += ["", gradcam_examples.pointing_summary(rep["explain"])]
    return "\n".join(lines)


def flat_metrics(rep: dict[str, Any]) -> dict[str, float]:
    """The report as flat {name: number} for an experiment tracker (nan values included)."""
    out = {"images": rep["images"], "positives": rep["positives"], **rep["overall"], **rep["confusion"]}
    out |= rep.get("calibration", {})
    if "skipped" in rep:
        out["skipped"] = len(rep["skipped"])
    for name, (lo, hi) in rep["ci95"].items():
        out |= {f"{name}_ci_low": lo, f"{name}_ci_high": hi}
    for key in ("by_body_part", "by_hardware", "by_view"):
        for name, row in rep.get(key, {}).items():
            out |= {f"{key.removeprefix('by_')}.{name}.{k}": v for k, v in row.items() if k != "small"}
    game = rep.get("explain", {}).get("pointing_game")
    if game and game["images"]:
        out |= {"gradcam_pointing_images": game["images"], "gradcam_pointing_hit_rate": game["hit_rate"]}
    return {k: float(v) for k, v in out.items()}


def _jsonable(value: Any) -> Any:
    """nan / inf -> None (JSON has no NaN), numpy scalars -> Python, recursively."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# ------------------------------------------------------------------------------------------ run


def run(
    net: FractureNet,
    state: dict[str, Any],
    frame: pd.DataFrame,
    out_dir: str | Path,
    *,
    skipped: pd.DataFrame | None = None,
    explain_k: int = 0,
    data_root: str | Path | None = None,
    title: str = "",
    allow_truncated: bool = False,
    seed: int = 0,
) -> tuple[dict[str, Any], list[Path]]:
    """Score every row of `frame` that decodes, build the report, and write it into `out_dir`.

    Writes metrics.json (the report; nan as null), predictions.csv (image_id, label, probability,
    predicted and the slice columns), skipped.csv (`skipped`, the files left out before scoring,
    e.g. by scoring.select_rows, then the rows that did not decode; the report's "skipped" holds the same
    records), roc/pr/confusion/calibration PNGs, and with explain_k > 0 gradcam/*.png +
    gradcam/grid.png (the report then holds "explain").

    Returns:
        (report, the files written).
    Raises:
        DataError when no row could be scored (skipped.csv is written first).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size, threshold = checkpoint.image_size(state), float(state["threshold"])
    probs, reasons = scoring.score_rows(net, frame, size, allow_truncated=allow_truncated)
    decoded = reasons == ""
    skipped = scoring.write_skipped(
        out_dir / scoring.SKIPPED_FILE,
        scoring.skips() if skipped is None else skipped,
        scoring.skips(frame.loc[~decoded, PATH], reasons[~decoded]),
        scored=int(decoded.sum()),
    )
    frame, probs = frame[decoded].reset_index(drop=True), probs[decoded]
    labels = frame[LABEL].to_numpy()
    rep = report(labels, probs, threshold, frame, seed=seed)
    rep["skipped"] = skipped.to_dict("records")
    rep["model"] = {
        "source": state.get("source", ""),
        "resolved": state.get("resolved", ""),
        "epoch": state.get("epoch"),
        "image_size": size,
        "val_auc": state.get("metrics", {}).get(metrics.PRIMARY),
    }
    files = [out_dir / scoring.SKIPPED_FILE]
    predictions = frame.drop(columns=[PATH]).assign(probability=probs, predicted=(probs >= threshold).astype(int))
    predictions.to_csv(out_dir / "predictions.csv", index=False)
    files.append(out_dir / "predictions.csv")
    if np.unique(labels).size == 2:
        files += plots.save_evaluation_plots(labels, probs, threshold, out_dir, title=title).values()
    else:
        log.warning("only one class among the %d images: no ROC / PR / calibration plots", len(labels))
    if explain_k > 0:
        rep["explain"] = gradcam_examples.explain_images(
            net,
            frame,
            probs,
            size,
            data_root,
            out_dir / "gradcam",
            explain_k,
            seed=seed,
            allow_truncated=allow_truncated,
        )
        files += [Path(it["overlay"]) for it in rep["explain"]["items"]] + [Path(rep["explain"]["grid"])]
    (out_dir / "metrics.json").write_text(json.dumps(_jsonable(rep), indent=2) + "\n")
    files.insert(0, out_dir / "metrics.json")
    return rep, files
