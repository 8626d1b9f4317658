"""One study, start to finish, on the driver: preflight -> Tuner.fit() -> register the best model.

jobs/train.py (one trial, no search) and jobs/tune.py (the search) both come through here, so a
debug run and a study share one code path and one MLflow layout.
"""
from __future__ import annotations

import logging
from pathlib import Path

from fracture import data, manifest, search, tracking
from fracture.config import Config, ConfigError
from fracture.model import build_model

log = logging.getLogger(__name__)


def preflight(cfg: Config) -> None:
    """Everything a user can get wrong, checked before Ray starts or any worker runs.

    Raises ConfigError / DataError / WeightsError / TrackingError with a one-line message.
    """
    search.search_space(cfg)                 # unknown distributions / bad arguments: before Ray starts
    data.ensure_manifest(cfg)
    if cfg.model.weights not in ("none", ""):
        # Also warms the torchvision cache (TORCH_HOME) on this node, so workers never download.
        build_model(cfg.model)
    tracking.check_reachable(tracking.tracking_uri(cfg))


def check_cluster(cfg: Config) -> None:
    """Checks that need the running cluster: resources a trial needs, storage every node reaches."""
    import ray

    search.check_resources(cfg)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if "://" not in cfg.cluster.storage_path and not cfg.cluster.storage_shared and len(nodes) > 1:
        raise ConfigError(
            f"cluster.storage_path={cfg.cluster.storage_path} is local to this node, but the cluster has "
            f"{len(nodes)} nodes and Ray needs checkpoint storage they all reach: use s3://..., gs://... or "
            "a shared mount with cluster.storage_shared=true")


def run(cfg: Config, *, search_space: bool = True, resume: str | Path | None = None) -> dict:
    """Run (or resume) the study and register its best checkpoint; call preflight(cfg) first.

    Returns:
        the summary from tracking.register_best, plus "trials": per-trial final metrics.
    """
    resume = search.resume_path(resume) if resume else None   # a wrong --resume must not open MLflow runs
    check_cluster(cfg)
    study_dir = resume or search.study_path(cfg)
    uri, parent = tracking.start_study(cfg, study_dir, resume=bool(resume))
    try:
        summary = _fit_and_register(cfg, uri, parent, study_dir, resume=resume, search_space=search_space)
    except KeyboardInterrupt:
        tracking.end_study(uri, parent, "KILLED")
        raise
    except Exception:
        tracking.end_study(uri, parent, "FAILED")
        raise
    summary["tracking_uri"] = uri
    summary["study_dir"] = study_dir
    return summary


def _fit_and_register(cfg: Config, uri: str, parent: str, study_dir: str, *, resume: str | None,
                      search_space: bool) -> dict:
    report = list(manifest.report_paths(data.manifest_path(cfg)))
    tracking.log_data_report(uri, parent, report)
    if resume:
        tuner = search.restore_tuner(resume, cfg)   # its trial logger comes back with it, on this parent run
    else:
        tuner = search.build_tuner(cfg, callbacks=[tracking.trial_logger(cfg, uri, parent)], search=search_space)
    results = tuner.fit()
    # Ctrl-C / SIGINT: Tune saved the study and returned early; a partial study registers nothing.
    # (Tune marks every trial TERMINATED on the way out, but only a finished or stopped trial's
    # last result is `done`.)
    unfinished = [r for r in results if not r.error and not r.metrics.get("done")]
    if unfinished or len(results) < (cfg.search.num_trials if search_space else 1):
        raise KeyboardInterrupt(f"the study was saved; continue it with: python jobs/tune.py --resume {study_dir}")
    errors = [r for r in results if r.error]
    if len(errors) == len(results):
        raise RuntimeError(f"every trial failed; first error: {errors[0].error}")
    summary = tracking.register_best(results, cfg, uri, parent, report)
    summary["trials"] = [{"trial_id": r.metrics.get("trial_id"), "epochs": r.metrics.get("epoch", -1) + 1,
                          "val_auc": r.metrics.get("val_auc"), "error": bool(r.error)} for r in results]
    return summary


def print_summary(summary: dict) -> None:
    print("\n=== best trial ===")
    print(f"trial {summary['trial_id']}  epoch {summary['epoch']}  val_auc {summary['val_auc']:.4f}  "
          f"threshold {summary['threshold']:.3f}")
    for key, value in sorted(summary["params"].items()):
        print(f"  {key:24s} {value:.6g}" if isinstance(value, float) else f"  {key:24s} {value}")
    shown = ("val_sensitivity", "val_specificity", "val_auprc", "val_balanced_accuracy", "val_loss")
    print("  " + "  ".join(f"{k}={summary['metrics'][k]:.4f}" for k in shown if k in summary["metrics"]))
    flag = "now @champion" if summary["champion"] else f"champion kept (val_auc {summary['previous_champion_auc']:.4f})"
    print(f"registered model version {summary['version']} ({flag})")
    print(f"checkpoint: {summary['checkpoint']}")
    print(f"study dir:  {summary['study_dir']}   (resume: python jobs/tune.py --resume {summary['study_dir']})")
    uri = summary["tracking_uri"]
    print(f"MLflow:     mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite") else f"MLflow:     {uri}")
