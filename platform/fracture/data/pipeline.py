"""Ray Data at the edge: manifest -> decoded-image cache -> per-epoch shuffled, augmented batches.

Decoding and resizing X-rays is the expensive, deterministic part: it runs once per (images,
image size, truncation policy) and is cached as Parquet keyed by a hash of exactly those inputs,
so every trial and every later run reads small uint8 arrays instead of JPEGs.

Order matters as much as pixels. The manifest is sorted by image id, and FracAtlas ids are not
exchangeable (the first half of the train split is 7% fractured, the second 28%): a stream in that
order through a small local shuffle buffer gave batches far from i.i.d., and the network collapsed
to a constant output (benchmarks/README.md, "Why training did not learn"). So the cache is written
in a seeded random row order, every row carries its cache position (ROW), and each epoch reads it
through a local shuffle buffer seeded by (study seed, epoch, rank). Augmentation happens as each
batch is collated, with one generator per image seeded by (study seed, epoch, ROW): the same config
gives the same batches and the same views, whatever the batching or the number of workers.
Only "train" and "val" are ever built here: the test split is for jobs/evaluate.py alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from ray.data.collate_fn import NumpyBatchCollateFn

from fracture.core import metrics
from fracture.core.config import Config
from fracture.core.errors import DataError
from fracture.core.names import ID, IMAGE, LABEL, PATH, ROW, SPLITS
from fracture.data import datareport, manifest, provenance, split_audit
from fracture.data.presets import augment, decode_batch

log = logging.getLogger(__name__)

DECODE_BATCH = 32
READ_IN_DRIVER_BYTES = 256 << 20  # decoded caches up to this size are read by the driver (decoded())
TRAINING_SPLITS = ("train", "val")  # what build_datasets gives trials; the test split never reaches them


def manifest_path(cfg: Config) -> Path:
    return Path(cfg.data.manifest).expanduser().resolve() if cfg.data.manifest else cfg.run_dir / "manifest.parquet"


def split_settings(cfg: Config) -> dict:
    """cfg.data's split and defect settings, as manifest.build and provenance.provenance take them."""
    d = cfg.data
    return dict(
        seed=d.split_seed,
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        balanced=d.balanced,
        allow_truncated=d.allow_truncated,
    )


def build_manifest(cfg: Config, root: str | Path, out: str | Path, *, progress: bool = True) -> pd.DataFrame:
    """manifest.build of `root` into `out` with the study's split settings; refuse one nothing can train on.

    A refused manifest is removed (so no later job trains on it); its report stays, to say why.
    """
    frame = manifest.build(root, out, progress=progress, **split_settings(cfg))
    try:
        check_trainable(frame, root, datareport.paths(out)[1], test_split=cfg.data.test_fraction > 0)
    except DataError:
        Path(out).unlink(missing_ok=True)
        raise
    return frame


def check_trainable(frame: pd.DataFrame, root: str | Path, report: Path, *, test_split: bool = True) -> None:
    """DataError unless train and val each hold both classes (val AUROC needs both) and test is not empty.

    Caught when the manifest is made (jobs/prepare.py, or a study's preflight), not in a Ray worker.
    """
    usable = frame[frame["usable"]]
    if usable.empty:
        statuses = frame["status"].value_counts().to_dict()
        found = ", ".join(f"{n} {s}" for s, n in statuses.items()) or "an empty dataset.csv and no image files"
        raise DataError(f"no usable image in {root} ({found}); see {report}")
    # Classes each split needs, in SPLITS order (train, val, test; only evaluate names test).
    for split, classes in zip(SPLITS, (2, 2, 1 if test_split else 0), strict=True):
        labels = set(usable.loc[usable["split"] == split, LABEL])
        if len(labels) < classes:
            have = "no images" if not labels else f"only {'fractured' if 1 in labels else 'non-fractured'} images"
            raise DataError(
                f"the {split} split of {root} has {have} ({len(usable)} usable images in all): "
                f"add images, or change data.val_fraction / data.test_fraction; see {report}"
            )


