"""Every MLflow call in the project, all on the driver: workers report to Ray, the driver tracks.

Layout in MLflow: experiment `cfg.tracking.experiment`; one parent run per study invocation; one
child run per Tune trial (params = the sampled values, metrics per epoch, the full config as an
artifact). After the study, the best trial's best checkpoint is logged (our checkpoint files and an
`mlflow.pytorch` model) and registered; alias `champion` moves only when the new version beats the
current champion's val AUROC.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import ray.tune

from fracture import metrics
from fracture.config import Config

log = logging.getLogger(__name__)

CHAMPION = "champion"
TRIAL_TAG = "fracture.trial_id"
STUDY_TAG = "fracture.study"
STUDY_DIR_TAG = "fracture.study_dir"
CHECKPOINT_ARTIFACT = "checkpoint"


class TrackingError(RuntimeError):
    """MLflow unusable (unreachable server, bad URI); raised before any training starts."""


def tracking_uri(cfg: Config) -> str:
    """cfg.tracking.uri, else $MLFLOW_TRACKING_URI, else an embedded sqlite store in the study dir."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{cfg.run_dir / 'mlflow.db'}"


def _retry(fn: Callable, *args, tries: int = 4, **kwargs):
    """sqlite 'database is locked' and HTTP hiccups are transient: back off and try again."""
    for attempt in range(tries):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # MlflowException wraps both; only the message tells them apart
            transient = any(s in str(exc).lower() for s in ("locked", "timeout", "temporarily", "connection", "503", "502"))
            if not transient or attempt == tries - 1:
                raise
            time.sleep(0.5 * 2 ** attempt)


@contextlib.contextmanager
def _fluent(uri: str):
    """Point MLflow's fluent API (needed by mlflow.pytorch.log_model) at `uri`, then put it back.

    "Back" is MLflow's state before, not merely the same URI: its globals (unset unless someone
    called set_*_uri) and the environment variables that mlflow.set_tracking_uri exports. Setting
    the globals to the value the environment gave would pin this study's server for the rest of
    the process, even after the environment changes.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_state
    from mlflow.tracking._tracking_service import utils as tracking_state

    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved = tracking_state._tracking_uri, registry_state._registry_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])
        mlflow.set_registry_uri(saved[1])
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, with the URI in the message, when a tracking server does not answer."""
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).read()
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({getattr(exc, 'reason', exc)}); "
                                "start one with `make mlflow` or set tracking.uri / MLFLOW_TRACKING_URI") from None
    elif uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    elif "://" not in uri and not uri.startswith("databricks"):
        raise TrackingError(f"tracking URI {uri!r}: MLflow 3 needs sqlite:///<absolute path> or http://host:port")


def start_study(cfg: Config, study_dir: str, *, resume: bool = False) -> tuple[str, str]:
    """Create the experiment (before trials start: sqlite dislikes concurrent first writes) and a parent run.

    A resumed study reopens the parent run of its first invocation (found by `study_dir`), so one
    study is one parent run however often it was interrupted; the resumed trials' logger, which
    Tune restores with the study, still points at it.

    Returns:
        (tracking uri, parent run id)
    """
    uri = tracking_uri(cfg)
    check_reachable(uri)
    client = _client(uri)
    experiment_id = _experiment_id(client, cfg, uri)
    if resume:
        runs = _retry(client.search_runs, [experiment_id], filter_string=f"tags.`{STUDY_DIR_TAG}` = '{study_dir}'",
                      order_by=["attributes.start_time ASC"], max_results=1)
        if runs:
            _retry(client.update_run, runs[0].info.run_id, status="RUNNING")
            return uri, runs[0].info.run_id
    run = _retry(client.create_run, experiment_id, run_name=cfg.name,
                 tags={STUDY_TAG: cfg.name, STUDY_DIR_TAG: study_dir})
    _retry(client.log_dict, run.info.run_id, cfg.to_dict(), "config.json")
    return uri, run.info.run_id


def end_study(uri: str, parent_run_id: str, status: str) -> None:
    """Close a study's parent run that did not finish: KILLED when interrupted (it can be resumed), else FAILED.

    Best effort: it runs while another error is on its way to the user, which must not be masked.
    """
    try:
        _retry(_client(uri).set_terminated, parent_run_id, status)
    except Exception as exc:
        log.warning("could not mark MLflow run %s %s: %s", parent_run_id, status, exc)


