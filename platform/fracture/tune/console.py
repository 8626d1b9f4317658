"""The study's console: a line a person can follow per trial and epoch.

Tune's own console prints a 50-row config table per trial and a status table every 30 s. Here a
Tune callback prints instead, on the driver:

    trial_002 started: dropout=0.32 l2=3.9e-05 lr_head=1.9e-04 lr_backbone=1.3e-05
    trial_002 epoch 1/3  loss 0.6130  val AUROC 0.8388  sens 0.900 spec 0.796  12.7 img/s  24 s/epoch  ETA 48 s
    trial_002 stopped by ASHA after 1/3 epochs: val AUROC 0.8388 was below its rung's cutoff (25 s)

Trials are named by their number (`trial_002`); their directories add the trial id
(`trial_002_4bd22202`), which MLflow runs and training runs are keyed by. Ray's own chatter is kept
off the console by fracture.runtime.logs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import ray.tune

from fracture.core import metrics
from fracture.core.config import Config

log = logging.getLogger(__name__)


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
