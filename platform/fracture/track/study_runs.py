"""The runs a study or an evaluation logs, from the driver: the study's parent run (its data report,
split audit, trials table and Optuna's plots, its end), an evaluation's run, and finding runs by tag.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from fracture.core import metrics
from fracture.core.config import Config
from fracture.core.redact import redact_config
from fracture.track import store
from fracture.track.store import check_reachable, mlflow_timeout_s, tracking_uri
from fracture.track.tags import (
    CUSTOM_MODEL_KIND,
    EXPERIMENT_KIND_TAG,
    RUN_NOTE_TAG,
    SPLIT_AUDIT_TAG,
    STUDY_ARTIFACT,
    STUDY_DIR_TAG,
    STUDY_TAG,
    TRIAL_TAG,
)
from fracture.tune import trials

log = logging.getLogger(__name__)


def start_study(
    cfg: Config, study_dir: str, *, resume: bool = False, parent_run_id: str | None = None
) -> tuple[str, str]:
    """Create the experiment (before trials start: sqlite dislikes concurrent first writes) and a parent run.

    A resumed study reopens the parent run of its first invocation, so one study is one parent run
    however often it was interrupted; the resumed trials' logger, which Tune restores with the
    study, still points at it. That run is `parent_run_id` (the id the study recorded); only a
    study from before studies recorded it is looked up by its directory.

    Returns:
        (tracking uri, parent run id)
    """
    uri = tracking_uri(cfg)
    check_reachable(uri)
    client = store.client(uri)
    experiment_id = ensure_experiment(client, cfg, uri)
    if resume and parent_run_id:
        store.retry(client.update_run, parent_run_id, status="RUNNING")
        return uri, parent_run_id
    first = _run_tagged(client, experiment_id, STUDY_DIR_TAG, study_dir, newest=False) if resume else None
    if first:
        store.retry(client.update_run, first, status="RUNNING")
        return uri, first
    run = store.retry(
        client.create_run, experiment_id, run_name=cfg.name, tags={STUDY_TAG: cfg.name, STUDY_DIR_TAG: study_dir}
    )
    store.retry(client.log_batch, run.info.run_id, params=mlflow_params(trials.study_params(cfg)))
    store.retry(client.log_dict, run.info.run_id, redact_config(cfg.to_dict()), "config.json")
    return uri, run.info.run_id


def finish_study(uri: str, parent_run_id: str) -> None:
    """Close a study's parent run that finished (registered its model and logged its results)."""
    store.retry(store.client(uri).set_terminated, parent_run_id, "FINISHED")


def end_study(uri: str, parent_run_id: str, status: str) -> None:
    """Close a study's parent run that did not finish: KILLED when interrupted (it can be resumed), else FAILED.

    Best effort: it runs while another error is on its way to the user, which must not be masked,
    nor delayed by a full wait on a server that already failed to answer.
    """
    try:
        store.retry(store.client(uri).set_terminated, parent_run_id, status, within_s=min(5.0, mlflow_timeout_s()))
    except Exception as exc:
        log.warning("could not mark MLflow run %s %s: %s", parent_run_id, status, store.first_line(exc))


def log_data_report(uri: str, run_id: str, report_files: list[Path]) -> None:
    """Attach the data report (manifest audit: JSON + Markdown) to a run."""
    for path in report_files:
        if Path(path).is_file():
            store.retry(store.client(uri).log_artifact, run_id, str(path), "data")


def log_split_audit(uri: str, run_id: str, findings: list[dict], summary: str) -> None:
    """Record the split audit on the study's parent run: tag "clean", or "overridden: <summary>" when
    data.allow_leaky_split let a study run on a split that failed it, and data/split_audit.json.

    Args:
        findings: split_audit.Finding.as_dict() of each finding ([] when clean).
        summary: split_audit.summary of them.
    """
    client = store.client(uri)
    store.retry(client.set_tag, run_id, SPLIT_AUDIT_TAG, f"overridden: {summary}"[:5000] if findings else "clean")
    store.retry(client.log_dict, run_id, {"overridden": bool(findings), "findings": findings}, "data/split_audit.json")


def mlflow_params(params: dict[str, Any]):
    from mlflow.entities import Param

    return [Param(k, str(v)[:500]) for k, v in params.items()]


