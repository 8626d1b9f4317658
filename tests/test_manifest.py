"""fracture.data.manifest and its data report on tiny synthetic FracAtlas-layout folders (each defect planted)."""

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fracture.core.errors import DataError
from fracture.core.names import SPLITS
from fracture.data import datareport, manifest, scan, splits, synthetic

REPO = Path(__file__).resolve().parents[1]
CSV_COLUMNS = synthetic.CSV_COLUMNS  # FracAtlas' dataset.csv columns


def jpeg_bytes(seed: int, size=(40, 30), mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)  # noise: every id gets distinct bytes unless copied on purpose
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, "JPEG")
    return buf.getvalue()


def csv_row(image_id: str, fractured: int, part: str = "hand", view: str = "frontal") -> dict:
    row = dict.fromkeys(CSV_COLUMNS, 0) | {"image_id": image_id, "fractured": fractured, "fracture_count": fractured}
    return row | {part: 1, view: 1}


def write_atlas(root: Path, files: dict[str, tuple[str, bytes]], rows: list[dict]) -> Path:
    """files: image id -> (folder, bytes)."""
    for folder in ("Fractured", "Non_fractured"):
        (root / "images" / folder).mkdir(parents=True, exist_ok=True)
    for image_id, (folder, data) in files.items():
        (root / "images" / folder / image_id).write_bytes(data)
    pd.DataFrame(rows, columns=CSV_COLUMNS).to_csv(root / "dataset.csv", index=False)
    return root


