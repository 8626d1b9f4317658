"""python benchmarks/data_throughput.py [--n 1000] [--image-size 64] [--epochs 3] [--root ../shared/fracatlas] [--ray-worker-niceness 0]

Images/s of the training input pipeline, on the same cores:

* dataloader: what a notebook does, a torch Dataset that decodes + resizes every JPEG with
  presets.decode_resize and augments it with presets.augment on every access, read by
  DataLoader(num_workers=os.cpu_count(), batch_size=32). It has no cache, so every epoch is "cold".
  It runs before Ray starts and again after Ray shuts down (same work twice, so a change in the
  machine's load during the run hits both sides); its figure is the mean of all its epochs.
* ray_data cold: an empty cache dir; fracture.data.pipeline.decoded(cfg, "train") decodes with Ray Data and
  writes the Parquet cache, then one augmented epoch is iterated (the train pipeline a worker runs:
  data.epoch_batches = seeded local shuffle buffer -> per-image seeded augmentation in the collate).
* ray_data warm: the cache exists; data.epoch_batches(data.build_datasets(cfg)["train"], ...) epoch
  after epoch, as a worker does minus sharding. Its set-up (build_datasets: read the cache,
  materialize it in the object store) is a row of its own.
* profiling rows: warm epochs without augmentation (the pipeline's own cost), with the default
  shuffle buffer (train.shuffle_buffer, at least the split: a full permutation every epoch) and with
  the old 256-row buffer, and the time to the first batch of each warm epoch (the per-epoch cost of
  starting a streaming execution and filling the shuffle buffer).

Local Ray: ray.init(num_cpus=os.cpu_count()). The last line is the ratio of warm Ray Data images/s
to DataLoader images/s (target >= 1.0x). Without --root, n synthetic FracAtlas-layout JPEGs of
373-454 px (the size of most FracAtlas images) are generated in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

import _common
import numpy as np
import torch

from fracture.core import names
from fracture.core.names import IMAGE, LABEL
from fracture.data import pipeline, presets


class DecodeAugment(torch.utils.data.Dataset):
    """Decode + resize + augment one JPEG per access: no cache, as in a notebook."""

    def __init__(self, paths: list[str], labels: list[int], size: int, allow_truncated: bool, strength: str):
        self.paths, self.labels, self.size, self.allow_truncated = paths, labels, size, allow_truncated
        self.strength = strength

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        image = presets.decode_resize(self.paths[i], self.size, allow_truncated=self.allow_truncated)
        image = presets.augment(image[None], rng=np.random.default_rng(), strength=self.strength)[0]  # (S, S, 3) uint8
        return {IMAGE: torch.from_numpy(image), LABEL: int(self.labels[i])}


def _count(batches) -> tuple[int, float, float]:
    """(images, seconds, seconds to the first batch) for one pass over an iterable of batches."""
    start, first, images = time.perf_counter(), None, 0
    for batch in batches:
        if first is None:
            first = time.perf_counter() - start
        images += len(batch[LABEL])
    return images, time.perf_counter() - start, first or 0.0


def dataloader_epochs(cfg, epochs: int, label: str, rows: list) -> tuple[int, float]:
    frame = pipeline.split_frame(cfg, "train")
    dataset = DecodeAugment(
        frame[names.PATH].tolist(),
        frame[LABEL].tolist(),
        cfg.data.image_size,
        cfg.data.allow_truncated,
        cfg.data.augment,
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=_common.BATCH, shuffle=True, num_workers=os.cpu_count() or 1
    )
    total_images, total_s = 0, 0.0
    for epoch in range(epochs):
        images, seconds, _ = _count(loader)
        rows.append([label, epoch, images, seconds, images / seconds, _common.load()])
        total_images, total_s = total_images + images, total_s + seconds
    return total_images, total_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="synthetic images to generate (ignored with --root)")
    p.add_argument("--image-size", type=int, default=_common.default_size())
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--root", default=None, help="a FracAtlas-layout folder (e.g. ../shared/fracatlas)")
    _common.add_niceness_arg(p)
    args = p.parse_args()
    _common.quiet()

    tmp = _common.workdir()
    try:
        print(f"machine: {_common.machine()}; load {_common.load()} at start")
        root = _common.data_root(args.root, tmp, args.n)
        cfg = _common.make_config(tmp, root, f"data.image_size={args.image_size}")
        n_train = len(pipeline.split_frame(cfg, "train"))  # builds the manifest
        print(
            f"data: {root} ({'real' if args.root else 'synthetic'}), train split {n_train} images, "
            f"{args.image_size} px, batch {_common.BATCH}\n"
        )
        headers = ["pipeline", "epoch", "images", "seconds", "images/s", "load 1/5/15"]
        rows: list = []

        dl_images, dl_s = dataloader_epochs(cfg, args.epochs, "dataloader (before Ray)", rows)

        import ray

        tick = time.perf_counter()
        _common.init_ray(os.cpu_count(), args.ray_worker_niceness)
        rows.append(["ray.init", "-", "-", time.perf_counter() - tick, "-", _common.load()])

        # Cold: the cache is built by this very call, then one augmented epoch streams from it.
        tick = time.perf_counter()
        cached = pipeline.decoded(cfg, "train")
        decoded_s = time.perf_counter() - tick
        train = cached.select_columns([IMAGE, LABEL, names.ROW])
        images, seconds, _ = _count(pipeline.epoch_batches(train, cfg, "train", epoch=0))
        cold_s = decoded_s + seconds
        rows.append(["ray_data cold (decode+cache)", 0, images, decoded_s, images / decoded_s, _common.load()])
        rows.append(["ray_data cold (total)", 0, images, cold_s, images / cold_s, _common.load()])

        pipeline.decoded(cfg, "val")  # val's cache too, so build_datasets below only reads caches
        tick = time.perf_counter()
        datasets = pipeline.build_datasets(cfg)
        rows.append(
            ["ray_data warm set-up (build_datasets)", "-", "-", time.perf_counter() - tick, "-", _common.load()]
        )
        warm_images, warm_s, firsts = 0, 0.0, []
        for epoch in range(args.epochs):
            images, seconds, first = _count(pipeline.epoch_batches(datasets["train"], cfg, "train", epoch=epoch + 1))
            rows.append(["ray_data warm", epoch + 1, images, seconds, images / seconds, _common.load()])
            warm_images, warm_s = warm_images + images, warm_s + seconds
            firsts.append(first)

        # Profiling: the same warm pipeline without augmentation (Ray Data's own per-epoch cost), with
        # the default buffer (a full permutation of the shard) and with the old 256-row one.
        for label, buffer in (("", cfg.train.shuffle_buffer), (", 256-row buffer", 256)):
            plain = cfg.replace(data={"augment": "none"}, train={"shuffle_buffer": buffer})
            for epoch in range(args.epochs):
                images, seconds, first = _count(
                    pipeline.epoch_batches(datasets["train"], plain, "train", epoch=epoch + 1)
                )
                rows.append(
                    [
                        f"profile: ray_data warm, no augment{label}",
                        epoch + 1,
                        images,
                        seconds,
                        images / seconds,
                        _common.load(),
                    ]
                )
        ray.shutdown()

        more_images, more_s = dataloader_epochs(cfg, args.epochs, "dataloader (after Ray)", rows)
        dl_images, dl_s = dl_images + more_images, dl_s + more_s

        print(_common.table(headers, rows))
        dl_rate, warm_rate = dl_images / dl_s, warm_images / warm_s
        print(
            f"\nprofile: time to first batch per warm epoch {', '.join(f'{f:.2f}' for f in firsts)} s "
            f"(streaming start-up + filling the shuffle buffer); the cached train split is "
            f"{cached.num_blocks()} block(s)"
        )
        print(
            f"dataloader mean {dl_rate:,.1f} images/s over {2 * args.epochs} epochs; ray_data cold "
            f"{n_train / cold_s:,.1f} images/s (ratio cold_ray_data / dataloader = {n_train / cold_s / dl_rate:.2f}×), "
            f"warm mean {warm_rate:,.1f} images/s; load {_common.load()} at end"
        )
        print(f"ratio warm_ray_data / dataloader = {warm_rate / dl_rate:.2f}×")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
