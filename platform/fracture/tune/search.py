"""Ray Tune at the edge: study config -> Tuner with OptunaSearch + ASHA + the MLflow trial logger.

The trial config is `{"config": Config.to_dict()}` with each `search.space` path replaced by a Tune
domain, so every trial carries its whole resolved config. Metric and mode are set once, in
TuneConfig (Tune raises if the searcher or scheduler gets them too). Trials are named and printed
by fracture.tune.console; Tune's own console stays silent unless verbose.

Optuna's study lives in the study dir (`optuna.db`, sqlite), not only inside the pickled searcher:
`--extend` builds a new Tuner whose OptunaSearch loads it (create_study(load_if_exists=True)), so
the sampler conditions on every earlier trial, and `search.warm_start` seeds a new study's storage
with another study's trials. A study on remote storage (s3://...) keeps it in memory: sqlite
needs a local file, so such a study cannot be extended.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import ray
import ray.tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from fracture.core import metrics
from fracture.core.config import Config, ConfigError, distribution, loads
from fracture.core.storage import TUNE_DIR, StudyPaths, exists, is_remote, read_text
from fracture.runtime import cluster
from fracture.train import trainer
from fracture.tune import console

log = logging.getLogger(__name__)

# config.distribution has parsed and checked every search.space entry; these make Tune domains of them.
DOMAINS = {
    "uniform": ray.tune.uniform,
    "loguniform": ray.tune.loguniform,
    "quniform": ray.tune.quniform,
    "randint": ray.tune.randint,
    "choice": lambda *options: ray.tune.choice(list(options)),
}


def _domain(dotted: str, spec: Any):
    dist = distribution(dotted, spec)
    return DOMAINS[dist.kind](*dist.args)


def search_space(cfg: Config) -> dict[str, Any]:
    """cfg.to_dict() with each searched path replaced by a Tune domain."""
    space = cfg.to_dict()
    for dotted, spec in cfg.search.space.items():
        section, key = dotted.split(".", 1)
        if section in ("data", "cluster", "tracking", "search"):
            # data.* would change the decoded cache per trial; the rest is infrastructure, not a hyperparameter
            raise ConfigError(f"search.space.{dotted}: {section}.* cannot be searched")
        space[section][key] = _domain(dotted, spec)
    return space


def points_to_evaluate(cfg: Config) -> list[dict[str, Any]]:
    """The study's first trials (e.g. the seed recipe), completed with the study's defaults.

    OptunaSearch enqueues points as flat "config/section/key" dicts covering every searched key.
    """
    base = cfg.to_dict()
    points = []
    for point in cfg.search.points_to_evaluate:
        flat = {}
        for dotted in cfg.search.space:
            section, key = dotted.split(".", 1)
            flat[f"config/{section}/{key}"] = point.get(dotted, base[section][key])
        points.append(flat)
    return points


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


# --- Optuna's study on disk: --extend and search.warm_start ---


def optuna_storage(paths: StudyPaths):
    """The study's Optuna storage (sqlite optuna.db in its dir); None (in memory) on remote storage."""
    import optuna

    if is_remote(paths.root):
        log.info("Optuna's study stays in memory: %s is remote storage, where no sqlite file can live", paths.root)
        return None
    Path(paths.root).mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{paths.optuna}")


def earlier_results(paths: StudyPaths) -> list:
    """The results (ray.tune.Result) of the study's Tune runs before `paths` (tune/, tune_ext1/, ...
    up to paths.extension - 1), read from their saved state: no trainable, no Tuner."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    results = []
    for n in range(paths.extension):
        results.extend(ResultGrid(ExperimentAnalysis(paths.extended(n).tune)))
    return results


def optuna_trials(location: str) -> tuple[str, list]:
    """(study name, trials) of the Optuna study in the sqlite file `location` (one study per file)."""
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{location}")
    (name,) = optuna.study.get_all_study_names(storage)
    return name, optuna.load_study(study_name=name, storage=storage).trials


def warm_trials(cfg: Config) -> list:
    """The completed trials of the study that search.warm_start names, as this study's Optuna trials.

    Checked before Ray starts (study.preflight): the earlier study must have an optuna.db, rank by
    the same metric, and have searched the same keys. Its values are given this study's
    distributions; a trial with a value outside them is left out (logged).

    Raises:
        ConfigError naming what does not match.
    """
    import optuna

    source = StudyPaths.at(cfg.search.warm_start)
    where = f"search.warm_start={cfg.search.warm_start}"
    if is_remote(cfg.cluster.storage_path):
        raise ConfigError(f"{where}: this study is on remote storage, where its Optuna study stays in memory")
    if is_remote(source.root) or not exists(source.optuna):
        raise ConfigError(
            f"{where}: no Optuna study there ({source.optuna} not found; a study on local storage that "
            "searched something keeps one)"
        )
    if not cfg.search.space:
        raise ConfigError(f"{where}: this study searches nothing (search.space is empty)")
    text = read_text(source.config)
    theirs_ranked = metrics.ranked(loads(text, where=source.config)) if text is not None else metrics.ranked(cfg)
    if theirs_ranked != metrics.ranked(cfg):
        raise ConfigError(
            f"{where}: that study ranked trials by {theirs_ranked}, this one by {metrics.ranked(cfg)}: "
            "their values cannot be compared"
        )
    _, trials = optuna_trials(source.optuna)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    ours = OptunaSearch.convert_search_space({"config": search_space(cfg)})
    theirs = {k for t in done for k in t.params}
    if done and theirs != set(ours):
        raise ConfigError(
            f"{where}: that study searched {_dotted(theirs)}, this one searches {_dotted(ours)}: "
            "a warm start needs the same search.space keys"
        )
    copied, outside = [], 0
    for t in done:
        try:
            copied.append(optuna.trial.create_trial(value=t.value, params=t.params, distributions=ours))
        except ValueError:
            outside += 1
    if outside:
        log.warning("%s: %d of its %d trials lie outside this search.space, left out", where, outside, len(done))
    return copied


def _dotted(flat_keys) -> str:
    """OptunaSearch's "config/model/dropout" keys as the config writes them: "model.dropout, ..."."""
    return ", ".join(sorted(k.removeprefix("config/").replace("/", ".") for k in flat_keys))


def warm_start(cfg: Config, paths: StudyPaths) -> int:
    """Copy search.warm_start's trials (warm_trials) into this new study's Optuna storage; returns how many."""
    import optuna

    copied = warm_trials(cfg)
    study = optuna.create_study(
        storage=optuna_storage(paths),
        study_name=cfg.name,
        direction="maximize" if metrics.MODE == "max" else "minimize",
        load_if_exists=True,
    )
    study.add_trials(copied)
    log.info("warm start: %d trials of %s copied into this study's Optuna storage", len(copied), cfg.search.warm_start)
    return len(copied)
