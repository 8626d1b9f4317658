"""The manifest: the audited image list with its split, written as Parquet with its provenance.

`build` scans a folder (fracture.data.scan), splits it (fracture.data.splits), counts the result
for the data report (`summarize`; fracture.data.datareport writes it beside the manifest) and
writes the manifest with what it was built from (fracture.data.provenance). `load` reads one back.
Plain pandas: no Ray, torch or MLflow here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from fracture.core.errors import DataError
from fracture.core.names import SPLITS
from fracture.data import datareport, presets, provenance, scan, split_audit, splits

DECISIONS = {
    "missing_file": "excluded: the CSV row has no image file (FracAtlas holds back 409 images)",
    "orphan_file": "excluded: no CSV row, so no trusted label or metadata",
    "unreadable": "excluded: not an image PIL can open",
    "truncated": "excluded (set data.allow_truncated=true to load what decodes)",
    "duplicate": "kept once (first id), copies excluded, group kept in one split",
    "label_mismatch": "kept with the CSV label (the folder is ignored)",
}


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
    for status in scan.STATUSES[1:]:
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
    per_split = {s: splits.by_label(usable[usable["split"] == s]) for s in SPLITS}
    for counts in per_split.values():
        counts["fractured_ratio"] = round(counts["fractured"] / counts["total"], 4) if counts["total"] else 0.0
    return {
        "root": str(root),
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "balanced": balanced,
        "allow_truncated": allow_truncated,
        "counts": {"rows": splits.by_label(df), "files": splits.by_label(with_file), "usable": splits.by_label(usable)},
        "status": {s: int((df["status"] == s).sum()) for s in scan.STATUSES},
        "body_part": {p: splits.by_label(g) for p, g in usable.groupby("body_part")},
        "splits": per_split,
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
    csv, files = scan.read_csv(root), scan.list_files(root)
    df = splits.assign_splits(
        scan.audit_rows(csv, files, allow_truncated=allow_truncated, progress=progress),
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        balanced=balanced,
    )
    origin = provenance.provenance(root, images=provenance.listing_hash(root, files), **settings)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), provenance.PROVENANCE_KEY: json.dumps(origin).encode()}
    )
    # Write beside, then rename: a loader on another node never sees a half-written manifest.
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, out_path)
    datareport.write(summarize(df, root=root, **settings) | {"provenance": origin}, out_path)
    return df


def load(path: str | Path) -> pd.DataFrame:
    """Read a manifest written by `build`; DataError when absent or not a manifest."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"no manifest at {path}; build it with: python jobs/prepare.py --root DATA_ROOT --out {path}")
    df = pd.read_parquet(path)
    lacking = sorted(set(scan.SCHEMA) - scan.OPTIONAL - set(df.columns))
    if lacking:
        raise DataError(f"{path} is not a fracture manifest (lacks columns: {', '.join(lacking)})")
    return df