_checked: set[tuple] = set()  # (manifest, its mtime, root, split settings) that matched once in this process


def ensure_manifest(cfg: Config) -> Path:
    """The study's manifest, built from cfg.data.root if absent or made from other data.

    A manifest records what it was built from (fracture.data.provenance). The study's own manifest
    (<run_dir>/manifest.parquet) is rebuilt when that is not cfg.data.root, its image list or
    cfg.data's split settings; a manifest named by data.manifest is the user's file, never
    overwritten: a mismatch is a DataError. So one study name can never train on another
    folder's images by accident.
    """
    path = manifest_path(cfg)
    own = not cfg.data.manifest
    root = Path(cfg.data.root).expanduser().resolve()

    def key() -> tuple:  # after a rebuild the file's mtime is new
        return str(path), path.stat().st_mtime_ns, str(root), tuple(sorted(split_settings(cfg).items()))

    if path.is_file() and key() in _checked:
        return path
    if not path.is_file():
        log.info("no manifest at %s: scanning %s", path, cfg.data.root)
        build_manifest(cfg, cfg.data.root, path)
    elif (recorded := provenance.recorded_provenance(path)) is None:
        if own:
            log.warning("%s does not record the data it was built from: rebuilding it from %s", path, cfg.data.root)
            build_manifest(cfg, cfg.data.root, path)
        else:
            log.warning("%s does not record the data it was built from: cannot check it against data.root", path)
    elif reason := provenance.provenance_mismatch(recorded, provenance.provenance(root, **split_settings(cfg))):
        if not own:
            raise DataError(
                f"data.manifest={path}: {reason}; rebuild it with: python jobs/prepare.py "
                f"--root {cfg.data.root} --out {path}, or set data.root to the data it was "
                "built from"
            )
        log.warning("%s: %s: rebuilding it", path, reason)
        build_manifest(cfg, cfg.data.root, path)
    _checked.add(key())
    return path


_audited: dict[tuple, list] = {}  # (manifest, its mtime) -> findings, so preflight and run hash once


def audit_split(cfg: Config) -> list[split_audit.Finding]:
    """split_audit.audit of the study's manifest: DataError naming the findings, or (with
    data.allow_leaky_split) a warning and the findings, for the study to record in MLflow.

    Manifests from before the `phash` column are hashed here, each time a job starts (~2 s for
    FracAtlas); jobs/prepare.py writes the hashes into the manifest once.
    """
    path = ensure_manifest(cfg)
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _audited:
        frame = manifest.load(path)
        if "phash" not in frame:
            log.info("%s has no perceptual hashes: hashing its %d usable images", path, int(frame["usable"].sum()))
            with ThreadPoolExecutor(max_workers=4) as pool:  # PIL's decoder releases the GIL
                frame["phash"] = list(pool.map(split_audit.hash_file, frame[PATH].where(frame["usable"], "")))
        # Model selection reads the ranked metric's split; it must be one the trials are given, never test.
        selection = tuple(dict.fromkeys((*TRAINING_SPLITS, metrics.ranked(cfg).split("_")[0])))
        findings = split_audit.audit(frame, selection=selection)
        if findings and not cfg.data.allow_leaky_split:
            raise DataError(split_audit.refusal(findings, path))
        if findings:
            log.warning("data.allow_leaky_split=true: running anyway on %s", split_audit.refusal(findings, path))
        _audited[key] = findings
    return _audited[key]


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
    digest.update(
        json.dumps(
            {
                "size": cfg.data.image_size,
                "truncated": cfg.data.allow_truncated,
                "order_seed": cfg.data.split_seed,
                "v": 3,  # 3: high-bit-depth images windowed to 8 bits (presets.decode_resize), not clipped
            }
        ).encode()
    )
    digest.update(pd.util.hash_pandas_object(frame, index=False).values.tobytes())
    return digest.hexdigest()[:16]


