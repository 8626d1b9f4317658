"""Shared fixtures: tiny synthetic FracAtlas data, one local Ray instance, study configs on tmp storage."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import pytest
from procs import job_env, tiny_job_args

from fracture.core.config import Config, load
from fracture.data import synthetic
from fracture.runtime import cluster

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """96 synthetic X-rays (≈17 fractured) in FracAtlas layout, 40–56 px: enough for both classes in val."""
    return synthetic.generate(tmp_path_factory.mktemp("synthetic"), n=96, seed=0, min_size=40, max_size=56)


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray instance for the in-process integration tests (4 logical CPUs on 2 cores)."""
    import ray

    if not ray.is_initialized():
        cluster.init_ray(Config().replace(cluster={"num_workers": 2, "cpus_per_worker": 1}))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def decoded_cache(tmp_path_factory) -> Path:
    """One decoded-image cache for the session's studies: each decodes its data once, not once per test."""
    return tmp_path_factory.getbasetemp() / "decoded-cache"


@pytest.fixture(scope="session")
def tiny_args(decoded_cache):
    """procs.tiny_job_args with the session's decoded cache: tiny_args(root, storage, *extra, epochs=, trials=)."""
    return functools.partial(tiny_job_args, cache=decoded_cache)


@pytest.fixture(scope="session")
def one_trial_study(tmp_path_factory, ray_local, synthetic_root, decoded_cache):
    """(cfg, summary) of a finished study of 1 trial x 1 epoch, registered as @champion in its own
    sqlite store: shared by the tests that read a registered version back (registry model, report)."""
    from fracture import study

    storage = tmp_path_factory.mktemp("one_trial") / "runs"
    cfg = _tiny(storage, synthetic_root, "search.num_trials=1", "train.epochs=1", cache=decoded_cache)
    study.preflight(cfg)
    return cfg, study.run(cfg)


@pytest.fixture
def tiny_config(tmp_path, synthetic_root, decoded_cache):
    """Factory: the demo study shrunk to seconds (32 px, 2 trials x 2 epochs, 1 worker), all on tmp_path."""

    def make(*overrides: str) -> Config:
        return _tiny(tmp_path / "runs", synthetic_root, *overrides, cache=decoded_cache)

    return make


def _tiny(storage: Path, data_root: Path, *overrides: str, cache: Path | None = None) -> Config:
    return load(
        ROOT / "jobs" / "studies" / "demo.yaml",
        tiny_job_args(data_root, storage, *overrides, epochs=2, trials=2, cache=cache),
    )


@pytest.fixture
def run_job():
    """Run a jobs/ script the way a user does, in a fresh interpreter: run_job("train.py", "k=v", ...)."""
    return _run_job


def _run_job(script: str, *args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "jobs" / script), *args],
        cwd=ROOT,
        env=job_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
