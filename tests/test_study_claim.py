"""A new study never lands on an earlier study of the same name (fracture.study.claim); no Ray here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fracture import resume
from fracture.core import storage
from fracture.core.config import ConfigError
from fracture.core.storage import StudyPaths
from fracture.data import pipeline


def _earlier_study(cfg) -> None:
    """What a started study leaves in its dir: Tune's and Train's runs, config.yaml, study.json."""
    pipeline.ensure_manifest(cfg)
    base = cfg.run_dir
    (base / "tune").mkdir(parents=True)
    (base / "train").mkdir()
    resume.save_config(cfg)
    resume.save_record(cfg, StudyPaths(str(base)), "parent-1")


def test_a_fresh_name_is_free(tiny_config):
    resume.claim(tiny_config())  # nothing raised, nothing created
    assert not (tiny_config().run_dir / "tune").exists()


@pytest.mark.parametrize(
    "change, says",
    [
        ((), ""),  # the same config is still another run: its trials would mix with the old ones
        (("model.dropout=0.3",), "model.dropout=0.5"),
    ],
)
def test_a_taken_name_is_refused_naming_the_ways_on(tiny_config, change, says):
    _earlier_study(tiny_config())
    with pytest.raises(ConfigError) as info:
        resume.claim(tiny_config(*change))
    message = str(info.value)
    assert "--resume" in message and "name=" in message and "--overwrite" in message and says in message
    assert "\n" not in message


def test_other_data_under_the_same_name_is_named(tiny_config, tmp_path):
    from fracture.data import synthetic

    _earlier_study(tiny_config())
    other = synthetic.generate(tmp_path / "other", n=40, seed=5, min_size=32, max_size=40)
    with pytest.raises(ConfigError, match="data.root="):  # the config differs in data.root first
        resume.claim(tiny_config(f"data.root={other}"))


def test_another_image_list_in_the_same_root_is_named(tiny_config, tmp_path):
    from fracture.data import synthetic

    root = synthetic.generate(tmp_path / "atlas", n=40, seed=6, min_size=32, max_size=40)
    cfg = tiny_config(f"data.root={root}")
    _earlier_study(cfg)
    next(iter((root / "images" / "Non_fractured").glob("*.jpg"))).unlink()
    # Same config, but the image list changed: the next job rebuilds the manifest (ensure_manifest
    # would, in a new process), and the study's recorded fingerprint no longer matches it.
    pipeline.build_manifest(cfg, root, pipeline.manifest_path(cfg), progress=False)
    with pytest.raises(ConfigError, match="another image list"):
        resume.claim(cfg)


def test_overwrite_removes_the_earlier_study_but_keeps_shared_files(tiny_config):
    cfg = tiny_config()
    _earlier_study(cfg)
    (cfg.run_dir / "mlflow.db").write_bytes(b"")
    resume.claim(cfg, overwrite=True)
    left = {p.name for p in cfg.run_dir.iterdir()}
    assert not left & {Path(p).name for p in StudyPaths.of(cfg).parts}, left
    assert {"manifest.parquet", "mlflow.db"} <= left
    resume.claim(cfg)  # the name is free again


def test_the_record_keeps_the_parent_run_and_data(tiny_config):
    cfg = tiny_config()
    _earlier_study(cfg)
    record = resume.study_record(StudyPaths.at(cfg.run_dir / "tune"))  # as --resume names it
    assert record["parent_run_id"] == "parent-1" and record["data"]["images"]
    assert json.loads((cfg.run_dir / storage.STUDY_FILE).read_text()) == record


def test_a_resume_reopens_the_parent_run_the_study_recorded(tiny_config, tmp_path):
    """Two parent runs for one study dir (an --overwrite): the resume goes to the recorded one."""
    import mlflow

    from fracture.track import study_runs

    cfg = tiny_config(f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}")
    uri, first = study_runs.start_study(cfg, "runs/demo/tune")
    study_runs.end_study(uri, first, "KILLED")
    _, second = study_runs.start_study(cfg, "runs/demo/tune")  # the study started again, same dir
    study_runs.end_study(uri, second, "KILLED")
    _, reopened = study_runs.start_study(cfg, "runs/demo/tune", resume=True, parent_run_id=second)
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert reopened == second and client.get_run(second).info.status == "RUNNING"
    assert client.get_run(first).info.status == "KILLED"  # the other study's run is left alone
