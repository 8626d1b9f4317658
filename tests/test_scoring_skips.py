"""Scoring new images: every readable image is scored, every other file is listed with its reason
(skipped.csv and the console), a job fails only when nothing could be scored, and high-bit-depth
images are windowed to 8 bits instead of clipped to white.

Each case was reproduced against the code before the fix: predict crashed on one corrupt file
(UnidentifiedImageError, rc 1, no CSV), evaluate --folder dropped defective files without a word,
and a 16-bit PNG decoded to all 255.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from procs import job_env

from fracture import cli
from fracture.core import config, metrics
from fracture.core.errors import DataError
from fracture.core.names import ID, PATH, REASON
from fracture.data import datareport, manifest, presets, synthetic
from fracture.evaluate import holdout, predict, scoring
from fracture.model import checkpoint
from fracture.model.network import build_model

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
GOOD = 6


def spoil(corrupt: Path, truncated: Path) -> None:
    corrupt.write_bytes(np.random.default_rng(0).bytes(2000))  # random bytes named .jpg
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("skips")


@pytest.fixture(scope="module")
def atlas(tmp) -> Path:
    """8 synthetic images in FracAtlas layout: 6 good, one corrupt file, one truncated JPEG."""
    root = synthetic.generate(tmp / "atlas", n=GOOD + 2, seed=0, min_size=SIZE, max_size=40)
    normals = sorted((root / "images" / "Non_fractured").glob("*.jpg"))  # both fractured ones stay good
    spoil(normals[0], normals[1])
    return root


@pytest.fixture(scope="module")
def broken(atlas) -> dict[str, str]:
    normals = sorted((atlas / "images" / "Non_fractured").glob("*.jpg"))
    return {"corrupt": normals[0].name, "truncated": normals[1].name}


@pytest.fixture(scope="module")
def plain(tmp, atlas) -> Path:
    """The same 8 files as a plain folder: no dataset.csv, so no audit before scoring."""
    folder = tmp / "plain"
    folder.mkdir()
    for path in (atlas / "images").rglob("*.jpg"):
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


@pytest.fixture(scope="module")
def all_corrupt(tmp) -> Path:
    folder = tmp / "all_corrupt"
    folder.mkdir()
    for i in range(3):
        (folder / f"bad{i}.jpg").write_bytes(np.random.default_rng(i).bytes(500))
    return folder


@pytest.fixture(scope="module")
def all_corrupt_atlas(tmp) -> Path:
    root = synthetic.generate(tmp / "all_corrupt_atlas", n=3, seed=1, min_size=SIZE, max_size=SIZE)
    for i, path in enumerate(sorted((root / "images").rglob("*.jpg"))):
        path.write_bytes(np.random.default_rng(i).bytes(500))
    return root


def overrides(tmp: Path, root: Path) -> list[str]:
    return [f"cluster.storage_path={tmp / 'runs'}", f"data.image_size={SIZE}", f"data.root={root}"]


@pytest.fixture(scope="module")
def cfg(tmp, atlas):
    return config.load(cli.DEFAULT_STUDY, overrides(tmp, atlas))


@pytest.fixture(scope="module")
def ckpt(tmp, cfg) -> Path:
    """An untrained net in a real checkpoint directory: only the plumbing is under test."""
    torch.manual_seed(0)
    net, _ = build_model(cfg.model)
    state = {"epoch": 0, "config": cfg.to_dict(), "threshold": 0.5, "metrics": {metrics.PRIMARY: 0.5}}
    return checkpoint.save(tmp / "ckpt", net, None, state)


# --------------------------------------------------------------------------------------- decoding


def gradient_16bit(path: Path, fmt: str, dtype: str) -> Path:
    """A 12-bit ramp 0..4095 across 64 columns, stored in a 16-bit (or float) container."""
    ramp = np.tile(np.linspace(0, 4095, 64), (48, 1)).round().astype(dtype)
    Image.fromarray(ramp).save(path, fmt)
    return path


@pytest.mark.parametrize(
    "name, fmt, dtype, mode",
    [
        ("ramp.png", "PNG", np.uint16, "I;16"),
        ("ramp.tif", "TIFF", ">u2", "I;16B"),
        ("ramp_f.tif", "TIFF", np.float32, "F"),
    ],
)
def test_a_high_bit_depth_image_is_windowed_not_clipped_to_white(tmp_path, name, fmt, dtype, mode):
    path = gradient_16bit(tmp_path / name, fmt, dtype)
    with Image.open(path) as img:
        assert img.mode == mode
        if mode.startswith("I;16"):  # the bug: PIL's own conversion clips at 255
            assert (np.asarray(img.convert("L")) == 255).mean() > 0.9
    image = presets.decode_resize(path, SIZE)
    row = image[SIZE // 2, :, 0].astype(int)
    assert row[0] <= 8 and row[-1] >= 247, row  # spans ~0..255 (bilinear averages the end columns)
    assert (np.diff(row) > 0).all()  # still a ramp: every column brighter than the last
    assert np.array_equal(image[..., 0], image[..., 2])


def test_an_8_bit_image_decodes_exactly_as_before(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50), dtype=np.uint8)).save(path)
    with Image.open(path) as img:
        expected = np.asarray(img.convert("L").convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    assert np.array_equal(presets.decode_resize(path, SIZE), expected)


def test_decode_or_reason_names_the_defect(atlas, broken):
    folder = atlas / "images" / "Non_fractured"
    image, reason = presets.decode_or_reason(folder / broken["corrupt"], SIZE)
    assert image is None and reason == "unreadable: not an image PIL can open"
    image, reason = presets.decode_or_reason(folder / broken["truncated"], SIZE)
    assert image is None and reason.startswith("truncated:") and "data.allow_truncated=true" in reason
    image, reason = presets.decode_or_reason(folder / broken["truncated"], SIZE, allow_truncated=True)
    assert image.shape == (SIZE, SIZE, 3) and reason == ""


def add_image(root: Path, name: str, image: Image.Image) -> None:
    image.save(root / "images" / "Non_fractured" / name)
    row = dict.fromkeys(synthetic.CSV_COLUMNS, 0) | {"image_id": name, "hand": 1, "frontal": 1}
    pd.DataFrame([row]).to_csv(root / "dataset.csv", mode="a", header=False, index=False)


def test_the_data_report_flags_converted_modes(tmp_path):
    root = synthetic.generate(tmp_path / "atlas", n=4, seed=0, min_size=SIZE, max_size=SIZE)
    add_image(root, "IMG_16bit.png", Image.open(gradient_16bit(tmp_path / "ramp.png", "PNG", np.uint16)))
    add_image(root, "IMG_rgba.png", Image.new("RGBA", (SIZE, SIZE), (90, 90, 90, 128)))
    add_image(root, "IMG_palette.png", Image.new("L", (SIZE, SIZE), 90).convert("P"))
    out = tmp_path / "manifest.parquet"
    df = manifest.build(root, out, progress=False)
    assert df.set_index("image_id").loc["IMG_16bit.png", "mode"] == "I;16"
    json_path, md_path = datareport.paths(out)
    converted = json.loads(json_path.read_text())["converted_modes"]
    assert set(converted) == {"I;16", "RGBA", "P"}  # L and RGB are decoded as stored
    assert converted["I;16"]["count"] == 1 and converted["I;16"]["ids"] == ["IMG_16bit.png"]
    assert "windowed to 8 bits" in converted["I;16"]["conversion"]
    assert "alpha dropped" in converted["RGBA"]["conversion"]
    text = md_path.read_text()
    assert "## Converted modes" in text and "| I;16 | 1 |" in text


# ---------------------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("allow_truncated", [False, True])
def test_predictor_scores_every_file_that_decodes(plain, broken, ckpt, allow_truncated):
    paths = sorted(plain.glob("*.jpg"))
    batch = {ID: np.array([p.name for p in paths]), PATH: np.array([str(p) for p in paths])}
    predictor = predict.Predictor(str(ckpt), allow_truncated=allow_truncated)
    out = predictor(batch)
    reasons = dict(zip(out[ID], out[REASON], strict=True))
    scored = out[REASON] == ""
    assert scored.sum() == GOOD + allow_truncated  # the truncated JPEG counts where the study allows it
    assert reasons[broken["corrupt"]].startswith("unreadable:")
    if allow_truncated:
        assert reasons[broken["truncated"]] == ""
    else:
        assert reasons[broken["truncated"]].startswith("truncated:")
    assert np.isnan(out[predict.PROBABILITY][~scored]).all()
    # the good images score as they would in a batch of their own: bad files change nothing
    good = {k: v[scored] for k, v in batch.items()}
    np.testing.assert_allclose(predictor(good)[predict.PROBABILITY], out[predict.PROBABILITY][scored], atol=1e-6)


def test_select_rows_lists_what_the_audit_left_out(cfg, atlas, broken):
    rows, skipped = scoring.select_rows(cfg, folder=atlas)
    assert len(rows) == GOOD and not set(rows["image_id"]) & set(broken.values())
    reasons = {Path(p).name: r for p, r in skipped.itertuples(index=False)}
    assert reasons == {
        broken["corrupt"]: scoring.SKIP_REASONS["unreadable"],
        broken["truncated"]: scoring.SKIP_REASONS["truncated"],
    }
    truncated_ok = cfg.replace(data={"allow_truncated": True})
    rows, skipped = scoring.select_rows(truncated_ok, folder=atlas, labelled=False)
    assert len(rows) == GOOD + 1 and len(skipped) == 1


def test_evaluate_run_scores_the_readable_rows_and_writes_skipped_csv(cfg, atlas, plain, broken, ckpt, tmp):
    net, state = checkpoint.load_model(ckpt)
    rows, left_out = scoring.select_rows(cfg, folder=atlas)
    # a file that passed the audit and broke afterwards is caught by decoding, in the same pass
    late = rows.iloc[[0]].assign(image_id="late.jpg", path=str(plain / broken["corrupt"]))
    frame = pd.concat([rows, late], ignore_index=True)
    rep, files = holdout.run(net, state, frame, tmp / "eval_in_process", skipped=left_out)
    assert rep["images"] == GOOD and len(pd.read_csv(tmp / "eval_in_process" / "predictions.csv")) == GOOD
    skipped = pd.read_csv(tmp / "eval_in_process" / scoring.SKIPPED_FILE)
    assert list(skipped.columns) == ["path", "reason"] and len(skipped) == 3
    assert skipped["path"].iloc[-1] == str(plain / broken["corrupt"])
    assert skipped["reason"].iloc[-1] == "unreadable: not an image PIL can open"
    assert rep["skipped"] == skipped.to_dict("records") and holdout.flat_metrics(rep)["skipped"] == 3
    assert tmp / "eval_in_process" / scoring.SKIPPED_FILE in files


def test_evaluate_run_fails_when_nothing_decodes(cfg, all_corrupt, ckpt, tmp):
    net, state = checkpoint.load_model(ckpt)
    frame = scoring.select_rows(cfg, folder=all_corrupt)[0].assign(label=0)
    out = tmp / "eval_nothing"
    with pytest.raises(DataError, match=r"^no image could be scored \(3 skipped, see .*skipped.csv\)$"):
        holdout.run(net, state, frame, out)
    assert len(pd.read_csv(out / scoring.SKIPPED_FILE)) == 3


def test_skipped_lines_count_and_cap():
    table = scoring.skips([f"/x/{i}.jpg" for i in range(25)], ["unreadable: not an image PIL can open"] * 25)
    lines = scoring.skipped_lines(table, Path("/out/skipped.csv"), scored=5)
    assert lines[0] == "skipped 25 of 30 images (reasons in /out/skipped.csv):"
    assert len(lines) == 1 + scoring.SKIPPED_SHOWN + 1 and lines[-1] == "  ... and 5 more, see skipped.csv"
    assert lines[1] == "  /x/0.jpg: unreadable: not an image PIL can open"
    assert scoring.skipped_lines(scoring.skips(), "skipped.csv", scored=5) == []


# ------------------------------------------------------------------------------------------- jobs


def start(tmp: Path, script: str, *args: str) -> subprocess.Popen:
    env = job_env()
    env.pop("MLFLOW_TRACKING_URI", None)  # the study's own sqlite store under tmp
    return subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / script), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def jobs(tmp, atlas, plain, all_corrupt, ckpt):
    """Each job pays for torch's import (and predict for Ray's start): start them all at once."""
    ok_csv = str(tmp / "pred_ok" / "p.csv")
    argv = {  # key=value overrides last: argparse takes them as one run of positionals
        "predict": ["predict.py", "--folder", str(plain), "--out", str(tmp / "pred" / "predict.csv")],
        "predict_nothing": ["predict.py", "--folder", str(all_corrupt), "--out", str(tmp / "pred_bad" / "p.csv")],
        "evaluate": ["evaluate.py", "--folder", str(atlas), "--out", str(tmp / "eval")],
        "predict_truncated_ok": ["predict.py", "--folder", str(atlas), "--out", ok_csv, "data.allow_truncated=true"],
    }
    procs = {
        name: start(tmp, script, "--model", str(ckpt), *args, *overrides(tmp, atlas))
        for name, (script, *args) in argv.items()
    }
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()


def finished(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


@pytest.mark.integration
def test_predict_job_scores_the_good_images_and_lists_the_rest(jobs, tmp, broken):
    rc, out, err = finished(jobs["predict"])
    assert rc == 0, err[-3000:]
    preds = pd.read_csv(tmp / "pred" / "predict.csv")
    assert list(preds.columns) == ["image_id", "probability", "predicted"] and len(preds) == GOOD
    skipped = pd.read_csv(tmp / "pred" / scoring.SKIPPED_FILE)
    reasons = {Path(p).name: r for p, r in skipped.itertuples(index=False)}
    assert set(reasons) == set(broken.values()) and not set(preds["image_id"]) & set(reasons)
    assert reasons[broken["corrupt"]].startswith("unreadable:") and reasons[broken["truncated"]].startswith(
        "truncated:"
    )
    assert f"skipped 2 of {GOOD + 2} images" in out and broken["corrupt"] in out and "Traceback" not in err


@pytest.mark.integration
def test_predict_job_follows_the_runs_allow_truncated(jobs, tmp, broken):
    """The audit that picks the rows and the decoder that scores them apply the same setting."""
    rc, out, err = finished(jobs["predict_truncated_ok"])
    assert rc == 0, err[-3000:]
    assert broken["truncated"] in set(pd.read_csv(tmp / "pred_ok" / "p.csv")["image_id"])
    skipped = pd.read_csv(tmp / "pred_ok" / scoring.SKIPPED_FILE)
    assert [Path(p).name for p in skipped["path"]] == [broken["corrupt"]]
    assert f"wrote {tmp / 'pred_ok' / 'p.csv'}: {GOOD + 1} images" in out


@pytest.mark.integration
def test_predict_job_with_nothing_readable_exits_2_with_one_error_line(jobs, tmp):
    rc, out, err = finished(jobs["predict_nothing"])
    skipped_csv = tmp / "pred_bad" / scoring.SKIPPED_FILE
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and errors == [f"error: no image could be scored (3 skipped, see {skipped_csv})"], err[-3000:]
    assert len(pd.read_csv(skipped_csv)) == 3 and not (tmp / "pred_bad" / "p.csv").exists()
    assert "Traceback" not in err


@pytest.mark.integration
def test_evaluate_job_on_a_folder_says_what_it_left_out(jobs, tmp, broken):
    rc, out, err = finished(jobs["evaluate"])
    assert rc == 0, err[-3000:]
    report = json.loads((tmp / "eval" / "metrics.json").read_text())
    assert report["images"] == GOOD and len(report["skipped"]) == 2
    skipped = pd.read_csv(tmp / "eval" / scoring.SKIPPED_FILE)
    assert {Path(p).name for p in skipped["path"]} == set(broken.values())
    assert f"skipped 2 of {GOOD + 2} images" in out


def test_evaluate_job_with_nothing_readable_exits_2_with_one_error_line(tmp, atlas, all_corrupt_atlas, ckpt):
    """No Ray and no MLflow: the audit leaves nothing to score, so the job stops before both."""
    args = ["--folder", str(all_corrupt_atlas), "--out", str(tmp / "eval_bad"), "--model", str(ckpt)]
    rc, out, err = finished(start(tmp, "evaluate.py", *args, *overrides(tmp, atlas)))
    skipped_csv = tmp / "eval_bad" / scoring.SKIPPED_FILE
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and errors == [f"error: no image could be scored (3 skipped, see {skipped_csv})"], err[-3000:]
    assert "Traceback" not in err
