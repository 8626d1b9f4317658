"""The FracAtlas manifest: one audited row per image id, with a leak-free seeded split.

`scan` joins `dataset.csv` with the files under `images/{Fractured,Non_fractured}` and gives every
image id one status (see STATUSES). `assign_splits` splits the usable rows by duplicate group,
stratified by label x body part. `summarize` counts the result for the data report, which
`datareport` writes beside the manifest. `build` does all of it and writes the manifest (Parquet)
with its provenance. Plain pandas / PIL / numpy: no Ray, torch or MLflow here.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from fracture.core.errors import UserError
from fracture.data import datareport, presets, split_audit

log = logging.getLogger(__name__)

STATUSES = ("ok", "missing_file", "orphan_file", "unreadable", "truncated", "duplicate", "label_mismatch")
SPLITS = split_audit.SPLITS  # one definition: the audit checks the splits this module assigns
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
FOLDERS = {"Fractured": 1, "Non_fractured": 0}  # images/<folder> -> folder label
BODY_PARTS = ("hand", "leg", "hip", "shoulder")  # plus the CSV's own "mixed" flag
VIEWS = ("frontal", "lateral", "oblique")
REQUIRED = ("image_id", "fractured")
DECISIONS = {
    "missing_file": "excluded: the CSV row has no image file (FracAtlas holds back 409 images)",
    "orphan_file": "excluded: no CSV row, so no trusted label or metadata",
    "unreadable": "excluded: not an image PIL can open",
    "truncated": "excluded (set data.allow_truncated=true to load what decodes)",
    "duplicate": "kept once (first id), copies excluded, group kept in one split",
    "label_mismatch": "kept with the CSV label (the folder is ignored)",
}
_EOI = b"\xff\xd9"


class DataError(UserError, ValueError):
    """The data cannot be used as given; the message is one human-readable line."""


# ---------------------------------------------------------------------------------------------- scan


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
    return _audit(_read_csv(root), _list_files(root), allow_truncated=allow_truncated, progress=progress)


def _audit(
    csv: dict[str, dict], files: dict[str, tuple[Path, int]], *, allow_truncated: bool, progress: bool
) -> pd.DataFrame:
    """`scan` of a folder already read: its CSV rows by id and its files (see `_list_files`)."""
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


def _read_csv(root: Path) -> dict[str, dict]:
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


def _list_files(root: Path) -> dict[str, tuple[Path, int]]:
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


# --------------------------------------------------------------------------------------------- split


def assign_splits(
    df: pd.DataFrame, *, seed: int, val_fraction: float, test_fraction: float, balanced: bool = False
) -> pd.DataFrame:
    """Seeded split of the usable rows into train/val/test, by group, stratified by label x body part.

    Each stratum is shuffled and cut at round(n * fraction); a stratum too small to give val and
    test one group each without emptying train goes wholly to train. With `balanced`, the majority
    class is first subsampled (seeded) to the size of the minority; the rows left out keep
    `usable=True` but get split "".

    Args:
        df: a manifest from `scan`.
        seed: the split seed (same seed, same split).
        val_fraction, test_fraction: shares of each stratum.
        balanced: the seed notebook's subset (all fractured + as many non-fractured).
    Returns:
        A copy of `df` with `split` set.
    """
    out = df.copy()
    out["split"] = ""
    usable = out[out["usable"]]
    groups = usable.groupby("group", sort=True).agg(label=("label", "max"), body_part=("body_part", "first"))
    rng = np.random.default_rng(seed)
    if balanced:
        groups = _balance(groups, rng)
    split_of: dict[str, str] = {}
    for _, stratum in groups.groupby(["label", "body_part"], sort=True):
        ids = rng.permutation(stratum.index.to_numpy())
        n = len(ids)
        n_test, n_val = round(n * test_fraction), round(n * val_fraction)
        if n_test + n_val >= n:
            n_test = n_val = 0
        split_of.update(dict.fromkeys(ids[:n_test], "test"))
        split_of.update(dict.fromkeys(ids[n_test : n_test + n_val], "val"))
        split_of.update(dict.fromkeys(ids[n_test + n_val :], "train"))
    out.loc[out["usable"], "split"] = usable["group"].map(split_of).fillna("")
    return out.astype({"split": "str"})


def _balance(groups: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    by_label = [groups[groups["label"] == label] for label in (0, 1)]
    n = min(len(part) for part in by_label)
    keep = [part.iloc[np.sort(rng.choice(len(part), size=n, replace=False))] for part in by_label]
    return pd.concat(keep).sort_index()


# -------------------------------------------------------------------------------------------- report


def _by_label(frame: pd.DataFrame) -> dict[str, int]:
    counts = frame["label"].value_counts()
    return {"non_fractured": int(counts.get(0, 0)), "fractured": int(counts.get(1, 0)), "total": len(frame)}


def summarize(
    df: pd.DataFrame,
    *,
    root: str | Path,
    seed: int,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    balanced: bool = False,
    allow_truncated: bool = False,
) -> dict:
    """The data report as a JSON-able dict: counts, splits and every defect with its decision."""
    usable = df[df["usable"]]
    with_file = df[df["path"] != ""]
    defects: dict[str, dict] = {}
    for status in STATUSES[1:]:
        ids = df.loc[df["status"] == status, "image_id"].tolist()
        decision = DECISIONS[status]
        if status == "truncated" and allow_truncated:
            decision = "kept: data.allow_truncated=true loads what decodes"
        defects[status] = {"count": len(ids), "ids": ids, "decision": decision}
    copies = df[df["status"] == "duplicate"]
    defects["duplicate"]["groups"] = {
        kept: {
            "copies": sorted(grp["image_id"]),
            "labels_agree": bool(df.loc[df["group"] == kept, "label"].nunique() == 1),
        }
        for kept, grp in copies.groupby("duplicate_of")
    }
    # Folder and CSV disagree even where another status (duplicate, truncated) wins: list them all.
    mismatch = df[(df["folder_label"] >= 0) & (df["status"] != "orphan_file") & (df["folder_label"] != df["label"])]
    defects["label_mismatch"]["items"] = [
        {"image_id": r.image_id, "folder_label": int(r.folder_label), "csv_label": int(r.label), "status": r.status}
        for r in mismatch.itertuples()
    ]
    splits = {s: _by_label(usable[usable["split"] == s]) for s in SPLITS}
    for counts in splits.values():
        counts["fractured_ratio"] = round(counts["fractured"] / counts["total"], 4) if counts["total"] else 0.0
    return {
        "root": str(root),
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "balanced": balanced,
        "allow_truncated": allow_truncated,
        "counts": {"rows": _by_label(df), "files": _by_label(with_file), "usable": _by_label(usable)},
        "status": {s: int((df["status"] == s).sum()) for s in STATUSES},
        "body_part": {p: _by_label(g) for p, g in usable.groupby("body_part")},
        "splits": splits,
        "left_out_by_balancing": int((usable["split"] == "").sum()),
        "modes": {m: int(n) for m, n in with_file["mode"].value_counts().items() if m},
        "size_px": {
            k: [int(with_file[k][with_file[k] > 0].min()), int(with_file[k].max())] for k in ("width", "height")
        }
        if (with_file["width"] > 0).any()
        else {},
        "hardware": {
            name: int((usable.loc[usable["label"] == label, "hardware"] == 1).sum())
            for name, label in (("non_fractured", 0), ("fractured", 1))
        },
        "defects": defects,
        "converted_modes": _converted_modes(with_file),
        "trailing_bytes": {
            "ids": df.loc[df["trailing_bytes"] > 0, "image_id"].tolist(),
            "decision": "kept: stale bytes after the JPEG end marker; the image decodes fully",
        },
        "near_duplicates": {
            "threshold_bits": split_audit.THRESHOLD,
            "hash_bits": split_audit.SIDE**2,
            "pairs": split_audit.near_duplicates(with_file),
        },
    }


def _converted_modes(files: pd.DataFrame) -> dict[str, dict]:
    """mode -> {count, ids, conversion} for the files whose pixels decoding changes (presets.conversion).

    Such files train and score without an error, so only this list tells a reader that their pixels
    are not the stored ones (a 16-bit film once decoded all white and trained unnoticed).
    """
    out = {}
    for mode, grp in files[files["mode"] != ""].groupby("mode", sort=True):
        if presets.conversion(mode):
            out[str(mode)] = {
                "count": len(grp),
                "ids": grp["image_id"].tolist(),
                "conversion": presets.conversion(mode),
            }
    return out


# --------------------------------------------------------------------------------------- build / load


def build(
    root: str | Path,
    out_path: str | Path,
    *,
    seed: int = 17,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    balanced: bool = False,
    allow_truncated: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Scan, split, and write the manifest (Parquet) plus its report (see `datareport.paths`).

    The Parquet file also records its provenance (see `provenance`), so a later job can tell a
    manifest of other data or other split settings from its own.

    Returns:
        The manifest that was written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    settings = dict(
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        balanced=balanced,
        allow_truncated=allow_truncated,
    )
    root = Path(root).expanduser().resolve()
    # Listed once: the audit and the provenance's image-list hash must see the same files.
    csv, files = _read_csv(root), _list_files(root)
    df = assign_splits(
        _audit(csv, files, allow_truncated=allow_truncated, progress=progress),
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        balanced=balanced,
    )
    origin = provenance(root, images=_listing_hash(root, files), **settings)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), PROVENANCE_KEY: json.dumps(origin).encode()}
    )
    # Write beside, then rename: a loader on another node never sees a half-written manifest.
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, out_path)
    datareport.write(summarize(df, root=root, **settings) | {"provenance": origin}, out_path)
    return df


# ---------------------------------------------------------------------------------------- provenance

PROVENANCE_KEY = b"fracture.provenance"


def provenance(
    root: str | Path,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    balanced: bool,
    allow_truncated: bool,
    images: str | None = None,
) -> dict:
    """What a manifest is made from: the data root, a hash of its image list, the split settings.

    `images` is that hash when the caller has already listed the folder (None: list it here).
    """
    root = Path(root).expanduser().resolve()
    return {
        "root": str(root),
        "images": images or image_list_hash(root),
        "split": {
            "seed": int(seed),
            "val_fraction": float(val_fraction),
            "test_fraction": float(test_fraction),
            "balanced": bool(balanced),
            "allow_truncated": bool(allow_truncated),
        },
    }


def image_list_hash(root: str | Path) -> str:
    """SHA-256 over dataset.csv's bytes and every image's folder, name and size.

    Adding, removing, moving or re-saving an image or editing a label changes it; a stat per file
    keeps it cheap enough to check before every job (~10 ms for FracAtlas).
    """
    root = Path(root).expanduser().resolve()
    _read_csv(root)  # the same one-line errors as a scan
    return _listing_hash(root, _list_files(root))


def _listing_hash(root: Path, files: dict[str, tuple[Path, int]]) -> str:
    digest = hashlib.sha256((root / "dataset.csv").read_bytes())
    for name, (path, folder_label) in sorted(files.items()):
        digest.update(f"{folder_label}/{name}:{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def recorded_provenance(path: str | Path) -> dict | None:
    """The provenance `build` stored in a manifest; None for a manifest written some other way."""
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(PROVENANCE_KEY)
    return json.loads(raw) if raw else None


def provenance_mismatch(recorded: dict, expected: dict) -> str | None:
    """Why a manifest built with `recorded` provenance is not the one `expected` asks for (None: it is)."""
    if recorded["root"] != expected["root"]:
        return f"it was built from {recorded['root']}, not from data.root={expected['root']}"
    changed = [
        f"{key} {recorded['split'].get(key)} -> {value}"
        for key, value in expected["split"].items()
        if recorded["split"].get(key) != value
    ]
    if changed:
        return f"its split settings differ ({', '.join(changed)})"
    if recorded["images"] != expected["images"]:
        return (
            f"the images under {expected['root']} changed since it was built "
            "(files added, removed or re-saved, or dataset.csv edited)"
        )
    return None


def load(path: str | Path) -> pd.DataFrame:
    """Read a manifest written by `build`; DataError when absent or not a manifest."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"no manifest at {path}; build it with: python jobs/prepare.py --root DATA_ROOT --out {path}")
    df = pd.read_parquet(path)
    lacking = sorted(set(SCHEMA) - OPTIONAL - set(df.columns))
    if lacking:
        raise DataError(f"{path} is not a fracture manifest (lacks columns: {', '.join(lacking)})")
    return df
