"""What a manifest was built from (data root, image list, split settings), stored in its Parquet metadata.

A manifest of other data or other split settings is rebuilt (or refused, when the user named it);
`provenance_mismatch` says in one clause what differs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fracture.data import scan

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
    scan.read_csv(root)  # the same one-line errors as a scan
    return listing_hash(root, scan.list_files(root))


def listing_hash(root: Path, files: dict[str, tuple[Path, int]]) -> str:
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
