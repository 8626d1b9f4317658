"""Is a manifest's split fit to train and judge a model on? Checked before any trial starts.

A user may bring their own manifest (data.manifest) or edit one, so the split `splits.assign_splits`
made cannot be trusted to still be leak-free. `audit` lists what would make the test AUROC a lie or
undefined: one image (by id, by the manifest's `group`, by bytes, or by a perceptual hash) in two
splits, an empty test split, test used to select models, a split without a fractured image.

The perceptual hash is a 256-bit dHash: the signs of the horizontal differences of a 17x16 box
average of the grayscale image. On FracAtlas (3674 files) a Hamming distance <= 8 of 256 bits
(THRESHOLD) finds only near-copies: re-encoded, slightly cropped or rebrightened saves of one film
(65 pairs besides the byte-identical ones). The first different image appears at 9 (two forearms
in the same pose); resized copies (842x1024 -> 373x454 px) score 9-12, so some of those are missed
rather than flag look-alike X-rays. A 64-bit (9x8) dHash could not separate them: different
patients' forearms scored 0-1 there.

Plain numpy / PIL / pandas: no Ray or MLflow here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fracture.core.names import SPLITS

SIDE = 16  # hash grid: SIDE rows of SIDE horizontal differences = 256 bits
THRESHOLD = 8  # near-duplicate: Hamming distance <= 8 of 256 bits (see the module docstring)
DRAFT = (64, 64)  # JPEGs decode at the smallest DCT scale that keeps >= 64 px: ~2 s for FracAtlas
SHOWN = 3  # ids named per finding before "... (N in all)"


@dataclass(frozen=True)
class Finding:
    """One reason the split cannot be trusted: `kind`, a clause for the error line, the ids involved."""

    # id_in_two_splits | group_in_two_splits | exact_duplicate | near_duplicate | no_test | test_selects | no_positives
    kind: str
    detail: str
    ids: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self) | {"ids": list(self.ids)}


# ---------------------------------------------------------------------------------------------- hash


def phash(image) -> str:
    """256-bit dHash of a PIL image as 64 hex digits; any mode (16-bit films need no windowing: only signs count)."""
    from PIL import Image

    grid = np.asarray(image.convert("F").resize((SIDE + 1, SIDE), Image.Resampling.BOX))
    return np.packbits(grid[:, 1:] > grid[:, :-1]).tobytes().hex()


def hash_file(path: str | Path) -> str:
    """phash of an image file, decoded at reduced size when it is a JPEG; "" when it does not decode."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft(image.mode, DRAFT)
            image.load()
            return phash(image)
    except Exception:  # unreadable or truncated: such rows are excluded anyway
        return ""


