"""One study, start to finish, on the driver: preflight -> Tuner.fit() -> register the best model.

jobs/train.py (one trial, no search) and jobs/tune.py (the search) both come through here, so a
debug run and a study share one code path and one MLflow layout.

A study stores its resolved config beside its Tune experiment (`<storage>/<name>/config.yaml`), so
`jobs/tune.py --resume DIR` needs nothing else to continue it (resume_config). A finished study can
be extended (`--extend DIR`, extend_config): a new Tune run (tune_ext<N>/) whose sampler loads the
study's Optuna storage, logged under the same parent run, after which the champion rule runs again.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml

from fracture.core import metrics, redact, storage
from fracture.core.config import Config, ConfigError, flat, load, loads
from fracture.core.errors import StudyIncomplete
from fracture.core.storage import StudyPaths
from fracture.data import datareport, pipeline, provenance, split_audit
from fracture.evaluate import plots
from fracture.model.network import build_model
from fracture.runtime import cluster
from fracture.track import registration, registry, store, study_runs, tags, trial_logger
from fracture.tune import optuna_store, search, space

log = logging.getLogger(__name__)


def preflight(cfg: Config, *, resume: str | Path | None = None, overwrite: bool = False) -> None:
    """Everything a user can get wrong, checked before Ray starts or any worker runs.

    A new study (no `resume`) must not land on another study of the same name (see claim).

    Raises ConfigError / DataError / WeightsError / TrackingError with a one-line message.
    """
    space.search_space(cfg)  # unknown distributions / bad arguments: before Ray starts
    pipeline.ensure_manifest(cfg)
    pipeline.audit_split(cfg)  # a leaky or unjudgeable split: refused before Ray starts
    if not resume:
        claim(cfg, overwrite=overwrite)
        if cfg.search.warm_start:
            optuna_store.warm_trials(cfg)  # a study to warm-start from that is missing or searched other keys
    if cfg.model.weights not in ("none", ""):
        # Also warms the torchvision cache (TORCH_HOME) on this node, so workers never download.
        build_model(cfg.model)
    store.check_reachable(store.tracking_uri(cfg))  # a server answers; an existing sqlite store opens


def _data_fingerprint(cfg: Config) -> dict:
    recorded = provenance.recorded_provenance(pipeline.manifest_path(cfg)) or {}
    return {
        "root": recorded.get("root", str(Path(cfg.data.root).expanduser().resolve())),
        "images": recorded.get("images"),
    }


def claim(cfg: Config, *, overwrite: bool = False) -> None:
    """Make sure a new study does not mix with an earlier study stored under the same name.

    Tune would add the new trials to the old experiment and MLflow would file them under a parent
    run of the same name, so the earlier study's dir is refused, whatever its config (the same
    config may still be another study: other data, or just a rerun that would mix the results).
    --overwrite removes the earlier study's Tune and Train runs and starts afresh.

    Raises:
        ConfigError naming --resume, another name= and --overwrite.
    """
    paths = StudyPaths.of(cfg)
    base = paths.root
    parts = [*paths.parts, *(part for ext in storage.extensions(paths) for part in (ext.tune, ext.config))]
    if not any(storage.exists(part) for part in parts):
        return
    if overwrite:
        for part in parts:
            storage.remove(part)
        log.info("--overwrite: removed the earlier study %s in %s", cfg.name, base)
        return
    why = _difference(cfg, paths)
    raise ConfigError(
        f"a study named {cfg.name} already exists in {base}{f' ({why})' if why else ''}: continue it with "
        f"`python jobs/tune.py --resume {base}`, start another with name=<new name>, or replace it with --overwrite"
    )


def _difference(cfg: Config, paths: StudyPaths) -> str:
    """What the stored study was made from that this one is not ("" when nothing differs or nothing was stored)."""
    text = storage.read_text(paths.config)
    if text is not None:
        try:
            ours, theirs = flat(loads(text, where=paths.config).to_dict()), flat(cfg.to_dict())
        except ConfigError:
            return "its config.yaml no longer loads"
        differ = [f"{k}={ours[k]}" for k in ours if ours[k] != theirs.get(k)]
        if differ:
            return "made with " + ", ".join(differ[:4]) + (f" and {len(differ) - 4} more" if len(differ) > 4 else "")
    stored = storage.read_text(paths.record)
    if stored is not None:
        made_from, now = json.loads(stored).get("data", {}), _data_fingerprint(cfg)
        if made_from.get("root") != now["root"]:
            return f"made from the images in {made_from.get('root')}"
        if made_from.get("images") != now["images"]:
            return f"made from another image list in {now['root']}"
    return ""


def study_record(paths: StudyPaths) -> dict:
    """The study's study.json ({} for a study from before it had one)."""
    text = storage.read_text(paths.record)
    return json.loads(text) if text else {}


