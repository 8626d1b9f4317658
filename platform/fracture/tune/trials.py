"""A finished study's trials, seen together: one table row per trial, Optuna's plots, the parent run's text.

No MLflow here: tracking writes what these functions return to the study's parent run.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

from fracture.core import metrics
from fracture.core.config import Config, distribution, flat

log = logging.getLogger(__name__)


def study_params(cfg: Config) -> dict[str, str]:
    """The parent run's params: the searched space as written in the study, and what all trials share."""
    space = {f"space.{k}": _spec_text(k, v) for k, v in cfg.search.space.items()}
    values = flat(cfg.to_dict())
    shared = (
        "seed",
        "search.num_trials",
        "search.scheduler",
        "search.grace_epochs",
        "train.epochs",
        "data.image_size",
        "model.arch",
        "model.weights",
    )
    return space | {k: str(values[k]) for k in shared if k in values}


def _spec_text(dotted: str, spec) -> str:
    """{"loguniform": [1e-6, 1e-3]} -> "loguniform[1e-06, 0.001]"."""
    dist = distribution(dotted, spec)
    return f"{dist.kind}[{', '.join(map(str, dist.args))}]"


def trials_table(results, cfg: Config, run_ids: dict[str, str]):
    """One row per trial of a Tune ResultGrid: trial_id, run_id, status, epochs, metrics.best(cfg), searched values."""
    import pandas as pd

    rows = []
    for result in results:
        values = flat((result.config or {}).get("config", {}))
        trial_id = result.metrics.get("trial_id") or Path(result.path).name
        rows.append(
            {
                "trial_id": trial_id,
                "run_id": run_ids.get(trial_id, ""),
                "status": _trial_status(result, values.get("train.epochs", cfg.train.epochs)),
                "epochs": int(result.metrics.get(metrics.EPOCHS_DONE, 0)),
                metrics.best(cfg): _best_score(result, cfg),
                **{k: values.get(k) for k in cfg.search.space},
            }
        )
    return pd.DataFrame(rows, columns=["trial_id", "run_id", "status", "epochs", metrics.best(cfg), *cfg.search.space])


def _trial_status(result, planned_epochs: int) -> str:
    if result.error:
        return "error"
    if result.metrics.get("early_stopped"):
        return "early_stopped"  # the trial's own patience
    if result.metrics.get(metrics.EPOCHS_DONE, 0) < planned_epochs:
        return "scheduler_stopped"  # ASHA judged it
    return "finished"


def _best_score(result, cfg: Config) -> float:
    """The best value of the study's ranking metric (metrics.ranked) the trial reported."""
    frame, ranked = result.metrics_dataframe, metrics.ranked(cfg)
    if frame is not None and ranked in frame and frame[ranked].notna().any():
        return float(frame[ranked].max())
    return float(result.metrics.get(metrics.best(cfg), math.nan))


def optuna_study(table, cfg: Config):
    """An in-memory Optuna study holding the table's scored trials, for Optuna's own plots.

    Tune's OptunaSearch keeps its study inside the searcher, out of reach of the ResultGrid. Every
    trial that reported counts with the best value of metrics.ranked it reached, also one ASHA stopped early.
    """
    import optuna

    scored = table[(table["status"] != "error") & table[metrics.best(cfg)].notna()]
    distributions = _optuna_distributions(cfg.search.space, scored)
    with _optuna_quiet():
        study = optuna.create_study(study_name=cfg.name, direction="maximize" if metrics.MODE == "max" else "minimize")
    for _, row in scored.iterrows():
        taken = {k: d for k, d in distributions.items() if _present(row[k])}  # a trial may lack a key
        study.add_trial(
            optuna.trial.create_trial(
                value=float(row[metrics.best(cfg)]),
                params={k: _plain(row[k]) for k in taken},
                distributions=taken,
                user_attrs={"trial_id": row["trial_id"], "status": row["status"]},
            )
        )
    return study


