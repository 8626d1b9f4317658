"""Every MLflow call in the project, all on the driver: workers report to Ray, the driver tracks.

Layout in MLflow: experiment `cfg.tracking.experiment` (tagged as custom model development, so the
UI opens on its runs); one parent run per study invocation, holding the searched space as params;
one child run per Tune trial (params = the sampled values, metrics per epoch, the full config as
an artifact). After the study, the checkpoint fracture.track.registry picked is logged to its trial's
run (our checkpoint files and an MLflow model) and registered with a description; alias
`champion` moves when registry.wins says so. The parent run then gets the trials table and
Optuna's plots (fracture.tune.trials) and a tag naming the version. This module does the logging; what
to log and when the champion moves are decided in those two, without MLflow.

The registered model loads two ways: `mlflow.pytorch.load_model` gives the torch module (logits,
any batch size), `mlflow.pyfunc.load_model` gives P(fracture) and the decision at the model's
threshold (this module is its loader).

Stores shared between jobs: a sqlite store is created (its schema migrated) once, by the first
process to reach it, under an exclusive lock on `<db>.lock` (prepare_store; fcntl, so Linux and
macOS), because MLflow's lazy creation in two processes at once leaves the store half-migrated for
good. After that, concurrent writers only meet sqlite's own 'database is locked', which _retry
waits out. Every wait on MLflow is bounded by timeout_s() (FRACTURE_MLFLOW_TIMEOUT_S, default 60 s)
instead of MLflow's own HTTP retries (7 with backoff factor 2: minutes per call), after which a
TrackingError says so; a study then stops (its checkpoints stay on disk for --resume) rather than
training on with metrics nobody records.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import itertools
import logging
import math
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import ray.tune

from fracture.core import metrics
from fracture.core.config import Config, flat
from fracture.core.errors import UserError
from fracture.core.redact import redact, redact_config
from fracture.core.storage import StudyPaths
from fracture.track import registry
from fracture.track.registry import CHAMPION, Candidate
from fracture.tune import trials

log = logging.getLogger(__name__)

TRIAL_TAG = "fracture.trial_id"
STUDY_TAG = "fracture.study"
STUDY_DIR_TAG = "fracture.study_dir"
CHECKPOINT_ARTIFACT = "checkpoint"
CURVES_FILE = "training_curves.png"  # the registered checkpoint's learning curves, on its trial run
STUDY_ARTIFACT = "study"  # the parent run's trials.csv and Optuna plots
SELECTED_EPOCH_TAG = "fracture.selected_epoch"
SELECTED_AUC_TAG = "fracture.selected_val_auc"
REGISTERED_TAG = "fracture.registered_version"  # "<model name>/<version>"
REGISTERED_URI_TAG = "fracture.registered_model_uri"  # "models:/<model name>/<version>"
# MLflow 3's UI opens an experiment without this tag on its GenAI overview, not on its runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CUSTOM_MODEL_KIND = "custom_model_development"
# MLflow 3.17's UI ignores that tag: its sidebar switch (saved in the browser, GenAI by default)
# decides, and this query parameter on a page's URL overrides it with "Model training".
UI_QUERY = "?workflowType=machine_learning"
RUN_NOTE_TAG = "mlflow.note.content"  # what the UI shows as a run's description


class TrackingError(UserError, RuntimeError):
    """MLflow unusable (unreachable server, bad URI, damaged store, no answer within the bound).

    Raised before training where it can be seen then (check_reachable); its message never holds
    credentials (redact).
    """


# How long one MLflow call may keep failing transiently (connection refused, 5xx, timeouts, sqlite
# 'database is locked') before TrackingError: a server that died must end a study in about a
# minute, not leave it retrying silently.
TIMEOUT_ENV = "FRACTURE_MLFLOW_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 60.0
# MLflow's own retries inside one HTTP call, kept few and quick (its default: 7 with backoff factor
# 2, ~4 minutes per call), so _retry's clock bounds the wait; they still cover the calls _retry
# does not wrap (Model.log's uploads, artifact downloads).
HTTP_RETRIES = 2
_TRANSIENT = (
    "locked",
    "timeout",
    "timed out",
    "temporarily",
    "connection",
    "max retries exceeded",
    "too many",
    "502",
    "503",
    "504",
)


def mlflow_timeout_s() -> float:
    """The bound on waiting for MLflow, in seconds: $FRACTURE_MLFLOW_TIMEOUT_S, else DEFAULT_TIMEOUT_S."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        value = math.nan
    if not value > 0:
        raise TrackingError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return value


