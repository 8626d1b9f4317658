"""What a finished study registers, and when it becomes the champion: decisions and texts, no I/O.

study.run picks the candidate here (the best epoch of the best trial whose checkpoint is still on
disk), tracking logs and registers it, and asks `wins` whether `@champion` moves. Keeping the
policy out of tracking lets it be read, and tested, without an MLflow store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fracture.core import metrics, storage
from fracture.core.config import Config, flat
from fracture.model import checkpoint

CHAMPION = "champion"  # the registry alias that serving and evaluation load by default


@dataclass(frozen=True)
class Candidate:
    """The checkpoint a study registers: its trial, its metrics row, and the model loaded from it."""

    trial_id: str
    row: dict[str, Any]  # the epoch's reported metrics, with checkpoint_path
    net: Any  # FractureNet, eval mode
    state: dict[str, Any]  # the checkpoint's state.json: epoch, config, threshold, metrics, ...
    # Every epoch its trial reported, past the chosen one too (state["history"] stops at the
    # checkpoint's epoch): the learning curves logged beside the model show where it was picked.
    history: tuple[dict[str, Any], ...] = ()

    @property
    def checkpoint(self) -> str:
        return self.row["checkpoint_path"]

    @property
    def epoch(self) -> int:
        return int(self.row["epoch"])

    @property
    def curves_history(self) -> list[dict[str, Any]]:
        """What its learning curves show: every epoch its trial ran, else its checkpoint's history."""
        return list(self.history) or self.state.get("history", [])


def best_checkpoint(results, metric: str = metrics.PRIMARY) -> tuple[Any, dict]:
    """(ray Result, metrics row) of the best epoch of the best trial that has a checkpoint on disk.

    metric: what ranks trials and epochs, the study's metrics.ranked(cfg).
    """
    best = results.get_best_result(metric=metric, mode=metrics.MODE, scope="all")
    frame = best.metrics_dataframe
    if frame is None or "checkpoint_path" not in frame:
        raise RuntimeError(f"best trial {best.path} reported no checkpoint")
    frame = frame[frame["checkpoint_path"].notna()].sort_values(metric, ascending=metrics.MODE == "min")
    for _, row in frame.iterrows():
        path = _location(row["checkpoint_path"], best.filesystem)
        if storage.is_remote(path) or Path(path).joinpath("state.json").is_file():
            return best, row.to_dict() | {"checkpoint_path": path}
    raise RuntimeError(f"best trial {best.path}: none of its checkpoints is still on disk")


def _location(path: str, filesystem) -> str:
    """A reported checkpoint path as the study's storage names it. Ray reports a checkpoint on remote
    storage by its path in the bucket (TorchTrainer's TuneReportCallback, a resumed trial's replay),
    without the scheme, which would read as a local path."""
    import pyarrow.fs

    if storage.is_remote(path) or isinstance(filesystem, pyarrow.fs.LocalFileSystem):
        return path
    return f"{filesystem.type_name}://{path}"


def candidate(results, metric: str = metrics.PRIMARY) -> Candidate:
    """The study's best checkpoint by `metric` (best_checkpoint), loaded: what tracking.register logs and registers."""
    best, row = best_checkpoint(results, metric)
    with storage.local_dir(row["checkpoint_path"]) as files:  # torch.load opens files on this disk
        net, state = checkpoint.load_model(files)
    return Candidate(trial_id=best.metrics["trial_id"], row=row, net=net, state=state, history=trial_history(best))


def trial_history(result) -> tuple[dict[str, Any], ...]:
    """One row per epoch of a Tune result, in epoch order; an epoch replayed after a restart counts once."""
    frame = result.metrics_dataframe
    if frame is None or "epoch" not in frame:
        return ()
    rows = {}
    for row in frame.to_dict("records"):
        epoch = row.get("epoch")
        if epoch is not None and epoch == epoch:  # not a row without an epoch (None, NaN)
            rows[int(epoch)] = row  # the last report of an epoch wins
    return tuple(rows[e] for e in sorted(rows))


TAG_DIGITS = 6  # version tags hold metrics to 6 decimals (version_tags): the champion's score is read back from them


def wins(score: float, champion_score: float | None) -> bool:
    """The champion rule: a new version takes `@champion` only when it beats the current one's score.

    The score is the study's ranking metric (metrics.ranked: val AUROC by default, or an objective's
    lower bound), the champion's read back from its version tag of that name. Compared at the tags'
    precision: the champion's 0.958333 from its tag must not lose to the same model registered
    again (0.9583333...).
    """
    if champion_score is None or math.isnan(champion_score):  # nan: a one-class val set scored it; anything beats it
        return True
    return round(score, TAG_DIGITS) > round(champion_score, TAG_DIGITS)


