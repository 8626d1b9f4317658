"""storage: a study's paths from its config or from what --resume names, and files read alike on a disk or a URI."""

from __future__ import annotations

import runpy
from pathlib import Path

from fracture import cli
from fracture.core import storage
from fracture.core.config import Config
from fracture.core.storage import StudyPaths

ROOT = Path(__file__).resolve().parents[1]


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


def _tune_parser():
    """jobs/tune.py's own parser (run as a module, not as __main__: nothing else runs)."""
    return runpy.run_path(str(ROOT / "jobs" / "tune.py"))["parser"]()


def test_the_tune_job_keeps_a_study_uri_whole():
    # What the job prints after an s3:// study must parse back to that study, not to a local s3:/ dir.
    cfg, args = cli.parse(["--resume", "s3://bucket/runs/demo/tune"], p=_tune_parser())
    assert args.resume == "s3://bucket/runs/demo/tune"
    assert StudyPaths.at(args.resume) == StudyPaths("s3://bucket/runs/demo")
    _, args = cli.parse(["--extend", "s3://bucket/runs/demo", "search.num_trials=2"], p=_tune_parser())
    assert args.extend == "s3://bucket/runs/demo" and args.overrides == ["search.num_trials=2"]


def test_the_tune_job_still_takes_a_local_study_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, args = cli.parse(["--resume", "runs/demo"], p=_tune_parser())
    assert StudyPaths.at(args.resume).root == str(tmp_path / "runs" / "demo")


def test_a_file_goes_up_and_comes_back_byte_for_byte(tmp_path):
    local, stored, back = tmp_path / "optuna.db", str(tmp_path / "store" / "base" / "optuna.db"), tmp_path / "back.db"
    local.write_bytes(bytes(range(256)) * 64)
    storage.upload_file(local, stored)
    assert storage.download_file(stored, back) and back.read_bytes() == local.read_bytes()
    with storage.local_copy(stored) as copy:
        assert copy.read_bytes() == local.read_bytes()
    assert not storage.download_file(str(tmp_path / "nothing.db"), back) and back.exists()  # untouched
    with storage.local_copy(str(tmp_path / "nothing.db")) as copy:
        assert copy is None


def test_a_uri_is_copied_through_a_temporary_file(tmp_path):
    stored = f"file://{tmp_path}/store/optuna.db"  # a URI to pyarrow, as s3:// is, on this disk
    storage.write_bytes(stored, b"sqlite")
    with storage.local_copy(stored) as copy:
        assert copy.read_bytes() == b"sqlite" and not str(copy).startswith(str(tmp_path))
    assert not copy.exists()


def test_sqlite_opens_a_local_copy_of_a_remote_study_db(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    local_study = StudyPaths(str(tmp_path / "runs" / "base"))
    assert local_study.optuna_local == Path(local_study.optuna)  # local storage: the study's own file
    assert StudyPaths("s3://bucket/runs/base").optuna_local == tmp_path / ".fracture" / "base" / "optuna.db"


def test_a_uri_directory_is_read_through_a_temporary_copy(tmp_path):
    stored = f"file://{tmp_path}/store/checkpoint_epoch_0001"
    storage.write_bytes(f"{stored}/state.json", b"{}")
    storage.write_bytes(f"{stored}/model.pt", b"weights")
    with storage.local_dir(stored) as copy:
        assert sorted(p.name for p in copy.iterdir()) == ["model.pt", "state.json"]
        assert (copy / "model.pt").read_bytes() == b"weights" and not str(copy).startswith(str(tmp_path))
    assert not copy.exists()
    with storage.local_dir(str(tmp_path / "store")) as same:  # a local dir is read where it is
        assert same == tmp_path / "store"
