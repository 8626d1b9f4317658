"""The model card of one registered model version: its facts as one dict, rendered as a self-contained
HTML page (figures inlined as base64 PNG, no external CSS or JS) and as Markdown.

Sections follow CLAIM, the Checklist for Artificial Intelligence in Medical Imaging (Mongan et al.,
Radiology: Artificial Intelligence 2020; 2024 update by Tejani et al.), where its items apply to a
model trained on a public dataset; the card ends with a table of the items it covers and the ones it
does not. Item numbers are the 2020 checklist's (the 2024 update renumbers some of them).

`facts` gathers what tracking.lineage read from MLflow, the checkpoint's state, evaluate.run's report
and the manifest; `render_markdown` / `render_html` are pure; `write` puts both files in a folder.
No MLflow, Ray or torch here.
"""

from __future__ import annotations

import base64
import html
import math
import os
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from fracture.core import metrics
from fracture.core.config import Config, flat
from fracture.core.names import SPLITS
from fracture.data import manifest, scan
from fracture.evaluate import holdout
from fracture.track import registry

HTML_FILE, MARKDOWN_FILE = "model_card.html", "model_card.md"
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
METRIC_LABELS = {
    "auc": "AUROC",
    "auprc": "AUPRC",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "ppv": "PPV",
    "npv": "NPV",
}


