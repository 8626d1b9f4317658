"""cli.parse: the config a job gets, the paths it refuses when run by `ray job submit --working-dir`,
--help without heavy imports, and the config a --resume restores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fracture import cli, resume
from fracture.core.config import ConfigError, load

ROOT = Path(__file__).resolve().parents[1]

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
    cfg, _ = cli.parse(["cluster.storage_path=runs"])  # no upload: the job runs where it was started
    assert cfg.cluster.storage_path == str(job_dir / "runs")


HEAVY = ("ray", "torch", "mlflow", "pandas")
JOBS = ("tune.py", "train.py", "evaluate.py", "predict.py", "prepare.py")


@pytest.mark.parametrize("job", JOBS)
def test_help_answers_without_importing_ray_torch_mlflow_or_pandas(job):
    """--help is read before anything heavy is imported (the jobs import those after parsing)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / "jobs" / job), "--help"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "platform")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "--verbose" in proc.stdout and "--config" in proc.stdout, proc.stderr[-2000:]
    imported = {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "fracture" in imported and not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_every_job_parser_has_verbose():
    _, args = cli.parse(["--verbose"])
    assert args.verbose is True and cli.parse([])[1].verbose is False


# --- --resume restores the config stored with the study ---


@pytest.fixture
def stored_study(tmp_path):
    cfg = load(
        ROOT / "jobs" / "studies" / "demo.yaml",
        [f"cluster.storage_path={tmp_path}", "train.epochs=2", "data.image_size=32", "name=stored"],
    )
    resume.save_config(cfg)
    return cfg, tmp_path / "stored"


def test_resume_alone_restores_the_stored_config(stored_study):
    cfg, study_dir = stored_study
    assert (study_dir / "config.yaml").is_file()
    for where in (study_dir, study_dir / "tune", f"{study_dir}/tune/"):
        assert resume.resume_config(where) == cfg


def test_resume_accepts_a_command_line_that_repeats_the_study(stored_study):
    cfg, study_dir = stored_study
    argv = dict(
        config=ROOT / "jobs" / "studies" / "demo.yaml",
        overrides=[
            f"cluster.storage_path={cfg.cluster.storage_path}",
            "train.epochs=2",
            "data.image_size=32",
            "name=stored",
        ],
    )
    assert resume.resume_config(study_dir, **argv) == cfg
    assert resume.resume_config(study_dir, overrides=["train.epochs=2"]) == cfg  # overrides apply to the stored config


def test_resume_refuses_a_command_line_that_changes_the_study(stored_study):
    _, study_dir = stored_study
    with pytest.raises(ConfigError) as refused:
        resume.resume_config(study_dir, overrides=["train.epochs=5", "model.dropout=0.5"])
    message = str(refused.value)
    assert message.startswith(f"--resume {study_dir}: a resumed study keeps the config it was started with")
    assert "train.epochs=5 (the study has 2)" in message and "model.dropout" not in message  # 0.5 is the stored value
    with pytest.raises(ConfigError, match=r"data.image_size=64 \(the study has 32\)"):
        resume.resume_config(study_dir, config=ROOT / "jobs" / "studies" / "demo.yaml")


def test_resume_of_a_study_without_a_stored_config_uses_the_command_line(tmp_path):
    assert resume.resume_config(tmp_path) is None


@pytest.mark.parametrize(
    "raised",
    [
        ConfigError("model.dropout: must be in [0, 1)"),
        RuntimeError("Tune: a trial failed"),  # raised from the UserError below, as Tune wraps a callback's
    ],
)
def test_a_user_error_is_one_line_and_exit_2_even_when_wrapped(capsys, raised):
    from fracture.core.errors import UserError

    with pytest.raises(SystemExit) as stop, cli.user_errors():
        try:
            raise UserError("MLflow at http://h:1 did not answer for 5 s")
        except UserError as cause:
            raise raised from cause
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert ("did not answer" in err) == isinstance(raised, RuntimeError), err


def test_an_incomplete_study_exits_130_with_its_resume_command(capsys):
    from fracture.core.errors import StudyIncomplete

    with pytest.raises(SystemExit) as stop, cli.user_errors():
        raise StudyIncomplete("the study was saved; continue it with: python jobs/tune.py --resume runs/demo")
    assert stop.value.code == 130
    assert capsys.readouterr().err == (
        "interrupted: the study was saved; continue it with: python jobs/tune.py --resume runs/demo\n"
    )