def log_study_results(results, cfg: Config, uri: str, parent_run_id: str, summary: dict):
    """Attach the whole study to its parent run: trials.csv and Optuna's plots under `study/`, and a
    description saying how the study went and what it registered.

    Args:
        results: the study's Tune results (tuner.fit()'s ResultGrid; an extended study's earlier ones too).
        summary: what register returned.
    Returns:
        the trials table (trials.trials_table) that went into trials.csv.
    """
    client = store.client(uri)
    runs = store.retry(
        client.search_runs,
        [ensure_experiment(client, cfg, uri)],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        max_results=10000,
    )
    run_ids = {r.data.tags[TRIAL_TAG]: r.info.run_id for r in runs if TRIAL_TAG in r.data.tags}
    table = trials.trials_table(results, cfg, run_ids)
    with tempfile.TemporaryDirectory(prefix="fracture-study-") as tmp:
        table.to_csv(Path(tmp) / "trials.csv", index=False)
        try:
            trials.optuna_plots(trials.optuna_study(table, cfg), Path(tmp))
        except Exception as exc:  # the plots are a view of a study already registered: never fail it
            log.warning("Optuna plots of study %s skipped: %s", cfg.name, exc)
        store.retry(client.log_artifacts, parent_run_id, tmp, STUDY_ARTIFACT)
    store.retry(
        client.set_tag, parent_run_id, RUN_NOTE_TAG, trials.study_note(summary, table, artifact_dir=STUDY_ARTIFACT)
    )
    # The parent run has no per-epoch history, so one point here charts nothing out of step.
    store.retry(client.log_metric, parent_run_id, metrics.best(cfg), summary["score"])
    return table


def find_trial_run(client, experiment_id: str, trial_id: str) -> str | None:
    return _run_tagged(client, experiment_id, TRIAL_TAG, trial_id, newest=True)


def _run_tagged(client, experiment_id: str, tag: str, value: str, *, newest: bool) -> str | None:
    """The id of the newest (or first) run in the experiment with tag=value; None when there is none."""
    runs = store.retry(
        client.search_runs,
        [experiment_id],
        filter_string=f"tags.`{tag}` = '{value}'",
        order_by=[f"attributes.start_time {'DESC' if newest else 'ASC'}"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def _safe_name(key: str) -> str:
    """MLflow names allow alphanumerics and `_-. /` only: "view.frontal+lateral" -> "view.frontal_lateral"."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "_-. /") else "_" for c in key)


def ensure_experiment(client, cfg: Config, uri: str) -> str:
    """The study's experiment, created on first use; an embedded store keeps artifacts beside it."""
    from mlflow.exceptions import MlflowException

    experiment = store.retry(client.get_experiment_by_name, cfg.tracking.experiment)
    if experiment is None:
        location = (cfg.run_dir / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
        try:
            return store.retry(
                client.create_experiment,
                cfg.tracking.experiment,
                artifact_location=location,
                tags={EXPERIMENT_KIND_TAG: CUSTOM_MODEL_KIND},
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            # Another job on this store created it since we looked.
            experiment = store.retry(client.get_experiment_by_name, cfg.tracking.experiment)
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # made before the tag was set, or by someone else
        store.retry(client.set_experiment_tag, experiment.experiment_id, EXPERIMENT_KIND_TAG, CUSTOM_MODEL_KIND)
    return experiment.experiment_id


def log_evaluation(
    cfg: Config,
    name: str,
    values: dict[str, float],
    files: list[Path],
    *,
    base_dir: Path | None = None,
    params: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """One finished MLflow run in the study's experiment holding an evaluation's metrics and files.

    Args:
        name: the run name, e.g. "evaluate-test".
        values: flat {metric: number}; names are made MLflow-safe ("+" -> "_"), non-finite values skipped.
        files: artifacts to attach; those under `base_dir` keep their sub-folder (e.g. gradcam/).
        params, tags: extra run params (e.g. the model source) and tags.
    Returns:
        The run id.
    """
    from mlflow.entities import Metric

    uri = tracking_uri(cfg)
    check_reachable(uri)
    client = store.client(uri)
    run = store.retry(
        client.create_run,
        ensure_experiment(client, cfg, uri),
        run_name=name,
        tags={STUDY_TAG: cfg.name, **(tags or {})},
    )
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        batch = [
            Metric(_safe_name(k), float(v), now, 0)
            for k, v in values.items()
            if isinstance(v, (int, float)) and math.isfinite(float(v))
        ]
        for start in range(0, len(batch), 1000):  # MLflow takes at most 1000 metrics per batch
            store.retry(client.log_batch, run_id, metrics=batch[start : start + 1000])
        if params:
            store.retry(client.log_batch, run_id, params=mlflow_params({_safe_name(k): v for k, v in params.items()}))
        for path in map(Path, files):
            sub = None
            if base_dir is not None and path.parent != Path(base_dir) and path.is_relative_to(base_dir):
                sub = str(path.parent.relative_to(base_dir))
            store.retry(client.log_artifact, run_id, str(path), sub)
    except Exception:
        store.retry(client.set_terminated, run_id, "FAILED")
        raise
    store.retry(client.set_terminated, run_id, "FINISHED")
    return run_id
