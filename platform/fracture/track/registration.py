"""Registering a study's chosen checkpoint: its files and tags on its trial run, the model version, @champion.

What to register and when the champion moves is fracture.track.registry's decision, made without
MLflow; this module does the logging, and downloads the champion's checkpoint for scoring.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fracture.core import metrics, storage
from fracture.core.config import Config
from fracture.core.redact import redact
from fracture.track import flavor, registry, store, study_runs
from fracture.track.registry import CHAMPION, Candidate
from fracture.track.store import TrackingError, mlflow_timeout_s
from fracture.track.study_runs import log_data_report
from fracture.track.tags import (
    CHECKPOINT_ARTIFACT,
    REGISTERED_TAG,
    REGISTERED_URI_TAG,
    SELECTED_AUC_TAG,
    SELECTED_EPOCH_TAG,
    STUDY_DIR_TAG,
    ui_route,
)


def _champion_score(client, name: str, metric: str = metrics.PRIMARY) -> float | None:
    """The champion's value of `metric` (metrics.ranked), from its version tag (registry.version_tags)."""
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # no registered model or no alias yet
        return None
    if metric in version.tags:
        return float(version.tags[metric])
    # Versions registered before the version tag existed kept their best on their run only. One
    # registered under another objective has neither: None, so the new version takes the alias.
    return client.get_run(version.run_id).data.metrics.get("best_" + metric)


def register(
    cfg: Config,
    uri: str,
    parent_run_id: str,
    chosen: Candidate,
    data_report: list[Path] = (),
    *,
    curves: Path | None = None,
) -> dict:
    """Log the study's chosen checkpoint to its trial's run, register it, and move @champion if it wins.

    Args:
        chosen: registry.candidate(results), the checkpoint the study picked.
        data_report: the data report's files, attached to the trial run beside the checkpoint.
        curves: the trial's learning curves as a picture (CURVES_FILE), logged on its run too.
    Returns:
        summary dict: registry.summary's keys (trial_id, run_id, checkpoint, epoch, val_auc, threshold,
        image_size, params, metrics, study, ...) plus version, model_uri, ui_route, champion (bool) and
        previous_champion_score (the champion's value of summary["ranked_by"]).
    """
    client = store.client(uri)
    experiment_id = study_runs.ensure_experiment(client, cfg, uri)
    parent = store.retry(client.get_run, parent_run_id)
    summary = registry.summary(
        cfg,
        chosen,
        run_id=study_runs.find_trial_run(client, experiment_id, chosen.trial_id) or parent_run_id,
        parent_run_id=parent_run_id,
        study_dir=parent.data.tags.get(STUDY_DIR_TAG, ""),
    )
    _log_checkpoint(client, uri, summary, list(data_report))
    if curves is not None:
        store.retry(client.log_artifact, summary["run_id"], str(curves))
    summary["version"] = flavor.log_model(uri, cfg, chosen.net, summary)
    summary["model_uri"] = f"models:/{cfg.tracking.model_name}/{summary['version']}"
    summary["ui_route"] = ui_route(experiment_id)
    summary |= _promote(client, cfg, summary["version"], summary["score"])
    store.retry(
        client.update_model_version,
        cfg.tracking.model_name,
        summary["version"],
        description=registry.version_description(summary),
    )
    _link_version(client, cfg, summary, [summary["run_id"], parent_run_id])
    return summary


def champion_runs(uri: str, experiment: str, name: str = "fracture", alias: str = CHAMPION) -> dict[str, str]:
    """Where `models:/<name>@<alias>` came from: experiment_id, version, trial_run_id, study_run_id."""
    client = store.client(uri)
    version = store.retry(client.get_model_version_by_alias, name, alias)
    trial = store.retry(client.get_run, version.run_id)
    found = store.retry(client.get_experiment_by_name, experiment)
    return {
        "experiment_id": found.experiment_id if found else trial.info.experiment_id,
        "version": str(version.version),
        "trial_run_id": trial.info.run_id,
        "study_run_id": trial.data.tags.get("mlflow.parentRunId", trial.info.run_id),
    }


def _log_checkpoint(client, uri: str, summary: dict, data_report: list[Path]) -> None:
    """The trial run keeps our checkpoint files (what champion_checkpoint downloads) and which epoch they are.

    Tags, not metrics: a metric the run already charts per epoch (best_val_auc) logged again at
    another step makes its chart zig-zag.
    """
    from mlflow.entities import RunTag

    run_id = summary["run_id"]
    with storage.local_dir(summary["checkpoint"]) as files:  # MLflow logs files on this disk, not a URI's
        store.retry(client.log_artifacts, run_id, str(files), CHECKPOINT_ARTIFACT)
    store.retry(
        client.log_batch,
        run_id,
        tags=[
            RunTag("threshold", f"{summary['threshold']:.6f}"),
            RunTag(SELECTED_EPOCH_TAG, str(summary["epoch"])),
            RunTag(SELECTED_AUC_TAG, f"{summary['val_auc']:.6f}"),
        ],
    )
    log_data_report(uri, run_id, data_report)


def _promote(client, cfg: Config, version: str, score: float) -> dict:
    """Move @champion to `version` when registry.wins says so."""
    current = _champion_score(client, cfg.tracking.model_name, metrics.ranked(cfg))
    promote = registry.wins(score, current)
    if promote:
        store.retry(client.set_registered_model_alias, cfg.tracking.model_name, CHAMPION, version)
    return {"champion": promote, "previous_champion_score": current}


def _link_version(client, cfg: Config, summary: dict, run_ids: list[str]) -> None:
    """Runs name the version registered from them: the UI links a version to its run, not back."""
    name = cfg.tracking.model_name
    for run_id in dict.fromkeys(run_ids):
        store.retry(client.set_tag, run_id, REGISTERED_TAG, f"{name}/{summary['version']}")
        store.retry(client.set_tag, run_id, REGISTERED_URI_TAG, summary["model_uri"])
    model = store.retry(client.get_registered_model, name)
    if not model.description:
        store.retry(client.update_registered_model, name, description=registry.model_description(name))


def champion_checkpoint(uri: str, name: str = "fracture", alias: str = CHAMPION) -> tuple[Path, str]:
    """Download the checkpoint files of `models:/<name>@<alias>`: (local directory, model version).

    Raises:
        TrackingError when the registry has no such model or alias, or the version has no checkpoint.
    """
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    client = store.client(uri)
    try:
        version = store.retry(client.get_model_version_by_alias, name, alias)
        with store.http_bounds(mlflow_timeout_s()):  # not MLflow's minutes of retries per file
            local = download_artifacts(
                run_id=version.run_id,
                artifact_path=CHECKPOINT_ARTIFACT,
                dst_path=tempfile.mkdtemp(prefix="fracture-champion-"),
                tracking_uri=uri,
            )
    except MlflowException as exc:
        raise TrackingError(
            f"models:/{name}@{alias} is not available in {redact(uri)} "
            f"({store.first_line(exc)}); train one with jobs/tune.py, "
            "or pass a checkpoint directory"
        ) from None
    return Path(local), str(version.version)
