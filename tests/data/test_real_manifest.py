"""Checks on a manifest built from the real FracAtlas copy; skipped when ../shared/fracatlas is absent."""

import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from fracture.core.names import SPLITS
from fracture.data import manifest, scan, splits

ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "fracatlas"
SEED = 17

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (ROOT / "dataset.csv").is_file(), reason=f"no FracAtlas at {ROOT}"),
]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> pd.DataFrame:
    start = time.perf_counter()
    df = manifest.build(ROOT, tmp_path_factory.mktemp("real") / "manifest.parquet", seed=SEED, progress=False)
    assert time.perf_counter() - start < 180, "the manifest must build in < 3 min on 2 cores"
    return df


@pytest.fixture(scope="module")
def usable(built) -> pd.DataFrame:
    return built[built["usable"]]


def test_schema_and_dtypes(built):
    assert list(built.columns) == list(scan.SCHEMA)
    for col, dtype in scan.SCHEMA.items():
        assert pd.api.types.is_string_dtype(built[col]) if dtype == "str" else built[col].dtype == dtype, col
    assert set(built["status"]) <= set(scan.STATUSES)


def test_labels_and_ids(built):
    assert set(built["label"]) <= {0, 1} and set(built["folder_label"]) <= {-1, 0, 1}
    assert built["image_id"].is_unique


def test_counts_match_the_dataset_readme(built):
    assert len(built) == 4083  # rows of dataset.csv
    assert (built["path"] != "").sum() == 3674  # images present
    assert (built["status"] == "missing_file").sum() == 409  # held back for independent evaluation


def test_planted_defects_are_found(built):
    found = built["status"].value_counts()
    for status in ("truncated", "duplicate", "label_mismatch"):
        assert found.get(status, 0) >= 1, status
    assert {"L", "RGB"} <= set(built["mode"])


def test_usable_rows_are_split_and_the_rest_are_not(built, usable):
    assert (usable["path"] != "").all() and set(usable["split"]) == set(SPLITS)
    assert (built.loc[~built["usable"], "split"] == "").all()


def test_no_image_in_two_splits(usable):
    assert (usable.groupby("group")["split"].nunique() == 1).all()
    assert (usable.groupby("sha256")["split"].nunique() == 1).all()  # byte-identical files too
    assert usable["sha256"].is_unique


def test_class_ratio_per_split_matches_the_whole(usable):
    overall = usable["label"].mean()
    shares = usable["split"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.70, abs=0.02) and shares["val"] == pytest.approx(0.15, abs=0.02)
    for name, part in usable.groupby("split"):
        assert part["label"].mean() == pytest.approx(overall, abs=0.02), name


def test_split_is_reproducible(built):
    again = splits.assign_splits(built, seed=SEED, val_fraction=0.15, test_fraction=0.15)
    assert again["split"].equals(built["split"])


def test_a_sample_of_usable_images_decodes_at_the_recorded_size(usable):
    for row in usable.sample(n=64, random_state=0).itertuples():
        with Image.open(row.path) as image:
            image.load()
            assert image.size == (row.width, row.height), row.image_id
