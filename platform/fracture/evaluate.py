"""Holdout evaluation: which rows, the model's scores, the report (overall, CIs, slices), Grad-CAM.

This is the only module that may read the manifest's test split (training builds "train" and "val"
only, see data.build_datasets). Images are decoded with presets.decode_resize at the size the
checkpoint was trained at, and the model normalises them itself, so scores here match training's
validation path. No MLflow here and no choice of output paths: jobs/evaluate.py and jobs/predict.py
pass the directory to write into.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fracture import checkpoint, data, engine, explain, manifest, metrics, plots, presets
from fracture.config import Config, ConfigError
from fracture.model import FractureNet
from fracture.presets import ID, LABEL, PATH, REASON

log = logging.getLogger(__name__)

DEFAULT_SPLIT = "test"
CI_METRICS = ("auc", "sensitivity", "specificity")
SLICE_COLUMNS = ("body_part", "hardware", "view")  # report["by_<column>"]
HARDWARE_NAMES = {1: "hardware", 0: "no_hardware", -1: "unknown"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
SKIPPED_FILE = "skipped.csv"  # path, reason: every file that was not scored, beside the job's output
SKIPPED_SHOWN = 20  # skipped files listed on the console; skipped.csv has them all
# Why select_rows leaves a file of a FracAtlas-layout folder out, by its manifest status.
SKIP_REASONS = {
    "unreadable": "unreadable: not an image PIL can open",
    "truncated": "truncated: the file ends before the image does (data.allow_truncated=true loads what decodes)",
    "orphan_file": "no dataset.csv row: no label to evaluate against",
    "duplicate": "duplicate of {duplicate_of}: scored once",
}
# Prediction needs no label and no de-duplication: these statuses are scored there too.
SCORED_UNLABELLED = ("orphan_file", "duplicate")
# A slice below these sizes gets no AUC (4 images can score 1.000) and is flagged as small: its
# sensitivity and specificity are shown, but each rests on a handful of images.
SMALL_SLICE_IMAGES = 20
SMALL_SLICE_PER_CLASS = 5
DISPLAY_PX = 224  # overlays are drawn at least this big, whatever the model's input size
GRADCAM_BATCH = 16  # images per Grad-CAM backward pass (bounds activation memory)
_MODEL_URI = re.compile(r"^models:/(?P<name>[^@/]+)@(?P<alias>[^@/]+)$")


# ------------------------------------------------------------------------------------------- model


def champion_uri(cfg: Config) -> str:
    """The default model to evaluate: models:/<tracking.model_name>@champion."""
    from fracture.tracking import CHAMPION

    return f"models:/{cfg.tracking.model_name}@{CHAMPION}"


def resolve(source: str, cfg: Config) -> tuple[Path, str]:
    """A local checkpoint directory for `source`, and what it really is.

    Args:
        source: a checkpoint directory, or `models:/<name>@<alias>` in the study's MLflow registry
            (tracking uri from tracking.tracking_uri(cfg)); the alias's files are downloaded.
    Returns:
        (directory, resolved): `resolved` is the directory, or `models:/<name>/<version>` that the
        alias pointed at when it was read (aliases move; a record of what was scored must not).
    Raises:
        ConfigError for a path that is not a checkpoint, TrackingError for a URI that cannot be had.
    """
    match = _MODEL_URI.match(source)
    if match:
        from fracture import tracking

        uri = tracking.tracking_uri(cfg)
        tracking.check_reachable(uri)
        directory, version = tracking.champion_checkpoint(uri, match["name"], match["alias"])
        log.info("%s is version %s (downloaded to %s)", source, version, directory)
        return directory, f"models:/{match['name']}/{version}"
    if source.startswith("models:/"):
        raise ConfigError(f"--model {source}: expected models:/<name>@<alias>, e.g. models:/fracture@champion")
    directory = Path(source).expanduser()
    if not (directory / checkpoint.STATE_FILE).is_file() or not (directory / checkpoint.MODEL_FILE).is_file():
        raise ConfigError(
            f"--model {source}: not a checkpoint directory (needs {checkpoint.MODEL_FILE} and "
            f"{checkpoint.STATE_FILE}), nor a models:/<name>@<alias> URI"
        )
    return directory.resolve(), str(directory.resolve())


def checkpoint_dir(source: str, cfg: Config) -> Path:
    """The local checkpoint directory of `source` (see `resolve`)."""
    return resolve(source, cfg)[0]


def load(source: str, cfg: Config) -> tuple[FractureNet, dict[str, Any]]:
    """The model (eval mode, on CPU) and its checkpoint state.

    state["source"] records `source` as given, state["resolved"] what it resolved to (see `resolve`).
    """
    directory, resolved = resolve(source, cfg)
    net, state = checkpoint.load_model(directory)
    return net, {**state, "source": source, "resolved": resolved}


def image_size(state: dict[str, Any]) -> int:
    """The input size the checkpoint was trained at (not the current study's data.image_size)."""
    return int(state["config"]["data"]["image_size"])


# -------------------------------------------------------------------------------------------- rows


def select_rows(
    cfg: Config, split: str = DEFAULT_SPLIT, folder: str | Path | None = None, *, labelled: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows to score, and the files left out with why.

    Args:
        split: "train", "val" or "test" of the study's manifest (built from cfg.data.root on demand).
        folder: a FracAtlas-layout folder (images/{Fractured,Non_fractured}, dataset.csv); when given,
            `split` is ignored and every usable image of the folder is taken (its manifest is built
            into a temporary file with the study's split settings, then dropped). A folder without
            dataset.csv is taken as plain, unlabelled images (IMAGE_SUFFIXES, recursively): label -1,
            which predict accepts and the evaluation report refuses.
        labelled: evaluation (True) needs one trusted label per image, so a folder's files without a
            dataset.csv row and its byte-identical copies are left out; prediction (False) scores them.
    Returns:
        (rows: image_id, path, label, body_part, hardware, view, split, in manifest order;
        skipped: path, reason for each file of the folder the manifest audit left out, see
        SKIP_REASONS. CSV rows without a file are no file to score and are not listed.)
        Files that pass the audit can still fail to decode: score_rows and predict say which.
    Raises:
        DataError when the split or folder holds no image file at all.
    """
    if folder is not None and not (Path(folder) / "dataset.csv").is_file():
        return _unlabelled(Path(folder)), skips()
    if folder is not None:
        with tempfile.TemporaryDirectory(prefix="fracture-eval-") as tmp:
            # manifest.build, not data.build_manifest: a folder to score needs no trainable split
            df = manifest.build(folder, Path(tmp) / "manifest.parquet", progress=False, **data.split_settings(cfg))
        keep = df["usable"] if labelled else df["usable"] | df["status"].isin(SCORED_UNLABELLED)
        left_out = df[~keep & (df[PATH] != "")]
        reasons = [
            SKIP_REASONS[s].format(duplicate_of=d)
            for s, d in zip(left_out["status"], left_out["duplicate_of"], strict=True)
        ]
        skipped = skips(left_out[PATH], reasons)
        rows, where = df[keep], f"folder {folder}"
        if Path(folder).resolve() == Path(cfg.data.root).resolve():
            log.warning("%s is the study's data root: its images include the training split", folder)
    else:
        if split not in manifest.SPLITS:
            raise ConfigError(f"--split {split!r}: choose one of {', '.join(manifest.SPLITS)}")
        path = data.ensure_manifest(cfg)
        df = manifest.load(path)
        rows, skipped, where = df[df["usable"] & (df["split"] == split)], skips(), f"split {split!r} of {path}"
    if rows.empty and skipped.empty:
        raise manifest.DataError(f"{where} has no usable images")
    columns = [ID, PATH, LABEL, *SLICE_COLUMNS, "split"]
    return rows[columns].reset_index(drop=True), skipped


def frame_for(cfg: Config, split: str = DEFAULT_SPLIT, folder: str | Path | None = None) -> pd.DataFrame:
    """select_rows' rows for callers that report no skipped files; DataError when there are none."""
    rows, skipped = select_rows(cfg, split, folder)
    if rows.empty:
        raise manifest.DataError(f"{folder or split} has no usable images ({len(skipped)} files left out)")
    return rows


def skips(paths=(), reasons=()) -> pd.DataFrame:
    """A table of files that were not scored: path, reason (what skipped.csv holds)."""
    return pd.DataFrame({PATH: [str(p) for p in paths], REASON: [str(r) for r in reasons]})


def write_skipped(path: str | Path, *tables: pd.DataFrame, scored: int) -> pd.DataFrame:
    """Write the skipped files of `tables` (path, reason) to `path`, a header only when there are none.

    Written even when empty, so a skipped.csv never lingers from an earlier run.

    Args:
        scored: how many images were scored.
    Returns:
        The skipped files, all tables in order.
    Raises:
        DataError when `scored` is 0: there is no result, only the files and their reasons.
    """
    table = skips([p for t in tables for p in t[PATH]], [r for t in tables for r in t[REASON]])
    table.to_csv(path, index=False)
    if scored == 0:
        raise manifest.DataError(f"no image could be scored ({len(table)} skipped, see {path})")
    return table


def skipped_lines(skipped, path: str | Path, *, scored: int, limit: int = SKIPPED_SHOWN) -> list[str]:
    """Console lines for the skipped files (a table or its records): a count, then `path: reason` each."""
    table = pd.DataFrame(skipped, columns=[PATH, REASON])
    if table.empty:
        return []
    lines = [f"skipped {len(table)} of {len(table) + scored} images (reasons in {path}):"]
    lines += [f"  {file}: {reason}" for file, reason in table.head(limit).itertuples(index=False)]
    if len(table) > limit:
        lines.append(f"  ... and {len(table) - limit} more, see {Path(path).name}")
    return lines


def _unlabelled(folder: Path) -> pd.DataFrame:
    if not folder.is_dir():
        raise manifest.DataError(f"--folder {folder} does not exist")
    paths = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )
    if not paths:
        raise manifest.DataError(f"{folder} has neither dataset.csv nor any {'/'.join(IMAGE_SUFFIXES)} image")
    ids = [str(p.relative_to(folder)) for p in paths]  # unique even when names repeat in subfolders
    return pd.DataFrame(
        {
            ID: ids,
            PATH: [str(p.resolve()) for p in paths],
            LABEL: -1,
            "body_part": "unknown",
            "hardware": -1,
            "view": "unknown",
            "split": "",
        }
    )


# ---------------------------------------------------------------------------------------- scoring


def _decode_all(paths, size: int, *, allow_truncated: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """presets.decode_checked on threads (PIL's decoder releases the GIL)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return presets.decode_checked(paths, size, allow_truncated=allow_truncated, map_fn=pool.map)


def score_rows(
    net: FractureNet, frame: pd.DataFrame, image_size: int, *, batch_size: int = 64, allow_truncated: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Fracture probabilities of every row of `frame` whose file decodes, in order, on the GPU when there is one.

    Decoding is the check: a file that does not decode is left out of its batch, in the same pass.

    Args:
        net: an unwrapped FractureNet; it is moved to the device and put in eval mode.
        frame: rows with a `path` column.
        image_size: the checkpoint's input size (see image_size(state)).
    Returns:
        (probabilities float32 (N,) in [0, 1], nan where the file did not decode; reasons (N,) str,
        "" where it did, see presets.decode_or_reason).
    """
    dev = engine.default_device()
    net.to(dev)
    paths = frame[PATH].tolist()
    probs, reasons = np.full(len(paths), np.nan, np.float32), []
    for start in range(0, len(paths), batch_size):
        images, why = _decode_all(paths[start : start + batch_size], image_size, allow_truncated=allow_truncated)
        reasons.append(why)
        ok = why == ""
        if not ok.any():
            continue
        probs[start : start + len(why)][ok] = engine.predict_batch(net, images[ok], dev)
    return probs, np.concatenate(reasons) if reasons else np.zeros(0, str)


def score(
    net: FractureNet, frame: pd.DataFrame, image_size: int, *, batch_size: int = 64, allow_truncated: bool = False
) -> np.ndarray:
    """score_rows' probabilities, for rows that must all decode (a manifest's split, say).

    Returns:
        float32 (N,) in [0, 1].
    Raises:
        DataError naming the first file that did not decode.
    """
    probs, reasons = score_rows(net, frame, image_size, batch_size=batch_size, allow_truncated=allow_truncated)
    bad = np.flatnonzero(reasons != "")
    if bad.size:
        raise manifest.DataError(f"{frame[PATH].iloc[bad[0]]}: {reasons[bad[0]]} ({bad.size} files did not decode)")
    return probs


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
        {"images", "positives", "threshold", "overall" (metrics.binary_metrics), "ci95" {metric: [lo, hi]}
        for auc / sensitivity / specificity, "confusion" {tp, fn, tn, fp}, "by_body_part",
        "by_hardware", "by_view" {slice: {n, positives, auc, sensitivity, specificity}}}.
        Undefined values (e.g. AUC of a one-class slice) are nan.
    """
    y = np.asarray(labels).ravel().astype(np.int64)
    p = np.asarray(probs, dtype=np.float64).ravel()
    if len(frame) != y.size:
        raise ValueError(f"{len(frame)} rows but {y.size} labels")
    if y.size == 0 or not np.isin(y, (0, 1)).all():
        raise manifest.DataError("evaluation needs labelled images (label 0 or 1): a folder needs its dataset.csv")
    ci = metrics.bootstrap_ci(y, p, threshold, n_boot=n_boot, seed=seed, metrics=CI_METRICS)
    out: dict[str, Any] = {
        "images": int(y.size),
        "positives": int(y.sum()),
        "threshold": float(threshold),
        "overall": metrics.binary_metrics(y, p, threshold),
        "ci95": {k: [lo, hi] for k, (lo, hi) in ci.items()},
        "confusion": metrics.confusion(y, p, threshold),
    }
    for column in SLICE_COLUMNS:
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
    for name in metrics.METRIC_NAMES:
        ci = rep["ci95"].get(name)
        band = f"   [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else ""
        lines.append(f"{name:<20}{_fmt(o[name]):>8}{band}")
    lines += ["", f"confusion: TP {c['tp']}  FN {c['fn']}  TN {c['tn']}  FP {c['fp']}"]
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
        lines += ["", pointing_summary(rep["explain"])]
    return "\n".join(lines)


def pointing_summary(result: dict[str, Any]) -> str:
    """One line on the Grad-CAM pointing game of explain_images' result."""
    game = result["pointing_game"]
    if not game["images"]:
        return (
            f"Grad-CAM: {result['explained']} images explained; none is a fractured image with a "
            "YOLO box, so no pointing-game score"
        )
    return (
        f"Grad-CAM pointing game: {game['hits']}/{game['images']} fractured images have their heatmap peak "
        f"inside a fracture box (hit rate {game['hit_rate']:.2f}); low rates mean the model looks elsewhere "
        "(e.g. at implants)"
    )


def flat_metrics(rep: dict[str, Any]) -> dict[str, float]:
    """The report as flat {name: number} for an experiment tracker (nan values included)."""
    out = {"images": rep["images"], "positives": rep["positives"], **rep["overall"], **rep["confusion"]}
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


# --------------------------------------------------------------------------------------- Grad-CAM


def _choose(probs: np.ndarray, k: int, seed: int) -> list[tuple[int, str]]:
    """Row indices of the k highest probabilities, then k random others (seeded)."""
    order = np.argsort(-probs, kind="stable")
    top, rest = order[:k], order[k:]
    rand = np.random.default_rng(seed).choice(rest, size=min(k, rest.size), replace=False) if rest.size else []
    return [(int(i), "top") for i in top] + [(int(i), "random") for i in sorted(rand)]


def _draw_boxes(image: np.ndarray, boxes: list[explain.Box]) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.fromarray(image)
    draw = ImageDraw.Draw(img)
    w, h = img.size
    for xc, yc, bw, bh in boxes:
        draw.rectangle(
            [(xc - bw / 2) * w, (yc - bh / 2) * h, (xc + bw / 2) * w, (yc + bh / 2) * h],
            outline=(0, 255, 0),
            width=max(1, w // 150),
        )
    return np.asarray(img)


def explain_images(
    net: FractureNet,
    frame: pd.DataFrame,
    probs,
    image_size: int,
    data_root: str | Path | None,
    out_dir: str | Path,
    k: int,
    *,
    seed: int = 0,
    allow_truncated: bool = False,
) -> dict[str, Any]:
    """Grad-CAM for the k most confident fracture calls plus k random other images, with a pointing game.

    Heatmaps are computed at the model's input size; overlays are drawn on the image decoded at
    max(image_size, DISPLAY_PX), with the YOLO fracture boxes (green) where
    `<data_root>/annotations/yolo/<id>.txt` exists. The pointing game counts explained images
    labelled fractured that have at least one box: a hit when the heatmap's peak lies in a box.

    Args:
        net: an unwrapped FractureNet (moved to the scoring device).
        frame: the scored rows (image_id, path, and label / hardware where known); probs: their scores.
        out_dir: gets one `<rank>_<reason>_<id>.png` overlay per image and `grid.png`.
    Returns:
        {"explained", "pointing_game" {images, hits, hit_rate (None without boxed fractured images)},
        "items" [{image_id, reason, probability, label, hit, overlay}], "grid"}.
    """
    from PIL import Image

    probs = np.asarray(probs, dtype=np.float64).ravel()
    chosen = _choose(probs, k, seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = engine.default_device()
    net.to(dev)
    rows = frame.iloc[[i for i, _ in chosen]].reset_index(drop=True)
    images = torch.from_numpy(_decode_all(rows[PATH], image_size, allow_truncated=allow_truncated)[0])
    heatmaps = np.concatenate(
        [
            explain.gradcam(net, engine.to_model_input(images[j : j + GRADCAM_BATCH], dev))
            for j in range(0, len(images), GRADCAM_BATCH)
        ]
    )  # (K, S, S)
    shown = _decode_all(rows[PATH], max(image_size, DISPLAY_PX), allow_truncated=allow_truncated)[0]
    yolo = Path(data_root) / "annotations" / "yolo" if data_root else None
    items, overlays, titles = [], [], []
    for rank, ((i, reason), row) in enumerate(zip(chosen, rows.itertuples(index=False), strict=True)):
        row = row._asdict()
        label = int(row.get(LABEL, -1))
        box_file = yolo / f"{Path(row[ID]).stem}.txt" if yolo else None
        boxes = explain.read_yolo_boxes(box_file) if box_file and box_file.is_file() else []
        hit = explain.pointing_game(heatmaps[rank], boxes) if label == 1 else None
        image = _draw_boxes(explain.overlay(shown[rank], heatmaps[rank]), boxes)
        path = out_dir / f"{rank:02d}_{reason}_{Path(row[ID]).stem}.png"
        Image.fromarray(image).save(path)
        implant = " implant" if int(row.get("hardware", -1)) == 1 else ""
        mark = {True: " hit", False: " miss", None: ""}[hit]
        titles.append(f"{reason} p={probs[i]:.3f} y={label if label >= 0 else '?'}{mark}{implant}")
        overlays.append(image)
        items.append(
            {
                "image_id": row[ID],
                "reason": reason,
                "probability": float(probs[i]),
                "label": label,
                "boxes": len(boxes),
                "hit": hit,
                "overlay": str(path),
            }
        )
    grid = explain.save_grid(overlays, titles, out_dir / "grid.png") if overlays else None
    scored = [it["hit"] for it in items if it["hit"] is not None]
    return {
        "explained": len(items),
        "pointing_game": {
            "images": len(scored),
            "hits": int(sum(scored)),
            "hit_rate": sum(scored) / len(scored) if scored else None,
        },
        "items": items,
        "grid": str(grid) if grid else None,
    }


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
    e.g. by select_rows, then the rows that did not decode; the report's "skipped" holds the same
    records), roc/pr/confusion/calibration PNGs, and with explain_k > 0 gradcam/*.png +
    gradcam/grid.png (the report then holds "explain").

    Returns:
        (report, the files written).
    Raises:
        DataError when no row could be scored (skipped.csv is written first).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size, threshold = image_size(state), float(state["threshold"])
    probs, reasons = score_rows(net, frame, size, allow_truncated=allow_truncated)
    decoded = reasons == ""
    skipped = write_skipped(
        out_dir / SKIPPED_FILE,
        skips() if skipped is None else skipped,
        skips(frame.loc[~decoded, PATH], reasons[~decoded]),
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
    files = [out_dir / SKIPPED_FILE]
    predictions = frame.drop(columns=[PATH]).assign(probability=probs, predicted=(probs >= threshold).astype(int))
    predictions.to_csv(out_dir / "predictions.csv", index=False)
    files.append(out_dir / "predictions.csv")
    if np.unique(labels).size == 2:
        files += plots.save_evaluation_plots(labels, probs, threshold, out_dir, title=title).values()
    else:
        log.warning("only one class among the %d images: no ROC / PR / calibration plots", len(labels))
    if explain_k > 0:
        rep["explain"] = explain_images(
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
