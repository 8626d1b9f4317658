"""tracking's process-wide MLflow state, sqlite stores shared between jobs, and bounded waits on MLflow."""

from __future__ import annotations

import base64
import fcntl
import http.server
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from procs import start_tune, stop_session

from fracture import cli
from fracture.runtime import cluster
from fracture.track import registry, store, tags, trial_logger

ROOT = Path(__file__).resolve().parents[1]

SECRET = "s3cret-pw"


def test_fluent_leaves_mlflow_following_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/from-env.db")
    study_uri = f"sqlite:///{tmp_path}/study.db"
    with store.fluent(study_uri):
        assert mlflow.get_tracking_uri() == study_uri and mlflow.get_registry_uri() == study_uri
    # Nothing pinned: a later change of environment (the next study, the next test) takes effect.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/later.db")
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path}/later.db"
    assert mlflow.get_registry_uri() == f"sqlite:///{tmp_path}/later.db"
    assert "MLFLOW_REGISTRY_URI" not in os.environ


# --- a store shared between jobs; bounded waits on MLflow ---


def test_prepare_store_creates_a_sqlite_store_once_and_leaves_its_lock(tmp_path):
    db = tmp_path / "new" / "shared.db"
    uri = f"sqlite:///{db}"
    store.prepare_store(uri)
    assert db.is_file() and (tmp_path / "new" / "shared.db.lock").is_file()
    assert mlflow.MlflowClient(uri).search_experiments()  # complete: MLflow opens it without migrating