def tracking_uri(cfg: Config) -> str:
    """cfg.tracking.uri, else $MLFLOW_TRACKING_URI, else an embedded sqlite store in the study dir."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{cfg.run_dir / 'mlflow.db'}"


@contextlib.contextmanager
def _http_bounds(bound_s: float):
    """MLflow's per-call HTTP retries and request timeout, sized so that one call fits in about `bound_s`.

    Set only for the call, and only where the user has not set them: theirs win.
    """
    wanted = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(HTTP_RETRIES),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # an int in MLflow: sleeps 0 s, then 2 s (+ <1 s jitter)
        # A server that accepts and never answers costs (retries + 1) timeouts per call: 20 s each at
        # the default bound. Never under 10 s: a busy server's slow answer is still an answer.
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(10, int(bound_s / (HTTP_RETRIES + 1)))),
    }
    added = [k for k in wanted if k not in os.environ]
    os.environ.update({k: wanted[k] for k in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _first_line(exc: BaseException, limit: int = 400) -> str:
    text = redact(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _retry(fn: Callable, *args, within_s: float | None = None, **kwargs):
    """Call an MLflow function, waiting out transient failures for at most `within_s` in all.

    sqlite 'database is locked' (several jobs writing one store) and HTTP hiccups pass; a store
    that keeps failing for the whole bound (default mlflow_timeout_s()) raises TrackingError naming
    it, credentials masked. Other errors are raised as they are.
    """
    bound = mlflow_timeout_s() if within_s is None else within_s
    start = time.monotonic()
    for attempt in itertools.count():
        try:
            with _http_bounds(bound):
                return fn(*args, **kwargs)
        except TrackingError:
            raise
        except Exception as exc:  # MlflowException wraps both kinds; only the message tells them apart
            if not any(s in str(exc).lower() for s in _TRANSIENT):
                raise
            waited, pause = time.monotonic() - start, min(0.5 * 2**attempt, 5.0)
            if waited + pause > bound:
                uri = getattr(getattr(fn, "__self__", None), "tracking_uri", None) or "the tracking URI"
                raise TrackingError(
                    f"MLflow at {redact(uri)} did not answer for {waited:.0f} s "
                    f"(the bound is {bound:g} s, {TIMEOUT_ENV}): {_first_line(exc)}"
                ) from None
            time.sleep(pause)


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

    prepare_store(uri)
    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved = tracking_state._tracking_uri, registry_state._registry_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        with _http_bounds(mlflow_timeout_s()):
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

    prepare_store(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


_PREPARED: set[str] = set()  # sqlite stores this process has created or checked
# Jobs queue for the store lock one after another, seconds each; the lock goes with a process that
# dies, so only a live holder that hangs makes a job wait this long.
STORE_LOCK_WAIT_S = 300.0


def prepare_store(uri: str) -> None:
    """Create (or check) a sqlite store once, under an exclusive lock, before this process uses it.

    MLflow creates a sqlite store on a process's first use by running its schema migrations; two
    processes doing that at once leave it half-migrated, and every later job on it fails. So the
    first job to get the lock (`<db>.lock`, fcntl.flock: Linux and macOS, also on NFS) creates
    the store while the others wait, and they then find it complete. Once per process and URI;
    other URIs need nothing (a server migrates its own store).

    Raises:
        TrackingError when the lock is held past STORE_LOCK_WAIT_S, or the store cannot be opened
        (damaged, or from an older MLflow).
    """
    if not uri.startswith("sqlite:///") or uri in _PREPARED:
        return
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (seconds to import: not while others wait)
    from mlflow.tracking import MlflowClient

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(db.with_name(db.name + ".lock"), STORE_LOCK_WAIT_S):
        try:
            # The cheapest call that makes MLflow open the store, and so create and migrate it.
            _retry(MlflowClient(tracking_uri=uri).search_experiments, max_results=1)
        except TrackingError:
            raise
        except Exception as exc:
            raise TrackingError(
                f"MLflow store {redact(uri)} cannot be opened ({_first_line(exc)}); a store that jobs "
                "created at the same time before it was locked stays half-migrated: move it aside "
                "(or point tracking.uri at another file) and run again"
            ) from None
    _PREPARED.add(uri)


@contextlib.contextmanager
def _exclusive(path: Path, bound_s: float):
    with open(path, "a") as handle:
        deadline = time.monotonic() + bound_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TrackingError(
                        f"{path} stayed locked for {bound_s:g} s: another job is creating or checking "
                        "this MLflow store, and hangs doing it"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any work, when MLflow cannot be used: a server that does not answer, an
    existing sqlite store that cannot be opened (see prepare_store), a malformed URI.

    Messages carry the URI with its credentials masked.
    """
    if uri.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(uri)
        # urllib takes `user:password@` for part of the host name: send it as a header instead.
        health = parts._replace(netloc=parts.netloc.rpartition("@")[2], path=parts.path.rstrip("/") + "/health")
        request = urllib.request.Request(urllib.parse.urlunsplit(health._replace(query="", fragment="")))
        if parts.username is not None:
            login = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
        try:
            urllib.request.urlopen(request, timeout=timeout_s).read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise TrackingError(
                f"MLflow tracking server {redact(uri)} is unreachable ({redact(getattr(exc, 'reason', exc))}); "
                "start one with `make mlflow` or set tracking.uri / MLFLOW_TRACKING_URI"
            ) from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if db.exists():
            prepare_store(uri)  # one that cannot be opened fails here, before any work
        else:
            # Created on first use (_client), under its lock: a job refused after this check
            # (a wrong --resume) must leave no store behind.
            db.parent.mkdir(parents=True, exist_ok=True)
    elif "://" not in uri and not uri.startswith("databricks"):
        raise TrackingError(
            f"tracking URI {redact(uri)!r}: MLflow 3 needs sqlite:///<absolute path> or http://host:port"
        )


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
    client = _client(uri)
    experiment_id = _experiment_id(client, cfg, uri)
    if resume and parent_run_id:
        _retry(client.update_run, parent_run_id, status="RUNNING")
        return uri, parent_run_id
    first = _run_tagged(client, experiment_id, STUDY_DIR_TAG, study_dir, newest=False) if resume else None
    if first:
        _retry(client.update_run, first, status="RUNNING")
        return uri, first
    run = _retry(
        client.create_run, experiment_id, run_name=cfg.name, tags={STUDY_TAG: cfg.name, STUDY_DIR_TAG: study_dir}
    )
    _retry(client.log_batch, run.info.run_id, params=_params(trials.study_params(cfg)))
    _retry(client.log_dict, run.info.run_id, redact_config(cfg.to_dict()), "config.json")
    return uri, run.info.run_id


