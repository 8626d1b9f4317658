"""Scanning a FracAtlas-layout folder: one audited row per image id, with its status (see STATUSES).

`scan` joins `dataset.csv` with the files under `images/{Fractured,Non_fractured}`: each id gets a
status, byte-identical copies are marked duplicates of the first id, and near-copies (perceptual
hash, split_audit) join one group, so the split keeps them together. Plain pandas / PIL / numpy.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from fracture.core.errors import DataError
from fracture.data import split_audit

log = logging.getLogger(__name__)
SCHEMA = {  # column -> dtype of the written manifest; "str" columns never hold NaN ("" instead)
    "image_id": "str",
    "path": "str",
    "label": "int8",
    "folder_label": "int8",
    "body_part": "str",
    "view": "str",
    "hardware": "int8",
    "multiscan": "int8",
    "width": "int32",
    "height": "int32",
    "mode": "str",
    "sha256": "str",
    "status": "str",
    "duplicate_of": "str",
    "usable": "bool",
    "split": "str",
    "group": "str",
    "trailing_bytes": "int32",
    "phash": "str",  # split_audit.phash (near-duplicates); "" when the file does not decode
}


OPTIONAL = {"phash"}  # columns a manifest from before them may lack (load accepts it; the audit hashes then)
STATUSES = ("ok", "missing_file", "orphan_file", "unreadable", "truncated", "duplicate", "label_mismatch")
FOLDERS = {"Fractured": 1, "Non_fractured": 0}  # images/<folder> -> folder label
BODY_PARTS = ("hand", "leg", "hip", "shoulder")  # plus the CSV's own "mixed" flag
VIEWS = ("frontal", "lateral", "oblique")
REQUIRED = ("image_id", "fractured")
_EOI = b"\xff\xd9"


def scan(root: str | Path, *, allow_truncated: bool = False, progress: bool = True) -> pd.DataFrame:
    """Audit a FracAtlas-layout folder: one row per image id found in the CSV or on disk.

    Args:
        root: folder holding `dataset.csv` and `images/{Fractured,Non_fractured}/`.
        allow_truncated: count truncated JPEGs as usable.
        progress: log a progress line every 500 files.
    Returns:
        The manifest with every SCHEMA column; `split` is "" (see `assign_splits`).
    """
    root = Path(root).expanduser().resolve()
    return audit_rows(read_csv(root), list_files(root), allow_truncated=allow_truncated, progress=progress)


def audit_rows(
    csv: dict[str, dict], files: dict[str, tuple[Path, int]], *, allow_truncated: bool, progress: bool
) -> pd.DataFrame:
    """`scan` of a folder already read: its CSV rows by id and its files (see `list_files`)."""
    facts = _inspect_all(list(files.values()), progress=progress)
    rows = [
        _row(image_id, csv.get(image_id), files.get(image_id), facts.get(image_id))
        for image_id in sorted(set(csv) | set(files))
    ]
    df = pd.DataFrame(rows, columns=[c for c in SCHEMA if c != "split"])
    df = _group_near_duplicates(_mark_duplicates(df))
    df["usable"] = df["status"].isin(["ok", "label_mismatch"] + (["truncated"] if allow_truncated else []))
    df["split"] = ""
    return df[list(SCHEMA)].astype(SCHEMA)


def read_csv(root: Path) -> dict[str, dict]:
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist")
    path = root / "dataset.csv"
    if not path.is_file():
        raise DataError(f"no dataset.csv in {root}")
    try:
        table = pd.read_csv(path, dtype={"image_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a readable CSV ({str(exc).splitlines()[0]})") from None
    lacking = sorted(set(REQUIRED) - set(table.columns))
    if lacking:
        raise DataError(f"dataset.csv lacks columns: {', '.join(lacking)}")
    table["image_id"] = table["image_id"].str.strip()
    repeated = table.loc[table["image_id"].duplicated(), "image_id"].tolist()
    if repeated:
        raise DataError(f"dataset.csv repeats image_id: {', '.join(repeated[:5])}")
    bad = table.loc[~table["fractured"].isin([0, 1]), "image_id"].tolist()
    if bad:
        raise DataError(f"dataset.csv: fractured must be 0 or 1 (bad rows: {', '.join(bad[:5])})")
    return {rec["image_id"]: rec for rec in table.to_dict("records")}


def list_files(root: Path) -> dict[str, tuple[Path, int]]:
    """image id (file name) -> (path, folder label); dotfiles (e.g. .DS_Store) are not images."""
    images = root / "images"
    if not any((images / folder).is_dir() for folder in FOLDERS):
        raise DataError(f"no images/Fractured or images/Non_fractured in {root}")
    files: dict[str, tuple[Path, int]] = {}
    for folder, folder_label in FOLDERS.items():
        for path in sorted((images / folder).glob("*")) if (images / folder).is_dir() else []:
            if not path.is_file() or path.name.startswith("."):
                continue
            if path.name in files:  # same id in both folders: keep the first, say so
                log.warning("%s is in both image folders; using %s", path.name, files[path.name][0])
                continue
            files[path.name] = (path, folder_label)
    return files


def _inspect_all(files: list[tuple[Path, int]], *, progress: bool) -> dict[str, dict]:
    # Threads suffice: hashlib and PIL's decoder release the GIL; ~1 s for FracAtlas on 2 cores.
    paths, facts = [path for path, _ in files], {}
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
        for done, (path, fact) in enumerate(zip(paths, pool.map(_inspect, paths), strict=True), 1):
            facts[path.name] = fact
            if progress and (done % 500 == 0 or done == len(files)):
                log.info("scanned %d/%d files", done, len(files))
    return facts


def _inspect(path: Path) -> dict:
    """Size, mode and hash from the file; defect "", "unreadable" or "truncated"."""
    from PIL import Image

    data = path.read_bytes()
    fact = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "width": 0,
        "height": 0,
        "mode": "",
        "defect": "",
        "trailing_bytes": 0,
        "phash": "",
    }
    try:
        image = Image.open(io.BytesIO(data))
    except Exception:  # not an image at all (text, HTML error page, empty file, ...)
        return fact | {"defect": "unreadable"}
    with image:
        fact.update(width=image.width, height=image.height, mode=image.mode)
        try:
            if image.format == "JPEG":
                # Reduced DCT scale: still reads every scan byte, far cheaper; >= 64 px is enough to hash
                image.draft(image.mode, split_audit.DRAFT)
            image.load()
        except Exception:  # PIL stops before the image is complete
            return fact | {"defect": "truncated"}
        with contextlib.suppress(Exception):  # a mode PIL cannot make grayscale: no near-duplicate check
            fact["phash"] = split_audit.phash(image)
    if image.format == "JPEG":
        fact["trailing_bytes"] = _bytes_after_eoi(data)
        if fact["trailing_bytes"] < 0:
            fact["defect"] = "truncated"
    return fact


def _bytes_after_eoi(jpeg: bytes) -> int:
    """Bytes after the end-of-image marker, ignoring zero/whitespace padding; -1 when there is no EOI.

    Some complete FracAtlas JPEGs are padded to 16 KiB with zeros and stale bytes after their EOI;
    they decode fully, so they count as complete (reported as `trailing_bytes`, not excluded).
    """
    trimmed = jpeg.rstrip(b"\x00\r\n\t ")
    if trimmed.endswith(_EOI):
        return 0
    eoi = jpeg.rfind(_EOI, max(jpeg.find(b"\xff\xda"), 0))  # an EOI after the first start-of-scan
    return len(jpeg) - eoi - 2 if eoi > 0 else -1


def _row(image_id: str, rec: dict | None, file: tuple[Path, int] | None, fact: dict | None) -> dict:
    path, folder_label = file if file else ("", -1)
    fact = fact or {"sha256": "", "width": 0, "height": 0, "mode": "", "defect": "", "trailing_bytes": 0, "phash": ""}
    if rec is None:
        status, label = "orphan_file", folder_label
    elif file is None:
        status, label = "missing_file", int(rec["fractured"])
    else:
        label = int(rec["fractured"])
        status = fact["defect"] or ("label_mismatch" if folder_label != label else "ok")
    rec = rec or {}
    return {
        "image_id": image_id,
        "path": str(path),
        "label": label,
        "folder_label": folder_label,
        "body_part": _body_part(rec),
        "view": "+".join(v for v in VIEWS if _flag(rec, v)) or "unknown",
        "hardware": _flag(rec, "hardware", -1),
        "multiscan": _flag(rec, "multiscan", -1),
        "width": fact["width"],
        "height": fact["height"],
        "mode": fact["mode"],
        "sha256": fact["sha256"],
        "status": status,
        "duplicate_of": "",
        "group": image_id,
        "trailing_bytes": fact["trailing_bytes"],
        "phash": fact["phash"],
    }


def _flag(rec: dict, key: str, missing: int = 0) -> int:
    value = rec.get(key)
    return missing if value is None or pd.isna(value) else int(value)


def _body_part(rec: dict) -> str:
    parts = [p for p in BODY_PARTS if _flag(rec, p)]
    if _flag(rec, "mixed") or len(parts) > 1:
        return "mixed"
    return parts[0] if parts else "unknown"


def _mark_duplicates(df: pd.DataFrame) -> pd.DataFrame:
    """Byte-identical files under several CSV ids: keep the first id, mark the rest `duplicate`.

    Unreadable files and orphans are left alone (they are excluded anyway). Every member's `group`
    is the kept id, so the split can keep a group together.
    """
    candidates = df[~df["status"].isin(["missing_file", "orphan_file", "unreadable"])]
    for _, ids in candidates.groupby("sha256")["image_id"]:
        if len(ids) < 2:
            continue
        kept = min(ids)
        copies = df["image_id"].isin(ids) & (df["image_id"] != kept)
        df.loc[df["image_id"].isin(ids), "group"] = kept
        df.loc[copies, ["status", "duplicate_of"]] = ["duplicate", kept]
    return df


def _group_near_duplicates(df: pd.DataFrame) -> pd.DataFrame:
    """Near-copies of one film (split_audit.THRESHOLD) join one `group`, so the split keeps them together.

    Both stay usable: unlike byte-identical copies they may differ (a crop, a re-save), and which
    one is "the" image is not ours to say. FracAtlas has 65 such pairs (IMG00026xx-29xx re-saved as
    IMG0004xxx); split by id alone, 31 of them straddled two splits.
    """
    rows = df[(df["phash"] != "") & (df["status"] != "duplicate")]
    parent = {g: g for g in df["group"]}

    def root(g: str) -> str:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    groups = rows["group"].to_numpy()
    for i, j, _ in split_audit.near_pairs(rows["phash"].tolist()):
        a, b = root(groups[i]), root(groups[j])
        if a != b:
            parent[max(a, b)] = min(a, b)
    df["group"] = df["group"].map(root)
    return df
