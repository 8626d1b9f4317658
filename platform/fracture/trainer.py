"""One Tune trial = one Ray Train run (the Train V2 pattern: Tune runs a driver fn that fits a TorchTrainer).

The Train run is named after the Tune trial id, without timestamps, so a restored study (or a
retried trial) finds the run's storage and resumes it from its latest checkpoint instead of
starting over.
"""

from __future__ import annotations

from pathlib import Path

import ray.train
import ray.tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from fracture import data, metrics
from fracture.config import Config
from fracture.rendezvous import LoopbackTorchConfig
from fracture.worker import train_fn_per_worker

CHECKPOINTS_KEPT = 2


def storage_uri(cfg: Config, *parts: str) -> str:
    """cfg.cluster.storage_path as Ray wants it: a URI unchanged, a local path made absolute."""
    base = cfg.cluster.storage_path
    if "://" in base:
        return "/".join([base.rstrip("/"), cfg.name, *parts])
    return str(Path(cfg.run_dir, *parts))


def scaling_config(cfg: Config) -> ray.train.ScalingConfig:
    resources = {"CPU": cfg.cluster.cpus_per_worker}
    if cfg.cluster.use_gpu:
        resources["GPU"] = 1
    return ray.train.ScalingConfig(
        num_workers=cfg.cluster.num_workers, use_gpu=cfg.cluster.use_gpu, resources_per_worker=resources
    )


def train_driver_fn(config: dict, *, datasets: dict, pos_weight: float) -> None:
    """Tune trainable: fit a TorchTrainer for the trial's config; metrics flow back via TuneReportCallback.

    `datasets` and `pos_weight` are built once by the study driver (tune.with_parameters), so
    trials neither rescan the manifest nor race to build the decoded-image cache.
    """
    cfg = Config.from_dict(config["config"])
    trial_id = ray.tune.get_context().get_trial_id()
    run_config = ray.train.RunConfig(
        name=f"{cfg.name}-trial_{trial_id}",
        storage_path=storage_uri(cfg, "train"),
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=CHECKPOINTS_KEPT,
            checkpoint_score_attribute=metrics.PRIMARY,
            checkpoint_score_order=metrics.MODE,
        ),
        failure_config=ray.train.FailureConfig(max_failures=cfg.cluster.max_failures),
        callbacks=[TuneReportCallback()],
    )
    TorchTrainer(
        train_fn_per_worker,
        train_loop_config={"config": cfg.to_dict(), "pos_weight": pos_weight},
        scaling_config=scaling_config(cfg),
        torch_config=LoopbackTorchConfig(),
        run_config=run_config,
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"], execution_options=data.execution_options()),
    ).fit()
