"""fracture.data.pipeline: the train split arrives in a fresh, seeded order each epoch, never in id order.

Real local Ray Data on tiny synthetic images: the same `epoch_batches` the worker calls on its shard.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fracture.core.config import TrainConfig
from fracture.core.names import IMAGE, LABEL, ROW
from fracture.data import pipeline

pytestmark = pytest.mark.timeout(300)


def _epoch(ds, cfg, epoch: int) -> list[str]:
    """The epoch's images, in the order they arrive, as hashes of their pixels."""
    return [
        hashlib.md5(image.numpy().tobytes()).hexdigest()
        for batch in pipeline.epoch_batches(ds, cfg, "train", epoch=epoch)
        for image in batch[IMAGE]
    ]


@pytest.fixture(scope="module")
def ordered(ray_local, synthetic_root, tmp_path_factory):
    from conftest import _tiny

    cfg = _tiny(tmp_path_factory.mktemp("runs"), synthetic_root, "data.augment=none", "train.shuffle_buffer=16")
    return cfg, pipeline.build_datasets(cfg)["train"]


def test_train_order_is_new_each_epoch_and_the_same_for_the_same_seed(ordered):
    cfg, ds = ordered
    first, again, second = _epoch(ds, cfg, 0), _epoch(ds, cfg, 0), _epoch(ds, cfg, 1)
    assert first == again  # same seed, same epoch: same batches
    assert first != second and sorted(first) == sorted(second)  # a different order of the same images
    other_seed = cfg.replace(seed=cfg.seed + 1)
    assert _epoch(ds, other_seed, 0) != first


def test_default_buffer_gives_a_full_permutation_each_epoch(ordered):
    """A small buffer moves rows only ~buffer places, so the cache's order recurs every epoch.

    With the default buffer the arrival position is unrelated to the stored position (as a plain
    loop's full permutation gives); with a 16-row buffer over 8 blocks it stays tightly correlated.
    """
    cfg, ds = ordered
    ds = ds.repartition(8).materialize()  # blocks of ~8 rows, as a large split's cache is (blocks <= 128 MiB)
    stored = {int(r[ROW]): i for i, r in enumerate(ds.iter_rows())}

    def rank_correlation(c) -> float:
        arrived = [stored[int(r)] for b in pipeline.epoch_batches(ds, c, "train", epoch=0) for r in b[ROW]]
        return float(np.corrcoef(np.argsort(np.argsort(arrived)), np.arange(len(arrived)))[0, 1])

    default = cfg.replace(train={"shuffle_buffer": TrainConfig().shuffle_buffer})
    assert default.train.shuffle_buffer >= ds.count()
    assert abs(rank_correlation(default)) < 0.4
    assert rank_correlation(cfg) > 0.5  # the fixture's 16-row buffer


def test_augmentation_is_seeded_by_epoch_and_row(ordered):
    cfg, ds = ordered
    cfg = cfg.replace(data={"augment": "seed"}, train={"shuffle_buffer": 0})  # stored order: compare per row
    a, b, c = (_epoch(ds, cfg, e) for e in (0, 0, 1))
    assert a == b and a != c


def test_cache_is_stored_in_a_seeded_random_order_not_in_id_order(ordered):
    cfg, ds = ordered
    rows = ds.to_pandas()
    frame = pipeline.split_frame(cfg, "train")
    assert sorted(rows[ROW]) == list(range(len(frame)))
    stored_labels = rows.sort_values(ROW)[LABEL].to_numpy()
    assert not np.array_equal(stored_labels, frame[LABEL].to_numpy())  # the manifest's id order is gone
    assert sorted(stored_labels) == sorted(frame[LABEL])


def test_a_trial_that_reads_the_cache_itself_gets_the_same_epochs(ordered):
    """On a cluster a one-worker trial reads the cache's files where it runs (read_in_trial): the
    batches are those the driver's materialized dataset gives, epoch by epoch, augmentation included."""
    cfg, ds = ordered
    cfg = cfg.replace(data={"augment": "seed"})
    files = pipeline.build_datasets(cfg, read_in_trial=True)["train"]
    assert isinstance(files, pipeline.CacheFiles) and all(f.endswith(".parquet") for f in files.files)
    opened = pipeline.opened(files)
    assert pipeline.opened(files) is opened  # read once per process, however many trials it runs
    for epoch in (0, 1):
        assert _epoch(opened, cfg, epoch) == _epoch(ds, cfg, epoch)
