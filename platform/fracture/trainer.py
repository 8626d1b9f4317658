"""One Tune trial = one Ray Train run (the Train V2 pattern: Tune runs a driver fn that fits a TorchTrainer).

The Train run is named after the Tune trial id, without timestamps, so a restored study (or a
retried trial) finds the run's storage and resumes it from its latest checkpoint instead of
starting over.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import ray.train
import ray.tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from fracture import data, metrics
from fracture.config import Config
from fracture.rendezvous import LoopbackTorchConfig
from fracture.storage import StudyPaths
from fracture.worker import train_fn_per_worker

CHECKPOINTS_KEPT = 2


def scaling_config(cfg: Config) -> ray.train.ScalingConfig:
    resources = {"CPU": cfg.cluster.cpus_per_worker}
    if cfg.cluster.use_gpu:
        resources["GPU"] = 1
    return ray.train.ScalingConfig(
        num_workers=cfg.cluster.num_workers, use_gpu=cfg.cluster.use_gpu, resources_per_worker=resources
    )


def build_trainer(
    cfg: Config,
    datasets: dict,
    pos_weight: float,
    name: str,
    *,
    storage_path: str | None = None,
    train_fn: Callable[[dict], None] = train_fn_per_worker,
    scaling: ray.train.ScalingConfig | None = None,
    callbacks: Sequence = (),
    keep: int | None = CHECKPOINTS_KEPT,
) -> TorchTrainer:
    """The TorchTrainer of one training run of `cfg`: a trial, a test's run, a benchmark's.

    Args:
        datasets: {"train", "val"} Ray Datasets (data.build_datasets); only train is split across workers.
        name: the Train run's name, its directory under storage_path (default: the study's train/).
        train_fn: the worker loop (benchmarks wrap the production one to time it).
        scaling: default scaling_config(cfg).
        callbacks: Train callbacks, e.g. TuneReportCallback inside a Tune trial.
        keep: checkpoints kept, the best by the study's ranking metric, metrics.ranked (None: all of them).
    """
    return TorchTrainer(
        train_fn,
        train_loop_config={"config": cfg.to_dict(), "pos_weight": pos_weight},
        scaling_config=scaling or scaling_config(cfg),
        torch_config=LoopbackTorchConfig(),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path or StudyPaths.of(cfg).train,
            # Ranked (metrics.ranked) only when some are dropped: kept all, they stay in epoch order.
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=keep,
                checkpoint_score_attribute=metrics.ranked(cfg) if keep is not None else None,
                checkpoint_score_order=metrics.MODE,
            ),
            failure_config=ray.train.FailureConfig(max_failures=cfg.cluster.max_failures),
            callbacks=list(callbacks),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"], execution_options=data.execution_options()),
    )


def train_driver_fn(config: dict, *, datasets: dict, pos_weight: float) -> None:
    """Tune trainable: fit a TorchTrainer for the trial's config; metrics flow back via TuneReportCallback.

    `datasets` and `pos_weight` are built once by the study driver (tune.with_parameters), so
    trials neither rescan the manifest nor race to build the decoded-image cache.
    """
    cfg = Config.from_dict(config["config"])  # validates what the searcher sampled, not only the study's YAML
    trial_id = ray.tune.get_context().get_trial_id()
    trainer = build_trainer(cfg, datasets, pos_weight, f"{cfg.name}-trial_{trial_id}", callbacks=[TuneReportCallback()])
    trainer.fit()