def log_data_report(uri: str, run_id: str, report_files: list[Path]) -> None:
    """Attach the data report (manifest audit: JSON + Markdown) to a run."""
    for path in report_files:
        if Path(path).is_file():
            _retry(_client(uri).log_artifact, run_id, str(path), "data")


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and key != "space":
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _numeric(result: dict) -> dict[str, float]:
    return {k: float(v) for k, v in result.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


class TrialLogger(ray.tune.Callback):
    """Tune callback on the driver: one MLflow child run per trial, metrics per epoch."""

    def __init__(self, uri: str, experiment: str, parent_run_id: str, searched: list[str]):
        self.uri, self.experiment, self.parent_run_id, self.searched = uri, experiment, parent_run_id, searched
        self._runs: dict[str, str] = {}

    def __getstate__(self):  # Tune pickles callbacks into its experiment state; the client stays out
        return {k: v for k, v in self.__dict__.items() if k != "_client_cache"}

    @property
    def client(self):
        if "_client_cache" not in self.__dict__:
            self._client_cache = _client(self.uri)
        return self._client_cache

    def _run_for(self, trial) -> str:
        if trial.trial_id not in self._runs:
            experiment_id = _retry(self.client.get_experiment_by_name, self.experiment).experiment_id
            # Tune pickled this logger before any trial started, so a restored study's logger has an
            # empty run map: continue the trial's existing run, don't fork it.
            existing = _find_trial_run(self.client, experiment_id, trial.trial_id)
            if existing:
                self._runs[trial.trial_id] = existing
                return existing
            run = _retry(self.client.create_run, experiment_id, run_name=f"trial_{trial.trial_id}",
                         tags={"mlflow.parentRunId": self.parent_run_id, TRIAL_TAG: trial.trial_id})
            run_id = run.info.run_id
            cfg = trial.config["config"]
            flat = _flat(cfg)
            params = {k: flat[k] for k in self.searched} | {
                k: flat[k] for k in ("model.weights", "data.image_size", "train.epochs",
                                     "train.batch_size_per_worker", "cluster.num_workers")}
            _retry(self.client.log_batch, run_id, params=_params(params))
            _retry(self.client.log_dict, run_id, cfg, "config.json")
            self._runs[trial.trial_id] = run_id
        return self._runs[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run_for(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from mlflow.entities import Metric

        step = int(result.get("epoch", result.get("training_iteration", 0)))
        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in _numeric(result).items()
                 if not k.startswith(("time_", "timestamp", "pid", "training_iteration"))]
        _retry(self.client.log_batch, self._run_for(trial), metrics=batch)

    def _finish(self, trial, status: str):
        _retry(self.client.set_terminated, self._run_for(trial), status)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "FAILED")


def _params(params: dict[str, Any]):
    from mlflow.entities import Param

    return [Param(k, str(v)[:500]) for k, v in params.items()]


def trial_logger(cfg: Config, uri: str, parent_run_id: str) -> TrialLogger:
    return TrialLogger(uri, cfg.tracking.experiment, parent_run_id, sorted(cfg.search.space))


def best_checkpoint(results) -> tuple[Any, dict]:
    """(ray Result, metrics row) of the best epoch of the best trial that has a checkpoint on disk."""
    best = results.get_best_result(metric=metrics.PRIMARY, mode=metrics.MODE, scope="all")
    frame = best.metrics_dataframe
    if frame is None or "checkpoint_path" not in frame:
        raise RuntimeError(f"best trial {best.path} reported no checkpoint")
    frame = frame[frame["checkpoint_path"].notna()].sort_values(metrics.PRIMARY, ascending=False)
    for _, row in frame.iterrows():
        if Path(row["checkpoint_path"]).joinpath("state.json").is_file() or "://" in row["checkpoint_path"]:
            return best, row.to_dict()
    raise RuntimeError(f"best trial {best.path}: none of its checkpoints is still on disk")


def _champion_auc(client, name: str) -> float | None:
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # no registered model or no alias yet
        return None
    run = client.get_run(version.run_id)
    return run.data.metrics.get("best_" + metrics.PRIMARY)


def register_best(results, cfg: Config, uri: str, parent_run_id: str, data_report: list[Path] = ()) -> dict:
    """Log the study's best checkpoint to its trial's run, register it, move @champion if it wins.

    Returns:
        summary dict: trial_id, run_id, checkpoint, val_auc, params, version, champion (bool).
    """
    import mlflow
    import mlflow.pytorch
    import numpy as np
    from mlflow.models import infer_signature

    from fracture import checkpoint

    best, row = best_checkpoint(results)
    ckpt_dir = row["checkpoint_path"]
    client = _client(uri)
    run_id = _find_trial_run(client, _experiment_id(client, cfg, uri), best.metrics["trial_id"]) or parent_run_id
    auc = float(row[metrics.PRIMARY])
    net, state = checkpoint.load_model(ckpt_dir)
    size = cfg.data.image_size
    example = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    import torch

    with torch.no_grad():
        signature = infer_signature(example, net(torch.from_numpy(example)).numpy())
    # MLflow 3 saves PyTorch models as a traced pt2 graph, which needs an input example to trace.
    with _fluent(uri), mlflow.start_run(run_id=run_id):
        _retry(client.log_artifacts, run_id, ckpt_dir, CHECKPOINT_ARTIFACT)
        _retry(client.log_metric, run_id, "best_" + metrics.PRIMARY, auc)
        _retry(client.set_tag, run_id, "threshold", f"{state['threshold']:.6f}")
        log_data_report(uri, run_id, list(data_report))
        info = mlflow.pytorch.log_model(net, name="model", signature=signature, input_example=example,
                                        registered_model_name=cfg.tracking.model_name)
    version = info.registered_model_version
    current = _champion_auc(client, cfg.tracking.model_name)
    promote = current is None or auc > current
    if promote:
        _retry(client.set_registered_model_alias, cfg.tracking.model_name, CHAMPION, version)
    _retry(client.set_model_version_tag, cfg.tracking.model_name, version, "val_auc", f"{auc:.6f}")
    _retry(client.log_metric, parent_run_id, "best_" + metrics.PRIMARY, auc)
    _retry(client.set_terminated, parent_run_id, "FINISHED")
    sampled = {k: v for k, v in _flat(state["config"]).items() if k in cfg.search.space}
    return {"trial_id": best.metrics["trial_id"], "run_id": run_id, "checkpoint": ckpt_dir, "val_auc": auc,
            "epoch": int(row["epoch"]), "threshold": state["threshold"], "params": sampled,
            "version": version, "champion": promote, "previous_champion_auc": current,
            "metrics": {k: v for k, v in row.items() if k.startswith("val_")}}


def _find_trial_run(client, experiment_id: str, trial_id: str) -> str | None:
    runs = _retry(client.search_runs, [experiment_id], filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}'",
                  order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def load_champion(uri: str, name: str = "fracture", alias: str = CHAMPION):
    """Download the champion's checkpoint files and rebuild the model: (net, state)."""
    from fracture import checkpoint

    local, _ = champion_checkpoint(uri, name, alias)
    return checkpoint.load_model(local)


# --- evaluation / prediction logging ---

def _safe_name(key: str) -> str:
    """MLflow names allow alphanumerics and `_-. /` only: "view.frontal+lateral" -> "view.frontal_lateral"."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "_-. /") else "_" for c in key)


def _experiment_id(client, cfg: Config, uri: str) -> str:
    """The study's experiment, created on first use; an embedded store keeps artifacts beside it."""
    experiment = _retry(client.get_experiment_by_name, cfg.tracking.experiment)
    if experiment is not None:
        return experiment.experiment_id
    location = (cfg.run_dir / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
    return _retry(client.create_experiment, cfg.tracking.experiment, artifact_location=location)


def log_evaluation(cfg: Config, name: str, values: dict[str, float], files: list[Path], *,
                   base_dir: Path | None = None, params: dict[str, Any] | None = None,
                   tags: dict[str, str] | None = None) -> str:
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
    client = _client(uri)
    run = _retry(client.create_run, _experiment_id(client, cfg, uri), run_name=name,
                 tags={STUDY_TAG: cfg.name, **(tags or {})})
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        batch = [Metric(_safe_name(k), float(v), now, 0) for k, v in values.items()
                 if isinstance(v, (int, float)) and math.isfinite(float(v))]
        for start in range(0, len(batch), 1000):              # MLflow takes at most 1000 metrics per batch
            _retry(client.log_batch, run_id, metrics=batch[start:start + 1000])
        if params:
            _retry(client.log_batch, run_id,
                   params=_params({_safe_name(k): v for k, v in params.items()}))
        for path in map(Path, files):
            sub = None
            if base_dir is not None and path.parent != Path(base_dir) and path.is_relative_to(base_dir):
                sub = str(path.parent.relative_to(base_dir))
            _retry(client.log_artifact, run_id, str(path), sub)
    except Exception:
        _retry(client.set_terminated, run_id, "FAILED")
        raise
    _retry(client.set_terminated, run_id, "FINISHED")
    return run_id


def champion_checkpoint(uri: str, name: str = "fracture", alias: str = CHAMPION) -> tuple[Path, str]:
    """Download the checkpoint files of `models:/<name>@<alias>`: (local directory, model version).

    Raises:
        TrackingError when the registry has no such model or alias, or the version has no checkpoint.
    """
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    try:
        version = _retry(client.get_model_version_by_alias, name, alias)
        local = download_artifacts(run_id=version.run_id, artifact_path=CHECKPOINT_ARTIFACT,
                                   dst_path=tempfile.mkdtemp(prefix="fracture-champion-"), tracking_uri=uri)
    except MlflowException as exc:
        raise TrackingError(f"models:/{name}@{alias} is not available in {uri} "
                            f"({str(exc).splitlines()[0]}); train one with jobs/tune.py, "
                            "or pass a checkpoint directory") from None
    return Path(local), str(version.version)
