"""Where a trial's training loop runs, and the few things the loop asks of Ray there.

`worker.train_loop` is the one training loop. It asks its Session for its rank, its device, its
split of the data, the checkpoint to resume from, and a place to report each epoch (with the
checkpoint written by rank 0). Two sessions give it those:

- `TrialSession`: the loop runs in the Tune trial's own process (`cluster.num_workers: 1`, the
  default). No Train controller, worker group, placement group, dataset manager or split
  coordinator is started per trial: a trial costs what Tune costs, not ~20 s of Ray Train start-up
  (benchmarks/tune_overhead.py). The session writes each epoch's checkpoint where a Ray Train run
  of the same name would (`<study>/train/<name>-trial_<id>/checkpoint_*`), resumes from the newest
  complete one there, keeps the best `keep` of them plus the newest, and reports to Tune with the
  checkpoint's path, as Train's TuneReportCallback does. So registration, `--resume`, the kill -9
  replay and the layout on storage are the same whichever session ran the trial.
- `TrainSession`: a Ray Train worker of a TorchTrainer (several DDP ranks per trial, or
  `cluster.runner: trainer`): ray.train's shard, device, checkpoint and report.

A checkpoint is complete once its state.json exists: checkpoint.save writes it last, and an upload
to remote storage sends it last.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fracture.core import metrics, storage

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint_"
STATE_FILE = "state.json"  # checkpoint.STATE_FILE (not imported: checkpoint imports the model, torchvision)

Save = Callable[[str], Any]  # writes a checkpoint into the directory it is given


class TrainSession:
    """The loop as a Ray Train worker: the TorchTrainer's shard, device, checkpoint and report."""

    def __init__(self) -> None:
        import ray.train

        self._train = ray.train
        self.rank = ray.train.get_context().get_world_rank()

    @property
    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def shard(self, split: str):
        return self._train.get_dataset_shard(split)

    def prepare_model(self, net: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(net)  # to its device; DDP when world_size > 1

    def latest_checkpoint(self):
        return self._train.get_checkpoint()

    def report(self, result: dict, save: Save | None = None) -> None:
        """Every rank reports; rank 0 also writes the checkpoint, which Train uploads and registers."""
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if save is not None and self.rank == 0:
                save(tmp)
                ckpt = self._train.Checkpoint.from_directory(tmp)
            self._train.report(result, checkpoint=ckpt)


class TrialSession:
    """The loop in the Tune trial's own process: one rank, the study's datasets as they are.

    Args:
        datasets: {"train", "val"} Ray Datasets, or the CacheFiles this process reads itself
            (data.pipeline.build_datasets), iterated here directly.
        run_dir: the trial's checkpoint directory (a local path or a URI), as a Train run's.
        ranked: the metric checkpoints are ranked by (metrics.ranked); keep: how many of the best stay.
        use_gpu: the trial holds a GPU (Ray has made it this process's only visible one).
    """

    rank = 0

    def __init__(self, datasets: dict, run_dir: str, *, ranked: str, keep: int | None, use_gpu: bool = False):
        self.datasets, self.run_dir, self.ranked, self.keep = datasets, run_dir.rstrip("/"), ranked, keep
        self.use_gpu = use_gpu

    @property
    def device(self) -> torch.device:
        if not self.use_gpu:
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise RuntimeError(
                "cluster.use_gpu=true but this trial's process sees no CUDA device "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
            )
        return torch.device("cuda", 0)  # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPU

    def shard(self, split: str):
        from fracture.data import pipeline  # (pandas, Ray Data: only where a trial trains)

        return pipeline.opened(self.datasets[split])

    def prepare_model(self, net: torch.nn.Module) -> torch.nn.Module:
        return net.to(self.device)

    def latest_checkpoint(self):
        """The newest complete checkpoint of this trial's run (a restarted or resumed trial), or None."""
        import ray.train

        found = saved_checkpoints(self.run_dir)
        if not found:
            return None
        newest = list(found)[-1]
        if storage.is_remote(newest):
            import pyarrow.fs

            fs, path = pyarrow.fs.FileSystem.from_uri(newest)
            return ray.train.Checkpoint(path, filesystem=fs)
        return ray.train.Checkpoint.from_directory(newest)

    def report(self, result: dict, save: Save | None = None) -> None:
        import ray.tune

        if save is not None:
            epoch = int(result["epoch"])
            location = storage.join(self.run_dir, f"{CHECKPOINT_PREFIX}epoch_{epoch:04d}")
            write_checkpoint(location, save)
            result = result | {"checkpoint_path": location}
            prune(self.run_dir, self.ranked, self.keep)
        ray.tune.report(result)


def write_checkpoint(location: str, save: Save) -> None:
    """Write a checkpoint at `location`: in place on a local disk, else through a temporary dir, state.json last."""
    storage.remove(location)  # a half-written one from a trial that died while saving
    if not storage.is_remote(location):
        save(location)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save(tmp)
        state = Path(tmp, STATE_FILE)
        text = state.read_text()
        state.unlink()
        storage.upload_dir(tmp, location)  # streamed, file by file
        storage.write_text(storage.join(location, STATE_FILE), text)


def saved_checkpoints(run_dir: str) -> dict[str, dict]:
    """{location: state.json} of the run's complete checkpoints, oldest epoch first."""
    found = {}
    for name in storage.list_dir(run_dir):
        if name.startswith(CHECKPOINT_PREFIX):
            location = storage.join(run_dir, name)
            try:
                found[location] = json.loads(storage.read_text(storage.join(location, STATE_FILE)) or "null")
            except json.JSONDecodeError:  # cut off mid-write: the checkpoint is not complete
                continue
    return {k: v for k, v in sorted(found.items(), key=lambda kv: kv[1]["epoch"] if kv[1] else -1) if v}


def prune(run_dir: str, ranked: str, keep: int | None) -> None:
    """Keep the `keep` best checkpoints by `ranked`, and the newest (what a resume starts from); None keeps all.

    The same ones Ray Train's CheckpointManager keeps of a TorchTrainer run (trainer.build_trainer).
    """
    found = saved_checkpoints(run_dir)
    if keep is None or len(found) <= keep:
        return

    def score(location: str) -> float:
        value = found[location]["metrics"].get(ranked)
        value = float("nan") if value is None else float(value)
        if value != value:  # NaN (a one-class val split) ranks last
            return float("-inf")
        return value if metrics.MODE == "max" else -value

    kept = set(sorted(found, key=score, reverse=True)[:keep]) | {list(found)[-1]}
    for location in found:
        if location not in kept:
            storage.remove(location)
