"""A manifest knows what it was built from, and a study never trains on another folder's manifest."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fracture.core.config import load
from fracture.core.errors import DataError
from fracture.data import manifest, pipeline, provenance, synthetic

REPO = Path(__file__).resolve().parents[1]


def _cfg(root: Path, storage: Path, *overrides: str):
    return load(
        REPO / "jobs" / "studies" / "demo.yaml", [f"data.root={root}", f"cluster.storage_path={storage}", *overrides]
    )


@pytest.fixture(scope="module")
def two_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("roots")
    return (
        synthetic.generate(base / "a", n=60, seed=0, min_size=32, max_size=40),
        synthetic.generate(base / "b", n=60, seed=1, min_size=32, max_size=40),
    )


def test_build_records_root_image_list_and_split_settings(two_roots, tmp_path):
    a, _ = two_roots
    manifest.build(a, tmp_path / "m.parquet", seed=3, progress=False)
    recorded = provenance.recorded_provenance(tmp_path / "m.parquet")
    assert recorded["root"] == str(a.resolve())
    assert recorded["split"]["seed"] == 3
    assert recorded == provenance.provenance(
        a, seed=3, val_fraction=0.15, test_fraction=0.15, balanced=False, allow_truncated=False
    )
    assert manifest.load(tmp_path / "m.parquet").equals(manifest.load(tmp_path / "m.parquet"))  # still a plain manifest
    report = (tmp_path / "m.report.json").read_text()
    assert recorded["images"] in report


def test_image_list_hash_sees_an_added_or_relabelled_image(two_roots, tmp_path):
    root = Path(shutil.copytree(two_roots[0], tmp_path / "copy"))
    before = provenance.image_list_hash(root)
    assert provenance.image_list_hash(root) == before
    extra = next((root / "images" / "Non_fractured").iterdir())
    shutil.copy(extra, root / "images" / "Non_fractured" / "new.jpg")
    after = provenance.image_list_hash(root)
    assert after != before
    csv = root / "dataset.csv"
    csv.write_text(csv.read_text().replace(",0,", ",1,", 1))
    assert provenance.image_list_hash(root) != after


def test_the_study_manifest_of_other_data_is_rebuilt(two_roots, tmp_path, caplog):
    a, b = two_roots
    cfg_a, cfg_b = _cfg(a, tmp_path, "name=same"), _cfg(b, tmp_path, "name=same")
    path = pipeline.ensure_manifest(cfg_a)  # e.g. jobs/prepare.py --root A without --config
    assert provenance.recorded_provenance(path)["root"] == str(a.resolve())
    assert pipeline.ensure_manifest(cfg_b) == path  # the next study of that name uses B
    assert provenance.recorded_provenance(path)["root"] == str(b.resolve())
    assert "rebuilding" in caplog.text and str(a.resolve()) in caplog.text
    paths = manifest.load(path)["path"]
    assert paths[paths != ""].str.startswith(str(b.resolve())).all()


def test_the_study_manifest_is_rebuilt_for_new_split_settings(two_roots, tmp_path):
    a, _ = two_roots
    path = pipeline.ensure_manifest(_cfg(a, tmp_path, "name=s"))
    pipeline.ensure_manifest(_cfg(a, tmp_path, "name=s", "data.split_seed=99"))
    assert provenance.recorded_provenance(path)["split"]["seed"] == 99


def test_a_named_manifest_of_other_data_is_refused_not_overwritten(two_roots, tmp_path):
    a, b = two_roots
    named = tmp_path / "mine.parquet"
    manifest.build(a, named, progress=False)
    before = named.read_bytes()
    with pytest.raises(DataError, match=r"built from .*/a, not from data.root=.*/b.*prepare.py"):
        pipeline.ensure_manifest(_cfg(b, tmp_path, f"data.manifest={named}"))
    assert named.read_bytes() == before
    assert pipeline.ensure_manifest(_cfg(a, tmp_path, f"data.manifest={named}")) == named.resolve()