# ------------------------------------------------------------------------------------------- facts


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
    space = {k.removeprefix("space."): v for k, v in study.get("params", {}).items() if k.startswith("space.")}
    scored_dir = Path(scored_dir)
    figures = {
        key: str(scored_dir / f"{key}.png")
        for key in ("roc", "pr", "calibration", "confusion")
        if (scored_dir / f"{key}.png").is_file()
    }
    figures |= {k: str(v) for k, v in lineage.get("files", {}).items()}
    explain = report.get("explain")
    if explain and explain.get("grid"):
        figures["gradcam"] = explain["grid"]
    data = data_facts(manifest_df)
    out = {
        "generated": generated,
        "model": {k: lineage[k] for k in ("name", "version", "model_uri", "aliases", "description", "experiment_id")}
        | {
            "trial_run_id": lineage["trial"]["run_id"],
            "trial_name": lineage["trial"]["name"],
            "study_run_id": study.get("run_id", ""),
            "study_name": study.get("name", ""),
        },
        "data": data
        | {
            "source": SOURCE,
            "root": trained.data.root,
            "split_seed": trained.data.split_seed,
            "val_fraction": trained.data.val_fraction,
            "test_fraction": trained.data.test_fraction,
            "balanced": trained.data.balanced,
            "allow_truncated": trained.data.allow_truncated,
            "trained_usable": ((lineage.get("data_report") or {}).get("counts", {}).get("usable", {}).get("total")),
        },
        "training": {
            "arch": trained.model.arch,
            "weights": trained.model.weights,
            "image_size": trained.data.image_size,
            "hidden": trained.model.hidden,
            "config": {
                k: v for k, v in flat(state["config"]).items() if k.split(".")[0] in ("model", "optim", "train")
            },
            "augment": trained.data.augment,
            "epoch": state.get("epoch"),
            "threshold": float(state["threshold"]),
            "threshold_rule": registry.threshold_rule(trained),
            "objective": metrics.ranked(trained),
            "mode": metrics.MODE,
            "space": space,
            "num_trials": len(lineage.get("trials") or []) or trained.search.num_trials,
            "scheduler": trained.search.scheduler,
            "grace_epochs": trained.search.grace_epochs,
            "trials": lineage.get("trials") or [],
            "val": {k: v for k, v in lineage["tags"].items() if k.startswith("val_")},
            "software": _software(),
        },
        "results": {k: report[k] for k in ("images", "positives", "threshold", "overall", "ci95", "confusion")}
        | {"split": split, "calibration": report.get("calibration", {}), "skipped": len(report.get("skipped", []))}
        | {k: report[k] for k in SLICES if k in report},
        "explain": explain,
        "figures": figures,
    }
    out["limitations"] = limitations(out)
    out["claim"] = claim_items(out)
    return out


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def limitations(card: dict[str, Any]) -> list[str]:
    """What a reader must know before trusting the numbers, computed from the card's facts."""
    data, res, train = card["data"], card["results"], card["training"]
    hw = data["hardware"]
    out = [
        f"Implant shortcut: {hw['fractured']} of {hw['fractured_total']} fractured images "
        f"({_pct(hw['fractured'], hw['fractured_total'])}) show hardware (plates, screws), against "
        f"{hw['non_fractured']} of {hw['non_fractured_total']} non-fractured ones "
        f"({_pct(hw['non_fractured'], hw['non_fractured_total'])}). A model can score well by detecting "
        "implants rather than fractures; the implant slice in Results and the Grad-CAM examples are the check.",
        "One public source, evaluated on a held-out split of the same dataset: no external validation "
        "(other hospitals, scanners or populations), so these numbers are an upper bound on what to expect elsewhere.",
        "FracAtlas has no patient identifier: the split is by image (byte-identical copies kept together), so "
        "images of one patient can sit in different splits and flatter the test results.",
        "Labels are the dataset's image-level labels, taken as given: no second reading, no follow-up imaging.",
        f"PPV and NPV depend on prevalence ({_pct(res['positives'], res['images'])} fractured in this split); "
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
    if ece is not None and _finite(ece) and ece > 0.05:
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


# (item, topic) of CLAIM 2020, and how this card answers it: (status, where or why)
CLAIM = [
    (1, "Identification as a study of AI methodology", "covered", "Title, Model and training"),
    (2, "Structured summary", "covered", "Summary"),
    (3, "Background, intended use and clinical role", "covered", "Intended use"),
    (4, "Objectives and hypotheses", "partly", "Intended use states the task; no hypothesis is tested"),
    (5, "Prospective or retrospective study", "covered", "Data (retrospective, public dataset)"),
    (6, "Study goal", "covered", "Intended use (model creation, internal evaluation)"),
    (7, "Data sources", "covered", "Data"),
    (8, "Eligibility criteria", "partly", "Data (defects excluded); FracAtlas' own inclusion criteria: see its paper"),
    (9, "Data preprocessing", "covered", "Model and training"),
    (10, "Selection of data subsets", "covered", "Data"),
    (11, "Definitions of data elements", "partly", "Data (label, body part, hardware, view from dataset.csv)"),
    (12, "De-identification methods", "not covered", "done by the dataset's authors"),
    (13, "Handling of missing data", "covered", "Data (excluded images and why)"),
    (14, "Definition of the reference standard", "partly", "Data: the dataset's image-level labels"),
    (15, "Rationale for the reference standard", "not covered", "see the FracAtlas paper"),
    (16, "Source and qualifications of annotators", "not covered", "see the FracAtlas paper"),
    (17, "Annotation tools", "not covered", "see the FracAtlas paper"),
    (18, "Inter- and intrarater variability", "not covered", "not reported for these labels"),
    (19, "Sample size and how it was determined", "partly", "Data gives the counts; no power calculation"),
    (20, "Assignment to partitions, proportions", "covered", "Data (seeded, stratified split)"),
    (21, "Level at which partitions are disjoint", "partly", "image level; no patient identifier exists"),
    (22, "Detailed model description", "covered", "Model and training"),
    (23, "Software libraries and versions", "covered", "Model and training"),
    (24, "Initialization of model parameters", "covered", "Model and training (weights)"),
    (25, "Training details and hyperparameters", "covered", "Model and training"),
    (26, "Method of selecting the final model", "covered", "Model and training (selection rule)"),
    (27, "Ensembling", "covered", "none: one model"),
    (28, "Metrics of model performance", "covered", "Results"),
    (29, "Statistical measures of uncertainty", "covered", "Results (95% bootstrap CIs)"),
    (30, "Robustness or sensitivity analysis", "partly", "Results: slices by body part, implant, view"),
    (31, "Explainability methods and their validation", "covered", "Explainability (pointing game against boxes)"),
    (32, "Validation on external data", "not covered", "one dataset only (jobs/evaluate.py --folder can)"),
    (33, "Flow of cases (inclusion / exclusion)", "partly", "Data: counts table, no diagram"),
    (34, "Characteristics of cases per partition", "partly", "Data: class and body part per split; no demographics"),
    (35, "Performance on all data partitions", "partly", "validation at selection, this split in Results"),
    (36, "Estimates of diagnostic accuracy with precision", "covered", "Results"),
    (37, "Failure analysis of misclassified cases", "partly", "confusion matrix, slices, Grad-CAM examples"),
    (38, "Limitations, bias, generalizability", "covered", "Limitations"),
    (39, "Implications for practice", "covered", "Intended use: not for clinical use"),
    (40, "Registration number and registry", "not covered", "not a registered trial"),
    (41, "Access to protocol, code and data", "covered", "Lineage (MLflow runs, config); data is public"),
    (42, "Funding", "not covered", "not stated"),
]


def claim_items(card: dict[str, Any]) -> list[tuple[int, str, str, str]]:
    """CLAIM, with item 31 downgraded when no Grad-CAM example was scored against a box."""
    game = (card.get("explain") or {}).get("pointing_game") or {}
    out = []
    for item, topic, status, where in CLAIM:
        if item == 31 and not game.get("images"):
            status, where = "partly", "no fractured image with a box was explained (--explain K)"
        out.append((item, topic, status, where))
    return out


# --------------------------------------------------------------------------------------- rendering


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _f(value, spec: str = ".3f") -> str:
    return format(value, spec) if _finite(value) else "-"


def _ci(card: dict, name: str) -> str:
    lo, hi = card["results"]["ci95"].get(name, (None, None))
    return f"[{_f(lo)}, {_f(hi)}]" if _finite(lo) and _finite(hi) else "-"


def _blocks(card: dict[str, Any]) -> list[tuple]:
    """The card as a list of blocks, ("h1"|"h2"|"h3"|"p", text), ("ul", [text]), ("table", header, rows),
    ("img", figure key, caption): one structure, two renderers."""
    m, d, t, r = card["model"], card["data"], card["training"], card["results"]
    o = r["overall"]
    blocks: list[tuple] = [
        ("h1", f"Model card: {m['name']} version {m['version']}"),
        (
            "p",
            f"{m['model_uri']}{' (@' + ', @'.join(m['aliases']) + ')' if m['aliases'] else ''}, "
            f"generated {card['generated']}.",
        ),
        ("h2", "Summary"),
        (
            "p",
            f"A {t['arch']} convolutional network (deep learning) that gives the probability of a fracture "
            f"on one X-ray, trained on FracAtlas at {t['image_size']} px. On the {r['split']} split "
            f"({r['images']} images, {r['positives']} fractured) it reaches AUROC {_f(o['auc'])} "
            f"(95% CI {_ci(card, 'auc')}), and at its stored threshold {_f(r['threshold'])} a sensitivity of "
            f"{_f(o['sensitivity'])} and a specificity of {_f(o['specificity'])}. "
            "A research tool, not for clinical use.",
        ),
        ("h2", "Intended use"),
        ("ul", INTENDED_USE),
        ("p", "Not intended for:"),
        ("ul", NOT_FOR),
    ]
    # -- data
    hw = d["hardware"]
    excluded = [[s, v["count"], v["decision"]] for s, v in d["excluded"].items()]
    blocks += [
        ("h2", "Data"),
        ("p", f"Source: {d['source']}. A retrospective, public dataset; images read from {d['root']}."),
        (
            "p",
            f"{d['rows']} images listed, {d['usable']} usable. Split: seeded (seed {d['split_seed']}), "
            f"{1 - d['val_fraction'] - d['test_fraction']:.0%} / {d['val_fraction']:.0%} / {d['test_fraction']:.0%} "
            "train / val / test, stratified by label × body part; byte-identical copies stay in one split"
            + (", balanced (as many non-fractured as fractured)" if d["balanced"] else "")
            + (
                f"; {d['left_out_by_balancing']} usable images left out by balancing"
                if d["left_out_by_balancing"]
                else ""
            )
            + ".",
        ),
    ]
    blocks.append(("h3", "Excluded or corrected images"))
    if excluded:
        blocks.append(("table", ["status", "images", "decision"], excluded))
    else:
        blocks.append(("p", "The audit found no missing, unreadable, truncated, duplicate or mislabelled file."))
    blocks += [
        ("h3", "Class balance per split"),
        (
            "table",
            ["split", "images", "fractured", "fractured share"],
            [[s, v["total"], v["fractured"], _pct(v["fractured"], v["total"])] for s, v in d["splits"].items()],
        ),
        ("h3", "Per body part (fractured / images)"),
        (
            "table",
            ["body part", *SPLITS],
            [
                [part, *(f"{c['fractured']} / {c['total']}" for c in counts.values())]
                for part, counts in d["body_parts"].items()
            ],
        ),
        (
            "p",
            f"Implants (hardware) among usable images: {hw['fractured']} of {hw['fractured_total']} fractured, "
            f"{hw['non_fractured']} of {hw['non_fractured_total']} non-fractured.",
        ),
    ]
    # -- model and training
    c = t["config"]
    recipe = [
        [
            "architecture",
            f"{t['arch']} convolutional features → global average pooling → Dense {t['hidden']} "
            f"ReLU (L2 {_g(c.get('model.l2'))}) → dropout {_g(c.get('model.dropout'))} → 1 logit (sigmoid)",
        ],
        ["weights (initialization)", "random (trained from scratch)" if t["weights"] in ("none", "") else t["weights"]],
        [
            "input",
            f"{t['image_size']}×{t['image_size']} px, grayscale decoded to 3 channels, ImageNet mean/std in the model",
        ],
        [
            "optimizer",
            f"{c.get('optim.name')}, lr head {_g(c.get('optim.lr_head'))}, lr backbone "
            f"{_g(c.get('optim.lr_backbone'))}, schedule {c.get('optim.schedule')}",
        ],
        [
            "epochs",
            f"{c.get('train.epochs')} planned (warm-up {c.get('train.warmup_epochs')}, patience "
            f"{c.get('train.patience')}); selected epoch {t['epoch']} (counted from 0)",
        ],
        ["batch", f"{c.get('train.batch_size_per_worker')} per worker"],
        ["augmentation", str(t["augment"])],
        ["class imbalance", str(c.get("train.imbalance"))],
        ["selection", f"best epoch of the best trial by {t['objective']} ({t['mode']}) on the validation split"],
        ["threshold", f"{t['threshold']:.4f}: {t['threshold_rule']}, on the validation split"],
        [
            "search",
            f"{t['num_trials']} trial(s), Optuna sampler, scheduler {t['scheduler']} "
            f"(grace {t['grace_epochs']} epoch(s))",
        ],
        ["validation at selection", ", ".join(f"{k} {_f(float(v))}" for k, v in sorted(t["val"].items())) or "-"],
        ["software", ", ".join(f"{k} {v}" for k, v in t["software"].items())],
    ]
    blocks += [("h2", "Model and training"), ("table", ["", ""], recipe)]
    if t["space"]:
        blocks += [("h3", "Searched space"), ("table", ["parameter", "distribution"], sorted(t["space"].items()))]
    if t["trials"]:
        keys = [k for k in t["trials"][0] if k not in ("run_id",)]
        blocks += [
            ("h3", "Trials"),
            ("table", keys, [[_cell(row.get(k)) for k in keys] for row in t["trials"]]),
        ]
    for key, caption in (
        ("training_curves", "Training curves of the selected trial"),
        ("optuna_optimization_history", "Search history (Optuna)"),
    ):
        if key in card["figures"]:
            blocks.append(("img", key, caption))
    # -- results
    cm = r["confusion"]
    blocks += [
        ("h2", "Results"),
        (
            "p",
            f"Split {r['split']}: {r['images']} images ({r['positives']} fractured), scored fresh for this card"
            + (f"; {r['skipped']} file(s) could not be scored" if r["skipped"] else "")
            + f". Threshold {r['threshold']:.4f} (stored with the model, chosen on validation). "
            "95% CIs: percentile bootstrap, 1000 resamples.",
        ),
        (
            "table",
            ["metric", "value", "95% CI"],
            [[label, _f(o[k]), _ci(card, k)] for k, label in METRIC_LABELS.items()],
        ),
        (
            "p",
            f"Confusion at the threshold: TP {cm['tp']}, FN {cm['fn']}, TN {cm['tn']}, FP {cm['fp']}. "
            f"Calibration: Brier score {_f(r['calibration'].get('brier'))}, expected calibration error "
            f"(10 equal bins) {_f(r['calibration'].get('ece'))}.",
        ),
    ]
    for key, caption in (
        ("roc", "ROC curve, operating point marked"),
        ("pr", "Precision-recall curve"),
        ("calibration", "Calibration (reliability) and score histogram"),
        ("confusion", "Confusion matrix"),
    ):
        if key in card["figures"]:
            blocks.append(("img", key, caption))
    for key, name in SLICES.items():
        if key in r:
            rows = [
                [
                    k,
                    v["n"],
                    v["positives"],
                    _f(v["auc"]),
                    _f(v["sensitivity"]),
                    _f(v["specificity"]),
                    "small" if v.get("small") else "",
                ]
                for k, v in r[key].items()
            ]
            blocks += [
                ("h3", f"By {name}"),
                ("table", [name, "images", "fractured", "AUROC", "sens", "spec", "warning"], rows),
            ]
    if any(v.get("small") for key in SLICES for v in r.get(key, {}).values()):
        blocks.append(
            (
                "p",
                f"small: fewer than {holdout.SMALL_SLICE_IMAGES} images or {holdout.SMALL_SLICE_PER_CLASS} of a "
                "class; no AUROC, and its sensitivity / specificity rest on a few images.",
            )
        )
    # -- explainability
    blocks.append(("h2", "Explainability"))
    ex = card.get("explain")
    if ex:
        blocks.append(
            (
                "p",
                "Grad-CAM on the last convolutional block, for the most confident fracture calls and random "
                "others. Pointing game: a hit when the heatmap's peak lies inside a fracture box of the "
                "dataset's YOLO annotations (green). " + _pointing(ex),
            )
        )
        blocks.append(
            (
                "table",
                ["image", "why shown", "P(fracture)", "label", "boxes", "pointing game"],
                [
                    [
                        it["image_id"],
                        it["reason"],
                        _f(it["probability"]),
                        it["label"],
                        it["boxes"],
                        {True: "hit", False: "miss", None: "-"}[it["hit"]],
                    ]
                    for it in ex["items"]
                ],
            )
        )
        if "gradcam" in card["figures"]:
            blocks.append(("img", "gradcam", "Grad-CAM overlays (fracture boxes in green)"))
    else:
        blocks.append(("p", "No Grad-CAM examples were made (--explain 0)."))
    blocks += [("h2", "Limitations"), ("ul", card["limitations"])]
    # -- lineage + CLAIM
    blocks += [
        ("h2", "Lineage"),
        (
            "table",
            ["", ""],
            [
                ["registered model", f"{m['model_uri']}"],
                ["trial run", f"{m['trial_name']} ({m['trial_run_id']})"],
                ["study run", f"{m['study_name']} ({m['study_run_id']})" if m["study_run_id"] else "-"],
                ["experiment", m["experiment_id"]],
            ],
        ),
        ("h2", "CLAIM checklist"),
        (
            "p",
            "CLAIM: Checklist for Artificial Intelligence in Medical Imaging (Mongan et al., Radiology: "
            "Artificial Intelligence 2020; 2024 update). Item numbers are the 2020 checklist's.",
        ),
        ("table", ["item", "topic", "this card", "where / why"], [list(row) for row in card["claim"]]),
    ]
    return blocks


def _g(value) -> str:
    return format(value, ".3g") if _finite(value) else str(value)


def _cell(value) -> str:
    if isinstance(value, float):
        return _g(value)
    return "" if value is None else str(value)


def _pointing(ex: dict) -> str:
    game = ex["pointing_game"]
    if not game["images"]:
        return f"{ex['explained']} images explained, none a fractured image with a box: no pointing-game score."
    return f"Hits: {game['hits']} of {game['images']} fractured images with boxes (rate {game['hit_rate']:.2f})."


def render_markdown(card: dict[str, Any], figure_links: dict[str, str] | None = None) -> str:
    """The card as Markdown; figures link to `figure_links[key]` (default: the card's own paths)."""
    links = figure_links if figure_links is not None else card["figures"]
    out: list[str] = []
    for block in _blocks(card):
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            out += ["#" * int(kind[1]) + " " + block[1], ""]
        elif kind == "p":
            out += [block[1], ""]
        elif kind == "ul":
            out += [f"- {item}" for item in block[1]] + [""]
        elif kind == "table":
            head, rows = block[1], block[2]
            out += ["| " + " | ".join(map(_md, head)) + " |", "|" + "---|" * len(head)]
            out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows] + [""]
        elif kind == "img" and block[1] in links:
            out += [f"![{block[2]}]({links[block[1]]})", ""]
    return "\n".join(out)


