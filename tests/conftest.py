"""Shared fixtures: tiny synthetic FracAtlas data, one local Ray instance, study configs on tmp storage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from procs import job_env

from fracture import cluster, synthetic
from fracture.config import Config, load

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


@pytest.fixture
def tiny_config(tmp_path, synthetic_root):
    """Factory: the demo study shrunk to seconds (32 px, 2 trials x 2 epochs, 1 worker), all on tmp_path."""

    def make(*overrides: str) -> Config:
        return _tiny(tmp_path / "runs", synthetic_root, *overrides)

    return make


def _tiny(storage: Path, data_root: Path, *overrides: str) -> Config:
    return load(
        ROOT / "jobs" / "studies" / "demo.yaml",
        [
            f"data.root={data_root}",
            f"cluster.storage_path={storage}",
            "data.image_size=32",
            "train.epochs=2",
            "train.batch_size_per_worker=8",
            "search.num_trials=2",
            "search.max_concurrent=1",
            "cluster.num_workers=1",
            "cluster.cpus_per_worker=1",
            "tracking.experiment=test",
            *overrides,
        ],
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
