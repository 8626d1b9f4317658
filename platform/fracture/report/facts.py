"""The facts of one registered version's model card, as one plain dict: no MLflow, Ray or torch here.

`facts` gathers what fracture.track.lineage read from MLflow, the checkpoint's state, the holdout
report of a fresh scoring (fracture.evaluate.holdout) and the manifest; `limitations` says what a
reader must know before trusting the numbers, computed from those facts.
"""

from __future__ import annotations

import math
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from fracture.core import metrics
from fracture.core.config import Config, flat
from fracture.core.names import SPLITS
from fracture.data import manifest, scan
from fracture.evaluate import holdout
from fracture.report.claim import claim_items
from fracture.track import registry

SOURCE = (
    "FracAtlas: Abedeen et al., “FracAtlas: A Dataset for Fracture Classification, Localization and "
    "Segmentation of Musculoskeletal Radiographs”, Scientific Data 10, 521 (2023); licence CC BY 4.0"
)


INTENDED_USE = [
    "Research tool: ranks adult musculoskeletal X-rays (hand, leg, hip, shoulder) from FracAtlas by the "
    "probability that they show a fracture, to study training, search and evaluation methods.",
    "Not a medical device: it has no regulatory clearance, and was never tested in a clinical workflow.",
]


NOT_FOR = [
    "clinical decisions, triage or diagnosis of any patient;",
    "children, other body parts, CT / MRI, or images from other hospitals and scanners without a new evaluation;",
    "localising fractures: the Grad-CAM heatmaps below show where the model looked, not where a fracture is.",
]


SOFTWARE = ("torch", "torchvision", "ray", "mlflow", "optuna", "scikit-learn")
SLICES = {"by_body_part": "body part", "by_hardware": "implant (hardware)", "by_view": "view"}


def data_facts(df: pd.DataFrame) -> dict[str, Any]:
    """Counts of a manifest for the card: statuses, splits and body parts by class, implants by class.

    Args:
        df: a manifest (manifest.load): image_id, label, body_part, hardware, status, usable, split.
    Returns:
        {"rows", "usable", "excluded" {status: {count, decision}} (defects only, count > 0),
        "splits" {split: {fractured, total}}, "body_parts" {body_part: {split: {fractured, total}}},
        "hardware" {fractured, fractured_total, non_fractured, non_fractured_total} over the usable images}.
    """
    usable = df[df["usable"]]
    in_split = usable[usable["split"] != ""]

    def by_class(frame: pd.DataFrame) -> dict[str, int]:
        return {"fractured": int((frame["label"] == 1).sum()), "total": len(frame)}

    implants = usable["hardware"] == 1
    return {
        "rows": len(df),
        "usable": len(usable),
        "excluded": {
            s: {"count": int((df["status"] == s).sum()), "decision": manifest.DECISIONS[s]}
            for s in scan.STATUSES[1:]
            if (df["status"] == s).any()
        },
        "left_out_by_balancing": int((usable["split"] == "").sum()),
        "splits": {s: by_class(in_split[in_split["split"] == s]) for s in SPLITS},
        "body_parts": {
            part: {s: by_class(grp[grp["split"] == s]) for s in SPLITS}
            for part, grp in in_split.groupby("body_part", sort=True)
        },
        "hardware": {
            "fractured": int((implants & (usable["label"] == 1)).sum()),
            "fractured_total": int((usable["label"] == 1).sum()),
            "non_fractured": int((implants & (usable["label"] == 0)).sum()),
            "non_fractured_total": int((usable["label"] == 0).sum()),
        },
    }


def _software() -> dict[str, str]:
    out = {}
    for name in SOFTWARE:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def facts(
    *,
    lineage: dict[str, Any],
    state: dict[str, Any],
    report: dict[str, Any],
    manifest_df: pd.DataFrame,
    split: str,
    scored_dir: str | Path,
    generated: str,
) -> dict[str, Any]:
    """Everything the card says, as plain data.

    Args:
        lineage: tracking.lineage of the version; state: its checkpoint's state (model_source.load);
        report: evaluate.run's report of `split` (scored into `scored_dir`, whose PNGs the card shows);
        manifest_df: the manifest the split was taken from; generated: when (ISO time).
    """
    trained = Config.from_dict(state["config"])
    study = lineage.get("study") or {}
    explain = report.get("explain")
    out = {
        "generated": generated,
        "model": {k: lineage[k] for k in ("name", "version", "model_uri", "aliases", "description", "experiment_id")}
        | {
            "trial_run_id": lineage["trial"]["run_id"],
            "trial_name": lineage["trial"]["name"],
            "study_run_id": study.get("run_id", ""),
            "study_name": study.get("name", ""),
        },
        "data": data_facts(manifest_df) | _data_settings(trained, lineage),
        "training": _training_facts(trained, state, lineage),
        "results": {k: report[k] for k in ("images", "positives", "threshold", "overall", "ci95", "confusion")}
        | {"split": split, "calibration": report.get("calibration", {}), "skipped": len(report.get("skipped", []))}
        | {k: report[k] for k in SLICES if k in report},
        "explain": explain,
        "figures": _figures(Path(scored_dir), lineage, explain),
    }
    out["limitations"] = limitations(out)
    out["claim"] = claim_items(out)
    return out


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _data_settings(trained: Config, lineage: dict[str, Any]) -> dict[str, Any]:
    """How the data was split and read, from the trained config; the usable count it was trained with."""
    d = trained.data
    return {
        "source": SOURCE,
        "root": d.root,
        "split_seed": d.split_seed,
        "val_fraction": d.val_fraction,
        "test_fraction": d.test_fraction,
        "balanced": d.balanced,
        "allow_truncated": d.allow_truncated,
        "trained_usable": ((lineage.get("data_report") or {}).get("counts", {}).get("usable", {}).get("total")),
    }


