"""python benchmarks/mlflow_screenshots.py [--uri sqlite:////abs/mlflow.db] [--experiment NAME] [--out /tmp/mlflow-shots]

Headless-Chromium screenshots of what a user sees of a study in the MLflow UI, to check it by eye:

  1_experiment.png       the experiment's runs, as tags.ui_route links them (summary["ui_route"])
  1b_experiment_as_a_fresh_browser_opens_it.png
                         the same without `?workflowType=machine_learning`: MLflow 3.17 shows its
                         GenAI overview there whatever the experiment's kind tag says
  2_parent_run.png       the study's parent run (space params, tags, the registered version)
  3_parent_artifacts.png the parent run's study/ artifacts (trials.csv, Optuna plots)
  4_trial_metrics.png    the registered trial's val_auc and best_val_auc charts, per epoch
  5_model_version.png    the registered model version (description, tags, signature)

Without --uri it first runs a tiny study of its own (synthetic data, 32 px, --trials x --epochs,
about 3 minutes on 2 cores) in --out/study/ (replaced on each run). It then starts `mlflow server`
on the store, bound to 127.0.0.1 on a free port, shoots each page, and stops the server. The PNGs
go to --out, which must lie outside the git repository. Needs `chromium` (`apt-get install -y
chromium`).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_tiny_study(work: Path, *, trials: int, epochs: int, experiment: str) -> str:
    """A real study on synthetic data in `work`; returns its sqlite tracking URI."""
    from fracture import study
    from fracture.core.config import load
    from fracture.data import synthetic
    from fracture.runtime import cluster

    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the study's own embedded store, not a server's
    root = synthetic.generate(work / "synthetic", n=96, seed=0, min_size=40, max_size=56)
    cfg = load(
        ROOT / "jobs" / "studies" / "demo.yaml",
        [
            f"data.root={root}",
            f"cluster.storage_path={work / 'runs'}",
            "data.image_size=32",
            f"train.epochs={epochs}",
            "train.batch_size_per_worker=8",
            f"search.num_trials={trials}",
            "cluster.num_workers=1",
            "cluster.cpus_per_worker=1",
            f"tracking.experiment={experiment}",
        ],
    )
    study.preflight(cfg)
    cluster.init_ray(cfg)
    summary = study.run(cfg)
    import ray

    ray.shutdown()
    print(
        f"study done: version {summary['version']}, val_auc {summary['val_auc']:.4f}; "
        f"shoot it again with --uri {summary['tracking_uri']}"
    )
    return summary["tracking_uri"]


@contextlib.contextmanager
def mlflow_server(uri: str, log_path: Path, tries: int = 3):
    """`mlflow server` on the store, 127.0.0.1 only, on a free port; yields its base URL.

    A free port can be taken by another process before the server binds it (Ray and other test
    runs share the machine): then the server exits, and a new port is tried.
    """
    from fracture.runtime.cluster import free_port

    mlflow = Path(sys.executable).parent / "mlflow"
    for _ in range(tries):
        port = free_port()
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [
                    str(mlflow),
                    "server",
                    "--backend-store-uri",
                    uri,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--workers",
                    "1",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        base = f"http://127.0.0.1:{port}"
        try:
            if _wait_healthy(base, proc):
                yield base
                return
        finally:
            _stop(proc)
    raise RuntimeError(f"mlflow server did not come up in {tries} tries:\n{log_path.read_text()[-3000:]}")


def _wait_healthy(base: str, proc: subprocess.Popen, timeout_s: float = 120) -> bool:
    """True once the server answers /health; False if it exited first (or never answered)."""
    deadline = time.time() + timeout_s
    while proc.poll() is None and time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as answer:
                if answer.read().strip() == b"OK":
                    return True
        except (OSError, http.client.HTTPException):  # not up yet, or someone else's port
            pass
        time.sleep(1)
    return False


def _stop(proc: subprocess.Popen) -> None:
    """The server and its web workers share the session it was started in: end that session only."""
    for signum, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def pages(uri: str, experiment: str, model_name: str) -> dict[str, str]:
    """{file name: UI route} of the champion's experiment, study (parent) run, trial run and version."""
    from fracture.core import metrics
    from fracture.track import registration, tags

    ids = registration.champion_runs(uri, experiment, model_name)
    exp, parent, ml = ids["experiment_id"], ids["study_run_id"], tags.UI_QUERY  # see tags.UI_QUERY
    return {
        "1_experiment.png": tags.ui_route(exp),
        "1b_experiment_as_a_fresh_browser_opens_it.png": f"/#/experiments/{exp}",
        "2_parent_run.png": tags.ui_route(exp, parent),
        "3_parent_artifacts.png": f"/#/experiments/{exp}/runs/{parent}/artifacts/{tags.STUDY_ARTIFACT}/"
        f"optuna_parallel_coordinate.png{ml}",
        "4_trial_metrics.png": _metric_route(exp, ids["trial_run_id"], ["val_auc", metrics.BEST]) + "&" + ml[1:],
        "5_model_version.png": f"/#/models/{model_name}/versions/{ids['version']}{ml}",
    }


def _metric_route(experiment_id: str, run_id: str, keys: list[str]) -> str:
    """The UI's metric page (the one a run page's metric links open), per step, points shown."""
    query = {
        "runs": json.dumps([run_id]),
        "metric": json.dumps(keys[0]),
        "experiments": json.dumps([experiment_id]),
        "plot_metric_keys": json.dumps(keys),
        "plot_layout": "{}",
        "x_axis": "step",
        "y_axis_scale": "linear",
        "line_smoothness": "1",
        "show_point": "true",
        "deselected_curves": "[]",
        "last_linear_y_axis_range": "[]",
    }
    return "/#/metric?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)


TALL = {"2_parent_run.png": 1900, "5_model_version.png": 1500}  # pages whose params/schema sit below the fold


def screenshot(chromium: str, url: str, path: Path, profile: Path) -> None:
    height = TALL.get(path.name, 1000)
    subprocess.run(
        [
            chromium,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--screenshot={path}",
            f"--window-size=1600,{height}",
            "--virtual-time-budget=15000",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def _outside_repo(out: Path) -> Path:
    out = out.expanduser().resolve()
    if out == ROOT or ROOT in out.parents:
        raise SystemExit(f"error: --out {out} is inside the repository; pick a folder outside it")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--uri", help="sqlite:////abs/path/mlflow.db of a finished study (default: run a tiny one)")
    p.add_argument("--experiment", default="screenshots", help="the study's MLflow experiment")
    p.add_argument("--model", default="fracture", help="registered model name")
    p.add_argument("--out", type=Path, default=Path("/tmp/mlflow-shots"))
    p.add_argument("--trials", type=int, default=2, help="trials of the tiny study (2: Optuna can rank parameters)")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    out = _outside_repo(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("error: chromium not found; install it with `apt-get install -y chromium`")

    if args.uri:
        uri = args.uri
    else:
        shutil.rmtree(out / "study", ignore_errors=True)
        uri = run_tiny_study(out / "study", trials=args.trials, epochs=args.epochs, experiment=args.experiment)
    routes = pages(uri, args.experiment, args.model)
    with (
        tempfile.TemporaryDirectory(prefix="mlflow-shots-chromium-") as profile,
        mlflow_server(uri, out / "mlflow-server.log") as base,
    ):
        for name, route in routes.items():
            screenshot(chromium, base + route, out / name, Path(profile))
            print(f"{out / name}   {route}")


if __name__ == "__main__":
    main()
