"""What a Tune trial runs: the training loop in the trial's own process, or a TorchTrainer of several workers.

- `train_in_trial` (one worker, cluster.runner=auto: ClusterConfig.in_trial): the loop runs right in the Tune trial's
  process (session.TrialSession). A trial then costs what Tune costs (~1 s), not Ray Train V2's
  controller, worker group and helper actors (~20 s a trial, benchmarks/tune_overhead.py).
- `train_driver_fn` (several DDP workers, or cluster.runner=trainer; the Train V2 pattern): Tune
  runs a driver fn that fits a TorchTrainer; its TuneReportCallback forwards each report.

Either way the run is named after the Tune trial id, without timestamps
(`<study>/train/<name>-trial_<id>`), so a restored study (or a retried trial) finds the run's
checkpoints and resumes from its latest instead of starting over.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import ray.train
import ray.tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from fracture.core import metrics, storage
from fracture.core.config import Config
from fracture.core.storage import StudyPaths
from fracture.data import pipeline
from fracture.runtime.rendezvous import LoopbackTorchConfig
from fracture.train.session import TrialSession
from fracture.train.worker import train_fn_per_worker, train_loop

CHECKPOINTS_KEPT = 2


def run_name(cfg: Config, trial_id: str) -> str:
    """A trial's training run: its directory under the study's train/, whichever runner trains it."""
    return f"{cfg.name}-trial_{trial_id}"


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
        dataset_config=ray.train.DataConfig(
            datasets_to_split=["train"], execution_options=pipeline.execution_options()
        ),
    )


def train_driver_fn(config: dict, *, datasets: dict, pos_weight: float) -> None:
    """Tune trainable: fit a TorchTrainer for the trial's config; metrics flow back via TuneReportCallback.

    `datasets` and `pos_weight` are built once by the study driver (tune.with_parameters), so
    trials neither rescan the manifest nor race to build the decoded-image cache.
    """
    cfg = Config.from_dict(config["config"])  # validates what the searcher sampled, not only the study's YAML
    name = run_name(cfg, ray.tune.get_context().get_trial_id())
    build_trainer(cfg, datasets, pos_weight, name, callbacks=[TuneReportCallback()]).fit()


def train_in_trial(config: dict, *, datasets: dict, pos_weight: float) -> None:
    """Tune trainable: the training loop itself, in this trial's process (one worker: ClusterConfig.in_trial).

    A trial restarted by Tune (cluster.max_failures) or resumed with the study continues from the
    newest checkpoint in its run directory, as a TorchTrainer run would.
    """
    cfg = Config.from_dict(config["config"])
    session = TrialSession(
        datasets,
        storage.join(StudyPaths.of(cfg).train, run_name(cfg, ray.tune.get_context().get_trial_id())),
        ranked=metrics.ranked(cfg),
        keep=CHECKPOINTS_KEPT,
        use_gpu=cfg.cluster.use_gpu,
    )
    train_loop({"config": cfg.to_dict(), "pos_weight": pos_weight}, session)
