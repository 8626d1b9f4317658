"""The Tune callback that logs each trial to MLflow, on the driver: workers report to Ray, the driver tracks."""

from __future__ import annotations

import contextlib
import math
import time

import ray.tune

from fracture.core import metrics
from fracture.core.config import Config, flat
from fracture.core.redact import redact_config
from fracture.core.storage import StudyPaths
from fracture.track import store, study_runs
from fracture.track.store import TrackingError
from fracture.track.tags import TRIAL_TAG


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
            self._client_cache = store.client(self.uri)
        return self._client_cache

    def _run_for(self, trial) -> str:
        if trial.trial_id not in self._runs:
            experiment_id = store.retry(self.client.get_experiment_by_name, self.experiment).experiment_id
            # Tune pickled this logger before any trial started, so a restored study's logger has an
            # empty run map: continue the trial's existing run, don't fork it.
            existing = study_runs.find_trial_run(self.client, experiment_id, trial.trial_id)
            if existing:
                self._runs[trial.trial_id] = existing
                return existing
            run = store.retry(
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
            store.retry(self.client.log_batch, run_id, params=study_runs.mlflow_params(params))
            store.retry(self.client.log_dict, run_id, redact_config(cfg), "config.json")
            self._runs[trial.trial_id] = run_id
        return self._runs[trial.trial_id]

    def _logged(self, trial, step: int) -> bool:
        history = store.retry(self.client.get_metric_history, self._run_for(trial), metrics.PRIMARY)
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
            store.retry(self.client.log_batch, self._run_for(trial), metrics=batch)

    def _finish(self, trial, status: str):
        with self._or_stop_study():
            store.retry(self.client.set_terminated, self._run_for(trial), status)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "FAILED")


def trial_logger(cfg: Config, uri: str, parent_run_id: str, *, resume_at: str = "") -> TrialLogger:
    """resume_at: what `--resume` takes to continue this Tune run (an extension's tune_ext<N>/; default the study)."""
    return TrialLogger(
        uri, cfg.tracking.experiment, parent_run_id, sorted(cfg.search.space), resume_at or StudyPaths.of(cfg).root
    )
