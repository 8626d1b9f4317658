"""fracture.data.pipeline without Ray: the BCE pos_weight of the train split, and when the decoded cache is reused."""

from __future__ import annotations

import pandas as pd
import pytest

from fracture.core.config import Config
from fracture.core.names import ID, LABEL, PATH, ROW
from fracture.data import pipeline
from fracture.data.scan import SCHEMA


def _manifest(tmp_path, rows: list[tuple[str, int, bool]]) -> Config:
    """A manifest of (split, label, usable) rows, every other column blank; a Config that trains on it."""
    blank = {"str": "", "bool": True}
    frame = pd.DataFrame(
        {col: [blank.get(dtype, 0)] * len(rows) for col, dtype in SCHEMA.items()},
    ).astype(SCHEMA)
    frame["image_id"] = [f"img{i:03d}" for i in range(len(rows))]
    frame["path"] = [f"/data/img{i:03d}.jpg" for i in range(len(rows))]
    frame["split"] = [split for split, _, _ in rows]
    frame["label"] = pd.Series([label for _, label, _ in rows], dtype="int8")
    frame["usable"] = [usable for _, _, usable in rows]
    path = tmp_path / "manifest.parquet"
    frame.to_parquet(path)
    return Config().replace(data={"manifest": str(path), "root": str(tmp_path)})


def test_pos_weight_is_negatives_over_positives_of_the_usable_train_rows(tmp_path):
    rows = (
        [("train", 1, True)] * 3
        + [("train", 0, True)] * 9
        + [("train", 1, False)] * 5  # unusable: never trained on, so not counted
        + [("val", 1, True)] * 4  # other splits do not count either
        + [("val", 0, True)] * 1
    )
    cfg = _manifest(tmp_path, rows)
    assert pipeline.pos_weight(cfg) == pytest.approx(9 / 3)
    assert pipeline.pos_weight(cfg.replace(train={"imbalance": "none"})) == 1.0


def test_pos_weight_without_positives_falls_back_to_one(tmp_path):
    cfg = _manifest(tmp_path, [("train", 0, True)] * 4 + [("val", 1, True)])
    assert pipeline.pos_weight(cfg) == 1.0


def _frame(n: int = 6) -> pd.DataFrame:
    """A split as decoded() keys it: image_id, path, label, row."""
    return pd.DataFrame(
        {
            ID: [f"img{i}" for i in range(n)],
            PATH: [f"/data/img{i}.jpg" for i in range(n)],
            LABEL: [i % 2 for i in range(n)],
            ROW: range(n),
        }
    )


def test_cache_key_is_stable_and_ignores_settings_that_do_not_change_pixels():
    cfg = Config()
    key = pipeline._cache_key(_frame(), cfg)
    assert pipeline._cache_key(_frame(), cfg) == key
    # every trial of a study (other lr, dropout, epochs, seed) reads the same decoded cache
    other = cfg.replace(seed=cfg.seed + 1, train={"epochs": 1}, model={"dropout": 0.1}, optim={"lr_head": 1.0e-2})
    assert pipeline._cache_key(_frame(), other) == key


def test_cache_key_changes_with_the_image_list_or_the_image_size():
    cfg = Config()
    key = pipeline._cache_key(_frame(), cfg)
    fewer = _frame().iloc[:-1]
    moved = _frame().assign(**{PATH: lambda f: f[PATH].str.replace("/data/", "/other/")})
    relabelled = _frame().assign(**{LABEL: lambda f: 1 - f[LABEL]})
    for changed in (fewer, moved, relabelled):
        assert pipeline._cache_key(changed, cfg) != key
    bigger = cfg.replace(data={"image_size": cfg.data.image_size * 2})
    assert pipeline._cache_key(_frame(), bigger) != key