def test_a_store_held_locked_too_long_is_one_clear_error(tmp_path, monkeypatch):
    """A job that hangs while creating a store must not hang every job behind it."""
    monkeypatch.setattr(store, "STORE_LOCK_WAIT_S", 1.0)
    db = tmp_path / "held.db"
    with open(f"{db}.lock", "a") as held:  # flock: another open file description conflicts, even in-process
        fcntl.flock(held, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(store.TrackingError, match=r"held\.db\.lock stayed locked for 1 s"):
            store.prepare_store(f"sqlite:///{db}")
    assert time.monotonic() - started < 5
    store.prepare_store(f"sqlite:///{db}")  # released: it goes on


def test_a_store_mlflow_cannot_open_is_one_clear_error(tmp_path):
    good = tmp_path / "good.db"
    store.prepare_store(f"sqlite:///{good}")
    odd = tmp_path / "odd.db"
    shutil.copy(good, odd)
    with sqlite3.connect(odd) as db:  # as if migrated by another MLflow version
        db.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    with pytest.raises(store.TrackingError, match=r"MLflow store sqlite:///.*odd\.db cannot be opened"):
        store.check_reachable(f"sqlite:///{odd}")


def test_a_bad_timeout_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv(store.TIMEOUT_ENV, "soon")
    with pytest.raises(store.TrackingError, match="FRACTURE_MLFLOW_TIMEOUT_S='soon'"):
        store.mlflow_timeout_s()


def test_a_server_that_stops_answering_fails_the_study_within_the_bound(tmp_path, monkeypatch):
    """Mid-study, MLflow goes away (nothing listens on its port any more): the trial logger gives up
    after FRACTURE_MLFLOW_TIMEOUT_S, not after MLflow's own minutes of retries, and says how to go on."""
    bound = 4
    monkeypatch.setenv(store.TIMEOUT_ENV, str(bound))
    for name in (
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
    ):
        monkeypatch.delenv(name, raising=False)
    uri = f"http://alice:{SECRET}@127.0.0.1:{cluster.free_port()}"
    logger = trial_logger.TrialLogger(uri, "test", "parent-run", [], study_dir=str(tmp_path / "demo"))
    trial = SimpleNamespace(trial_id="t1", config={"config": {}})
    started = time.monotonic()
    with pytest.raises(store.TrackingError) as failure:
        logger.on_trial_start(0, [], trial)
    took = time.monotonic() - started
    message = str(failure.value)
    # One MLflow call in flight at the deadline may finish its own (bounded) retries: ~3 s here.
    assert bound - 1 <= took < bound + 8, took
    assert re.search(r"MLflow at http://\*\*\*@127\.0\.0\.1:\d+ did not answer for \d+ s", message), message
    assert f"the bound is {bound} s, FRACTURE_MLFLOW_TIMEOUT_S" in message, message
    assert SECRET not in message, message
    print(f"gave up after {took:.1f} s: {message}")
    assert f"python jobs/tune.py --resume {tmp_path / 'demo'}" in message, message
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ  # MLflow's settings were only lent to the calls


def test_check_reachable_sends_the_uri_credentials_as_a_header_not_as_a_host(tmp_path):
    """urllib reads `user:password@host` as a host name: the check would call every such server down."""
    seen = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        store.check_reachable(f"http://alice:{SECRET}@127.0.0.1:{server.server_port}/")
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [("/health", "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode())]


def _server(port: int, directory: Path) -> subprocess.Popen:
    """`mlflow server` as `make mlflow` starts it, on loopback; returns once it answers."""
    server = subprocess.Popen(
        [Path(sys.executable).parent / "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
        + ["--backend-store-uri", f"sqlite:///{directory}/mlflow.db", "--artifacts-destination", f"{directory}/art"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its web workers go with it (stop_session)
    )
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            return server
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                stop_session(server.pid)
                raise AssertionError("mlflow server never answered") from None
            time.sleep(1)


@pytest.mark.integration
@pytest.mark.slow
def test_a_study_whose_server_dies_stops_and_resumes_as_its_error_says(tmp_path, synthetic_root):
    """The issue's case end to end: a real `mlflow server` killed once the trial has started. The
    job must end within the bound with one error line (password masked) naming the command that
    continues the study, and that command must work once the server is back."""
    bound, port, env = 5, cluster.free_port(), {store.TIMEOUT_ENV: "5"}
    argv = [f"data.root={synthetic_root}", f"cluster.storage_path={tmp_path / 'runs'}", "data.image_size=32"]
    argv += ["train.epochs=2", "search.num_trials=1", "train.batch_size_per_worker=8", "cluster.cpus_per_worker=1"]
    argv += ["tracking.experiment=test", f"tracking.uri=http://alice:{SECRET}@127.0.0.1:{port}"]
    first, second = tmp_path / "first.log", tmp_path / "resume.log"
    server = _server(port, tmp_path / "server")
    try:
        job = start_tune(argv, first, env)
        try:
            while "trial_001 started" not in first.read_text():
                assert job.poll() is None, first.read_text()[-3000:]
                time.sleep(0.5)
            stop_session(server.pid)  # the trial's MLflow run exists; its metrics have nowhere to go
            killed = time.monotonic()
            job.wait(timeout=300)
            after_s = time.monotonic() - killed
        finally:
            stop_session(job.pid)
        text = first.read_text()
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        assert job.returncode == 2 and len(errors) == 1, text[-4000:]
        assert "did not answer for" in errors[0] and f"the bound is {bound} s" in errors[0], errors[0]
        assert SECRET not in text and "Traceback" not in text, text[-4000:]
        # An epoch (tens of seconds on 2 busy cores), the bound, the job's exit: not MLflow's minutes.
        assert after_s < 150, after_s
        resume = errors[0].split("`python jobs/tune.py ")[1].split("`")[0].split()
        assert resume == ["--resume", str(tmp_path / "runs" / "demo")], errors[0]

        server = _server(port, tmp_path / "server")  # back, same address and store
        job = start_tune(resume, second, env)
        try:
            job.wait(timeout=400)
        finally:
            stop_session(job.pid)
        assert job.returncode == 0, second.read_text()[-4000:]
        client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
        runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
        (trial,) = [r for r in runs if tags.TRIAL_TAG in r.data.tags]  # resumed, not forked
        assert [m.step for m in client.get_metric_history(trial.info.run_id, "val_auc")][-1] == 1  # both epochs
        assert client.get_model_version_by_alias("fracture", registry.CHAMPION)
    finally:
        stop_session(server.pid)


def test_a_tracking_error_wrapped_by_tune_is_still_one_error_line(capsys):
    """Tune wraps a callback's exception in a TuneError whose text is a traceback; the job shows ours."""
    from ray.tune.error import TuneError

    with pytest.raises(SystemExit) as stop, cli.user_errors():
        try:
            raise store.TrackingError(f"MLflow at http://alice:{SECRET}@h:1 did not answer for 60 s")
        except store.TrackingError:
            raise TuneError("Traceback (most recent call last): ...")  # noqa: B904  (as Tune raises it)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err == "error: MLflow at http://***@h:1 did not answer for 60 s\n"