def finish_study(uri: str, parent_run_id: str) -> None:
    """Close a study's parent run that finished (registered its model and logged its results)."""
    _retry(_client(uri).set_terminated, parent_run_id, "FINISHED")


def end_study(uri: str, parent_run_id: str, status: str) -> None:
    """Close a study's parent run that did not finish: KILLED when interrupted (it can be resumed), else FAILED.

    Best effort: it runs while another error is on its way to the user, which must not be masked,
    nor delayed by a full wait on a server that already failed to answer.
    """
    try:
        _retry(_client(uri).set_terminated, parent_run_id, status, within_s=min(5.0, mlflow_timeout_s()))
    except Exception as exc:
        log.warning("could not mark MLflow run %s %s: %s", parent_run_id, status, _first_line(exc))


def log_data_report(uri: str, run_id: str, report_files: list[Path]) -> None:
    """Attach the data report (manifest audit: JSON + Markdown) to a run."""
    for path in report_files:
        if Path(path).is_file():
            _retry(_client(uri).log_artifact, run_id, str(path), "data")


SPLIT_AUDIT_TAG = "fracture.split_audit"


def log_split_audit(uri: str, run_id: str, findings: list[dict], summary: str) -> None:
    """Record the split audit on the study's parent run: tag "clean", or "overridden: <summary>" when
    data.allow_leaky_split let a study run on a split that failed it, and data/split_audit.json.

    Args:
        findings: split_audit.Finding.as_dict() of each finding ([] when clean).
        summary: split_audit.summary of them.
    """
    client = _client(uri)
    _retry(client.set_tag, run_id, SPLIT_AUDIT_TAG, f"overridden: {summary}"[:5000] if findings else "clean")
    _retry(client.log_dict, run_id, {"overridden": bool(findings), "findings": findings}, "data/split_audit.json")


