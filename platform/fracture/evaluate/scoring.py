"""Which images get scored, and scoring them: rows of a manifest split or a folder, the files left out
with why (skipped.csv), and the model's fracture probabilities for the rest.

Images are decoded with presets.decode_checked at the size the checkpoint was trained at, and the
model normalises them itself, so scores here match training's validation path. The caller names
the split: only fracture.evaluate.holdout names the held-out one (evaluate.DEFAULT_SPLIT), training never
does (see data.build_datasets). No MLflow here and no choice of output paths: the jobs pass them.
"""

from __future__ import annotations

import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from fracture.core.config import Config, ConfigError
from fracture.core.errors import DataError
from fracture.core.names import ID, LABEL, PATH, REASON, SPLITS
from fracture.data import manifest, pipeline, presets
from fracture.model import engine
from fracture.model.network import FractureNet

log = logging.getLogger(__name__)

SLICE_COLUMNS = ("body_part", "hardware", "view")  # kept on every row: evaluate.report slices by them
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


def select_rows(
    cfg: Config, split: str | None = None, folder: str | Path | None = None, *, labelled: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows to score, and the files left out with why.

    Args:
        split: one of SPLITS of the study's manifest (built from cfg.data.root on demand);
            needed unless `folder` is given (evaluate.DEFAULT_SPLIT is the held-out one).
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
            df = manifest.build(folder, Path(tmp) / "manifest.parquet", progress=False, **pipeline.split_settings(cfg))
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
        if split not in SPLITS:
            raise ConfigError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
        path = pipeline.ensure_manifest(cfg)
        df = manifest.load(path)
        rows, skipped, where = df[df["usable"] & (df["split"] == split)], skips(), f"split {split!r} of {path}"
    if rows.empty and skipped.empty:
        raise DataError(f"{where} has no usable images")
    columns = [ID, PATH, LABEL, *SLICE_COLUMNS, "split"]
    return rows[columns].reset_index(drop=True), skipped


def frame_for(cfg: Config, split: str | None = None, folder: str | Path | None = None) -> pd.DataFrame:
    """select_rows' rows for callers that report no skipped files; DataError when there are none."""
    rows, skipped = select_rows(cfg, split, folder)
    if rows.empty:
        raise DataError(f"{folder or split} has no usable images ({len(skipped)} files left out)")
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
        raise DataError(f"no image could be scored ({len(table)} skipped, see {path})")
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
        raise DataError(f"--folder {folder} does not exist")
    paths = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )
    if not paths:
        raise DataError(f"{folder} has neither dataset.csv nor any {'/'.join(IMAGE_SUFFIXES)} image")
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


def decode_all(paths, size: int, *, allow_truncated: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """presets.decode_checked on threads (PIL's decoder releases the GIL): (images, reasons)."""
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
        image_size: the checkpoint's input size (see checkpoint.image_size).
    Returns:
        (probabilities float32 (N,) in [0, 1], nan where the file did not decode; reasons (N,) str,
        "" where it did, see presets.decode_or_reason).
    """
    dev = engine.default_device()
    net.to(dev)
    paths = frame[PATH].tolist()
    probs, reasons = np.full(len(paths), np.nan, np.float32), []
    for start in range(0, len(paths), batch_size):
        images, why = decode_all(paths[start : start + batch_size], image_size, allow_truncated=allow_truncated)
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
        raise DataError(f"{frame[PATH].iloc[bad[0]]}: {reasons[bad[0]]} ({bad.size} files did not decode)")
    return probs