def _optuna_distributions(space: dict, table) -> dict:
    """Optuna's form of each searched distribution, widened to the values the trials really took.

    Ray's quniform rounds to multiples of q, which can land just outside [low, high], and its
    randint excludes the upper bound; Optuna refuses a trial whose value its distribution lacks.
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for key, spec in space.items():
        dist = distribution(key, spec)
        values = [_plain(v) for v in table[key] if _present(v)]
        try:
            if dist.kind == "choice":
                out[key] = CategoricalDistribution(dist.args)
            elif dist.kind == "randint":
                low, high = dist.ends()
                out[key] = IntDistribution(min([low, *values]), max([high, *values]))
            else:
                low, high = dist.args[:2]
                out[key] = FloatDistribution(min([low, *values]), max([high, *values]), log=dist.kind == "loguniform")
        except (TypeError, ValueError) as exc:  # e.g. a choice of lists, which Optuna's categorical refuses
            log.info("Optuna plots leave out %s (%s: %s)", key, dist.kind, exc)
    return out


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _plain(value):
    """numpy scalars -> Python ones: Optuna's distributions check types."""
    return value.item() if hasattr(value, "item") else value


@contextlib.contextmanager
def _optuna_quiet():
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


OPTUNA_PLOTS = {
    "optimization_history": "plot_optimization_history",
    "param_importances": "plot_param_importances",
    "parallel_coordinate": "plot_parallel_coordinate",
}


def optuna_plots(study, out_dir: Path) -> list[Path]:
    """Optuna's matplotlib plots of the study as PNGs; a plot the study cannot support is skipped with a log line."""
    import warnings

    import matplotlib
    import matplotlib.pyplot as plt
    import numpy as np
    import optuna.visualization.matplotlib as optuna_mpl
    from optuna.exceptions import ExperimentalWarning

    written = []
    for name, function in OPTUNA_PLOTS.items():
        reason = _cannot_plot(name, study)
        if reason:
            log.info("Optuna %s plot skipped: %s", name, reason)
            continue
        path = Path(out_dir) / f"optuna_{name}.png"
        # Optuna draws through pyplot and sets a global style: keep both from outliving the plot.
        with warnings.catch_warnings(), matplotlib.rc_context(), _optuna_quiet():
            warnings.simplefilter("ignore", ExperimentalWarning)
            # one trial: every axis of the parallel-coordinate plot spans a single value
            warnings.filterwarnings("ignore", message="Attempting to set identical low and high")
            try:
                axes = getattr(optuna_mpl, function)(study, target_name="best val AUROC")
                figure = np.ravel(axes)[0].figure
                figure.savefig(path, dpi=120, bbox_inches="tight")
                plt.close(figure)
                written.append(path)
            except Exception as exc:  # a plot is a view of the study, never a reason to fail it
                log.warning("Optuna %s plot failed: %s", name, exc)
    return written


def _cannot_plot(name: str, study) -> str | None:
    trials = study.trials
    if not trials:
        return "no trial reported a val AUROC"
    searched = {k for t in trials for k in t.distributions}
    varied = [k for k in searched if len({repr(t.params.get(k)) for t in trials}) > 1]
    if name == "parallel_coordinate" and not searched:
        return "nothing was searched"
    if name == "param_importances" and (len(trials) < 2 or not varied):
        return f"needs >= 2 trials with differing searched values ({len(trials)} trial(s), {len(varied)} varied)"
    return None


def study_note(summary: dict, table, *, artifact_dir: str) -> str:
    """The parent run's description (Markdown): how the study went and what it registered."""
    counts = table["status"].value_counts()
    outcome = ", ".join(
        f"{counts[k]} {k.replace('_', ' ')}"
        for k in ("finished", "scheduler_stopped", "early_stopped", "error")
        if k in counts
    )
    flag = (
        "now `@champion`"
        if summary["champion"]
        else (f"`@champion` kept (its {summary['ranked_by']} {summary['previous_champion_score']:.4f})")
    )
    scores = f"val_auc {summary['val_auc']:.4f}"
    if summary["objective"] != metrics.PRIMARY:
        scores += f", {summary['objective']} {summary['point']:.4f}"
    scores += f" (95% lower bound {summary['lower']:.4f})"
    return "\n".join(
        [
            f"Study **{summary['study']['name']}**: {len(table)} trial{'s' * (len(table) != 1)} ({outcome}). "
            f"The searched space is in this run's params; `{artifact_dir}/trials.csv` has one row per trial, "
            "Optuna's plots lie beside it.",
            "",
            f"Best by {summary['ranked_by']}: trial `{summary['trial_id']}`, epoch {summary['epoch']}, {scores}, "
            f"threshold {summary['threshold']:.4f}; registered as **{summary['model_uri'].removeprefix('models:/')}** "
            f"(`{summary['model_uri']}`), {flag}.",
        ]
    )