@pytest.fixture(scope="module")
def atlas(tmp_path_factory) -> Path:
    """One image per case; ids 1-10 (see the EXPECTED table)."""
    ok = jpeg_bytes(1)
    big = io.BytesIO()
    Image.fromarray(np.tile(np.arange(3000, dtype=np.uint16) % 256, (2500, 1)).astype(np.uint8), "L").save(big, "JPEG")
    truncated = jpeg_bytes(4)
    padded = jpeg_bytes(10) + b"\x00" * 300 + b"stale bytes after the end marker"
    files = {
        "IMG0000001.jpg": ("Fractured", ok),
        "IMG0000002.jpg": ("Non_fractured", jpeg_bytes(2, mode="L")),
        "IMG0000003.jpg": ("Non_fractured", big.getvalue()),
        "IMG0000004.jpg": ("Fractured", truncated[: len(truncated) // 2]),
        "IMG0000005.jpg": ("Non_fractured", b"this is not a JPEG\n"),
        "IMG0000006.jpg": ("Fractured", ok),  # byte-identical to 1
        "IMG0000007.jpg": ("Fractured", jpeg_bytes(7)),  # CSV says not fractured
        "IMG0000009.jpg": ("Non_fractured", jpeg_bytes(9)),  # no CSV row
        "IMG0000010.jpg": ("Non_fractured", padded),
    }
    rows = [
        csv_row("IMG0000001.jpg", 1),
        csv_row("IMG0000002.jpg", 0, "leg", "lateral"),
        csv_row("IMG0000003.jpg", 0, "hip"),
        csv_row("IMG0000004.jpg", 1),
        csv_row("IMG0000005.jpg", 0),
        csv_row("IMG0000006.jpg", 1),
        csv_row("IMG0000007.jpg", 0),
        csv_row("IMG0000008.jpg", 1),
        csv_row("IMG0000010.jpg", 0) | {"lateral": 1, "mixed": 1},
    ]
    return write_atlas(tmp_path_factory.mktemp("atlas"), files, rows)


EXPECTED = {  # image id -> (status, usable)
    "IMG0000001.jpg": ("ok", True),
    "IMG0000002.jpg": ("ok", True),
    "IMG0000003.jpg": ("ok", True),
    "IMG0000004.jpg": ("truncated", False),
    "IMG0000005.jpg": ("unreadable", False),
    "IMG0000006.jpg": ("duplicate", False),
    "IMG0000007.jpg": ("label_mismatch", True),
    "IMG0000008.jpg": ("missing_file", False),
    "IMG0000009.jpg": ("orphan_file", False),
    "IMG0000010.jpg": ("ok", True),
}


@pytest.fixture(scope="module")
def scanned(atlas) -> pd.DataFrame:
    return scan.scan(atlas, progress=False).set_index("image_id", drop=False)


def test_every_defect_gets_its_status(scanned):
    assert scanned["status"].to_dict() == {k: v[0] for k, v in EXPECTED.items()}
    assert scanned["usable"].to_dict() == {k: v[1] for k, v in EXPECTED.items()}
    assert set(scanned["status"]) <= set(scan.STATUSES)


def test_schema_and_per_image_facts(scanned, atlas):
    assert list(scanned.columns) == list(scan.SCHEMA)
    for col, dtype in scan.SCHEMA.items():
        assert pd.api.types.is_string_dtype(scanned[col]) if dtype == "str" else scanned[col].dtype == dtype, col
    one, two, big = (scanned.loc[f"IMG000000{i}.jpg"] for i in (1, 2, 3))
    assert (one.width, one.height, one["mode"], two["mode"]) == (40, 30, "RGB", "L")
    assert (big.width, big.height, big.body_part) == (3000, 2500, "hip")
    assert one.path == str(atlas.resolve() / "images" / "Fractured" / "IMG0000001.jpg")
    assert one.sha256 == hashlib.sha256(Path(one.path).read_bytes()).hexdigest()
    assert (two.view, two.body_part) == ("lateral", "leg")
    padded = scanned.loc["IMG0000010.jpg"]
    assert (padded.body_part, padded.view, padded.trailing_bytes) == ("mixed", "frontal+lateral", 332)


def test_labels_come_from_the_csv(scanned):
    mismatch = scanned.loc["IMG0000007.jpg"]
    assert (mismatch.label, mismatch.folder_label) == (0, 1)
    missing, orphan = scanned.loc["IMG0000008.jpg"], scanned.loc["IMG0000009.jpg"]
    assert (missing.path, missing.folder_label, missing.width, missing.label) == ("", -1, 0, 1)
    assert (orphan.label, orphan.body_part, orphan.view, orphan.hardware) == (0, "unknown", "unknown", -1)


def test_duplicates_point_at_the_kept_copy(scanned):
    dup = scanned.loc["IMG0000006.jpg"]
    assert (dup.duplicate_of, dup.group) == ("IMG0000001.jpg", "IMG0000001.jpg")
    assert scanned.loc["IMG0000001.jpg", "group"] == "IMG0000001.jpg"
    assert (scanned.drop(index="IMG0000006.jpg")["duplicate_of"] == "").all()


def test_allow_truncated_makes_truncated_usable(atlas):
    df = scan.scan(atlas, allow_truncated=True, progress=False).set_index("image_id")
    assert df.loc["IMG0000004.jpg", "status"] == "truncated" and df.loc["IMG0000004.jpg", "usable"]


def test_progress_is_logged(atlas, caplog):
    caplog.set_level("INFO", logger="fracture.data.scan")
    scan.scan(atlas, progress=True)
    assert "scanned 9/9 files" in caplog.text


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("no_csv", "no dataset.csv in"),
        ("columns", "dataset.csv lacks columns: fractured, image_id"),
        ("no_images", "no images/Fractured"),
        ("bad_label", "fractured must be 0 or 1"),
    ],
)
def test_bad_roots_raise_one_line(tmp_path, case, message):
    root = tmp_path / "root"
    if case != "missing":
        (root / "images" / "Fractured").mkdir(parents=True)
    if case == "columns":
        (root / "dataset.csv").write_text("id,label\nIMG1.jpg,1\n")
    if case == "no_images":
        (root / "images" / "Fractured").rmdir()
        pd.DataFrame([csv_row("IMG1.jpg", 1)]).to_csv(root / "dataset.csv", index=False)
    if case == "bad_label":
        pd.DataFrame([csv_row("IMG1.jpg", 2)]).to_csv(root / "dataset.csv", index=False)
    with pytest.raises(DataError, match=message) as info:
        scan.scan(root, progress=False)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------ splitting


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> pd.DataFrame:
    """240 tiny images, 25% fractured, three body parts, plus a handful of duplicate pairs."""
    rng = np.random.default_rng(0)
    files, rows = {}, []
    for i in range(240):
        image_id, label = f"IMG{i:07d}.jpg", int(rng.random() < 0.25)
        files[image_id] = ("Fractured" if label else "Non_fractured", jpeg_bytes(1000 + i, size=(8, 8)))
        rows.append(csv_row(image_id, label, ("hand", "leg", "hip")[i % 3]))
    for i in range(5):  # copies of images 0..4 under new ids
        image_id = f"IMG{900 + i:07d}.jpg"
        files[image_id] = files[f"IMG{i:07d}.jpg"]
        rows.append(rows[i] | {"image_id": image_id})
    return scan.scan(write_atlas(tmp_path_factory.mktemp("many"), files, rows), progress=False)


