"""The study's console: a line a person can follow per trial and epoch, and Ray's chatter kept out.

Tune's own console prints a 50-row config table per trial and a status table every 30 s. Here a
Tune callback prints instead, on the driver:

    trial_002 started: dropout=0.32 l2=3.9e-05 lr_head=1.9e-04 lr_backbone=1.3e-05
    trial_002 epoch 1/3  loss 0.6130  val AUROC 0.8388  sens 0.900 spec 0.796  12.7 img/s  24 s/epoch  ETA 48 s
    trial_002 stopped by ASHA after 1/3 epochs: val AUROC 0.8388 was below its rung's cutoff (25 s)

Trials are named by their number (`trial_002`); their directories add the trial id
(`trial_002_4bd22202`), which MLflow runs and Train runs are keyed by.

`NOISE` is what Ray prints that a user cannot act on: Ray Data's plan of every epoch's Dataset,
Ray Train's worker-group start-up and per-report lines, a core error line about Train's preemption
watcher, deprecations inside Ray. `quiet_ray` and `quiet_worker_logs` drop it from the driver's
console (Ray's log files keep all of it); `--verbose` skips both.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import ray.tune

from fracture.core import metrics
from fracture.core.config import Config

log = logging.getLogger(__name__)

NOISE = re.compile(
    "|".join(
        [
            # Ray Data: each epoch streams train and val through a new Dataset execution, 3-4 lines each
            r"Starting execution of Dataset",
            r"Execution plan of Dataset",
            r"Dataset \S+ execution (finished|failed)",
            r"Data sink \S+ finished",
            r"Progress bars disabled",
            # Ray Train: worker-group start-up, and a line per report and checkpoint (with the whole metrics dict)
            r"^Requesting resources: ",
            r"^Attempting to start training worker group",
            r"^Setting up process group for",
            r"^Started training worker group of size",
            r"^- \(ip=\S+, pid=\d+\) world_rank=",
            r"^Moving model to device",
            r"^Checkpoint successfully created at",
            r"^Reporting training result \d+",
            # Train's cleaner removing the placement group of a trial that ended or that ASHA stopped: as designed
            r"Detected that the Ray Train controller actor \S+ is dead. Cleaning up placement group",
            # Ray core logs at error level that Train's PreemptionWatcher actor has its arguments in the object store
            r"Actor with class name: 'PreemptionWatcher' .* has constructor arguments in the object store",
            # for whoever upgrades Ray, not for whoever runs a study
            r"RayDeprecationWarning",
            # driver: the token-auth notice of every local cluster; Tune's final state write; Tune's restore hint
            # (the job prints its own --resume command); Tune's GPU check, which cannot see that Train's workers
            # (not the trial's driver fn) hold the GPUs
            r"Token authentication is enabled for this Ray cluster",
            r"Wrote the latest version of all result files",
            r"Experiment has been interrupted, but the most recent state was saved",
            r"Tune detects GPUs, but no trials are using GPUs",
            # Tune timing its own callbacks: slow only while MLflow is waited on, which the job reports itself
            r"which may be a performance bottleneck",
            # the GCS asked to kill an actor that had already exited (a Dataset's execution or a trial ended)
            r"Failed to kill actor (NIL_ID|\w+, return status: Invalid: KillActor RPC failed .*Socket closed)",
        ]
    )
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not NOISE.search(record.getMessage())


def quiet_ray() -> None:
    """Drop NOISE from the console handlers of Ray's loggers on the driver (after `import ray`, before ray.init)."""
    import ray.data  # noqa: F401  (configures the "ray.data" logger and its console handler)

    for name in ("ray", "ray.data"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not any(
                isinstance(f, _DropNoise) for f in handler.filters
            ):
                handler.addFilter(_DropNoise())


def quiet_worker_logs() -> None:
    """Drop NOISE from the worker output that Ray forwards to the driver's console (after ray.init).

    Ray has no per-message setting for this: worker processes (Train controllers and workers, Ray
    Data's split coordinators, Tune's trial actors) write to their log files, and the driver
    prints every line through one handler. This wraps that handler, so it relies on Ray's
    `global_worker_stdstream_dispatcher` (ray 2.60); without it, nothing is filtered.
    """
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    printer = dict(dispatcher.handlers).get("ray_print_logs")  # absent with log_to_driver=False
    if printer is None or isinstance(printer, functools.partial) and printer.func is _print_without_noise:
        return
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", functools.partial(_print_without_noise, printer))


def _print_without_noise(printer: Callable[[dict], None], batch: dict) -> None:
    lines = without_noise(batch.get("lines", []))
    if lines:
        printer({**batch, "lines": lines})


def without_noise(lines: Sequence[str]) -> list[str]:
    """The lines that are not NOISE; a dropped warning takes its indented source line with it."""
    kept, in_warning = [], False
    for line in _without_shutdown_tracebacks(lines):
        if in_warning and line[:1].isspace():  # warnings.warn prints "file:line: Category: message" + the source line
            continue
        noise = NOISE.search(line)
        in_warning = bool(noise) and "Warning: " in line
        if not noise:
            kept.append(line)
    return kept


# Ray Data's file-listing thread (ListFiles) raises InterruptedError when the Dataset's execution ends
# before it has queued its end marker; the thread's traceback is printed though nothing failed.
_TRACEBACK_START = re.compile(r"^(Exception in thread .*:|Traceback \(most recent call last\):)$")
_INSIDE_RAY = re.compile(r'^\s+File ".*(site-packages/ray/|/threading\.py")')


def _without_shutdown_tracebacks(lines: Sequence[str]) -> list[str]:
    """The lines, less each traceback that runs only through Ray and threading and ends in InterruptedError."""
    kept, i = [], 0
    while i < len(lines):
        if not _TRACEBACK_START.match(lines[i]):
            kept.append(lines[i])
            i += 1
            continue
        end = i + 1
        while end < len(lines) and (lines[end][:1].isspace() or _TRACEBACK_START.match(lines[end])):
            end += 1
        block = lines[i : end + 1]  # through the exception's own line
        frames = [line for line in block if line.lstrip().startswith("File ")]
        shutdown = end < len(lines) and lines[end].strip() == "InterruptedError"
        if not (shutdown and frames and all(_INSIDE_RAY.match(f) for f in frames)):
            kept.extend(block)
        i = end + 1
    return kept


# --- trial names ---


def trial_number(trial, *, first: int = 1) -> int:
    """1, 2, ... in creation order, from Tune's experiment tag ("3_config=..." or "0").

    Args:
        first: the tag of the first trial: 1 with a searcher (Tune's SearchGenerator counts from
            1), 0 without one (its BasicVariantGenerator counts from 0).
    """
    return int(str(trial.experiment_tag).split("_", 1)[0]) + 1 - first


def trial_name(trial, *, first: int = 1) -> str:
    return f"trial_{trial_number(trial, first=first):03d}"


def trial_dirname(trial, *, first: int = 1) -> str:
    # The id stays in the name: Train runs (train/<name>-trial_<id>) and MLflow runs are keyed by it.
    return f"{trial_name(trial, first=first)}_{trial.trial_id}"


# --- the console ---


def short_keys(dotted: Sequence[str]) -> dict[str, str]:
    """{"model.dropout": "dropout", ...}; a key whose last part is not unique keeps its section."""
    last = [d.split(".")[-1] for d in dotted]
    return {d: s if last.count(s) == 1 else d for d, s in zip(dotted, last, strict=True)}


def format_value(value) -> str:
    """0.31, 2.1e-05: two significant digits, exponent form below 0.01."""
    if isinstance(value, float):
        return f"{value:.2g}" if value == 0 or 0.01 <= abs(value) < 1000 else f"{value:.1e}"
    return str(value)


def searched_values(config: dict, keys: dict[str, str]) -> str:
    """ "dropout=0.31 l2=2.1e-05 ..." for a trial's nested config and short_keys()."""
    parts = []
    for dotted, short in keys.items():
        section, key = dotted.split(".", 1)
        parts.append(f"{short}={format_value(config.get(section, {}).get(key))}")
    return " ".join(parts)


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _label(metric: str) -> str:
    return "val AUROC" if metric == metrics.PRIMARY else metric


def epoch_line(name: str, result: dict, epochs: int, workers: int = 1, ranked: str = metrics.PRIMARY) -> str:
    """One epoch of one trial, from the worker's report (see worker.train_fn_per_worker).

    ranked: the study's ranking metric (metrics.ranked), shown after the AUROC when it is another.
    """
    done = int(result.get(metrics.EPOCHS_DONE, result.get("epoch", -1) + 1))
    rate = result.get("train_images_per_s", 0.0)  # rank 0's: shards are equal, so each worker's
    speed = f"{rate:.1f} img/s" if workers == 1 else f"{workers}x{rate:.1f} img/s"
    epoch_s = result.get("epoch_s", 0.0)
    line = (
        f"{name} epoch {done}/{epochs}  loss {result.get('train_loss', float('nan')):.4f}  "
        f"val AUROC {result.get(metrics.PRIMARY, float('nan')):.4f}  "
        f"sens {result.get('val_sensitivity', float('nan')):.3f} "
        f"spec {result.get('val_specificity', float('nan')):.3f}  "
        + (f"{ranked} {result.get(ranked, float('nan')):.4f}  " if ranked != metrics.PRIMARY else "")
        + f"{speed}  {duration(epoch_s)}/epoch"
    )
    if done < epochs and not result.get("early_stopped"):
        line += f"  ETA {duration((epochs - done) * epoch_s)}"  # to max epochs: ASHA may stop it sooner
    return line


def result_line(name: str, result: dict, epochs: int, workers: int = 1, ranked: str = metrics.PRIMARY) -> str:
    """A trial's report: an epoch_line, or for the restored epoch that a restarted or resumed trial
    reports again first (fracture.train.worker, `replayed`), where it goes on from."""
    if result.get("replayed"):
        done = int(result.get(metrics.EPOCHS_DONE, result.get("epoch", -1) + 1))
        return f"{name} restored its checkpoint of epoch {done}/{epochs} and trains on from there"
    return epoch_line(name, result, epochs, workers, ranked)


def end_line(name: str, result: dict, epochs: int, patience: int, ranked: str = metrics.PRIMARY) -> str:
    """How a trial ended, from its last result (Tune marks a result `done` when the trial ends), in `ranked`'s terms."""
    done = int(result.get(metrics.EPOCHS_DONE, 0))
    took = duration(result.get("time_total_s", 0.0))
    value = result.get(ranked, float("nan"))
    best, label = result.get("best_" + ranked, value), _label(ranked)
    if not result.get("done"):
        return f"{name} paused after {done}/{epochs} epochs (the study was interrupted), {took}"
    if done >= epochs:
        return f"{name} finished {done}/{epochs} epochs: best {label} {best:.4f}, {took}"
    if result.get("early_stopped"):
        return (
            f"{name} stopped early after {done}/{epochs} epochs: no {label} gain for {patience} epochs "
            f"(best {best:.4f}), {took}"
        )
    return (
        f"{name} stopped by ASHA after {done}/{epochs} epochs: {label} {value:.4f} was below its rung's cutoff, {took}"
    )


def _last_error_line(trial) -> str:
    path = trial.error_file
    if path and Path(path).is_file():
        lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return f"{lines[-1]} (traceback: {path})"
    return "see the trial's error.txt"


class TrialProgress(ray.tune.Callback):
    """Tune callback on the driver: a line when a trial starts, after each epoch, and when it ends.

    Stateless: everything a line says comes from the trial's own results, so a study restored with
    `--resume` (which unpickles this callback) prints the same kind of lines.
    """

    ranked = metrics.PRIMARY  # class default: a callback pickled before it had one unpickles to this

    def __init__(self, searched: Sequence[str], *, epochs: int, patience: int, workers: int, ranked: str):
        self.keys = short_keys(list(searched))
        self.epochs, self.patience, self.workers, self.ranked = epochs, patience, workers, ranked

    def on_trial_start(self, iteration, trials, trial, **info):
        done = (trial.last_result or {}).get(metrics.EPOCHS_DONE)
        if done:
            log.info("%s resumed after epoch %d/%d", trial, done, self.epochs)
        else:
            log.info("%s started: %s", trial, searched_values(trial.config.get("config", {}), self.keys))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        log.info(result_line(str(trial), result, self.epochs, self.workers, self.ranked))

    def on_trial_complete(self, iteration, trials, trial, **info):
        log.info(end_line(str(trial), trial.last_result or {}, self.epochs, self.patience, self.ranked))

    def on_trial_recover(self, iteration, trials, trial, **info):
        log.warning("%s failed and is retried from its latest checkpoint: %s", trial, _last_error_line(trial))

    def on_trial_error(self, iteration, trials, trial, **info):
        done = (trial.last_result or {}).get(metrics.EPOCHS_DONE, 0)
        log.error("%s failed after %d/%d epochs: %s", trial, done, self.epochs, _last_error_line(trial))


def trial_progress(cfg: Config) -> TrialProgress:
    """The study's console callback: the values of search.space printed at each trial's start."""
    return TrialProgress(
        list(cfg.search.space),
        epochs=cfg.train.epochs,
        patience=cfg.train.patience,
        workers=cfg.cluster.num_workers,
        ranked=metrics.ranked(cfg),
    )
