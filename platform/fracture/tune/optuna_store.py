"""Optuna's study on disk: what `--extend` continues and `search.warm_start` seeds.

Optuna's study lives in the study dir (`optuna.db`, sqlite), not only inside the pickled searcher:
`--extend` builds a new Tuner whose OptunaSearch loads it (create_study(load_if_exists=True)), so
the sampler conditions on every earlier trial, and `search.warm_start` seeds a new study's storage
with another study's trials. sqlite needs a file on this disk, so on remote storage (s3://...) the
driver, the only writer, works on a local copy (StudyPaths.optuna_local): `fetch` makes it the
study's before a Tune run, `stored` copies it back beside the study when the run ends, finished or not.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from ray.tune.search.optuna import OptunaSearch

from fracture.core import metrics
from fracture.core.config import Config, ConfigError, loads
from fracture.core.storage import StudyPaths, download_file, exists, is_remote, local_copy, read_text, upload_file
from fracture.tune.space import search_space

log = logging.getLogger(__name__)


def optuna_storage(paths: StudyPaths):
    """The study's Optuna storage: sqlite, its optuna.db (on remote storage, the driver's copy of it)."""
    import optuna

    local = paths.optuna_local
    local.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{local}")


def fetch(paths: StudyPaths, *, fresh: bool) -> None:
    """Before a Tune run on remote storage: make the driver's copy of optuna.db the study's.

    Args:
        fresh: a new study, which starts with none: a copy left by an earlier study of the same
            name (in another bucket, or one --overwrite removed) would otherwise be loaded by
            create_study(load_if_exists=True). Otherwise (--resume, --extend) the stored one, so a
            study goes on from another machine too; a study that stored none yet (its driver was
            killed before its first Tune run ended) keeps this driver's copy, if there is one.
    """
    if not is_remote(paths.root):
        return
    local = paths.optuna_local
    if fresh:
        local.unlink(missing_ok=True)
    elif download_file(paths.optuna, local):
        log.info("Optuna's study: %s copied to %s", paths.optuna, local)


@contextlib.contextmanager
def stored(paths: StudyPaths) -> Iterator[None]:
    """Around a Tune run on remote storage: when it ends (finished, interrupted or failed), the
    driver's copy of optuna.db goes back beside the study, where --extend, search.warm_start and a
    --resume find it."""
    try:
        yield
    finally:
        local = paths.optuna_local
        if is_remote(paths.root) and local.is_file():
            upload_file(local, paths.optuna)
            log.info("Optuna's study: %s copied to %s", local, paths.optuna)


def earlier_results(paths: StudyPaths) -> list:
    """The results (ray.tune.Result) of the study's Tune runs before `paths` (tune/, tune_ext1/, ...
    up to paths.extension - 1), read from their saved state: no trainable, no Tuner."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    results = []
    for n in range(paths.extension):
        results.extend(ResultGrid(ExperimentAnalysis(paths.extended(n).tune)))
    return results


def optuna_trials(location: str | Path) -> tuple[str, list]:
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
    if not exists(source.optuna):
        raise ConfigError(
            f"{where}: no Optuna study there ({source.optuna} not found; a study that searched something keeps one)"
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
    with local_copy(source.optuna) as location:  # sqlite reads a file on this disk
        _, trials = optuna_trials(location)
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