def _numeric(result: dict) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in result.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }


class TrialLogger(ray.tune.Callback):
    """Tune callback on the driver: one MLflow child run per trial, metrics per epoch.

    When MLflow stops answering (for mlflow_timeout_s()), the study fails with a TrackingError
    rather than training on with metrics that no run records: Tune has saved it, the trials'
    checkpoints stay on disk, and the error gives the --resume command that continues it. (Tune
    wraps the error in a TuneError; cli.user_errors finds it inside and prints it.)
    """

    def __init__(self, uri: str, experiment: str, parent_run_id: str, searched: list[str], study_dir: str = ""):
        self.uri, self.experiment, self.parent_run_id, self.searched = uri, experiment, parent_run_id, searched
        self.study_dir = study_dir
        self._runs: dict[str, str] = {}

    @contextlib.contextmanager
    def _or_stop_study(self):
        try:
            yield
        except TrackingError as exc:
            where = getattr(self, "study_dir", "")  # absent in loggers pickled by older studies
            raise TrackingError(
                f"{exc}. The study stops here, saved by Tune with its checkpoints on disk: "
                f"`python jobs/tune.py --resume {where or '<study dir>'}` continues it once MLflow answers "
                "(finished trials keep their results; a running one restarts from the last checkpoint Tune recorded)"
            ) from None

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
            run = _retry(
                self.client.create_run,
                experiment_id,
                run_name=str(trial),  # trial_name_creator's trial_001: the console's name for it
                tags={"mlflow.parentRunId": self.parent_run_id, TRIAL_TAG: trial.trial_id},
            )
            run_id = run.info.run_id
            cfg = trial.config["config"]
            values = flat(cfg)
            params = {k: values[k] for k in self.searched} | {
                k: values[k]
                for k in (
                    "model.weights",
                    "data.image_size",
                    "train.epochs",
                    "train.batch_size_per_worker",
                    "cluster.num_workers",
                )
            }
            _retry(self.client.log_batch, run_id, params=_params(params))
            _retry(self.client.log_dict, run_id, redact_config(cfg), "config.json")
            self._runs[trial.trial_id] = run_id
        return self._runs[trial.trial_id]

    def _logged(self, trial, step: int) -> bool:
        history = _retry(self.client.get_metric_history, self._run_for(trial), metrics.PRIMARY)
        return any(m.step == step for m in history)

    def on_trial_start(self, iteration, trials, trial, **info):
        with self._or_stop_study():
            self._run_for(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from mlflow.entities import Metric

        step = int(result.get("epoch", result.get("training_iteration", 0)))
        with self._or_stop_study():
            if result.get("replayed") and self._logged(trial, step):
                return  # a restored trial's report again (fracture.train.worker): this run has that epoch already
            now = int(time.time() * 1000)
            batch = [
                Metric(k, v, now, step)
                for k, v in _numeric(result).items()
                if not k.startswith(("time_", "timestamp", "pid", "training_iteration"))
            ]
            _retry(self.client.log_batch, self._run_for(trial), metrics=batch)

    def _finish(self, trial, status: str):
        with self._or_stop_study():
            _retry(self.client.set_terminated, self._run_for(trial), status)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "FAILED")