def _md(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #bbb; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .6em 0 1em; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f0f0f0; text-align: left; } td { vertical-align: top; }
figure { display: inline-block; margin: .5em 1em .5em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; } figcaption { font-size: 13px; color: #555; }
.covered { color: #176b2c; } .partly { color: #8a5a00; } .not { color: #a11; }
"""


def render_html(card: dict[str, Any], images: dict[str, bytes]) -> str:
    """The card as one HTML page: inline CSS, figures (`images[key]`: PNG bytes) as data: URIs, nothing external."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">']
    parts += [f"<title>{e(_blocks(card)[0][1])}</title><style>{CSS}</style></head><body>"]
    for block in _blocks(card):
        kind = block[0]
        if kind in ("h1", "h2", "h3", "p"):
            parts.append(f"<{kind}>{e(block[1])}</{kind}>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "table":
            head, rows = block[1], block[2]
            cells = "".join(f"<th>{e(str(h))}</th>" for h in head) if any(head) else ""
            parts.append("<table>" + (f"<tr>{cells}</tr>" if cells else ""))
            for row in rows:
                parts.append("<tr>" + "".join(_td(c) for c in row) + "</tr>")
            parts.append("</table>")
        elif kind == "img" and block[1] in images:
            data = base64.b64encode(images[block[1]]).decode("ascii")
            width = {"gradcam": 1000, "optuna_optimization_history": 600}.get(block[1], 480)
            parts.append(
                f'<figure style="max-width:{width}px"><img alt="{e(block[2])}" src="data:image/png;base64,{data}">'
                f"<figcaption>{e(block[2])}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def _td(value) -> str:
    text = str(value)
    css = {"covered": "covered", "partly": "partly", "not covered": "not", "small": "partly"}.get(text)
    return f'<td class="{css}">{html.escape(text)}</td>' if css else f"<td>{html.escape(text)}</td>"


def write(card: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write model_card.html (self-contained) and model_card.md (figures linked relative to it) into out_dir.

    Returns:
        [html path, markdown path].
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {k: Path(v) for k, v in card["figures"].items() if Path(v).is_file()}
    html_path, md_path = out_dir / HTML_FILE, out_dir / MARKDOWN_FILE
    html_path.write_text(render_html(card, {k: p.read_bytes() for k, p in figures.items()}), encoding="utf-8")
    links = {k: Path(os.path.relpath(p, out_dir)).as_posix() for k, p in figures.items()}
    md_path.write_text(render_markdown(card, links) + "\n", encoding="utf-8")
    return [html_path, md_path]
