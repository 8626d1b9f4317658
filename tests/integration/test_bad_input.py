"""Mistakes a user can make end as one `error: ...` line and exit status 2, before any training.

Each case runs jobs/tune.py in a fresh interpreter, as a user would; the interpreters run a few
at a time (most of their time is importing torch and Ray). Every case but --resume, which is
checked once Ray is up, must fail before Ray starts.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
from pathlib import Path

import pytest
from procs import job_env

from fracture.data import synthetic
from fracture.runtime import cluster

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RAY_STARTED = "Started a local Ray instance"
CASES = [
    "missing data root",
    "unknown key in the study file",
    "wrong type",
    "unknown distribution",
    "search bounds reversed",
    "every image unreadable",
    "imagenet weights not cached, no network",
    "missing weights file",
    "unreachable MLflow",
    "resume of a directory without a study",
]


def _cases(tmp: Path, data_root: Path) -> dict[str, dict]:
    """name -> argv for jobs/tune.py, extra env, what the error line must say, whether Ray may start.

    The cases run at once, so each has storage of its own (tmp/<n>/runs).
    """
    tiny = [
        f"data.root={data_root}",
        "data.image_size=32",
        "train.epochs=1",
        "search.num_trials=1",
        "cluster.cpus_per_worker=1",
    ]
    broken = synthetic.generate(tmp / "broken", n=8, seed=1, min_size=32, max_size=40)
    for image in broken.rglob("*.jpg"):
        image.write_bytes(b"not a jpeg")
    study = tmp / "typo.yaml"
    study.write_text("name: typo\ntrain:\n  epochz: 3\n")
    (tmp / "torch-home").mkdir()
    (tmp / "empty-dir").mkdir()
    closed = f"http://127.0.0.1:{cluster.free_port()}"  # nothing listens: a proxy or a server that is down
    no_network = {
        "TORCH_HOME": str(tmp / "torch-home"),
        "HTTPS_PROXY": closed,
        "https_proxy": closed,
        "HTTP_PROXY": closed,
        "http_proxy": closed,
        "NO_PROXY": "",
        "no_proxy": "",
    }
    cases = {
        "missing data root": dict(argv=[*tiny, "data.root=/nonexistent"], says=["/nonexistent", "does not exist"]),
        "unknown key in the study file": dict(argv=["--config", str(study)], says=["train.epochz"]),
        "wrong type": dict(argv=[*tiny, "train.epochs=abc"], says=["train.epochs", "expected int", "abc"]),
        "unknown distribution": dict(
            argv=[*tiny, "search.space={model.dropout: {gaussian: [0, 1]}}", "search.points_to_evaluate=[]"],
            says=["search.space.model.dropout", "gaussian"],
        ),
        "search bounds reversed": dict(
            argv=[*tiny, "search.space={model.dropout: {uniform: [0.7, 0.2]}}", "search.points_to_evaluate=[]"],
            says=["search.space.model.dropout", "low < high", "[0.7, 0.2]"],
        ),
        "every image unreadable": dict(
            argv=[*tiny, f"data.root={broken}"],
            says=["no usable image", str(broken), "unreadable", "report.md"],
        ),
        # The download is refused at once (a proxy nobody listens on), network or not.
        "imagenet weights not cached, no network": dict(
            argv=[*tiny, "model.arch=vgg16", "model.weights=imagenet"],
            env=no_network,
            says=["vgg16-397923af.pth", "model.weights="],
        ),
        "missing weights file": dict(
            argv=[*tiny, "model.weights=/nonexistent.pth"], says=["/nonexistent.pth", "model.weights"]
        ),
        "unreachable MLflow": dict(argv=[*tiny, f"tracking.uri={closed}"], says=[closed, "unreachable"]),
        "resume of a directory without a study": dict(
            argv=["--resume", str(tmp / "empty-dir"), *tiny],
            ray_started=True,
            says=[
                f"error: --resume {tmp / 'empty-dir'}: no Tune study there (expected tune/ with tuner.pkl "
                "from an earlier jobs/tune.py run)"
            ],
        ),
    }
    assert list(cases) == CASES
    for n, case in enumerate(cases.values()):
        case["storage"] = tmp / str(n) / "runs"
        case["argv"].append(f"cluster.storage_path={case['storage']}")
    return cases


def _run(case: dict) -> subprocess.CompletedProcess:
    env = job_env(case.get("env", {}))
    return subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "tune.py"), *case["argv"]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, synthetic_root) -> dict[str, tuple[dict, subprocess.CompletedProcess]]:
    tmp = tmp_path_factory.mktemp("bad-input")
    cases = _cases(tmp, synthetic_root)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(_run, case) for name, case in cases.items()}
        results = {name: (cases[name], future.result()) for name, future in futures.items()}
    return results


@pytest.mark.parametrize("name", CASES)
def test_user_error_is_one_line_and_exit_2(outcomes, name):
    case, proc = outcomes[name]
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for needle in case["says"]:
        assert needle in errors[0], errors[0]
    if not case.get("ray_started"):
        assert RAY_STARTED not in proc.stderr, "Ray started before the mistake was caught"


def test_a_wrong_resume_opens_no_mlflow_run(outcomes):
    """--resume is checked before the study's MLflow parent run is created."""
    case, _ = outcomes["resume of a directory without a study"]
    assert case["storage"].is_dir() and not (case["storage"] / "demo" / "mlflow.db").exists()
