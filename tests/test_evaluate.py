"""Holdout evaluation and batch prediction: the report, Grad-CAM wiring, the jobs end to end, and the
guarantee that training never reads the test split.

An untrained FractureNet in a real checkpoint directory stands in for a trained one: nothing here
needs the model to be good, only the plumbing to be right.
"""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fracture import cli
from fracture.core import config, metrics
from fracture.core.errors import DataError
from fracture.core.names import ID, IMAGE, LABEL, PATH
from fracture.data import manifest, pipeline, presets, synthetic
from fracture.evaluate import gradcam_examples, holdout, model_source, predict, scoring
from fracture.model import checkpoint, engine
from fracture.model.network import build_model

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
PLOTS = ("roc", "pr", "confusion", "calibration")


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("evaluate")


@pytest.fixture(scope="module")
def root(tmp):
    return synthetic.generate(tmp / "data", n=40, seed=0, min_size=40, max_size=56)


def overrides(tmp: Path, root: Path) -> list[str]:
    return [f"cluster.storage_path={tmp / 'runs'}", f"data.image_size={SIZE}", f"data.root={root}"]


@pytest.fixture(scope="module")
def cfg(tmp, root):
    return config.load(cli.DEFAULT_STUDY, overrides(tmp, root))


@pytest.fixture(scope="module")
def untrained(tmp, cfg):
    """(net, checkpoint dir): building VGG16 takes seconds, so the in-process tests share this one."""
    torch.manual_seed(0)
    net, _ = build_model(cfg.model)
    return net.eval(), checkpoint.save(
        tmp / "ckpt",
        net,
        None,
        {"epoch": 0, "config": cfg.to_dict(), "threshold": 0.5, "metrics": {metrics.PRIMARY: 0.5}},
    )


@pytest.fixture(scope="module")
def ckpt(untrained):
    return untrained[1]


@pytest.fixture(scope="module")
def scored(cfg, root, untrained):
    net, directory = untrained
    state = checkpoint.read_state(directory)
    frame = scoring.frame_for(cfg, folder=root)
    return net, state, frame, scoring.score(net, frame, checkpoint.image_size(state))


