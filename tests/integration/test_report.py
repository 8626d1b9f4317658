"""jobs/report.py on a registered version: one self-contained HTML card with evaluate's numbers, logged
beside the version in MLflow.

One tiny study (conftest's one_trial_study: 1 trial x 1 epoch at 32 px, real local Ray, sqlite
MLflow) registers a version; the job runs as a user runs it, in a fresh interpreter.
"""

from __future__ import annotations

import re

import mlflow
import pytest
from conftest import ROOT, _run_job

from fracture.data import manifest, pipeline
from fracture.evaluate import holdout, scoring
from fracture.model import checkpoint
from fracture.report import render
from fracture.track import tags

pytestmark = pytest.mark.integration

ARGS = ("data.image_size=32", "search.num_trials=1", "train.epochs=1", "tracking.experiment=test")


@pytest.fixture(scope="module")
def carded(tmp_path_factory, one_trial_study, synthetic_root):
    """(cfg, summary, job result, card dir) after the study and jobs/report.py --explain 1."""
    cfg, summary = one_trial_study
    storage = cfg.cluster.storage_path
    out = tmp_path_factory.mktemp("card")
    job = _run_job(
        "report.py",
        "--config",
        str(ROOT / "jobs" / "studies" / "demo.yaml"),
        f"data.root={synthetic_root}",
        f"cluster.storage_path={storage}",
        *ARGS,
        "--out",
        str(out),
        "--explain",
        "1",
    )
    return cfg, summary, job, out


def test_card_is_one_self_contained_html_with_every_section(carded):
    _, _, job, out = carded
    assert job.returncode == 0, job.stderr[-3000:]
    page = (out / render.HTML_FILE).read_text()
    for heading in ("Intended use", "Data", "Model and training", "Results", "Explainability", "Limitations"):
        assert f"<h2>{heading}</h2>" in page, heading
    assert "<h2>CLAIM checklist</h2>" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page and "<link" not in page
    assert page.count('src="data:image/png;base64,') >= 4  # ROC, PR, calibration, confusion (+ curves, Grad-CAM)
    assert "Grad-CAM pointing game" in page or "Pointing game" in page
    assert (out / render.MARKDOWN_FILE).is_file()


def test_card_numbers_are_evaluates_and_the_manifests(carded):
    cfg, summary, job, out = carded
    assert job.returncode == 0, job.stderr[-3000:]
    page = (out / render.HTML_FILE).read_text()
    # The split scored afresh, in this process, from the registered checkpoint.
    net, state = checkpoint.load_model(summary["checkpoint"])
    frame = scoring.frame_for(cfg, "test")
    probs = scoring.score(net, frame, cfg.data.image_size)
    rep = holdout.report(frame["label"], probs, state["threshold"], frame)
    for name, key in (("AUROC", "auc"), ("Sensitivity", "sensitivity"), ("Specificity", "specificity")):
        assert f"<td>{name}</td><td>{rep['overall'][key]:.3f}</td>" in page, name
    assert f"Threshold {state['threshold']:.4f}" in page
    df = manifest.load(pipeline.manifest_path(cfg))
    usable = df[df["usable"]]
    fractured = usable[usable["label"] == 1]
    assert f"{int((fractured['hardware'] == 1).sum())} of {len(fractured)} fractured images" in page
    assert summary["trial_id"][:8] in page  # the trials table, from the study run's trials.csv


def test_card_is_logged_on_the_versions_run_and_the_version_points_to_it(carded, tmp_path):
    cfg, summary, job, out = carded
    assert job.returncode == 0, job.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=summary["tracking_uri"], registry_uri=summary["tracking_uri"])
    version = client.get_model_version(cfg.tracking.model_name, summary["version"])
    where = f"runs:/{version.run_id}/{tags.MODEL_CARD_ARTIFACT}/{render.HTML_FILE}"
    assert version.run_id == summary["run_id"] and version.tags[tags.MODEL_CARD_TAG] == where
    names = {f.path for f in client.list_artifacts(version.run_id, tags.MODEL_CARD_ARTIFACT)}
    assert {f"model_card/{render.HTML_FILE}", f"model_card/{render.MARKDOWN_FILE}"} <= names
    local = client.download_artifacts(version.run_id, f"model_card/{render.HTML_FILE}", str(tmp_path))
    assert open(local).read() == (out / render.HTML_FILE).read_text()
