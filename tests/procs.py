"""Processes the integration tests start: a job's environment, and ending a whole process session."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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
