"""Which CLAIM items a model card covers, and how.

Sections follow CLAIM, the Checklist for Artificial Intelligence in Medical Imaging (Mongan et al.,
Radiology: Artificial Intelligence 2020; 2024 update by Tejani et al.), where its items apply to a
model trained on a public dataset; the card ends with a table of the items it covers and the ones it
does not. Item numbers are the 2020 checklist's (the 2024 update renumbers some of them).
"""

from __future__ import annotations

from typing import Any

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