def _training_facts(trained: Config, state: dict[str, Any], lineage: dict[str, Any]) -> dict[str, Any]:
    """The recipe, the selection and the search, from the trained config, the checkpoint and its study."""
    space = (lineage.get("study") or {}).get("params", {})
    return {
        "arch": trained.model.arch,
        "weights": trained.model.weights,
        "image_size": trained.data.image_size,
        "hidden": trained.model.hidden,
        "config": {k: v for k, v in flat(state["config"]).items() if k.split(".")[0] in ("model", "optim", "train")},
        "augment": trained.data.augment,
        "epoch": state.get("epoch"),
        "threshold": float(state["threshold"]),
        "threshold_rule": registry.threshold_rule(trained),
        "objective": metrics.ranked(trained),
        "mode": metrics.MODE,
        "space": {k.removeprefix("space."): v for k, v in space.items() if k.startswith("space.")},
        "num_trials": len(lineage.get("trials") or []) or trained.search.num_trials,
        "scheduler": trained.search.scheduler,
        "grace_epochs": trained.search.grace_epochs,
        "trials": lineage.get("trials") or [],
        "val": {k: v for k, v in lineage["tags"].items() if k.startswith("val_")},
        "software": _software(),
    }


def _figures(scored_dir: Path, lineage: dict[str, Any], explain: dict | None) -> dict[str, str]:
    """{figure key: PNG path}: the scoring's plots, the lineage's (curves, Optuna), the Grad-CAM grid."""
    figures = {
        key: str(scored_dir / f"{key}.png")
        for key in ("roc", "pr", "calibration", "confusion")
        if (scored_dir / f"{key}.png").is_file()
    }
    figures |= {k: str(v) for k, v in lineage.get("files", {}).items()}
    if explain and explain.get("grid"):
        figures["gradcam"] = explain["grid"]
    return figures


def pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def limitations(card: dict[str, Any]) -> list[str]:
    """What a reader must know before trusting the numbers, computed from the card's facts."""
    data, res, train = card["data"], card["results"], card["training"]
    hw = data["hardware"]
    out = [
        f"Implant shortcut: {hw['fractured']} of {hw['fractured_total']} fractured images "
        f"({pct(hw['fractured'], hw['fractured_total'])}) show hardware (plates, screws), against "
        f"{hw['non_fractured']} of {hw['non_fractured_total']} non-fractured ones "
        f"({pct(hw['non_fractured'], hw['non_fractured_total'])}). A model can score well by detecting "
        "implants rather than fractures; the implant slice in Results and the Grad-CAM examples are the check.",
        "One public source, evaluated on a held-out split of the same dataset: no external validation "
        "(other hospitals, scanners or populations), so these numbers are an upper bound on what to expect elsewhere.",
        "FracAtlas has no patient identifier: the split is by image (byte-identical copies kept together), so "
        "images of one patient can sit in different splits and flatter the test results.",
        "Labels are the dataset's image-level labels, taken as given: no second reading, no follow-up imaging.",
        f"PPV and NPV depend on prevalence ({pct(res['positives'], res['images'])} fractured in this split); "
        "at another prevalence they differ, while sensitivity and specificity do not.",
        f"The model sees {train['image_size']} px downsampled images; fine, non-displaced fractures may vanish "
        "at that size.",
    ]
    rows = [row for key in SLICES for row in res.get(key, {}).values()]
    small = sum(bool(row.get("small")) for row in rows)
    if small:
        out.append(
            f"{small} of the {len(rows)} slices in Results are small (fewer than {holdout.SMALL_SLICE_IMAGES} "
            f"images or {holdout.SMALL_SLICE_PER_CLASS} of a class): no AUROC, and wide uncertainty."
        )
    ece = res.get("calibration", {}).get("ece")
    if ece is not None and finite(ece) and ece > 0.05:
        out.append(
            f"Scores are not calibrated probabilities (ECE {ece:.3f}): training weights fractures up "
            "(pos_weight), which pushes scores up; read them as a ranking and use the stored threshold."
        )
    trained_usable = data.get("trained_usable")
    if trained_usable is not None and trained_usable != data["usable"]:
        out.append(
            f"The manifest scored here has {data['usable']} usable images, the one the model was trained "
            f"with had {trained_usable}: the data changed since training."
        )
    game = (card.get("explain") or {}).get("pointing_game") or {}
    if game.get("images"):
        out.append(
            f"The Grad-CAM pointing game rests on {game['images']} fractured image(s) with boxes: an illustration, "
            "not a measurement."
        )
    return out