def _params(params: dict[str, Any]):
    from mlflow.entities import Param

    return [Param(k, str(v)[:500]) for k, v in params.items()]


def trial_logger(cfg: Config, uri: str, parent_run_id: str, *, resume_at: str = "") -> TrialLogger:
    """resume_at: what `--resume` takes to continue this Tune run (an extension's tune_ext<N>/; default the study)."""
    return TrialLogger(
        uri, cfg.tracking.experiment, parent_run_id, sorted(cfg.search.space), resume_at or StudyPaths.of(cfg).root
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


def register(cfg: Config, uri: str, parent_run_id: str, chosen: Candidate, data_report: list[Path] = ()) -> dict:
    """Log the study's chosen checkpoint to its trial's run, register it, and move @champion if it wins.

    Args:
        chosen: registry.candidate(results), the checkpoint the study picked.
        data_report: the data report's files, attached to the trial run beside the checkpoint.
    Returns:
        summary dict: registry.summary's keys (trial_id, run_id, checkpoint, epoch, val_auc, threshold,
        image_size, params, metrics, study, ...) plus version, model_uri, ui_route, champion (bool) and
        previous_champion_score (the champion's value of summary["ranked_by"]).
    """
    client = _client(uri)
    experiment_id = _experiment_id(client, cfg, uri)
    parent = _retry(client.get_run, parent_run_id)
    summary = registry.summary(
        cfg,
        chosen,
        run_id=_find_trial_run(client, experiment_id, chosen.trial_id) or parent_run_id,
        parent_run_id=parent_run_id,
        study_dir=parent.data.tags.get(STUDY_DIR_TAG, ""),
    )
    _log_checkpoint(client, uri, summary, list(data_report))
    _log_curves(client, summary["run_id"], list(chosen.history) or chosen.state.get("history", []), summary["epoch"])
    summary["version"] = _log_model(uri, cfg, chosen.net, summary)
    summary["model_uri"] = f"models:/{cfg.tracking.model_name}/{summary['version']}"
    summary["ui_route"] = ui_route(experiment_id)
    summary |= _promote(client, cfg, summary["version"], summary["score"])
    _retry(
        client.update_model_version,
        cfg.tracking.model_name,
        summary["version"],
        description=registry.version_description(summary),
    )
    _link_version(client, cfg, summary, [summary["run_id"], parent_run_id])
    return summary


def ui_route(experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI page, after the server's address, of an experiment's runs or of one run."""
    page = f"/#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")
    return page + UI_QUERY


def champion_runs(uri: str, experiment: str, name: str = "fracture", alias: str = CHAMPION) -> dict[str, str]:
    """Where `models:/<name>@<alias>` came from: experiment_id, version, trial_run_id, study_run_id."""
    client = _client(uri)
    version = _retry(client.get_model_version_by_alias, name, alias)
    trial = _retry(client.get_run, version.run_id)
    found = _retry(client.get_experiment_by_name, experiment)
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
    _retry(client.log_artifacts, run_id, summary["checkpoint"], CHECKPOINT_ARTIFACT)
    _retry(
        client.log_batch,
        run_id,
        tags=[
            RunTag("threshold", f"{summary['threshold']:.6f}"),
            RunTag(SELECTED_EPOCH_TAG, str(summary["epoch"])),
            RunTag(SELECTED_AUC_TAG, f"{summary['val_auc']:.6f}"),
        ],
    )
    log_data_report(uri, run_id, data_report)


def _log_curves(client, run_id: str, history: list[dict], chosen_epoch: int) -> None:
    """The registered trial's learning curves as one picture, on its trial run, the registered epoch marked.

    The run charts each metric on its own; this one puts train and val loss on one axis, which is
    where a model that does not learn (a flat train loss) or overfits shows first.
    """
    from fracture.evaluate import plots

    if not history:
        return
    with tempfile.TemporaryDirectory(prefix="fracture-curves-") as tmp:
        path = plots.save_training_curves(history, Path(tmp) / CURVES_FILE, chosen_epoch=chosen_epoch)
        _retry(client.log_artifact, run_id, str(path))


def _log_model(uri: str, cfg: Config, net, summary: dict) -> str:
    """Log the model on its trial run and register it; returns the new version.

    One MLflow model, two ways to load it: `mlflow.pytorch.load_model` gives the torch module
    (logits, any batch size) and `mlflow.pyfunc.load_model` gives P(fracture) and the decision at
    the version's threshold.
    """
    import mlflow
    import numpy as np
    from mlflow.models import Model, infer_signature

    size, run_id = summary["image_size"], summary["run_id"]
    # Batch 2, not 1: MLflow 3 saves a torch.export graph traced on this example, and torch.export
    # pins a size-1 dimension to a constant, after which the graph refuses any other batch size.
    # Quarter steps keep the example's JSON copies small at 224 px.
    example = (np.random.default_rng(0).integers(0, 5, (2, 3, size, size)) / 4).astype(np.float32)
    signature = infer_signature(example, _Scorer(net, summary["threshold"]).predict(example))
    client = _client(uri)
    ended = _retry(client.get_run, run_id).info
    # The logged model belongs to the active run's experiment (else to experiment 0 in ./mlruns).
    with _fluent(uri), mlflow.start_run(run_id=run_id):
        info = Model.log(
            artifact_path=None,
            name="model",
            flavor=_FLAVOR,
            flavor_name="mlflow.pytorch",
            registered_model_name=cfg.tracking.model_name,
            tags=registry.version_tags(summary),
            metadata={"threshold": summary["threshold"], "image_size": size},
            pytorch_model=net,
            threshold=summary["threshold"],
            signature=signature,
            input_example=example,
            serialization_format="pt2",
        )
    # Reopening the run ended it anew: give back the trial's own end, or the UI shows its duration to now.
    _retry(client.set_terminated, run_id, ended.status, end_time=ended.end_time)
    return str(info.registered_model_version)


def _save_model(path, mlflow_model, *, pytorch_model, threshold: float, **kwargs) -> None:
    """Model.log's flavor: mlflow.pytorch's files, with this module as the pyfunc loader.

    mlflow.pytorch's own pyfunc returns raw logits as an unnamed column; a user scoring X-rays
    wants the probability and the decision at the threshold the model was validated with.
    """
    import mlflow.pytorch
    from mlflow import pyfunc
    from mlflow.utils.environment import _CONDA_ENV_FILE_NAME, _PYTHON_ENV_FILE_NAME

    # Explicit requirements: inferring them loads the model once more in a subprocess (~30 s).
    mlflow.pytorch.save_model(
        pytorch_model,
        path,
        mlflow_model=mlflow_model,
        pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
        **kwargs,
    )
    pyfunc.add_to_model(
        mlflow_model,
        loader_module=__name__,
        data="data",
        conda_env=_CONDA_ENV_FILE_NAME,
        python_env=_PYTHON_ENV_FILE_NAME,
        model_config={"threshold": float(threshold)},
    )
    mlflow_model.save(os.path.join(path, "MLmodel"))


_FLAVOR = SimpleNamespace(save_model=_save_model)


class _Scorer:
    """The pyfunc side of a registered model: float32 images (N, 3, S, S) in [0, 1] -> DataFrame."""

    def __init__(self, net, threshold: float):
        self.net, self.threshold = net, float(threshold)

    def predict(self, data, params: dict | None = None):
        import numpy as np
        import pandas as pd
        import torch

        with torch.no_grad():
            logits = self.net(torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)))
        probability = torch.sigmoid(logits).reshape(-1).double().numpy()
        return pd.DataFrame({"probability": probability, "fracture": probability >= self.threshold})


def _load_pyfunc(data_path: str, model_config: dict | None = None) -> _Scorer:
    """mlflow.pyfunc.load_model's entry point: this module is the registered model's loader_module.

    `model_config={"threshold": t}` at load time scores at another operating point.
    """
    import mlflow.pytorch

    net = mlflow.pytorch.load_model(str(Path(data_path).parent))
    return _Scorer(net, (model_config or {})["threshold"])


def _promote(client, cfg: Config, version: str, score: float) -> dict:
    """Move @champion to `version` when registry.wins says so."""
    current = _champion_score(client, cfg.tracking.model_name, metrics.ranked(cfg))
    promote = registry.wins(score, current)
    if promote:
        _retry(client.set_registered_model_alias, cfg.tracking.model_name, CHAMPION, version)
    return {"champion": promote, "previous_champion_score": current}


def _link_version(client, cfg: Config, summary: dict, run_ids: list[str]) -> None:
    """Runs name the version registered from them: the UI links a version to its run, not back."""
    name = cfg.tracking.model_name
    for run_id in dict.fromkeys(run_ids):
        _retry(client.set_tag, run_id, REGISTERED_TAG, f"{name}/{summary['version']}")
        _retry(client.set_tag, run_id, REGISTERED_URI_TAG, summary["model_uri"])
    model = _retry(client.get_registered_model, name)
    if not model.description:
        _retry(client.update_registered_model, name, description=registry.model_description(name))


# --- the study's view on its parent run ---


def log_study_results(results, cfg: Config, uri: str, parent_run_id: str, summary: dict):
    """Attach the whole study to its parent run: trials.csv and Optuna's plots under `study/`, and a
    description saying how the study went and what it registered.

    Args:
        results: the study's Tune results (tuner.fit()'s ResultGrid; an extended study's earlier ones too).
        summary: what register returned.
    Returns:
        the trials table (trials.trials_table) that went into trials.csv.
    """
    client = _client(uri)
    runs = _retry(
        client.search_runs,
        [_experiment_id(client, cfg, uri)],
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
        _retry(client.log_artifacts, parent_run_id, tmp, STUDY_ARTIFACT)
    _retry(client.set_tag, parent_run_id, RUN_NOTE_TAG, trials.study_note(summary, table, artifact_dir=STUDY_ARTIFACT))
    # The parent run has no per-epoch history, so one point here charts nothing out of step.
    _retry(client.log_metric, parent_run_id, metrics.best(cfg), summary["score"])
    return table


def _find_trial_run(client, experiment_id: str, trial_id: str) -> str | None:
    return _run_tagged(client, experiment_id, TRIAL_TAG, trial_id, newest=True)


def _run_tagged(client, experiment_id: str, tag: str, value: str, *, newest: bool) -> str | None:
    """The id of the newest (or first) run in the experiment with tag=value; None when there is none."""
    runs = _retry(
        client.search_runs,
        [experiment_id],
        filter_string=f"tags.`{tag}` = '{value}'",
        order_by=[f"attributes.start_time {'DESC' if newest else 'ASC'}"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


# --- evaluation / prediction logging ---


def _safe_name(key: str) -> str:
    """MLflow names allow alphanumerics and `_-. /` only: "view.frontal+lateral" -> "view.frontal_lateral"."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "_-. /") else "_" for c in key)


def _experiment_id(client, cfg: Config, uri: str) -> str:
    """The study's experiment, created on first use; an embedded store keeps artifacts beside it."""
    from mlflow.exceptions import MlflowException

    experiment = _retry(client.get_experiment_by_name, cfg.tracking.experiment)
    if experiment is None:
        location = (cfg.run_dir / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
        try:
            return _retry(
                client.create_experiment,
                cfg.tracking.experiment,
                artifact_location=location,
                tags={EXPERIMENT_KIND_TAG: CUSTOM_MODEL_KIND},
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            # Another job on this store created it since we looked.
            experiment = _retry(client.get_experiment_by_name, cfg.tracking.experiment)
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # made before the tag was set, or by someone else
        _retry(client.set_experiment_tag, experiment.experiment_id, EXPERIMENT_KIND_TAG, CUSTOM_MODEL_KIND)
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
    client = _client(uri)
    run = _retry(
        client.create_run, _experiment_id(client, cfg, uri), run_name=name, tags={STUDY_TAG: cfg.name, **(tags or {})}
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
            _retry(client.log_batch, run_id, metrics=batch[start : start + 1000])
        if params:
            _retry(client.log_batch, run_id, params=_params({_safe_name(k): v for k, v in params.items()}))
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
        with _http_bounds(mlflow_timeout_s()):  # not MLflow's minutes of retries per file
            local = download_artifacts(
                run_id=version.run_id,
                artifact_path=CHECKPOINT_ARTIFACT,
                dst_path=tempfile.mkdtemp(prefix="fracture-champion-"),
                tracking_uri=uri,
            )
    except MlflowException as exc:
        raise TrackingError(
            f"models:/{name}@{alias} is not available in {redact(uri)} "
            f"({_first_line(exc)}); train one with jobs/tune.py, "
            "or pass a checkpoint directory"
        ) from None
    return Path(local), str(version.version)


# --- model card: what a version came from, and the card kept beside it ---

MODEL_CARD_ARTIFACT = "model_card"  # folder on the version's source (trial) run
MODEL_CARD_TAG = "model_card"  # version tag: runs:/<run id>/model_card/<name>.html


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
            return _retry(client.get_model_version_by_alias, name, alias)
        return _retry(client.get_model_version, name, number)
    except MlflowException as exc:
        raise TrackingError(f"{model_uri} is not in {redact(client.tracking_uri)} ({_first_line(exc)})") from None


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

    client = _client(uri)
    version = _version(client, model_uri)
    trial = _retry(client.get_run, version.run_id)
    parent_id = trial.data.tags.get("mlflow.parentRunId")
    study = _retry(client.get_run, parent_id) if parent_id else None
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)

    def fetch(run_id: str, folder: str | None, suffix: str) -> list[Path]:
        listed = _retry(client.list_artifacts, run_id, folder)
        wanted = [f.path for f in listed if not f.is_dir and f.path.endswith(suffix)]
        return [Path(_retry(client.download_artifacts, run_id, path, str(dst / run_id))) for path in wanted]

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
    client = _client(uri)
    version = _version(client, model_uri)
    for path in map(Path, files):
        sub = MODEL_CARD_ARTIFACT
        if path.parent != Path(base_dir) and path.is_relative_to(base_dir):
            sub = f"{MODEL_CARD_ARTIFACT}/{path.parent.relative_to(base_dir)}"
        _retry(client.log_artifact, version.run_id, str(path), sub)
    where = f"runs:/{version.run_id}/{MODEL_CARD_ARTIFACT}/{Path(files[0]).name}"
    _retry(client.set_model_version_tag, version.name, version.version, MODEL_CARD_TAG, where)
    return where