def cache_dir(cfg: Config) -> Path:
    return Path(cfg.data.cache_dir).expanduser().resolve() if cfg.data.cache_dir else cfg.run_dir / "cache"


def decoded(cfg: Config, split: str, columns: list[str] | None = None, *, files_only: bool = False):
    """The split as a ray.data.Dataset of {image_id, image uint8 (S, S, 3), label, row} (or `columns`), from the cache.

    The rows are stored in a random order seeded by data.split_seed (ROW = position in it), never in
    the manifest's id order. A missing cache is built with Ray Data itself (parallel decode) and
    published with an atomic rename, so concurrent trials never read a half-written cache.
    files_only: the cache's files (CacheFiles) for a trial to read itself (`opened`), not a Dataset.
    """
    import ray.data

    frame = split_frame(cfg, split)
    frame = frame.sample(frac=1.0, random_state=cfg.data.split_seed).reset_index(drop=True)
    frame[ROW] = frame.index.astype("int64")
    if frame[LABEL].nunique() < 2:
        # AUROC, the metric every trial is judged by, is undefined on one class.
        raise DataError(
            f"split {split!r} of {manifest_path(cfg)} needs both classes but has "
            f"{len(frame)} images with labels {sorted(frame[LABEL].unique().tolist())}"
        )
    target = cache_dir(cfg) / f"{split}-{cfg.data.image_size}px-{_cache_key(frame, cfg)}"
    if not target.is_dir():
        log.info("decoding %d %s images at %d px into %s", len(frame), split, cfg.data.image_size, target)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
        (
            ray.data.from_pandas(frame)
            .map_batches(
                decode_batch,
                batch_size=DECODE_BATCH,
                batch_format="numpy",
                fn_kwargs={"size": cfg.data.image_size, "allow_truncated": cfg.data.allow_truncated},
            )
            .write_parquet(str(tmp))
        )
        try:
            os.replace(tmp, target)
        except OSError:  # another trial published it first; theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    # Materialized once per study: every epoch of every trial streams from the object store, not
    # from Parquet, with no Ray Data task to schedule. Blocks in file order, files in name order:
    # the seeded shuffle then permutes the same sequence in every study.
    files = sorted(p for p in target.iterdir() if p.suffix == ".parquet")
    if files_only:
        return CacheFiles(tuple(map(str, files)), tuple(columns or ()))
    if sum(f.stat().st_size for f in files) <= READ_IN_DRIVER_BYTES:
        # A small cache is read here and put in the object store as is (a block per file): Ray
        # Data's own read of it costs seconds of task start-up, more than the read.
        return _from_parquet(files, columns)
    # A large one is read by Ray Data's tasks, in parallel and without passing through this process.
    ds = ray.data.read_parquet([str(f) for f in files])
    ds.context.execution_options.preserve_order = True
    return (ds.select_columns(columns) if columns else ds).materialize()


@dataclasses.dataclass(frozen=True)
class CacheFiles:
    """A split's decoded cache as files on storage every node reaches, for the trial to read (`opened`)."""

    files: tuple
    columns: tuple


_OPENED: dict = {}


def opened(source):
    """A Dataset to iterate: `source` itself, or the CacheFiles read in this process into its node's
    object store (once per process: a reused trial actor keeps it for its next trials)."""
    if not isinstance(source, CacheFiles):
        return source
    if source not in _OPENED:
        ds = _from_parquet(source.files, list(source.columns) or None)
        ds.context.execution_options.preserve_order = True
        _OPENED[source] = ds
    return _OPENED[source]


def _from_parquet(files, columns: list[str] | None):
    """The cache's Parquet files read in this process, put in its node's object store as is (a block per file)."""
    import pyarrow.parquet as pq
    import ray.data

    return ray.data.from_arrow([pq.read_table(f, columns=columns) for f in files])