def summary(cfg: Config, chosen: Candidate, *, run_id: str, parent_run_id: str, study_dir: str) -> dict:
    """What was picked and where it came from: the registration's summary before anything is logged.

    Args:
        run_id: the MLflow run of the candidate's trial (the parent's when it has none).
        parent_run_id, study_dir: the study's parent run and directory, for the version's description.
    """
    trained = Config.from_dict(chosen.state["config"])
    row = chosen.row
    objective = metrics.objective(cfg)
    return {
        "trial_id": chosen.trial_id,
        "run_id": run_id,
        "checkpoint": chosen.checkpoint,
        "epoch": int(row["epoch"]),
        "val_auc": float(row[metrics.PRIMARY]),
        # The objective on val, its bootstrap lower bound, and which of them ranked (the score).
        "objective": objective,
        "point": float(row[objective]),
        "lower": float(row.get(objective + metrics.LOWER, float("nan"))),
        "ranked_by": metrics.ranked(cfg),
        "score": float(row[metrics.ranked(cfg)]),
        "threshold": float(chosen.state["threshold"]),
        "image_size": trained.data.image_size,
        "arch": trained.model.arch,
        "threshold_rule": threshold_rule(trained),
        "params": {k: v for k, v in flat(chosen.state["config"]).items() if k in cfg.search.space},
        "metrics": {k: v for k, v in row.items() if k.startswith("val_")},
        "study": {"name": cfg.name, "parent_run_id": parent_run_id, "study_dir": study_dir},
    }


def threshold_rule(cfg: Config) -> str:
    if cfg.train.threshold == "sensitivity":
        return f"the highest threshold with val sensitivity >= {cfg.train.target_sensitivity:g}"
    return "Youden's J, max(sensitivity + specificity - 1)"


def version_tags(summary: dict) -> dict[str, str]:
    m = summary["metrics"]
    objective = summary.get("objective", metrics.PRIMARY)
    # The objective and its lower bound: the next study's champion rule reads its score (wins) from them.
    ranking = (objective, objective + metrics.LOWER)
    # Few tags: the UI lists them by name in a short box; the ids are in the description.
    return {
        "threshold": f"{summary['threshold']:.{TAG_DIGITS}f}",
        metrics.PRIMARY: f"{summary['val_auc']:.{TAG_DIGITS}f}",
        **{k: f"{m[k]:.{TAG_DIGITS}f}" for k in ("val_sensitivity", "val_specificity", *ranking) if k in m},
        "image_size": str(summary["image_size"]),
        "study": summary["study"]["name"],
    }


def version_description(summary: dict) -> str:
    """The model version's description (Markdown): how to call it, what it returns, where it came from."""
    s, m, study = summary["image_size"], summary["metrics"], summary["study"]
    objective = summary.get("objective", metrics.PRIMARY)
    shown = ", ".join(
        f"{k.removeprefix('val_')} {m[k]:.4f}"
        for k in dict.fromkeys(
            (metrics.PRIMARY, "val_sensitivity", "val_specificity", objective, objective + metrics.LOWER)
        )
        if k in m
    )
    return "\n".join(
        [
            f"Bone-fracture detector (FractureNet: {summary['arch']} features + head), trial "
            f"{summary['trial_id']}, epoch {summary['epoch']} (counted from 0, as the step in its charts).",
            "",
            f"- **Input**: float32 images in [0, 1], shape N×3×{s}×{s} (RGB, channels first; image size "
            f"S = {s} px, the size it was trained at; any batch size N). The model normalises them itself "
            "(ImageNet mean/std).",
            "- **Output, `mlflow.pyfunc.load_model(uri).predict(x)`**: a DataFrame with `probability` "
            "(P(fracture)) and `fracture` (bool: probability >= threshold). Needs the `fracture` package "
            "installed (its loader is `fracture.track.flavor`).",
            "- **Output, `mlflow.pytorch.load_model(uri)(x)`**: a torch module returning logits, shape N×1; "
            "probability = sigmoid(logit).",
            f"- **Threshold**: {summary['threshold']:.6f}, chosen on the validation split by "
            f"{summary['threshold_rule']}. Another operating point: "
            '`mlflow.pyfunc.load_model(uri, model_config={"threshold": t})`.',
            f"- **Validation** (at that threshold): {shown}.",
            f"- **Study**: `{study['name']}`, parent run `{study['parent_run_id']}`, study dir "
            f"`{study['study_dir']}`; trial run `{summary['run_id']}`.",
        ]
    )


def model_description(name: str) -> str:
    """The registered model's own description, set once, when its first version arrives."""
    return (
        "Bone-fracture detection on X-rays (VGG16 + small head). Each version's description says "
        f"its input size, threshold and study; `models:/{name}@{CHAMPION}` is the best by its study's ranking "
        "metric (val AUROC unless search.objective / search.rank_by say otherwise)."
    )
