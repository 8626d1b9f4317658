"""storage: a study's paths from its config or from what --resume names, and text files read alike."""

from __future__ import annotations

from pathlib import Path

from fracture.core import storage
from fracture.core.config import Config
from fracture.core.storage import StudyPaths


def test_a_local_study_has_every_path_under_its_dir(tmp_path):
    cfg = Config().replace(name="base", cluster={"storage_path": str(tmp_path)})
    paths = StudyPaths.of(cfg)
    assert paths.root == str(tmp_path / "base") == str(cfg.run_dir)
    assert [Path(p).name for p in paths.parts] == ["tune", "train", "config.yaml", "study.json", "optuna.db"]
    assert StudyPaths.at(paths.tune) == StudyPaths.at(paths.root) == paths  # --resume takes either


def test_a_remote_study_keeps_its_uri():
    cfg = Config().replace(name="base", cluster={"storage_path": "s3://bucket/runs/"})
    paths = StudyPaths.of(cfg)
    assert (paths.root, paths.tune) == ("s3://bucket/runs/base", "s3://bucket/runs/base/tune")
    assert StudyPaths.at("s3://bucket/runs/base/tune/") == paths


def test_text_files_are_written_read_and_removed(tmp_path):
    location = str(tmp_path / "a" / "b" / "config.yaml")
    assert storage.read_text(location) is None and not storage.exists(location)
    storage.write_text(location, "name: base\n")
    assert storage.read_text(location) == "name: base\n" and storage.exists(location)
    storage.remove(str(tmp_path / "a"))  # a whole directory
    assert not (tmp_path / "a").exists()
    storage.remove(str(tmp_path / "a"))  # nothing there is fine
