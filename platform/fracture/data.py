"""Ray Data at the edge: manifest -> decoded-image cache -> per-epoch augmented datasets.

Decoding and resizing X-rays is the expensive, deterministic part: it runs once per (images,
image size, truncation policy) and is cached as Parquet keyed by a hash of exactly those inputs,
so every trial and every later run reads small uint8 arrays instead of JPEGs. Augmentation is
random and runs per epoch in `map_batches` after the cached read, as Ray's ingest guide advises.
Only "train" and "val" are ever built here: the test split is for jobs/evaluate.py alone.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import pandas as pd

from fracture import manifest
from fracture.config import Config
from fracture.presets import ID, IMAGE, LABEL, PATH, augment_batch, decode_batch

log = logging.getLogger(__name__)

TRAINING_SPLITS = ("train", "val")
DECODE_BATCH = 32


def manifest_path(cfg: Config) -> Path:
    return Path(cfg.data.manifest).expanduser().resolve() if cfg.data.manifest else cfg.run_dir / "manifest.parquet"


def ensure_manifest(cfg: Config) -> Path:
    """The study's manifest, scanning cfg.data.root first if it does not exist yet."""
    path = manifest_path(cfg)
    if not path.is_file():
        log.info("no manifest at %s: scanning %s", path, cfg.data.root)
        manifest.build(cfg.data.root, path, seed=cfg.data.split_seed, val_fraction=cfg.data.val_fraction,
                       test_fraction=cfg.data.test_fraction, balanced=cfg.data.balanced,
                       allow_truncated=cfg.data.allow_truncated)
    return path


def split_frame(cfg: Config, split: str) -> pd.DataFrame:
    """Usable rows of one split of the manifest (image_id, path, label)."""
    df = manifest.load(ensure_manifest(cfg))
    rows = df[df["usable"] & (df["split"] == split)]
    return rows[[ID, PATH, LABEL]].reset_index(drop=True)


def pos_weight(cfg: Config) -> float:
    """negatives / positives on the train split (BCE pos_weight), or 1.0 when imbalance handling is off."""
    if cfg.train.imbalance != "pos_weight":
        return 1.0
    labels = split_frame(cfg, "train")[LABEL]
    positives = int(labels.sum())
    return float((len(labels) - positives) / positives) if positives else 1.0


def _cache_key(frame: pd.DataFrame, cfg: Config) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"size": cfg.data.image_size, "truncated": cfg.data.allow_truncated, "v": 1}).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).values.tobytes())
    return digest.hexdigest()[:16]


def cache_dir(cfg: Config) -> Path:
    return Path(cfg.data.cache_dir).expanduser().resolve() if cfg.data.cache_dir else cfg.run_dir / "cache"


def decoded(cfg: Config, split: str):
    """The split as a ray.data.Dataset of {image_id, image uint8 (S, S, 3), label}, from the cache.

    A missing cache is built with Ray Data itself (parallel decode) and published with an atomic
    rename, so concurrent trials asking for the same split never read a half-written cache.
    """
    import ray.data

    frame = split_frame(cfg, split)
    if frame[LABEL].nunique() < 2:
        # AUROC, the metric every trial is judged by, is undefined on one class.
        raise manifest.DataError(f"split {split!r} of {manifest_path(cfg)} needs both classes but has "
                                 f"{len(frame)} images with labels {sorted(frame[LABEL].unique().tolist())}")
    target = cache_dir(cfg) / f"{split}-{cfg.data.image_size}px-{_cache_key(frame, cfg)}"
    if not target.is_dir():
        log.info("decoding %d %s images at %d px into %s", len(frame), split, cfg.data.image_size, target)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
        (ray.data.from_pandas(frame)
         .map_batches(decode_batch, batch_size=DECODE_BATCH, batch_format="numpy",
                      fn_kwargs={"size": cfg.data.image_size, "allow_truncated": cfg.data.allow_truncated})
         .write_parquet(str(tmp)))
        try:
            os.replace(tmp, target)
        except OSError:  # another trial published it first; theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    # Materialized once per study: every epoch of every trial then streams from the object store
    # instead of re-reading Parquet (a few seconds per epoch on small splits).
    return ray.data.read_parquet(str(target)).materialize()


def build_datasets(cfg: Config) -> dict:
    """{"train": augmented per epoch (if cfg.data.augment), "val": as decoded} Ray Datasets."""
    # Workers get tensors only: the string ids stay behind (iter_torch_batches cannot tensorise them).
    train = decoded(cfg, "train").select_columns([IMAGE, LABEL])
    if cfg.data.augment:
        train = train.map_batches(augment_batch, batch_size=DECODE_BATCH, batch_format="numpy")
    return {"train": train, "val": decoded(cfg, "val").select_columns([IMAGE, LABEL])}
