"""python benchmarks/shuffle_order.py [--config jobs/studies/cpu_scratch.yaml] [section.key=value ...]

How mixed is one epoch of the train split, as the worker's batch iterator really delivers it?
Ray Data's local shuffle buffer adds whole blocks and permutes everything it holds, so a small
buffer over a one-block cache is already a full permutation, while over a many-block cache it
mixes only the few blocks it holds at a time, and the stored order survives. This script measures both, on the study's own decoded
train split (real FracAtlas with the default config):

* the old layout: the cache in manifest (image id) order, as one block and as --blocks blocks
  (what a 224 px FracAtlas cache, ~380 MB in blocks of <= 128 MiB, or any large data set gives);
* the buffer: the old 256 rows and today's default (train.shuffle_buffer, at least the split);
* today's layout: the cache in a seeded random order, through today's buffer.

For each it prints the rank correlation between arrival order and id order (0 = no trace of the
id order, 1 = id order) and the fractured share in each tenth of the epoch (the whole split's
share is the target; FracAtlas ids run from 7% fractured in the first half to 28% in the second).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fracture import cli
from fracture.core.names import ID, IMAGE, LABEL, ROW
from fracture.data import pipeline
from fracture.runtime import cluster

DEFAULT = Path(__file__).resolve().parents[1] / "jobs" / "studies" / "cpu_scratch.yaml"


def _epoch(ds, cfg, position: dict[int, int], labels: np.ndarray, buffer: int) -> tuple[float, list[float]]:
    shuffled = cfg.replace(data={"augment": "none"}, train={"shuffle_buffer": buffer})
    arrived = np.array(
        [position[int(r)] for b in pipeline.epoch_batches(ds, shuffled, "train", epoch=0) for r in b[ROW].tolist()]
    )
    rho = float(np.corrcoef(np.argsort(np.argsort(arrived)), np.arange(len(arrived)))[0, 1])
    return rho, [float(part.mean()) for part in np.array_split(labels[arrived], 10)]


def main() -> None:
    cli.setup_logging()
    p = cli.parser(__doc__)
    p.add_argument("--blocks", type=int, default=20, help="blocks of the many-block layout (default 20)")
    p.set_defaults(config=DEFAULT)
    cfg, args = cli.parse(p=p)
    import ray

    cluster.init_ray(cfg)
    cached = pipeline.decoded(cfg, "train")
    frame = cached.to_pandas().sort_values(ID).reset_index(drop=True)  # the old cache: id order
    position = {int(r): i for i, r in enumerate(frame[ROW])}  # ROW -> place in id order
    labels = frame[LABEL].to_numpy()
    id_ordered = ray.data.from_pandas(frame).select_columns([IMAGE, LABEL, ROW]).materialize()
    many = id_ordered.repartition(args.blocks).materialize()
    layouts = [
        ("id order, 1 block", id_ordered, 256),
        (f"id order, {args.blocks} blocks", many, 256),
        (f"id order, {args.blocks} blocks", many, cfg.train.shuffle_buffer),
        ("seeded random order (today)", pipeline.build_datasets(cfg)["train"], cfg.train.shuffle_buffer),
    ]
    print(
        f"train split {len(frame)} images, {labels.mean():.3f} fractured; today's cache is "
        f"{cached.num_blocks()} block(s); batch {cfg.train.batch_size_per_worker}"
    )
    print(f"{'cache layout':32s} {'buffer':>6s} {'rank corr':>9s}  fractured share per tenth of the epoch")
    for name, ds, buffer in layouts:
        rho, tenths = _epoch(ds, cfg, position, labels, buffer)
        print(f"{name:32s} {buffer:6d} {rho:+9.3f}  {' '.join(f'{t:.2f}' for t in tenths)}")


if __name__ == "__main__":
    main()
