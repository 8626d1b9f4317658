"""python benchmarks/data_scale.py [--sizes 4000,20000,100000] [--image-size 64]

What the data path costs as the data grows: users outgrow FracAtlas' 4k images (MURA has 40k,
CheXpert 224k). For each size N, N synthetic FracAtlas-layout JPEGs (64-128 px, written before any
timing), then three steps, each timed with its peak memory:

1. manifest: fracture.data.pipeline.build_manifest (scan, defect checks, perceptual hashes, grouped split)
2. cache: the decoded cache of train + val (decode + resize once, Ray Data tasks) and
   data.build_datasets (the materialized Datasets every trial reads)
3. epoch: one epoch of the train split through data.epoch_batches (local shuffle + augmentation), as
   a trial reads it, without the model

Peak memory is sampled every 50 ms: this process's resident set (RSS), and the machine's used
memory above what it was when the step began (every Ray process and the object store included).
"""

from __future__ import annotations

import argparse
import shutil
import threading
import time
from pathlib import Path

import _common


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10
    return 0


def _used() -> int:
    info = {k: int(v.split()[0]) << 10 for k, v in (line.split(":", 1) for line in open("/proc/meminfo"))}
    return info["MemTotal"] - info["MemAvailable"]


class Peak:
    """Peak RSS of this process and peak machine memory above the start, while the block runs."""

    def __enter__(self):
        self.base, self.rss, self.used, self._stop = _used(), _rss(), 0, threading.Event()
        self.tick = time.perf_counter()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.05):
            self.rss, self.used = max(self.rss, _rss()), max(self.used, _used() - self.base)

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.tick
        self._stop.set()
        self._thread.join()
        self.rss, self.used = max(self.rss, _rss()), max(self.used, _used() - self.base)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="4000,20000,100000", help="images per run, comma-separated")
    p.add_argument("--image-size", type=int, default=64, help="decoded image size (px)")
    args = p.parse_args()
    _common.quiet()
    import os

    import ray

    from fracture.data import pipeline, synthetic

    _common.init_ray(os.cpu_count())
    print(f"machine: {_common.machine()}; load {_common.load()}")
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        tmp = _common.workdir()
        try:
            tick = time.perf_counter()
            root = synthetic.generate(tmp / "data", n=n, seed=0, min_size=64, max_size=128)
            made = time.perf_counter() - tick
            cfg = _common.make_config(tmp, root, f"data.image_size={args.image_size}")
            with Peak() as manifest:
                pipeline.build_manifest(cfg, root, pipeline.manifest_path(cfg), progress=False)
            with Peak() as cache:
                datasets = pipeline.build_datasets(cfg)
            train_n = datasets["train"].count()
            with Peak() as epoch:
                for _ in pipeline.epoch_batches(datasets["train"], cfg, "train", epoch=0):
                    pass
            cache_mb = sum(f.stat().st_size for f in (tmp / "runs").rglob("*.parquet")) / 2**20
            for step, peak, extra in (
                ("manifest", manifest, f"{n / manifest.seconds:,.0f} img/s"),
                ("cache + datasets", cache, f"{cache_mb:,.0f} MB cache"),
                ("one train epoch, streamed", epoch, f"{train_n / epoch.seconds:,.0f} img/s"),
            ):
                rows.append([f"{n:,}", step, peak.seconds, peak.rss / 2**20, peak.used / 2**20, extra])
            print(f"{n:,} images: written in {made:.0f} s; {train_n:,} train rows", flush=True)
            del datasets
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(_common.table(["images", "step", "seconds", "peak RSS MB (driver)", "peak used MB (machine)", "rate"], rows))
    print(f"\nload {_common.load()} at end")
    ray.shutdown()


if __name__ == "__main__":
    main()