def _words(hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """phash strings as (n, 4) uint64 words, and which of them are hashes at all ("" is not)."""
    width = SIDE * SIDE // 8
    valid = np.array([len(h) == 2 * width for h in hashes], dtype=bool)
    raw = b"".join(bytes.fromhex(h) if ok else bytes(width) for h, ok in zip(hashes, valid, strict=True))
    return np.frombuffer(raw, dtype=np.uint64).reshape(len(hashes), width // 8), valid


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances (len(a), len(b)) of two sets of hash words."""
    out = np.zeros((len(a), len(b)), dtype=np.int32)
    for k in range(a.shape[1]):  # one 64-bit word at a time
        out += np.bitwise_count(a[:, k, None] ^ b[None, :, k])
    return out


def distances(hashes: Sequence[str]) -> np.ndarray:
    """Pairwise Hamming distances (n x n int32) of phash strings; "" is at distance 999 from everything."""
    words, valid = _words(hashes)
    out = _hamming(words, words)
    out[~valid, :] = out[:, ~valid] = 999
    return out


def near_pairs(hashes: Sequence[str], threshold: int = THRESHOLD) -> list[tuple[int, int, int]]:
    """(i, j, distance) for every i < j whose hashes are within `threshold` bits, in (i, j) order.

    Not by the n x n distance matrix (100k images: 37 GB): the 256 bits are cut into threshold + 1
    bands, and two hashes at most `threshold` bits apart agree on at least one whole band
    (pigeonhole). So only hashes that share a band's value are compared, and none is missed.
    """
    words, valid = _words(hashes)
    index = np.flatnonzero(valid)
    bits = np.unpackbits(words[index].view(np.uint8), axis=1)  # (m, 256)
    found: dict[tuple[int, int], int] = {}
    for band in np.array_split(np.arange(bits.shape[1]), threshold + 1):
        keys = np.packbits(bits[:, band], axis=1)
        _, bucket, sizes = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        order = np.argsort(bucket.ravel(), kind="stable")
        for members in np.split(order, np.cumsum(sizes)[:-1]):
            if len(members) < 2:
                continue
            rows = index[members]
            d = _hamming(words[rows], words[rows])
            for a, b in zip(*np.nonzero(np.triu(d <= threshold, k=1)), strict=True):
                found[(int(rows[a]), int(rows[b]))] = int(d[a, b])
    return [(i, j, dist) for (i, j), dist in sorted(found.items())]


def near_duplicates(frame: pd.DataFrame, threshold: int = THRESHOLD) -> list[dict]:
    """Near-duplicate pairs among a manifest's files (byte-identical ones are `manifest`'s duplicates).

    Returns:
        {a, b, distance, splits: [split of a, split of b]} per pair, closest first.
    """
    rows = frame[(frame["phash"] != "")].reset_index(drop=True) if "phash" in frame else frame.iloc[:0]
    out = [
        {
            "a": rows.at[i, "image_id"],
            "b": rows.at[j, "image_id"],
            "distance": dist,
            "splits": [rows.at[i, "split"], rows.at[j, "split"]],
        }
        for i, j, dist in near_pairs(rows["phash"].tolist(), threshold)
        if rows.at[i, "sha256"] != rows.at[j, "sha256"]
    ]
    return sorted(out, key=lambda p: (p["distance"], p["a"], p["b"]))


# --------------------------------------------------------------------------------------------- audit


def audit(
    frame: pd.DataFrame, *, selection: Sequence[str] = ("train", "val"), threshold: int = THRESHOLD
) -> list[Finding]:
    """Everything wrong with the split of a manifest's usable rows; [] when it is clean.

    Args:
        frame: a manifest (scan.SCHEMA; `phash` optional: no near-duplicate check without it).
        selection: the splits training and model selection read (data.TRAINING_SPLITS and the
            primary metric's split); "test" among them is a finding.
        threshold: near-duplicate Hamming distance (of 256 bits).
    """
    rows = frame[frame["usable"] & frame["split"].isin(SPLITS)].reset_index(drop=True)
    findings = [
        *_spanning(rows, "image_id", "id_in_two_splits", "image ids in two splits"),
        *_spanning(rows, "group", "group_in_two_splits", "duplicate groups in two splits"),
        *_spanning(rows[rows["sha256"] != ""], "sha256", "exact_duplicate", "byte-identical images in two splits"),
        *_near_across(rows, threshold),
    ]
    if not (rows["split"] == "test").any():
        findings.append(Finding("no_test", "the test split is empty (nothing left to judge the model on)"))
    if "test" in selection:
        findings.append(Finding("test_selects", f"the test split selects models (splits used: {', '.join(selection)})"))
    for split in SPLITS:
        part = rows[rows["split"] == split]
        if (split != "test" or len(part)) and not (part["label"] == 1).any():
            findings.append(Finding("no_positives", f"the {split} split has no fractured image ({len(part)} images)"))
    return findings


def _spanning(rows: pd.DataFrame, key: str, kind: str, what: str) -> list[Finding]:
    """One finding for all values of `key` whose rows lie in more than one split."""
    splits = rows.groupby(key)["split"].agg(lambda s: sorted(set(s), key=SPLITS.index))
    spanning = splits[splits.map(len) > 1]
    if key != "image_id":  # one id under one group or hash repeats the image-id finding
        spanning = spanning[rows[rows[key].isin(spanning.index)].groupby(key)["image_id"].nunique() > 1]
    if spanning.empty:
        return []
    ids = dict.fromkeys(rows.loc[rows[key].isin(spanning.index), "image_id"])
    shown = [
        f"{', '.join(sorted(set(rows.loc[rows[key] == v, 'image_id'])))} ({'/'.join(s)})"
        for v, s in list(spanning.items())[:SHOWN]
    ]
    return [Finding(kind, f"{len(spanning)} {what}: {'; '.join(shown)}{_more(len(spanning))}", tuple(ids))]


def _near_across(rows: pd.DataFrame, threshold: int) -> list[Finding]:
    if "phash" not in rows:
        return []
    pairs = [p for p in near_duplicates(rows, threshold) if p["splits"][0] != p["splits"][1]]
    if not pairs:
        return []
    shown = [f"{p['a']} ({p['splits'][0]}) ~ {p['b']} ({p['splits'][1]}), {p['distance']} bits" for p in pairs[:SHOWN]]
    return [
        Finding(
            "near_duplicate",
            f"{len(pairs)} near-duplicate pairs in two splits (<= {threshold} of {SIDE * SIDE} bits apart): "
            f"{'; '.join(shown)}{_more(len(pairs))}",
            tuple(dict.fromkeys(i for p in pairs for i in (p["a"], p["b"]))),
        )
    ]


def _more(n: int) -> str:
    return f"; ... ({n} in all)" if n > SHOWN else ""


def refusal(findings: Sequence[Finding], manifest: str | Path) -> str:
    """The one-line error for a split that fails the audit."""
    return (
        f"the split in {manifest} cannot be trusted: {'; and '.join(f.detail for f in findings)}. "
        "Fix its split column or rebuild it with jobs/prepare.py, or set data.allow_leaky_split=true "
        "to run anyway (recorded on the study's MLflow run)"
    )


def summary(findings: Sequence[Finding]) -> str:
    """A short tag value: "clean", or the kinds found with the number of ids each names."""
    return "clean" if not findings else ", ".join(f"{f.kind} ({len(f.ids)})" if f.ids else f.kind for f in findings)
