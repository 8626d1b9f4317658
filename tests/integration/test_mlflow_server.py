"""A study tracked by a real `mlflow server` started with `make mlflow`, found via MLFLOW_TRACKING_URI.

The server runs as users start it (the Makefile target: sqlite backend, local artifact root, bound
to 127.0.0.1), on a free port and a tmp directory. Artifacts travel through the server's artifact
proxy, so the checkpoint and the model must land in the server's artifact root, not beside the study.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
from procs import stop_session

from fracture import study
from fracture.model import checkpoint
from fracture.runtime import cluster
from fracture.track import registration, registry, tags

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def mlflow_server(directory: Path):
    """`make mlflow` on a free port, with this interpreter's venv; yields the tracking URI."""
    port, venv = cluster.free_port(), Path(sys.executable).parent.parent
    log = directory.parent / "mlflow-server.log"
    with log.open("w") as out:
        # -o: use the venv as it is; the test must not reinstall anything.
        proc = subprocess.Popen(
            [
                "make",
                "-s",
                "-o",
                f"{venv}/.installed",
                "mlflow",
                f"VENV={venv}",
                f"MLFLOW_PORT={port}",
                f"MLFLOW_DIR={directory}",
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None, f"make mlflow exited {proc.returncode}:\n{log.read_text()[-3000:]}"
                assert time.time() < deadline, f"mlflow server never answered:\n{log.read_text()[-3000:]}"
                time.sleep(1)
        yield uri
    finally:
        stop_session(proc.pid, grace_s=15)  # make, mlflow and its web workers share the session
        proc.wait(timeout=10)


def test_study_logs_and_registers_through_a_real_mlflow_server(tmp_path, ray_local, tiny_config, monkeypatch):
    server_dir = tmp_path / "mlflow-server"
    with mlflow_server(server_dir) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        cfg = tiny_config("train.epochs=1")
        study.preflight(cfg)
        summary = study.run(cfg)
        assert summary["tracking_uri"] == uri and summary["champion"]

        client = mlflow.MlflowClient(tracking_uri=uri)
        runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
        parents = [r for r in runs if tags.STUDY_DIR_TAG in r.data.tags]
        trials = [r for r in runs if tags.TRIAL_TAG in r.data.tags]
        assert [r.info.status for r in parents] == ["FINISHED"]
        assert len(trials) == cfg.search.num_trials
        assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parents[0].info.run_id}
        assert all(client.get_metric_history(r.info.run_id, "val_auc") for r in trials)
        version = client.get_model_version_by_alias(cfg.tracking.model_name, registry.CHAMPION)
        assert int(version.version) == int(summary["version"])

        # Both logged forms of the champion come back through the server: our checkpoint files and
        # the mlflow.pytorch model, and they agree.
        net, state = checkpoint.load_model(registration.champion_checkpoint(uri, cfg.tracking.model_name)[0])
        assert state["config"]["name"] == cfg.name and state["threshold"] == pytest.approx(summary["threshold"])
        logged = mlflow.pytorch.load_model(f"models:/{cfg.tracking.model_name}@{registry.CHAMPION}")
        x = torch.from_numpy(np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32))
        with torch.no_grad():
            torch.testing.assert_close(logged(x), net.eval()(x))

    # The server stored the artifacts in its own root; the study wrote no store of its own.
    stored = {p.name for p in (server_dir / "artifacts").rglob("*") if p.is_file()}
    assert {"model.pt", "state.json", "config.json"} <= stored, sorted(stored)
    assert not (cfg.run_dir / "mlflow.db").exists() and not (cfg.run_dir / "mlartifacts").exists()
