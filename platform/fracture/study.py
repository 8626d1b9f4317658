"""One study, start to finish, on the driver: preflight -> Tuner.fit() -> register the best model.

jobs/train.py (one trial, no search) and jobs/tune.py (the search) both come through here, so a
debug run and a study share one code path and one MLflow layout.

`run` is the recipe, read top to bottom: paths -> datasets -> parent run -> tuner -> fit -> the best
checkpoint -> registry -> close; each step is a module that calls nothing above it. What a study's
directory permits (a new name, a --resume, an --extend) is fracture.resume's. An extension is a new
Tune run (tune_ext<N>/) whose sampler loads the study's Optuna storage, logged under the same parent
run, after which the champion rule runs again.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from fracture.core import metrics, redact, storage
from fracture.core.config import Config
from fracture.core.errors import StudyIncomplete
from fracture.core.storage import StudyPaths
from fracture.data import datareport, pipeline, split_audit
from fracture.evaluate import plots
from fracture.model.network import build_model
from fracture.resume import claim, save_config, save_record, study_record
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
        resume: the study to continue (see resume.resume_config for the cfg to pass with it).
        extend: the finished study to add cfg.search.num_trials trials to (resume.extend_config): its
            next tune_ext<N>/; the champion rule judges the new trials' best, the parent run's
            trials table and "trials" cover the whole study.
        verbose: also Tune's own console tables (fracture.tune.console prints a line per epoch either way).
    Returns:
        the summary from registration.register, plus "trials": per-trial final metrics.
    """
    if extend:
        first = StudyPaths.at(extend).extended(0)
        paths = first.extended(([first, *storage.extensions(first)])[-1].extension + 1)
    else:
        paths = StudyPaths.at(resume) if resume else StudyPaths.of(cfg)
    if resume:
        search.check_restorable(paths.tune, resume)  # a wrong --resume must not open MLflow runs
    cluster.check_cluster(cfg)
    optuna_store.fetch(paths, fresh=not (resume or extend))  # remote storage: the driver's sqlite copy
    if not resume or storage.read_text(paths.config) is None:
        save_config(cfg, paths)  # (a study from before configs were stored with it has one from now on)
    earlier = optuna_store.earlier_results(paths)  # an extension's: the trials of the study's runs before it
    _announce(cfg, paths, resume=bool(resume), search_space=search_space, earlier=len(earlier))
    split_findings = pipeline.audit_split(cfg)  # (again: run may be called without preflight; cached)
    datasets, pos_weight = _datasets(cfg), pipeline.pos_weight(cfg)
    report = list(datareport.paths(pipeline.manifest_path(cfg)))
    # A resumed or extended study reopens the parent run it recorded, by id: a name or a directory can be reused.
    again = bool(resume or extend)
    recorded = study_record(paths).get("parent_run_id") if again else None
    uri, parent = study_runs.start_study(cfg, paths.extended(0).tune, resume=again, parent_run_id=recorded)
    save_record(cfg, paths, parent)
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
        with optuna_store.stored(paths):  # however the run ends: --resume and --extend go on from it
            results = tuner.fit()
        _check_complete(results, cfg, paths, search_space=search_space)
        # The champion rule judges this run's best; the study's view (trials.csv, note) covers all its trials.
        chosen = registry.candidate(results, metrics.ranked(cfg))
        with tempfile.TemporaryDirectory(prefix="fracture-curves-") as tmp:
            summary = registration.register(cfg, uri, parent, chosen, report, curves=_curves(chosen, Path(tmp)))
        results = [*earlier, *results]
        study_runs.log_study_results(results, cfg, uri, parent, summary)
        study_runs.finish_study(uri, parent)
        save_record(cfg, paths, parent, finished=True)
    except (StudyIncomplete, KeyboardInterrupt):
        study_runs.end_study(uri, parent, "KILLED")
        raise
    except Exception:
        study_runs.end_study(uri, parent, "FAILED")
        raise
    return summary | {"trials": _trial_rows(results), "tracking_uri": uri, "study_dir": paths.tune}


def _datasets(cfg: Config) -> dict:
    """The trials' datasets; on a cluster of several nodes a one-worker trial reads the decoded cache where it runs."""
    return pipeline.build_datasets(cfg, read_in_trial=cfg.cluster.in_trial and cluster.spans_nodes())


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
