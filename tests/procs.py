"""Processes the integration tests start: a job's environment, a `ray start` head, ending a process session."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from fracture.runtime import cluster

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"
# For processes that join a job's local Ray as clients: they must also see a one-machine Ray, or they
# announce the host's address (jobs themselves get this from fracture.runtime.cluster.init_ray).
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def job_env(extra: dict | None = None) -> dict:
    """The environment a jobs/ script runs in, as a user's would: the package importable, and no
    RAY_ADDRESS inherited from the test session, so the job starts (or joins) its own cluster."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform"), **(extra or {})}
    env.pop("RAY_ADDRESS", None)
    return env


def session_pids(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--sid", str(sid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def stop_session(sid: int, grace_s: float = 5) -> None:
    """End a process started with start_new_session=True and everything it started (all of them
    stay in its session, even those that make process groups of their own): SIGTERM, then SIGKILL."""
    for signum, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5)):
        for pid in session_pids(sid):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait_s
        while session_pids(sid) and time.time() < deadline:
            time.sleep(0.5)


# A test study: the demo study shrunk to seconds. One list, so every test's study is the same kind.
TINY = [
    "data.image_size=32",
    "train.batch_size_per_worker=8",
    "search.max_concurrent=1",
    "cluster.num_workers=1",
    "cluster.cpus_per_worker=1",
]


def tiny_job_args(
    root, storage, *extra: str, experiment: str = "test", epochs: int = 1, trials: int = 1, cache=None
) -> list[str]:
    """Overrides of jobs/studies/demo.yaml for a test's study: one worker, 32 px, `trials` x `epochs`.

    Args:
        cache: a decoded-image cache dir shared by the session's studies (conftest's decoded_cache;
            keyed by content, so one per data and size), or None for the study's own.
        extra: more overrides, applied last (they win).
    """
    return [
        f"data.root={root}",
        f"cluster.storage_path={storage}",
        *([f"data.cache_dir={cache}"] if cache else []),
        *TINY,
        f"train.epochs={epochs}",
        f"search.num_trials={trials}",
        f"tracking.experiment={experiment}",
        *extra,
    ]


def start_tune(argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """jobs/tune.py ARGV started in a process session of its own (stop_session ends it), its output in `log`."""
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "jobs" / "tune.py"), *argv],
            cwd=ROOT,
            env=job_env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


PORTS = (
    "port",
    "dashboard-port",
    "ray-client-server-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
)


@contextlib.contextmanager
def ray_head(workdir: Path, *args: str, env: dict | None = None, num_cpus: int = 4, port: int | None = None):
    """A cluster started with `ray start --head` on free loopback ports, as `ray up` starts one; stopped after.

    Token authentication stays on: the head, its nodes, jobs and the CLI share a token file made
    here (RAY_AUTH_MODE=token + RAY_AUTH_TOKEN_PATH). The head runs from this venv, as a user's
    would after activating it. Yields address (the dashboard's, for `ray job`), gcs (for
    RAY_ADDRESS), env (for the CLI and jobs), pid and log. `port`: the GCS port (default: a free one).
    """
    token = workdir / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {
        **os.environ,
        "PATH": f"{RAY.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        **LOOPBACK,  # single machine: Ray keeps to 127.0.0.1
        **(env or {}),
    }
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_API_SERVER_ADDRESS"):
        env.pop(key, None)
    ports = {name: cluster.free_port() for name in PORTS} | ({"port": port} if port else {})
    log = workdir / "head.log"
    with log.open("w") as out:
        # --block keeps `ray start` as the leader of a session of its own: teardown ends that session only.
        command = [str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1"]
        command += [f"--num-cpus={num_cpus}", "--disable-usage-stats", *args]
        command += [f"--{name}={port}" for name, port in ports.items()]
        proc = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    head = SimpleNamespace(
        address=f"http://127.0.0.1:{ports['dashboard-port']}",
        gcs=f"127.0.0.1:{ports['port']}",
        env=env,
        pid=proc.pid,
        log=log,
    )
    try:
        deadline = time.time() + 180
        while ray_cli(head, "job", "list", "--address", head.address).returncode != 0:
            assert proc.poll() is None and time.time() < deadline, f"ray start failed:\n{log.read_text()[-3000:]}"
            time.sleep(2)
        yield head
    finally:
        stop_session(proc.pid)
        proc.wait(timeout=30)
        address_file = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
        if address_file.is_file() and address_file.read_text().strip() == head.gcs:
            address_file.unlink()  # `ray start` pointed "the latest cluster" here


def ray_cli(head, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """The `ray` CLI against `head`, from the repo root (what --working-dir . uploads)."""
    return subprocess.run([str(RAY), *args], cwd=ROOT, env=head.env, capture_output=True, text=True, timeout=timeout)
