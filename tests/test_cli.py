"""cli.parse: the config a job gets, and the paths it refuses when run by `ray job submit --working-dir`."""
from __future__ import annotations

import json

import pytest

from fracture import cli

UPLOADED = json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip"}, "metadata": {}})


def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as stop:
        cli.parse(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_relative_paths_are_resolved_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    cfg, _ = cli.parse(["cluster.storage_path=runs", "data.root=data/x"])
    assert cfg.cluster.storage_path == str(tmp_path / "runs") and cfg.data.root == str(tmp_path / "data" / "x")


def test_a_submitted_job_refuses_storage_inside_the_uploaded_copy(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", UPLOADED)
    err = _error(capsys, ["cluster.storage_path=runs", f"data.root={tmp_path}"])
    assert err.startswith(f"error: cluster.storage_path={tmp_path / 'runs'}: ")
    assert "--working-dir" in err and "absolute path" in err and err.count("\n") == 1


def test_a_submitted_job_refuses_a_data_root_that_was_not_uploaded(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", UPLOADED)
    err = _error(capsys, ["cluster.storage_path=s3://bucket/studies", "data.root=data/synthetic"])
    assert err.startswith(f"error: data.root={tmp_path / 'data' / 'synthetic'} does not exist: ")


def test_a_submitted_job_with_absolute_paths_or_no_working_dir_is_accepted(tmp_path, monkeypatch):
    job_dir, elsewhere = tmp_path / "pkg", tmp_path / "shared"
    job_dir.mkdir()
    monkeypatch.chdir(job_dir)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", UPLOADED)
    cfg, _ = cli.parse([f"cluster.storage_path={elsewhere}", f"data.root={elsewhere}"])
    assert cfg.cluster.storage_path == str(elsewhere)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {}, "metadata": {}}))
    cfg, _ = cli.parse(["cluster.storage_path=runs"])    # no upload: the job runs where it was started
    assert cfg.cluster.storage_path == str(job_dir / "runs")
