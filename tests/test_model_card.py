"""The model card's pure parts: calibration and predictive-value metrics, the manifest's counts, rendering."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from fracture.core import metrics
from fracture.core.config import Config
from fracture.evaluate import holdout
from fracture.report import facts, render

LABELS = [0, 0, 1, 1]
PROBS = [0.1, 0.4, 0.35, 0.8]


def test_brier_and_ece_hand_checked():
    # Brier: (0.01 + 0.16 + 0.4225 + 0.04) / 4
    assert metrics.brier_score(LABELS, PROBS) == pytest.approx(0.6325 / 4)
    # Bins of width 0.1: [0.1] y=0 -> |0 - 0.1|; [0.3] y=1, p=0.35 -> 0.65; [0.4] y=0 -> 0.4; [0.8] y=1 -> 0.2.
    assert metrics.expected_calibration_error(LABELS, PROBS) == pytest.approx((0.1 + 0.65 + 0.4 + 0.2) / 4)
    # Two scores in one bin: |(1 + 0) - (0.62 + 0.66)| / 2, whatever their order.
    assert metrics.expected_calibration_error([1, 0], [0.62, 0.66]) == pytest.approx(0.28 / 2)
    # A score of exactly 1 lands in the last bin; a perfect, confident model has no error.
    assert metrics.expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0 == metrics.brier_score([0, 1], [0.0, 1.0])


def test_ece_matches_a_per_bin_loop():
    rng = np.random.default_rng(3)
    y, p = rng.integers(0, 2, 500), rng.random(500)
    expected = 0.0
    for b in range(10):
        inside = (p >= b / 10) & ((p < (b + 1) / 10) | (b == 9))
        if inside.any():
            expected += inside.mean() * abs(y[inside].mean() - p[inside].mean())
    assert metrics.expected_calibration_error(y, p) == pytest.approx(expected)


def test_predictive_values_hand_checked_and_nan_without_calls():
    # At 0.5: tp=1 fn=1 tn=2 fp=0.
    assert metrics.predictive_values(LABELS, PROBS, 0.5) == {"ppv": 1.0, "npv": pytest.approx(2 / 3)}
    nothing_called = metrics.predictive_values(LABELS, PROBS, 0.99)
    assert math.isnan(nothing_called["ppv"]) and nothing_called["npv"] == 0.5


def test_bootstrap_of_ppv_npv_equals_explicit_resamples():
    rng = np.random.default_rng(0)
    labels, probs = rng.integers(0, 2, 40), rng.random(40)
    counts = rng.multinomial(40, np.full(40, 1 / 40), size=5)
    got = metrics._weighted_metrics(counts, labels, probs, 0.4, metrics.PREDICTIVE_NAMES)
    for b in range(5):
        ref = metrics.predictive_values(np.repeat(labels, counts[b]), np.repeat(probs, counts[b]), 0.4)
        for k in metrics.PREDICTIVE_NAMES:
            assert got[k][b] == pytest.approx(ref[k], nan_ok=True), k
    lo, hi = metrics.bootstrap_ci(labels, probs, 0.4, n_boot=200, metrics=("ppv",))["ppv"]
    assert lo <= metrics.predictive_values(labels, probs, 0.4)["ppv"] <= hi


def _manifest() -> pd.DataFrame:
    rows = []
    for i in range(40):
        label = int(i % 4 == 0)  # 10 fractured
        rows.append(
            {
                "image_id": f"IMG{i:04d}.jpg",
                "label": label,
                "body_part": "hand" if i % 2 else "leg",
                "hardware": int(label == 1 and i < 24) or int(i == 1),  # 6 fractured, 1 non-fractured
                "status": "ok",
                "usable": True,
                "split": ("train", "train", "val", "test")[i % 4 if i % 4 != 0 else (i // 4) % 4],
            }
        )
    rows.append(
        rows[0] | {"image_id": "IMG9999.jpg", "status": "truncated", "usable": False, "split": "", "hardware": 1}
    )
    return pd.DataFrame(rows)


def test_data_facts_counts_implants_by_class_over_usable_images_and_lists_defects():
    counts = facts.data_facts(_manifest())
    assert counts["rows"] == 41 and counts["usable"] == 40
    assert counts["hardware"] == {"fractured": 6, "fractured_total": 10, "non_fractured": 1, "non_fractured_total": 30}
    assert list(counts["excluded"]) == ["truncated"] and counts["excluded"]["truncated"]["count"] == 1
    assert sum(s["total"] for s in counts["splits"].values()) == 40
    assert sum(s["fractured"] for s in counts["splits"].values()) == 10
    assert set(counts["body_parts"]) == {"hand", "leg"}
    assert sum(c["total"] for part in counts["body_parts"].values() for c in part.values()) == 40


@pytest.fixture(scope="module")
def card(tmp_path_factory) -> dict:
    """A card from real report and manifest functions, with fake lineage and one figure."""
    df = _manifest()
    test = df[df["split"] == "test"].reset_index(drop=True)
    rng = np.random.default_rng(1)
    probs = np.clip(test["label"] * 0.5 + rng.random(len(test)) * 0.5, 0, 1)
    report = holdout.report(test["label"], probs, 0.5, test.assign(view="frontal"), n_boot=100)
    scored = tmp_path_factory.mktemp("scored")
    (scored / "roc.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    lineage = {
        "name": "fracture",
        "version": "3",
        "model_uri": "models:/fracture/3",
        "aliases": ["champion"],
        "description": "",
        "experiment_id": "1",
        "tags": {"val_auc": "0.812345", "threshold": "0.5"},
        "trial": {"run_id": "trialrun", "name": "trial_001", "params": {}, "metrics": {}, "tags": {}},
        "study": {
            "run_id": "studyrun",
            "name": "demo",
            "params": {"space.model.dropout": "uniform[0.2, 0.6]", "seed": "17"},
            "metrics": {},
            "tags": {},
        },
        "trials": [{"trial_id": "a1", "run_id": "trialrun", "status": "finished", "best_val_auc": 0.81}],
        "data_report": {"counts": {"usable": {"total": 40}}},
        "files": {},
    }
    state = {"config": Config().to_dict(), "threshold": 0.5, "epoch": 1}
    return facts.facts(
        lineage=lineage,
        state=state,
        report=report,
        manifest_df=df,
        split="test",
        scored_dir=scored,
        generated="2026-12-07T00:00:00+00:00",
    )


SECTIONS = ("Intended use", "Data", "Model and training", "Results", "Explainability", "Limitations", "CLAIM checklist")


def test_html_is_self_contained_with_every_section_and_the_numbers(card):
    page = render.render_html(card, {"roc": b"\x89PNG fake"})
    for heading in SECTIONS:
        assert f"<h2>{heading}</h2>" in page, heading
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page and "<link" not in page
    assert 'src="data:image/png;base64,' in page
    auc = card["results"]["overall"]["auc"]
    assert f"<td>AUROC</td><td>{auc:.3f}</td>" in page
    for name in ("AUPRC", "Sensitivity", "Specificity", "PPV", "NPV"):
        assert f"<td>{name}</td>" in page
    assert "6 of 10 fractured images (60.0%) show hardware" in page
    assert "not for clinical" in page.lower() and "Not a medical device" in page
    assert "Scientific Data 10, 521 (2023)" in page and "CC BY 4.0" in page
    assert "uniform[0.2, 0.6]" in page  # the searched space, from the study run


def test_markdown_has_the_same_sections_and_links_figures(card):
    text = render.render_markdown(card, {"roc": "scored/roc.png"})
    for heading in SECTIONS:
        assert f"\n## {heading}\n" in text, heading
    assert "![ROC curve, operating point marked](scored/roc.png)" in text
    assert f"| AUROC | {card['results']['overall']['auc']:.3f} |" in text


def test_claim_table_lists_all_42_items_and_what_is_not_covered(card):
    items = card["claim"]
    assert [row[0] for row in items] == list(range(1, 43))
    assert {row[2] for row in items} == {"covered", "partly", "not covered"}
    status = {row[0]: row[2] for row in items}
    assert status[29] == status[36] == status[38] == "covered"  # CIs, diagnostic accuracy, limitations
    assert status[32] == "not covered"  # no external validation
    assert status[31] == "partly"  # no Grad-CAM in this report


def test_text_is_escaped(card):
    odd = card | {"model": card["model"] | {"name": "<b>x</b>"}}
    assert "<b>x</b>" not in render.render_html(odd, {})


def test_write_puts_html_and_markdown_side_by_side(card, tmp_path):
    html_path, md_path = render.write(card, tmp_path)
    assert html_path.read_text().count("data:image/png;base64,") == 1
    assert "](" in md_path.read_text()