def _save_record(cfg: Config, paths: StudyPaths, parent_run_id: str, *, finished: bool = False) -> None:
    # finished: its last Tune run (first or an extension) ended and registered; what --extend asks
    record = {"name": cfg.name, "parent_run_id": parent_run_id, "data": _data_fingerprint(cfg), "finished": finished}
    storage.write_text(paths.record, json.dumps(record, indent=2) + "\n")


def save_config(cfg: Config, paths: StudyPaths | None = None) -> str:
    """Write the resolved config into the study's dir (default: cfg's own); returns where."""
    location = (paths or StudyPaths.of(cfg)).config
    storage.write_text(location, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return location


def resume_config(
    study: str | Path, *, config: str | Path | None = None, overrides: Sequence[str] = ()
) -> Config | None:
    """The config to continue the study in `study` with: the one stored with it.

    A resumed study keeps its config: its trials carry theirs in Tune's saved state, and ASHA and
    the searcher were built for it. So --config and overrides given with --resume may repeat what
    the study was started with (the original command plus --resume works), but one that would
    change it is refused. Overrides alone apply to the stored config; with --config, that file
    and the overrides must give the stored config.

    Args:
        study: what --resume names (the study's dir or its tune/ subdir).
        config, overrides: the command line's --config and section.key=value overrides.
    Returns:
        The stored config; None for a study saved before configs were stored with it (then the
        command line's config is all there is).
    Raises:
        ConfigError naming each key the command line would change.
    """
    location = StudyPaths.at(study).config
    text = storage.read_text(location)
    if text is None:
        if not (config or overrides):
            log.warning(
                "%s not found (a study from before configs were stored with it): resuming with the "
                "default study's config; pass the study's --config and overrides if it had others",
                location,
            )
        return None
    stored = loads(text, where=location)
    given = _given(text, location, config, overrides)
    differ = _changes(stored, given)
    if differ:
        raise ConfigError(
            f"--resume {study}: a resumed study keeps the config it was started with ({location}), "
            f"but the command line changes {'; '.join(differ)}: drop those to continue the study, "
            "or start a new one with another name="
        )
    return stored


def _given(text: str, location: str, config: str | Path | None, overrides: Sequence[str]) -> Config:
    """The config the command line gives: --config and overrides, or overrides on the stored one."""
    if config:
        return load(config, overrides)
    return loads(text, overrides, where=location)


def _changes(stored: Config, given: Config, allowed: Sequence[str] = ()) -> list[str]:
    """Each key outside `allowed` where the two differ, as "key=given (the study has stored)"."""
    ours, theirs = flat(stored.to_dict()), flat(given.to_dict())
    return [f"{k}={theirs[k]!r} (the study has {ours[k]!r})" for k in ours if ours[k] != theirs[k] and k not in allowed]


# What an extension may set anew: how many more trials, and how they run. The rest (space, epochs,
# data, objective) is what the earlier trials were measured with, which the sampler compares to.
EXTENDABLE = ("search.num_trials", "search.max_concurrent", "cluster.max_failures")


def extend_config(study: str | Path, *, config: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """The config of a finished study's next extension: its config.yaml with the command line's
    overrides (`search.num_trials=8`: 8 more trials), which may change EXTENDABLE keys only.

    Raises:
        ConfigError: the study cannot be extended (check_extendable), or an override changes another key.
    """
    paths = StudyPaths.at(study).extended(0)
    check_extendable(paths, study)
    text = storage.read_text(paths.config)
    given = _given(text, paths.config, config, overrides)
    differ = _changes(loads(text, where=paths.config), given, allowed=EXTENDABLE)
    if differ:
        raise ConfigError(
            f"--extend {study}: an extension keeps the study's config ({paths.config}) but for "
            f"{', '.join(EXTENDABLE)}, and the command line changes {'; '.join(differ)}: drop those, "
            "or start a new study with another name= (search.warm_start= can seed it with these trials)"
        )
    return given


def check_extendable(paths: StudyPaths, named: str | Path) -> None:
    """Refuse `--extend named` unless it is a finished study on local storage with its Optuna storage.

    Raises:
        ConfigError saying which, and what to do instead.
    """
    where = f"--extend {named}"
    if storage.is_remote(paths.root):
        raise ConfigError(
            f"{where}: a study on remote storage keeps its Optuna study in memory (sqlite needs a local "
            "file), so no new run can go on from its trials; start a new study instead"
        )
    if storage.read_text(paths.config) is None:
        raise ConfigError(f"{where}: no study there ({paths.config} not found)")
    if not storage.exists(paths.optuna):
        raise ConfigError(
            f"{where}: the study has no Optuna storage ({paths.optuna} not found: it ran before studies "
            "kept one, or searched nothing), so no sampler can go on from its trials"
        )
    if not study_record(paths).get("finished"):
        last = ([paths, *storage.extensions(paths)])[-1]
        raise ConfigError(
            f"{where}: the study has not finished; continue it first with `python jobs/tune.py --resume {last.tune}`"
        )


def run(
    cfg: Config,
    *,
    search_space: bool = True,
    resume: str | Path | None = None,
    extend: str | Path | None = None,
    verbose: bool = False,
) -> dict:
    """Run (or resume, or extend) the study and register its best checkpoint; call preflight(cfg) first.

    Args:
        resume: the study to continue (see resume_config for the cfg to pass with it).
        extend: the finished study to add cfg.search.num_trials trials to (see extend_config): its
            next tune_ext<N>/; the champion rule judges the new trials' best, the parent run's
            trials table and "trials" cover the whole study.
        verbose: also Tune's own console tables (fracture.tune.console prints a line per epoch either way).
    Returns:
        the summary from tracking.register, plus "trials": per-trial final metrics.
    """
    if extend:
        first = StudyPaths.at(extend).extended(0)
        paths = first.extended(([first, *storage.extensions(first)])[-1].extension + 1)
    else:
        paths = StudyPaths.at(resume) if resume else StudyPaths.of(cfg)
    if resume:
        search.check_restorable(paths.tune, resume)  # a wrong --resume must not open MLflow runs
    cluster.check_cluster(cfg)
    if not resume or storage.read_text(paths.config) is None:
        save_config(cfg, paths)  # (a study from before configs were stored with it has one from now on)
    earlier = optuna_store.earlier_results(paths)  # an extension's: the trials of the study's runs before it
    _announce(cfg, paths, resume=bool(resume), search_space=search_space, earlier=len(earlier))
    split_findings = pipeline.audit_split(cfg)  # (again: run may be called without preflight; cached)
    datasets, pos_weight = pipeline.build_datasets(cfg), pipeline.pos_weight(cfg)
    report = list(datareport.paths(pipeline.manifest_path(cfg)))
    # A resumed or extended study reopens the parent run it recorded, by id: a name or a directory can be reused.
    again = bool(resume or extend)
    recorded = study_record(paths).get("parent_run_id") if again else None
    uri, parent = study_runs.start_study(cfg, paths.extended(0).tune, resume=again, parent_run_id=recorded)
    _save_record(cfg, paths, parent)
    try:
        study_runs.log_data_report(uri, parent, report)
        study_runs.log_split_audit(
            uri, parent, [f.as_dict() for f in split_findings], split_audit.summary(split_findings)
        )
        if resume:  # its trial logger comes back with the saved study, on this parent run
            tuner = search.restore_tuner(cfg, paths.tune, datasets, pos_weight, verbose=verbose)
        else:
            if search_space and cfg.search.warm_start and not extend:
                optuna_store.warm_start(cfg, paths)
            logger = trial_logger.trial_logger(cfg, uri, parent, resume_at=paths.tune if extend else "")
            tuner = search.build_tuner(
                cfg,
                datasets,
                pos_weight,
                callbacks=[logger],
                search=search_space,
                verbose=verbose,
                paths=paths,
                earlier=len(earlier),
            )
        results = tuner.fit()
        _check_complete(results, cfg, paths, search_space=search_space)
        # The champion rule judges this run's best; the study's view (trials.csv, note) covers all its trials.
        chosen = registry.candidate(results, metrics.ranked(cfg))
        with tempfile.TemporaryDirectory(prefix="fracture-curves-") as tmp:
            summary = registration.register(cfg, uri, parent, chosen, report, curves=_curves(chosen, Path(tmp)))
        results = [*earlier, *results]
        study_runs.log_study_results(results, cfg, uri, parent, summary)
        study_runs.finish_study(uri, parent)
        _save_record(cfg, paths, parent, finished=True)
    except (StudyIncomplete, KeyboardInterrupt):
        study_runs.end_study(uri, parent, "KILLED")
        raise
    except Exception:
        study_runs.end_study(uri, parent, "FAILED")
        raise
    return summary | {"trials": _trial_rows(results), "tracking_uri": uri, "study_dir": paths.tune}


def _curves(chosen: registry.Candidate, directory: Path) -> Path | None:
    """The registered trial's learning curves as one picture, the registered epoch marked.

    The run charts each metric on its own; this one puts train and val loss on one axis, which is
    where a model that does not learn (a flat train loss) or overfits shows first.
    """
    if not chosen.curves_history:
        return None
    return plots.save_training_curves(chosen.curves_history, directory / tags.CURVES_FILE, chosen_epoch=chosen.epoch)


def _check_complete(results, cfg: Config, paths: StudyPaths, *, search_space: bool) -> None:
    """Raise StudyIncomplete when Tune returned early (Ctrl-C / SIGINT: it saved the study first), and
    RuntimeError when every trial failed; a partial study registers nothing.

    Tune marks every trial TERMINATED on the way out, but only a finished or stopped trial's last
    result is `done`.
    """
    unfinished = [r for r in results if not r.error and not r.metrics.get("done")]
    if unfinished or len(results) < (cfg.search.num_trials if search_space else 1):
        raise StudyIncomplete(f"the study was saved; continue it with: python jobs/tune.py --resume {paths.tune}")
    errors = [r for r in results if r.error]
    if len(errors) == len(results):
        raise RuntimeError(f"every trial failed; first error: {errors[0].error}")


def _trial_rows(results) -> list[dict]:
    return [
        {
            "trial_id": r.metrics.get("trial_id"),
            "epochs": r.metrics.get("epoch", -1) + 1,
            "val_auc": r.metrics.get("val_auc"),
            "error": bool(r.error),
        }
        for r in results
    ]


def _announce(cfg: Config, paths: StudyPaths, *, resume: bool, search_space: bool, earlier: int = 0) -> None:
    if resume:
        log.info("resuming study %s in %s", cfg.name, paths.tune)
        return
    if earlier:
        log.info(
            "extending study %s: %d more trials after its %d, in %s",
            cfg.name,
            cfg.search.num_trials,
            earlier,
            paths.tune,
        )
        return
    trials = cfg.search.num_trials if search_space else 1
    how = f", searching {', '.join(cfg.search.space)}" if search_space and cfg.search.space else ""
    log.info(
        "study %s: %d trial%s x %d epochs%s; files in %s",
        cfg.name,
        trials,
        "s" * (trials != 1),
        cfg.train.epochs,
        how,
        paths.root,
    )


def print_summary(summary: dict) -> None:
    print("\n=== best trial ===")
    print(
        f"trial {summary['trial_id']}  epoch {summary['epoch']}  val_auc {summary['val_auc']:.4f}  "
        f"threshold {summary['threshold']:.3f}"
    )
    print(
        f"  {summary['objective']} {summary['point']:.4f}  95% lower bound {summary['lower']:.4f}  "
        f"(ranked by {summary['ranked_by']})"
    )
    for key, value in sorted(summary["params"].items()):
        print(f"  {key:24s} {value:.6g}" if isinstance(value, float) else f"  {key:24s} {value}")
    shown = ("val_sensitivity", "val_specificity", "val_auprc", "val_balanced_accuracy", "val_loss")
    print("  " + "  ".join(f"{k}={summary['metrics'][k]:.4f}" for k in shown if k in summary["metrics"]))
    if summary["champion"]:
        flag = "now @champion"
    else:
        flag = f"champion kept ({summary['ranked_by']} {summary['previous_champion_score']:.4f})"
    print(f"registered model version {summary['version']} ({flag})")
    print(f"checkpoint: {summary['checkpoint']}")
    print(f"study dir:  {summary['study_dir']}   (resume: python jobs/tune.py --resume {summary['study_dir']})")
    uri = redact.redact(summary["tracking_uri"])
    route = summary.get("ui_route", "")  # MLflow 3.17 opens experiments on GenAI pages without its query
    if uri.startswith("sqlite"):
        print(f"MLflow:     mlflow ui --backend-store-uri {uri}   then open http://127.0.0.1:5000{route}")
    else:
        print(f"MLflow:     {uri.rstrip('/')}{route}")
