"""The study's Tuner: OptunaSearch + ASHA over the trial function, and restoring an interrupted study.

Metric and mode are set once, in TuneConfig (Tune raises if the searcher or scheduler gets them
too). Trials are named and printed by fracture.tune.console; Tune's own console stays silent
unless verbose. What a trial runs is fracture.train.trainer's.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import ray
import ray.tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from fracture.core import metrics
from fracture.core.config import Config, ConfigError
from fracture.core.storage import TUNE_DIR, StudyPaths, is_remote
from fracture.runtime import cluster
from fracture.train import trainer
from fracture.tune import console
from fracture.tune.optuna_store import optuna_storage
from fracture.tune.space import points_to_evaluate, search_space

log = logging.getLogger(__name__)


def build_tuner(
    cfg: Config,
    datasets: dict,
    pos_weight: float,
    *,
    callbacks: list | None = None,
    search: bool = True,
    verbose: bool = False,
    paths: StudyPaths | None = None,
    earlier: int = 0,
) -> ray.tune.Tuner:
    """A Tuner over train_driver_fn for this study.

    Args:
        datasets, pos_weight: the study's (data.build_datasets, data.pos_weight), shared by every trial.
        callbacks: Tune callbacks (the MLflow trial logger from tracking.trial_logger).
        search: False for a single run of the config as it is (jobs/train.py): no searcher, no scheduler.
        verbose: also Tune's own console output (status tables, per-trial config and result tables).
        paths: where the Tune run goes (default the study's tune/; an extension's tune_ext<N>/).
        earlier: trials the study ran before this Tune run (an extension's): names continue after
            them, the points to evaluate are not run again, and the sampler gets another seed (the
            same seed would propose the same first points again).
    """
    paths = paths or StudyPaths.of(cfg)
    trainable = _trainable(cfg, datasets, pos_weight)
    space = search_space(cfg) if search else cfg.to_dict()
    searcher = scheduler = None
    if search and cfg.search.space:
        searcher = OptunaSearch(
            points_to_evaluate=(None if earlier else points_to_evaluate(cfg)) or None,
            seed=cfg.seed + earlier,
            storage=optuna_storage(paths),
            study_name=cfg.name,
        )
    if search and cfg.search.scheduler == "asha":
        scheduler = asha(cfg)
    callbacks = list(callbacks or [])
    if scheduler is not None:
        callbacks.append(SchedulerState(scheduler))
    callbacks.append(console.trial_progress(cfg))
    # Tune numbers a searcher's trials from 1, and its default generator's from 0.
    first = (1 if searcher is not None else 0) - earlier
    tune_config = ray.tune.TuneConfig(
        metric=metrics.ranked(cfg),  # ASHA and the searcher judge trials by it too
        mode=metrics.MODE,
        num_samples=cfg.search.num_trials if search else 1,
        max_concurrent_trials=cfg.search.max_concurrent if search else 1,
        search_alg=searcher,
        scheduler=scheduler,
        trial_name_creator=functools.partial(console.trial_name, first=first),
        trial_dirname_creator=functools.partial(console.trial_dirname, first=first),
        # An in-trial trial's process has imported torch and built a model: the next trial reuses it
        # (~2 s a trial). A TorchTrainer's driver fn holds nothing worth keeping.
        reuse_actors=cfg.cluster.in_trial,
    )
    return ray.tune.Tuner(
        trainable,
        param_space={"config": space},
        tune_config=tune_config,
        run_config=_run_config(paths, callbacks, verbose, cfg.cluster.max_failures),
    )


def asha(cfg: Config) -> ASHAScheduler | None:
    """ASHA on TuneConfig's metric (metrics.ranked), rungs counted in epochs trained (None: too short to prune).

    Not Tune's training_iteration: that counts reports since the trial (re)started, and a resumed
    trial starts counting again at 1 while its Train run continues from epoch N.
    """
    if cfg.train.epochs <= cfg.search.grace_epochs:
        return None
    return ASHAScheduler(
        time_attr=metrics.EPOCHS_DONE,
        max_t=cfg.train.epochs,
        grace_period=max(1, cfg.search.grace_epochs),
        reduction_factor=2,
    )


class SchedulerState(ray.tune.Callback):
    """Keeps ASHA's rungs (each trial's val AUROC at each milestone) in the study's saved state.

    Tune saves the searcher and the callbacks with the study but not the scheduler, so without this
    a resumed study's ASHA would have forgotten every result from before the interrupt: the first
    trial to reach a rung afterwards would face no cutoff at all. Tuner.restore unpickles this
    callback and the scheduler from one pickle, so `self.scheduler` is the scheduler Tune runs.
    """

    def __init__(self, scheduler: ASHAScheduler):
        self.scheduler = scheduler

    def get_state(self) -> dict:
        return {
            "rungs": [
                [(milestone, dict(recorded)) for milestone, recorded in bracket._rungs]
                for bracket in self.scheduler._brackets
            ],
            "num_stopped": self.scheduler._num_stopped,
        }

    def set_state(self, state: dict) -> None:
        for bracket, rungs in zip(self.scheduler._brackets, state["rungs"], strict=True):
            saved = dict(rungs)
            for milestone, recorded in bracket._rungs:
                recorded.update(saved.get(milestone, {}))
        self.scheduler._num_stopped = state["num_stopped"]
        restored = {m: len(r) for b in self.scheduler._brackets for m, r in reversed(b._rungs) if r}
        log.info("ASHA: restored the results at each rung (epochs: trials) %s", restored)


def _trainable(cfg: Config, datasets: dict, pos_weight: float):
    """The trial function with the study's datasets, and the resources Tune reserves for each trial.

    In-trial training (ClusterConfig.in_trial) holds the worker's CPUs and GPU in the trial itself. A
    TorchTrainer's driver fn only orchestrates (its workers hold the CPUs/GPUs), so it asks for
    (almost) no resources (Tune refuses an empty request); max_concurrent_trials bounds how many run at once.
    """
    if cfg.cluster.in_trial:
        fn = ray.tune.with_parameters(trainer.train_in_trial, datasets=datasets, pos_weight=pos_weight)
        resources = {"cpu": cfg.cluster.cpus_per_worker, "gpu": 1 if cfg.cluster.use_gpu else 0}
        return ray.tune.with_resources(fn, resources)
    fn = ray.tune.with_parameters(trainer.train_driver_fn, datasets=datasets, pos_weight=pos_weight)
    return ray.tune.with_resources(fn, {"cpu": cluster.DRIVER_CPU})


def _tune_verbosity(verbose: bool) -> int | None:
    return None if verbose else 0  # None: Tune's default, every table; 0: silent


def _run_config(paths: StudyPaths, callbacks: list | None, verbose: bool, max_failures: int) -> ray.tune.RunConfig:
    return ray.tune.RunConfig(
        name=Path(paths.tune).name,  # tune/, or an extension's tune_ext<N>/
        storage_path=paths.root,
        callbacks=callbacks or [],
        failure_config=ray.tune.FailureConfig(max_failures=max_failures),
        verbose=_tune_verbosity(verbose),
    )


def check_restorable(tune_dir: str, named: str | Path) -> None:
    """Refuse `--resume named` when its Tune dir (StudyPaths.at(named).tune) holds no saved study.

    Raises:
        ConfigError; a remote dir is left to Tuner.restore to judge.
    """
    if not is_remote(tune_dir) and not ray.tune.Tuner.can_restore(tune_dir):
        raise ConfigError(
            f"--resume {named}: no Tune study there (expected {TUNE_DIR}/ with tuner.pkl "
            "from an earlier jobs/tune.py run)"
        )


def restore_tuner(
    cfg: Config, tune_dir: str, datasets: dict, pos_weight: float, *, verbose: bool = False
) -> ray.tune.Tuner:
    """Continue an interrupted study: finished and ASHA-stopped trials stay as they are,
    unfinished ones resume from their Train run's latest checkpoint.

    The callbacks (MLflow trial logger, SchedulerState, TrialProgress) and the trial names come
    back from the saved study, with the parent run and scheduler they were made for;
    Tuner.restore takes no new ones.
    """
    tuner = ray.tune.Tuner.restore(tune_dir, trainable=_trainable(cfg, datasets, pos_weight), resume_errored=True)
    # Tuner.restore takes no RunConfig either: the verbosity is this invocation's, not the first one's.
    tuner._local_tuner.get_run_config().verbose = _tune_verbosity(verbose)
    return tuner
