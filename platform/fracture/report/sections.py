"""The card's sections as blocks, ("h1"|"h2"|"h3"|"p", text), ("ul", [text]), ("table", header, rows),
("img", figure key, caption): one structure for both renderers (fracture.report.render).
"""

from __future__ import annotations

from typing import Any

from fracture.core.names import SPLITS
from fracture.evaluate import holdout
from fracture.report.facts import INTENDED_USE, NOT_FOR, SLICES, finite, pct

METRIC_LABELS = {
    "auc": "AUROC",
    "auprc": "AUPRC",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "ppv": "PPV",
    "npv": "NPV",
}


def _f(value, spec: str = ".3f") -> str:
    return format(value, spec) if finite(value) else "-"


def _ci(card: dict, name: str) -> str:
    lo, hi = card["results"]["ci95"].get(name, (None, None))
    return f"[{_f(lo)}, {_f(hi)}]" if finite(lo) and finite(hi) else "-"


def summary(card: dict[str, Any]) -> list[tuple]:
    """Title, model URI, a summary of what it does and how well, and its intended use."""
    m, t, r = card["model"], card["training"], card["results"]
    o = r["overall"]
    return [
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


def data(card: dict[str, Any]) -> list[tuple]:
    """The data: source, counts, split, exclusions, class balance per split and body part, implants."""
    d = card["data"]
    blocks: list[tuple] = []
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
            [[s, v["total"], v["fractured"], pct(v["fractured"], v["total"])] for s, v in d["splits"].items()],
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
    return blocks


def model_and_training(card: dict[str, Any]) -> list[tuple]:
    """The recipe, the searched space, the trials and their figures."""
    t = card["training"]
    blocks: list[tuple] = []
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
    return blocks


def results(card: dict[str, Any]) -> list[tuple]:
    """Metrics with CIs on the scored split, its figures, and the slices."""
    r = card["results"]
    o = r["overall"]
    blocks: list[tuple] = []
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
    return blocks


def explainability(card: dict[str, Any]) -> list[tuple]:
    """Grad-CAM examples and the pointing game against the fracture boxes."""
    blocks: list[tuple] = []
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
    return blocks


def limitations_lineage_claim(card: dict[str, Any]) -> list[tuple]:
    """Limitations, where the version came from, and the CLAIM table."""
    m = card["model"]
    blocks: list[tuple] = []
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


SECTIONS = (summary, data, model_and_training, results, explainability, limitations_lineage_claim)


def blocks(card: dict[str, Any]) -> list[tuple]:
    """The card as a list of blocks, ("h1"|"h2"|"h3"|"p", text), ("ul", [text]), ("table", header, rows),
    ("img", figure key, caption): one structure, two renderers."""
    return [block for section in SECTIONS for block in section(card)]


def _g(value) -> str:
    return format(value, ".3g") if finite(value) else str(value)


def _cell(value) -> str:
    if isinstance(value, float):
        return _g(value)
    return "" if value is None else str(value)


def _pointing(ex: dict) -> str:
    game = ex["pointing_game"]
    if not game["images"]:
        return f"{ex['explained']} images explained, none a fractured image with a box: no pointing-game score."
    return f"Hits: {game['hits']} of {game['images']} fractured images with boxes (rate {game['hit_rate']:.2f})."