@pytest.fixture(scope="module")
def jobs(tmp, root, ckpt):
    """Start both jobs at once (each pays for torch / Ray start-up; together they overlap)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    common = ["--model", str(ckpt), "--folder", str(root), "--explain", "2", *overrides(tmp, root)]
    start = {
        "evaluate": [sys.executable, "jobs/evaluate.py", "--out", str(tmp / "eval"), *common],
        "predict": [sys.executable, "jobs/predict.py", "--out", str(tmp / "pred" / "predict.csv"), *common],
    }
    procs = {
        name: subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, argv in start.items()
    }
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()


def finished(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    return out


# ------------------------------------------------------------------------------------------ report


def test_score_is_a_probability_per_row_and_batch_invariant(scored):
    net, state, frame, probs = scored
    assert probs.shape == (len(frame),) and probs.dtype == np.float32
    assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()
    again = scoring.score(net, frame.iloc[11::-1], checkpoint.image_size(state), batch_size=5)[::-1]
    np.testing.assert_allclose(again, probs[:12], atol=1e-5)


def test_evaluate_predict_and_training_validation_give_the_same_scores(scored, ckpt):
    net, state, frame, probs = scored
    size = checkpoint.image_size(state)
    images, reasons = presets.decode_checked(frame[PATH], size)
    assert (reasons == "").all()
    batches = [{IMAGE: torch.from_numpy(images), LABEL: torch.tensor(frame[LABEL].to_numpy())}]
    _, validation = engine.predict(net, batches, engine.default_device())
    predictor = predict.Predictor(str(ckpt))
    predicted = predictor({ID: frame[ID].to_numpy(), PATH: frame[PATH].to_numpy()})[predict.PROBABILITY]
    np.testing.assert_allclose(validation, probs, atol=1e-6)
    np.testing.assert_allclose(predicted, probs, atol=1e-6)


def test_report_keys_and_cis_contain_the_point_estimate(scored):
    _, state, frame, probs = scored
    labels = frame["label"].to_numpy()
    rep = holdout.report(labels, probs, state["threshold"], frame, n_boot=200)
    assert {
        "images",
        "positives",
        "threshold",
        "overall",
        "ci95",
        "confusion",
        "by_body_part",
        "by_hardware",
        "by_view",
    } <= set(rep)
    assert rep["images"] == len(frame) and rep["positives"] == labels.sum() and rep["threshold"] == 0.5
    expected = metrics.binary_metrics(labels, probs, 0.5) | metrics.predictive_values(labels, probs, 0.5)
    assert rep["overall"] == pytest.approx(expected, nan_ok=True)  # PPV is nan when nothing is called a fracture
    assert set(rep["ci95"]) == {"auc", "auprc", "sensitivity", "specificity", "ppv", "npv"}
    assert rep["calibration"] == {
        "brier": metrics.brier_score(labels, probs),
        "ece": metrics.expected_calibration_error(labels, probs),
    }
    for name, (lo, hi) in rep["ci95"].items():
        assert math.isnan(rep["overall"][name]) or lo <= rep["overall"][name] <= hi, name
    assert rep["confusion"] == metrics.confusion(labels, probs, 0.5)


def test_report_slices_partition_the_rows(scored):
    _, _, frame, probs = scored
    rep = holdout.report(frame["label"], probs, 0.5, frame, n_boot=50)
    parts = rep["by_body_part"]
    assert set(parts) == set(frame["body_part"])
    assert sum(r["n"] for r in parts.values()) == len(frame)
    assert sum(r["positives"] for r in parts.values()) == frame["label"].sum()
    for name, row in parts.items():
        assert set(row) == {"n", "positives", "auc", "sensitivity", "specificity", "small"}
        rows = frame["body_part"] == name
        expected = metrics.binary_metrics(frame["label"][rows], probs[rows.to_numpy()], 0.5)["sensitivity"]
        assert row["sensitivity"] == pytest.approx(expected, nan_ok=True)
    assert set(rep["by_hardware"]) <= {"hardware", "no_hardware", "unknown"}
    assert sum(r["n"] for r in rep["by_hardware"].values()) == len(frame)
    table = holdout.format_table(rep)
    assert all(name in table for name in parts) and "95% CI" in table
    flat = holdout.flat_metrics(rep)
    assert flat["auc"] == rep["overall"]["auc"] and "body_part.hand.n" in flat


def test_a_small_slice_gets_no_auc_and_a_flag():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(4), np.zeros(40), np.ones(10)].astype(int)
    p = np.r_[np.full(4, 0.9), rng.random(40) * 0.5, rng.random(10)]  # 4 images: a "perfect" slice
    frame = pd.DataFrame({"body_part": ["hip"] * 4 + ["hand"] * 50})
    rep = holdout.report(y, p, 0.5, frame, n_boot=20)
    hip, hand = rep["by_body_part"]["hip"], rep["by_body_part"]["hand"]
    assert hip["small"] and np.isnan(hip["auc"]) and hip["sensitivity"] == 1.0
    assert not hand["small"] and np.isfinite(hand["auc"])
    table = holdout.format_table(rep)
    hip_line = next(line for line in table.splitlines() if line.startswith("hip"))
    assert "* small" in hip_line and "1.000" not in hip_line.split()[3] and "small slice" in table
    assert "body_part.hip.auc" in holdout.flat_metrics(rep)


def test_report_refuses_unlabelled_rows(scored):
    _, _, frame, probs = scored
    with pytest.raises(DataError):
        holdout.report(np.full(len(frame), -1), probs, 0.5, frame)


def test_explain_images_writes_overlays_and_scores_the_pointing_game(scored, root, tmp):
    net, state, frame, probs = scored
    result = gradcam_examples.explain_images(net, frame, probs, checkpoint.image_size(state), root, tmp / "cam", 2)
    assert result["explained"] == 4
    assert [it["reason"] for it in result["items"]] == ["top", "top", "random", "random"]
    top = sorted(probs, reverse=True)[:2]
    assert [it["probability"] for it in result["items"][:2]] == pytest.approx(top)
    for item in result["items"]:
        with Image.open(item["overlay"]) as img:
            assert min(img.size) >= gradcam_examples.DISPLAY_PX
        assert (item["hit"] is None) == (item["label"] != 1 or item["boxes"] == 0)
    assert Path(result["grid"]).is_file()
    game = result["pointing_game"]
    assert game["images"] == sum(it["hit"] is not None for it in result["items"])
    assert game["hit_rate"] is None if not game["images"] else 0 <= game["hit_rate"] <= 1


# -------------------------------------------------------------------------------------- model/rows


def test_load_refuses_what_is_not_a_checkpoint(cfg, tmp):
    with pytest.raises(config.ConfigError, match="not a checkpoint"):
        model_source.load(str(tmp), cfg)
    with pytest.raises(config.ConfigError, match="models:/<name>@<alias>"):
        model_source.load("models:/fracture/3", cfg)


def test_frame_for_a_split_and_for_a_folder(cfg, root):
    df = manifest.load(pipeline.ensure_manifest(cfg))
    test = scoring.frame_for(cfg, "test")
    assert len(test) and set(test["image_id"]) == set(df.loc[df["usable"] & (df["split"] == "test"), "image_id"])
    assert (test["split"] == "test").all()
    folder = scoring.frame_for(cfg, folder=root)
    assert set(folder["image_id"]) == set(df.loc[df["usable"], "image_id"])
    assert {"image_id", "path", "label", "body_part", "hardware", "view"} <= set(folder.columns)
    with pytest.raises(config.ConfigError):
        scoring.frame_for(cfg, "holdout")


def test_frame_for_a_plain_image_folder(cfg, root, tmp):
    plain = tmp / "plain" / "sub"
    plain.mkdir(parents=True)
    for path in sorted((root / "images" / "Fractured").glob("*.jpg"))[:2]:
        (plain / path.name).write_bytes(path.read_bytes())
    frame = scoring.frame_for(cfg, folder=tmp / "plain")
    assert len(frame) == 2 and (frame["label"] == -1).all() and frame["image_id"].str.startswith("sub/").all()


# ------------------------------------------------------------------------------ test-split hygiene


def test_training_never_reads_the_test_split(cfg):
    df = manifest.load(pipeline.ensure_manifest(cfg))
    test_ids = set(df.loc[df["split"] == "test", "image_id"])
    assert test_ids, "the fixture's manifest should have a test split"
    for split in ("train", "val"):  # what data.build_datasets builds
        assert not test_ids & set(pipeline.split_frame(cfg, split)["image_id"]), split


def test_only_evaluate_names_the_test_split():
    """Only evaluate.py may select the test split; manifest.py assigns it (and defines SPLITS), and
    split_audit.py checks that it exists and that nothing selects on it."""
    literal = re.compile(r"""["']test["']""")
    allowed = {"evaluate.py", "manifest.py", "split_audit.py"}
    sources = [p for p in (REPO / "platform" / "fracture").glob("*.py") if p.name not in allowed]
    sources += list((REPO / "jobs").glob("*.py"))
    offenders = [str(p.relative_to(REPO)) for p in sources if literal.search(p.read_text())]
    assert not offenders, f"these name the test split: {offenders}"


# --------------------------------------------------------------------------------------------- jobs


@pytest.mark.integration
def test_evaluate_job_writes_report_plots_overlays_and_an_mlflow_run(jobs, tmp, root):
    out = finished(jobs["evaluate"])
    assert "95% CI" in out and "body part" in out
    result = tmp / "eval"
    report = json.loads((result / "metrics.json").read_text())
    assert report["images"] == len(pd.read_csv(result / "predictions.csv"))
    assert report["threshold"] == 0.5 and "explain" in report
    for name in PLOTS:
        assert (result / f"{name}.png").stat().st_size > 1000
    overlays = sorted((result / "gradcam").glob("*_*.png"))
    assert len(overlays) == 4 and (result / "gradcam" / "grid.png").is_file()

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp / 'runs' / 'demo' / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("fracture")
    runs = client.search_runs([experiment.experiment_id], f"attributes.run_name = 'evaluate-folder-{root.name}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.data.metrics["auc"] == pytest.approx(report["overall"]["auc"])
    assert run.data.params["model"] == str(tmp / "ckpt")
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "predictions.csv", *(f"{n}.png" for n in PLOTS), "gradcam"} <= logged
    assert len(client.list_artifacts(run.info.run_id, "gradcam")) == 5


@pytest.mark.integration
def test_predict_job_writes_one_row_per_usable_image(jobs, tmp, root, cfg):
    out = finished(jobs["predict"])
    frame = pd.read_csv(tmp / "pred" / "predict.csv")
    assert list(frame.columns) == ["image_id", "probability", "predicted"]
    usable = scoring.frame_for(cfg, folder=root)
    assert list(frame["image_id"]) == list(usable["image_id"])
    assert frame["probability"].between(0, 1).all()
    assert (frame["predicted"] == (frame["probability"] >= 0.5)).all()
    assert (tmp / "pred" / "predict_gradcam" / "grid.png").is_file()
    assert "Grad-CAM" in out


@pytest.mark.integration
def test_load_from_the_registry(cfg, ckpt, tmp, monkeypatch):
    """models:/name@alias resolves through the study's store (the evaluate job's, when it ran first:
    a fresh sqlite store costs seconds of schema migrations)."""
    from mlflow import MlflowClient

    from fracture.track import store, tags

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = store.tracking_uri(cfg)
    store.check_reachable(uri)
    client = MlflowClient(uri, uri)
    experiment = client.get_experiment_by_name("fracture")
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment("fracture", artifact_location=(tmp / "art").as_uri())
    )
    run_id = client.create_run(experiment_id).info.run_id
    client.log_artifacts(run_id, str(ckpt), tags.CHECKPOINT_ARTIFACT)
    client.create_registered_model("fracture")
    version = client.create_model_version("fracture", f"runs:/{run_id}/checkpoint", run_id=run_id)
    client.set_registered_model_alias("fracture", "champion", version.version)

    net, state = model_source.load("models:/fracture@champion", cfg)
    assert state["threshold"] == 0.5 and state["source"] == "models:/fracture@champion"
    assert state["resolved"] == f"models:/fracture/{version.version}"  # what was scored, though aliases move
    saved = torch.load(ckpt / checkpoint.MODEL_FILE, weights_only=True)
    assert torch.equal(net.fc2.weight, saved["fc2.weight"])
    with pytest.raises(store.TrackingError, match="models:/fracture@nope"):
        model_source.load("models:/fracture@nope", cfg)
