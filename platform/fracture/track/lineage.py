"""A registered version's lineage: its trial run, its study run, and their files, for the model card."""

from __future__ import annotations

import logging
from pathlib import Path

from fracture.core.redact import redact
from fracture.track import store
from fracture.track.store import TrackingError
from fracture.track.tags import CURVES_FILE, MODEL_CARD_ARTIFACT, MODEL_CARD_TAG, STUDY_ARTIFACT

log = logging.getLogger(__name__)


def _version(client, model_uri: str):
    """The ModelVersion of models:/<name>/<version> or models:/<name>@<alias>."""
    from mlflow.exceptions import MlflowException

    rest = model_uri.removeprefix("models:/")
    name, by_alias, alias = rest.partition("@")
    if not by_alias:
        name, _, number = rest.partition("/")
    if not model_uri.startswith("models:/") or not name or not (alias if by_alias else number.isdigit()):
        raise TrackingError(
            f"{model_uri}: a model card describes a registered model version; "
            "pass models:/<name>@<alias> or models:/<name>/<version>"
        )
    try:
        if by_alias:
            return store.retry(client.get_model_version_by_alias, name, alias)
        return store.retry(client.get_model_version, name, number)
    except MlflowException as exc:
        raise TrackingError(f"{model_uri} is not in {redact(client.tracking_uri)} ({store.first_line(exc)})") from None


def _run_facts(run) -> dict:
    return {
        "run_id": run.info.run_id,
        "name": run.info.run_name,
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
        "tags": dict(run.data.tags),
    }


def lineage(uri: str, model_uri: str, dst: str | Path) -> dict:
    """Where a registered model version came from, read back from MLflow: version -> trial run -> study run.

    What register and log_study_results logged is downloaded into `dst`: the trial's training curves,
    the study's trials.csv and Optuna plots, the data report. A file an older study did not log is
    absent from the result, not an error.

    Args:
        model_uri: models:/<name>/<version>, or models:/<name>@<alias> (read once: aliases move).
    Returns:
        {"name", "version", "model_uri" (models:/<name>/<version>), "aliases", "tags", "description",
        "created_ms", "experiment_id", "trial" and "study" ({run_id, name, params, metrics, tags};
        study is {} for a run without a parent), "trials" (trials.csv as records), "data_report"
        (manifest.summarize's dict as logged, or None), "files" {"training_curves", "optuna_<plot>": path}}.
    Raises:
        TrackingError when model_uri names no registered version in this store.
    """
    import json

    import pandas as pd

    client = store.client(uri)
    version = _version(client, model_uri)
    trial = store.retry(client.get_run, version.run_id)
    parent_id = trial.data.tags.get("mlflow.parentRunId")
    study = store.retry(client.get_run, parent_id) if parent_id else None
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)

    def fetch(run_id: str, folder: str | None, suffix: str) -> list[Path]:
        listed = store.retry(client.list_artifacts, run_id, folder)
        wanted = [f.path for f in listed if not f.is_dir and f.path.endswith(suffix)]
        return [Path(store.retry(client.download_artifacts, run_id, path, str(dst / run_id))) for path in wanted]

    files = {p.stem: p for p in fetch(trial.info.run_id, None, CURVES_FILE)}
    report_run = study or trial  # both hold the data report; the study's is the one its trials saw
    reports = fetch(report_run.info.run_id, "data", ".report.json")
    table = []
    if study:
        for path in fetch(study.info.run_id, STUDY_ARTIFACT, ""):
            if path.suffix == ".png":
                files[path.stem] = path
            elif path.name == "trials.csv":
                table = pd.read_csv(path).to_dict("records")
    return {
        "name": version.name,
        "version": str(version.version),
        "model_uri": f"models:/{version.name}/{version.version}",
        "aliases": list(getattr(version, "aliases", []) or []),
        "tags": dict(version.tags),
        "description": version.description or "",
        "created_ms": version.creation_timestamp,
        "experiment_id": trial.info.experiment_id,
        "trial": _run_facts(trial),
        "study": _run_facts(study) if study else {},
        "trials": table,
        "data_report": json.loads(reports[0].read_text()) if reports else None,
        "files": files,
    }


def log_model_card(uri: str, model_uri: str, files: list[Path], *, base_dir: Path) -> str:
    """Attach a model card's files to its version's source run, under model_card/, and tag the version.

    Args:
        model_uri: models:/<name>/<version> the card describes.
        files: the card (its .html first) and what it was built from; those under `base_dir` keep
            their sub-folder.
    Returns:
        runs:/<run id>/model_card/<card>.html, which the version's MODEL_CARD_TAG also holds.
    """
    client = store.client(uri)
    version = _version(client, model_uri)
    for path in map(Path, files):
        sub = MODEL_CARD_ARTIFACT
        if path.parent != Path(base_dir) and path.is_relative_to(base_dir):
            sub = f"{MODEL_CARD_ARTIFACT}/{path.parent.relative_to(base_dir)}"
        store.retry(client.log_artifact, version.run_id, str(path), sub)
    where = f"runs:/{version.run_id}/{MODEL_CARD_ARTIFACT}/{Path(files[0]).name}"
    store.retry(client.set_model_version_tag, version.name, version.version, MODEL_CARD_TAG, where)
    return where
