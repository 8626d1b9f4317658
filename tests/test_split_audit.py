"""fracture.data.split_audit: each reason a split is refused, the perceptual hash, and the override."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance

from fracture.core.errors import DataError
from fracture.data import datareport, manifest, pipeline, split_audit, synthetic
from fracture.data.split_audit import audit

KINDS = {"id_in_two_splits", "group_in_two_splits", "exact_duplicate", "near_duplicate"}


def _frame(rows: list[tuple[str, str, int]], **columns) -> pd.DataFrame:
    """(image_id, split, label) rows, usable, each its own group, sha and hash unless `columns` say otherwise."""
    frame = pd.DataFrame(rows, columns=["image_id", "split", "label"])
    frame["usable"] = True
    frame["group"] = frame["image_id"]
    frame["sha256"] = [f"sha-{i}" for i in frame["image_id"]]
    frame["phash"] = ""
    for col, values in columns.items():
        frame[col] = values
    return frame


CLEAN = [("a", "train", 1), ("b", "train", 0), ("c", "val", 1), ("d", "val", 0), ("e", "test", 1), ("f", "test", 0)]


def _kinds(frame, **kw) -> list[str]:
    return [f.kind for f in audit(frame, **kw)]


def test_a_clean_split_has_no_findings():
    assert audit(_frame(CLEAN)) == []


def test_an_id_in_two_splits():
    (finding,) = audit(_frame([*CLEAN, ("a", "test", 1)]))
    assert finding.kind == "id_in_two_splits" and finding.ids == ("a",) and "a (train/test)" in finding.detail


def test_a_group_in_two_splits():
    frame = _frame(CLEAN, group=["a", "b", "c", "d", "a", "f"])  # e is a's copy (or patient) but in test
    (finding,) = audit(frame)
    assert finding.kind == "group_in_two_splits" and "a, e (train/test)" in finding.detail


def test_byte_identical_images_in_two_splits():
    frame = _frame(CLEAN, sha256=["x", "y", "z", "w", "x", "v"])
    (finding,) = audit(frame)
    assert finding.kind == "exact_duplicate" and "a, e (train/test)" in finding.detail


def test_rows_left_out_of_training_are_not_findings():
    frame = _frame([*CLEAN, ("g", "", 1)], sha256=["x", "y", "z", "w", "v", "u", "x"])  # a's copy, unsplit
    frame.loc[6, "usable"] = False
    assert audit(frame) == []


def test_an_empty_test_split():
    assert _kinds(_frame(CLEAN[:4])) == ["no_test"]


def test_test_used_for_selection():
    assert _kinds(_frame(CLEAN), selection=("train", "test")) == ["test_selects"]


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_a_split_without_positives(split):
    rows = [r for r in CLEAN if not (r[1] == split and r[2] == 1)]
    (finding,) = audit(_frame(rows))
    assert finding.kind == "no_positives" and f"the {split} split" in finding.detail


def test_the_refusal_is_one_line_naming_a_few_ids_then_a_count():
    rows = CLEAN + [(f"t{i}", "test", 0) for i in range(5)] + [(f"t{i}", "train", 0) for i in range(5)]
    findings = audit(_frame(rows))
    line = split_audit.refusal(findings, "m.parquet")
    assert "\n" not in line and "t0 (train/test)" in line and "(5 in all)" in line and "t4" not in line
    assert "data.allow_leaky_split=true" in line
    assert split_audit.summary(findings) == "id_in_two_splits (5)" and split_audit.summary([]) == "clean"


# ---------------------------------------------------------------------------------------------- hash


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    """Four smooth 240 x 200 px "films" (random low-frequency fields plus a bright bar), as JPEGs."""
    out = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        field = Image.fromarray((rng.random((6, 5)) * 160).astype(np.uint8)).resize(
            (200, 240), Image.Resampling.BICUBIC
        )
        pixels = np.asarray(field, dtype=np.int16)
        x = int(rng.integers(40, 160))
        pixels[:, x : x + 20] += 80
        path = tmp_path_factory.mktemp("films") / f"film{seed}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        out.append(path)
    return out


def _distance(a: str, b: str) -> int:
    return int(split_audit.distances([a, b])[0, 1])


def test_hash_identical_copy_is_zero_bits_apart(films, tmp_path):
    copy = tmp_path / "copy.jpg"
    shutil.copy(films[0], copy)
    assert _distance(split_audit.hash_file(films[0]), split_audit.hash_file(copy)) == 0


def test_hash_resized_brightened_copy_is_near(films, tmp_path):
    with Image.open(films[0]) as image:
        changed = ImageEnhance.Brightness(image.convert("L")).enhance(1.1)
        changed = changed.resize((image.width * 3 // 4, image.height * 3 // 4), Image.Resampling.LANCZOS)
    changed.save(tmp_path / "near.jpg", quality=80)
    near = _distance(split_audit.hash_file(films[0]), split_audit.hash_file(tmp_path / "near.jpg"))
    assert near <= split_audit.THRESHOLD


def test_hash_of_a_different_image_is_far(films):
    hashes = [split_audit.hash_file(p) for p in films]
    d = split_audit.distances(hashes)
    assert all(d[i, j] > 4 * split_audit.THRESHOLD for i in range(4) for j in range(i + 1, 4))


def test_hash_of_an_unreadable_file_is_empty_and_matches_nothing(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    assert split_audit.hash_file(tmp_path / "bad.jpg") == ""
    assert split_audit.near_pairs(["", ""]) == []


def test_near_duplicates_in_two_splits(films):
    hashes = [split_audit.hash_file(p) for p in films]
    frame = _frame(CLEAN, phash=[hashes[0], hashes[1], hashes[2], hashes[3], hashes[0], ""])
    (finding,) = audit(frame)
    assert (
        finding.kind == "near_duplicate"
        and finding.ids == ("a", "e")
        and "a (train) ~ e (test), 0 bits" in finding.detail
    )


# ---------------------------------------------------------------------------------- manifest + override


@pytest.fixture(scope="module")
def resaved_root(tmp_path_factory):
    """Synthetic FracAtlas plus a re-encoded copy of one image under a new id (a near-duplicate)."""
    root = synthetic.generate(tmp_path_factory.mktemp("resaved"), n=96, seed=0, min_size=200, max_size=240)
    source = sorted((root / "images" / "Non_fractured").glob("*.jpg"))[0]
    with Image.open(source) as image:
        image.convert("L").save(source.with_name("IMG0009999.jpg"), quality=70)
    csv = (root / "dataset.csv").read_text().splitlines()
    row = next(line for line in csv if line.startswith(source.name))
    (root / "dataset.csv").write_text("\n".join([*csv, row.replace(source.name, "IMG0009999.jpg")]) + "\n")
    return root, source.name


def test_the_manifest_carries_hashes_and_the_report_lists_near_duplicates(resaved_root, tmp_path):
    root, source = resaved_root
    frame = manifest.build(root, tmp_path / "manifest.parquet", progress=False)
    assert (frame.loc[frame["usable"], "phash"].str.len() == 64).all()
    json_path, md_path = datareport.paths(tmp_path / "manifest.parquet")
    pairs = datareport.json.loads(json_path.read_text())["near_duplicates"]["pairs"]
    assert [(p["a"], p["b"]) for p in pairs] == [(source, "IMG0009999.jpg")]
    assert "Near-duplicate pairs" in md_path.read_text()
    rows = frame.set_index("image_id").loc[[source, "IMG0009999.jpg"]]
    assert rows["group"].nunique() == 1 and rows["split"].nunique() == 1  # kept together by the split
    assert rows["usable"].all()


def _leaky(tiny_config, root, tmp_path, source, *overrides):
    """A config whose data.manifest puts the re-saved copy in another split than its source."""
    cfg = tiny_config(f"data.root={root}", f"data.manifest={tmp_path / 'own.parquet'}", *overrides)
    frame = pipeline.build_manifest(cfg, root, tmp_path / "own.parquet", progress=False)
    split = frame.set_index("image_id").at[source, "split"]
    frame.loc[frame["image_id"] == "IMG0009999.jpg", "split"] = "test" if split != "test" else "train"
    frame.to_parquet(tmp_path / "edited.parquet")  # an edited manifest records no provenance
    return cfg.replace(data={"manifest": str(tmp_path / "edited.parquet")})


def test_an_edited_manifest_is_refused(tiny_config, resaved_root, tmp_path):
    root, source = resaved_root
    cfg = _leaky(tiny_config, root, tmp_path, source)
    with pytest.raises(DataError, match=r"near-duplicate.*IMG0009999\.jpg.*allow_leaky_split"):
        pipeline.audit_split(cfg)


def test_allow_leaky_split_warns_and_returns_the_findings(tiny_config, resaved_root, tmp_path, caplog):
    root, source = resaved_root
    cfg = _leaky(tiny_config, root, tmp_path, source, "data.allow_leaky_split=true")
    with caplog.at_level(logging.WARNING, logger="fracture.data.pipeline"):
        findings = pipeline.audit_split(cfg)
    # The copy shares its source's group (manifest keeps near-copies together), so moving it alone
    # splits the group as well.
    assert sorted(f.kind for f in findings) == ["group_in_two_splits", "near_duplicate"]
    assert all("IMG0009999.jpg" in f.ids for f in findings)
    assert "allow_leaky_split=true: running anyway" in caplog.text


def test_a_manifest_without_hashes_is_hashed_when_audited(tiny_config, resaved_root, tmp_path):
    root, source = resaved_root
    cfg = _leaky(tiny_config, root, tmp_path, source)
    pd.read_parquet(cfg.data.manifest).drop(columns="phash").to_parquet(cfg.data.manifest)
    with pytest.raises(DataError, match="IMG0009999.jpg"):
        pipeline.audit_split(cfg)


def test_near_pairs_finds_every_pair_the_full_distance_matrix_finds():
    """The banded search (no n x n matrix) against the matrix, with planted pairs around the threshold."""
    rng = np.random.default_rng(3)
    base = rng.integers(0, 2, size=(300, 256), dtype=np.uint8)
    planted = base[:60].copy()
    for row, flips in zip(planted, rng.integers(0, split_audit.THRESHOLD + 4, size=60), strict=True):
        row[rng.choice(256, size=flips, replace=False)] ^= 1  # 0..threshold+3 bits from its source
    hashes = [np.packbits(b).tobytes().hex() for b in np.vstack([base, planted])] + [""]
    d = split_audit.distances(hashes)
    i, j = np.nonzero(np.triu(d <= split_audit.THRESHOLD, k=1))
    expected = [(int(a), int(b), int(d[a, b])) for a, b in zip(i, j, strict=True)]
    assert split_audit.near_pairs(hashes) == expected
    assert 30 <= len(expected) <= 60  # the planted pairs within the threshold, and no chance ones