def build_datasets(cfg: Config, *, read_in_trial: bool = False) -> dict:
    """{"train", "val"} Ray Datasets of {image, label, row}, as decoded; `epoch_batches` shuffles and augments.

    read_in_trial: CacheFiles instead, which each trial reads itself (`opened`) where it runs. On a
    cluster this keeps the cache off the driver's node: trials on GPU nodes would otherwise pull
    every block from the head's object store, each trial, each epoch.
    """
    # Workers get numbers only: the string ids stay behind (iter_torch_batches cannot tensorise them).
    if read_in_trial:
        return {split: decoded(cfg, split, [IMAGE, LABEL, ROW], files_only=True) for split in TRAINING_SPLITS}
    # Read as materialized: an epoch then only fetches blocks, with no Ray Data task to schedule.
    out = {split: decoded(cfg, split, [IMAGE, LABEL, ROW]) for split in TRAINING_SPLITS}
    for ds in out.values():
        # blocks in stored order (Ray Data may otherwise yield whichever block is ready first)
        ds.context.execution_options.preserve_order = True
    return out


def execution_options():
    """Ray Data options for the trainer's datasets: blocks in stored order, so a seed fixes the batches."""
    from ray.data import ExecutionOptions

    return ExecutionOptions(preserve_order=True)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """One 32-bit seed per (study seed, epoch, rank) for the local shuffle buffer."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


class Collate(NumpyBatchCollateFn):
    """numpy batch {image, label, row} -> torch {image uint8 (B, S, S, 3), label (B,), row (B,)}, augmented per image.

    Runs inside Ray Data's batch iterator (its prefetch threads), so augmenting overlaps the step.
    """

    def __init__(self, *, strength: str, seed: int, epoch: int, pin_memory: bool = False):
        self.strength, self.seed, self.epoch, self.pin_memory = strength, seed, epoch, pin_memory

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        import torch

        images = batch[IMAGE]
        if self.strength != "none":
            images = augment(
                images, strength=self.strength, seeds=[[self.seed, self.epoch, int(r)] for r in batch[ROW]]
            )
        # ROW rides along so that anyone can see which images a batch held (benchmarks/shuffle_order.py)
        out = {
            IMAGE: torch.from_numpy(_writable(images)),
            LABEL: torch.from_numpy(_writable(batch[LABEL])),
            ROW: torch.from_numpy(_writable(batch[ROW])),
        }
        return {k: v.pin_memory() for k, v in out.items()} if self.pin_memory else out


def _writable(array: np.ndarray) -> np.ndarray:
    """`array`, or a contiguous copy when it is a read-only view of Ray's object store.

    torch warns once per process about tensors over read-only memory; augmented images are already
    a fresh array and are not copied again.
    """
    return array if array.flags.writeable and array.flags.c_contiguous else np.array(array)


def epoch_batches(source, cfg: Config, split: str, *, epoch: int, rank: int = 0):
    """One epoch of {"image": uint8 (B, S, S, 3), "label": (B,)} torch batches from a Dataset or a worker's shard.

    train: shuffled by a buffer of cfg.train.shuffle_buffer rows seeded by (seed, epoch, rank), and
    augmented with cfg.data.augment seeded by (seed, epoch, row). val: in stored order, as decoded.
    """
    train = split == "train"
    return source.iter_torch_batches(
        batch_size=cfg.train.batch_size_per_worker,
        drop_last=False,
        prefetch_batches=2,
        local_shuffle_buffer_size=(cfg.train.shuffle_buffer or None) if train else None,
        local_shuffle_seed=epoch_seed(cfg.seed, epoch, rank) if train and cfg.train.shuffle_buffer else None,
        collate_fn=Collate(
            strength=cfg.data.augment if train else "none", seed=cfg.seed, epoch=epoch, pin_memory=cfg.cluster.use_gpu
        ),
    )