def split(df, seed=17, **kw):
    return splits.assign_splits(df, seed=seed, val_fraction=0.15, test_fraction=0.15, **kw)


def test_split_is_deterministic_per_seed(many):
    assert split(many)["split"].equals(split(many)["split"])
    assert not split(many)["split"].equals(split(many, seed=18)["split"])


def test_split_is_stratified(many):
    df = split(many)
    usable = df[df["usable"]]
    assert set(usable["split"]) == set(SPLITS) and (df.loc[~df["usable"], "split"] == "").all()
    shares = usable["split"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.70, abs=0.03) and shares["test"] == pytest.approx(0.15, abs=0.03)
    overall = usable["label"].mean()
    for name, part in usable.groupby("split"):
        assert part["label"].mean() == pytest.approx(overall, abs=0.05), name
        assert part.groupby("body_part").size().min() >= 3, name


def test_groups_never_straddle_splits(many):
    # Copies are excluded by default; make them usable to prove the group mechanism itself.
    df = split(many.assign(usable=many["usable"] | (many["status"] == "duplicate")))
    grouped = df[df["usable"]].groupby("group")
    assert grouped.size().max() == 2 and (grouped["split"].nunique() == 1).all()


def test_tiny_strata_go_to_train(scanned):
    df = split(scanned.reset_index(drop=True))
    assert set(df.loc[df["usable"], "split"]) == {"train"}


def test_balanced_keeps_all_fractured_and_as_many_normals(many):
    df = split(many, balanced=True)
    chosen = df[df["split"] != ""]
    counts = chosen["label"].value_counts()
    assert counts[0] == counts[1] == many.loc[many["usable"], "label"].sum()
    assert df.loc[df["usable"] & (df["split"] == ""), "label"].eq(0).all()
    report = manifest.summarize(df, root="x", seed=17, balanced=True)
    assert report["left_out_by_balancing"] == int((df["usable"] & (df["split"] == "")).sum()) > 0


# ------------------------------------------------------------------------------ build, load, report


def test_build_writes_manifest_and_report(atlas, tmp_path):
    out = tmp_path / "m" / "manifest.parquet"
    built = manifest.build(atlas, out, progress=False)
    loaded = manifest.load(out)
    pd.testing.assert_frame_equal(loaded, built.reset_index(drop=True), check_dtype=False)
    assert list(loaded.dtypes.astype(str)[["label", "width", "usable"]]) == ["int8", "int32", "bool"]
    json_path, md_path = datareport.paths(out)
    report = json.loads(json_path.read_text())
    defects = report["defects"]
    assert defects["truncated"]["ids"] == ["IMG0000004.jpg"] and defects["missing_file"]["count"] == 1
    assert defects["duplicate"]["groups"] == {"IMG0000001.jpg": {"copies": ["IMG0000006.jpg"], "labels_agree": True}}
    assert defects["label_mismatch"]["items"] == [
        {"image_id": "IMG0000007.jpg", "folder_label": 1, "csv_label": 0, "status": "label_mismatch"}
    ]
    assert report["counts"]["usable"] == {"non_fractured": 4, "fractured": 1, "total": 5}
    assert report["trailing_bytes"]["ids"] == ["IMG0000010.jpg"]
    text = md_path.read_text()
    assert "| truncated | 1 |" in text and "IMG0000009.jpg" in text and "IMG0000006.jpg" in text


def test_load_missing_manifest_says_how_to_build(tmp_path):
    with pytest.raises(DataError, match="jobs/prepare.py"):
        manifest.load(tmp_path / "nope.parquet")


# ---------------------------------------------------------------------------------------- prepare job


def run_prepare(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO / "platform"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "jobs/prepare.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_prepare_job_prints_the_report(tmp_path):
    # Enough images for every split to hold both classes (the defect atlas has 5 usable: refused).
    root = synthetic.generate(tmp_path / "atlas", n=40, seed=0, min_size=32, max_size=40)
    out = tmp_path / "manifest.parquet"
    done = run_prepare("--root", str(root), "--out", str(out), "data.split_seed=3")
    assert done.returncode == 0, done.stderr
    assert "# FracAtlas data report" in done.stdout and "split seed 3" in done.stdout
    assert out.is_file() and datareport.paths(out)[0].is_file()


def test_prepare_job_bad_root_is_one_line(tmp_path):
    done = run_prepare("--root", str(tmp_path / "absent"), "--out", str(tmp_path / "m.parquet"))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"error: data root {tmp_path / 'absent'} does not exist"]
