"""Credentials in a tracking URI never reach the console: messages, log lines, tracebacks, jobs' errors."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from procs import job_env

from fracture import cli
from fracture.core.redact import RedactingFilter, redact
from fracture.runtime import cluster

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cret-pw"


@pytest.mark.parametrize(
    "text, shown",
    [
        ("http://alice:s3cret@mlflow:5000", "http://***@mlflow:5000"),
        ("https://alice:p@ss@host/mlflow/", "https://***@host/mlflow/"),  # an @ inside the password
        ("http://token123@host:5000/#/experiments/1", "http://***@host:5000/#/experiments/1"),
        ("https://host/api?token=abc&x=1", "https://host/api?token=***&x=1"),
        (
            "s3://bucket/a?X-Amz-Signature=ff00&X-Amz-Credential=AK/2026",
            "s3://bucket/a?X-Amz-Signature=***&X-Amz-Credential=***",
        ),
        (
            "API request to http://a:b@127.0.0.1:9/api/2.0/mlflow/runs/get failed; retry http://a:b@h",
            "API request to http://***@127.0.0.1:9/api/2.0/mlflow/runs/get failed; retry http://***@h",
        ),
        ("'http://u:pw@h:1' is unreachable", "'http://***@h:1' is unreachable"),
        # Nothing secret: left as it is (an @ in a path or an address is no user info).
        ("sqlite:////home/me/runs/demo/mlflow.db", "sqlite:////home/me/runs/demo/mlflow.db"),
        ("http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning", None),
        ("mail me@example.org about http://host/x@y", None),
        ("models:/fracture@champion", None),
    ],
)
def test_redact(text, shown):
    assert redact(text) == (text if shown is None else shown)


def test_log_lines_are_redacted(caplog):
    logger = logging.getLogger("fracture.test_redact")
    handler_filter = RedactingFilter()
    caplog.handler.addFilter(handler_filter)
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            logger.info("tracking at %s", f"http://alice:{SECRET}@host:5000")
            try:
                raise RuntimeError(f"API request to http://alice:{SECRET}@host/api failed")
            except RuntimeError:
                logger.exception("MLflow failed")
    finally:
        caplog.handler.removeFilter(handler_filter)
    assert "tracking at http://***@host:5000" in caplog.text
    assert "http://***@host/api" in caplog.text and SECRET not in caplog.text


def test_an_unexpected_error_holding_a_password_shows_a_redacted_traceback(capsys):
    with pytest.raises(SystemExit) as stop, cli.user_errors():
        raise RuntimeError(f"API request to http://alice:{SECRET}@host/api/2.0/mlflow/runs/create failed")
    err = capsys.readouterr().err
    assert stop.value.code == 1 and "Traceback" in err and "http://***@host/api" in err and SECRET not in err


def test_an_unexpected_error_without_one_is_raised_as_it_was():
    with pytest.raises(ValueError, match="no URI here"), cli.user_errors():
        raise ValueError("no URI here")


@pytest.mark.integration
def test_jobs_never_print_the_password_of_an_unreachable_server(tmp_path, synthetic_root):
    """jobs/train.py (preflight) and jobs/evaluate.py (before it scores anything) on a server that is down."""
    from fracture.core.config import load
    from fracture.model import checkpoint
    from fracture.model.network import build_model

    port = cluster.free_port()
    uri = f"http://alice:{SECRET}@127.0.0.1:{port}"
    common = [f"cluster.storage_path={tmp_path / 'runs'}", "data.image_size=32", f"data.root={synthetic_root}"]
    cfg = load(cli.DEFAULT_STUDY, common)
    net, _ = build_model(cfg.model)
    ckpt = checkpoint.save(tmp_path / "ckpt", net, None, {"epoch": 0, "config": cfg.to_dict(), "threshold": 0.5})
    out = tmp_path / "eval"
    commands = {
        "train": ["jobs/train.py", *common, "train.epochs=1", f"tracking.uri={uri}"],
        "evaluate": ["jobs/evaluate.py", "--model", str(ckpt), "--folder", str(synthetic_root), "--out", str(out)]
        + [*common, f"tracking.uri={uri}"],
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, *argv], cwd=ROOT, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, argv in commands.items()
    }
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2, f"{name}: exit {proc.returncode}\n{stderr[-3000:]}"
        assert SECRET not in stdout + stderr, f"{name} printed the password:\n{stderr[-3000:]}"
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"http://***@127.0.0.1:{port}" in errors[0] and "unreachable" in errors[0], stderr
    # evaluate checked MLflow first: a server that is down costs no scoring, and writes no report.
    assert not (out / "metrics.json").exists()


def test_copies_of_the_config_that_leave_the_driver_hold_no_password(tmp_path, capsys):
    import mlflow

    from fracture.core.config import load
    from fracture.core.redact import redact_config
    from fracture.track import study_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    secret_root = f"https://alice:{SECRET}@data.example/fracatlas"  # any string field, not only the URI
    cfg = load(None, [f"tracking.uri={uri}", f"data.root={secret_root}", "tracking.experiment=t"])
    assert redact_config({"a": {"b": [secret_root]}, "n": 3}) == {
        "a": {"b": ["https://***@data.example/fracatlas"]},
        "n": 3,
    }

    # --print-config
    with pytest.raises(SystemExit):
        cli.parse(argv=["--print-config", f"data.root={secret_root}"])
    printed = capsys.readouterr().out
    assert "data.example/fracatlas" in printed and SECRET not in printed

    # the parent run's config.json (trial runs log theirs through the same redact_config)
    _, parent = study_runs.start_study(cfg, str(tmp_path / "study"))
    got = mlflow.artifacts.download_artifacts(
        run_id=parent, artifact_path="config.json", dst_path=str(tmp_path / "got"), tracking_uri=uri
    )
    text = Path(got).read_text()
    assert "data.example/fracatlas" in text and SECRET not in text
