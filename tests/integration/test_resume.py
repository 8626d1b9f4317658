"""Resuming an interrupted study: ASHA-stopped trials stay stopped, the unfinished one continues.

The study is made deterministic, so the interrupt always finds the same situation: every trial
trains with learning rates of 1e-9, i.e. its model stays at its seeded initialisation, and its
val AUROC is a constant of `model.hidden`, computed below on the fixture data. With three trials
run one at a time (hidden = best, worst, best) ASHA (grace 1 epoch, reduction factor 2) always
lets trial 1 run to max_t, stops trial 2 after its first epoch (below trial 1) and lets trial 3
go on (above the midpoint of the two). The driver gets SIGINT after trial 3's first epoch, as
from Ctrl-C; Tune saves the study and the job exits 130. `jobs/tune.py --resume` must then
finish it.

Placement groups: ASHA stops a trial by killing its Tune actor, and with it the Ray Train
controller, before the controller removes its workers' placement group; Ray Train's
PlacementGroupCleaner must remove it. While trial 3 starts, the test connects to the job's own
cluster and checks that trials 1 and 2 left no worker placement group behind. (After the resumed
run the job's cluster is gone, so that is where this is checked; on this 2-core machine a
leaked group would also hang the next trial: the local cluster holds one trial's CPUs.)

Everything runs with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray then takes this for a single
machine and uses 127.0.0.1 throughout, instead of resolving loopback to the host's address.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from procs import LOOPBACK, job_env

from fracture.core import names
from fracture.core.config import load
from fracture.data import pipeline, presets
from fracture.model import engine
from fracture.model.network import build_model
from fracture.track import registry, tags

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 10  # ASHA rungs at 1, 2, 4, 8; long enough that trial 3 is still running when interrupted
CANDIDATE_HIDDEN = (2, 8, 16, 32, 64)
TRIAL_DIR = re.compile(r"^trial_(?P<number>\d+)_(?P<id>[0-9a-f]+)$")

PLACEMENT_GROUPS = """
import json, re, sys, time
from pathlib import Path
import ray
address, tune_dir, wait_s = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
ray.init(address=address, log_to_driver=False, logging_level="ERROR")
third = re.compile(r"^trial_003_")
while not (tune_dir.is_dir() and any(third.match(p.name) for p in tune_dir.iterdir())):
    time.sleep(0.2)       # trial 3 has started: trials 1 and 2 are over
deadline = time.time() + wait_s
while True:               # the cleaner polls the dead controller once a second: allow it a moment
    live = [pg for pg in ray.util.placement_group_table().values() if pg["state"] != "REMOVED"]
    workers = [pg for pg in live if any(b.get("CPU", 0) >= 1 for b in pg["bundles"].values())]
    if len(workers) <= 1 or time.time() > deadline:
        break
    time.sleep(0.5)
print(json.dumps([{"state": pg["state"], "bundles": pg["bundles"]} for pg in live]))
"""


def _overrides(storage: Path, data_root: Path, cache: Path, best: int, worst: int) -> list[str]:
    return [
        f"data.root={data_root}",
        f"cluster.storage_path={storage}",
        f"data.cache_dir={cache}",
        "data.image_size=32",
        f"train.epochs={EPOCHS}",
        "train.batch_size_per_worker=8",
        "search.num_trials=3",
        "search.max_concurrent=1",
        "search.grace_epochs=1",
        "cluster.num_workers=1",
        "cluster.cpus_per_worker=1",
        "tracking.experiment=test",
        "optim.lr_head=1.0e-9",
        "optim.lr_backbone=1.0e-9",
        "model.arch=vgg16",  # no batch norm: its running statistics would move the model with no lr at all
        f"search.space={{model.hidden: {{choice: [{best}, {worst}]}}}}",
        f"search.points_to_evaluate=[{{model.hidden: {best}}}, {{model.hidden: {worst}}}, {{model.hidden: {best}}}]",
    ]


def _initial_auc(cfg, hidden: int) -> float:
    """val AUROC of the worker's model before any update (the worker seeds torch the same way)."""
    frame = pipeline.split_frame(cfg, "val")
    images = np.stack([presets.decode_resize(p, cfg.data.image_size) for p in frame[names.PATH]])
    batch = {"image": torch.from_numpy(images), "label": torch.tensor(frame[names.LABEL].to_numpy())}
    torch.manual_seed(cfg.seed)
    net, _ = build_model(cfg.replace(model={"hidden": hidden}).model)
    return engine.evaluate(net, [batch], device=torch.device("cpu"))["val_auc"]


def _trials(tune_dir: Path) -> dict[int, Path]:
    """{trial number (1, 2, 3 in creation order): trial dir}"""
    found = {}
    for path in tune_dir.glob("trial_*") if tune_dir.is_dir() else ():
        match = TRIAL_DIR.match(path.name)
        if match and path.is_dir():
            found[int(match["number"])] = path
    return found


def _trial_id(trial_dir: Path) -> str:
    return TRIAL_DIR.match(trial_dir.name)["id"]


def _results(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]


def _epochs(trial_dir: Path) -> list[int]:
    return [int(r["epoch"]) for r in _results(trial_dir)]


def _placement_group_watch(job_pid: int, tune_dir: Path, wait_s: float = 30) -> subprocess.Popen | None:
    """A driver connected to the job's cluster that prints its live placement groups once trial 3
    starts; None while the job's cluster is not up yet."""
    ray_tmp = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray"
    ports = [p for s in ray_tmp.glob(f"session_*_{job_pid}") for p in s.glob("gcs_server_port_*")]
    if not ports or not ports[0].read_text().strip():
        return None
    # A local cluster started by ray.init() turns token auth on when RAY_AUTH_MODE is unset.
    env = {**job_env(LOOPBACK), "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE") or "token"}
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            PLACEMENT_GROUPS,
            f"127.0.0.1:{ports[0].read_text().strip()}",
            str(tune_dir),
            str(wait_s),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_resume_keeps_asha_stopped_trials_and_continues_the_unfinished_one(
    tmp_path, tmp_path_factory, synthetic_root, run_job
):
    storage = tmp_path / "runs"
    cache = tmp_path_factory.getbasetemp() / "decoded-cache"  # keyed by content: shared by this session's runs
    base = load(ROOT / "jobs" / "studies" / "demo.yaml", _overrides(storage, synthetic_root, cache, 8, 64))
    auc = {h: _initial_auc(base, h) for h in CANDIDATE_HIDDEN}
    best, worst = max(auc, key=auc.get), min(auc, key=auc.get)
    assert auc[best] - auc[worst] >= 0.2, f"fixture gives no usable AUROC spread: {auc}"
    overrides = _overrides(storage, synthetic_root, cache, best, worst)
    tune_dir = storage / "demo" / "tune"

    # --- run 1: interrupted while trial 3 is mid-way ---
    log = tmp_path / "run1.log"
    with log.open("w") as out:
        job = subprocess.Popen(
            [sys.executable, str(ROOT / "jobs" / "tune.py"), *overrides],
            cwd=ROOT,
            env=job_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    watch = None
    try:
        deadline = time.time() + 420
        while time.time() < deadline and job.poll() is None:
            watch = watch or _placement_group_watch(job.pid, tune_dir)
            trials = _trials(tune_dir)
            if 3 in trials and _epochs(trials[3]) and watch and watch.poll() is not None:
                break
            time.sleep(0.2)
        assert job.poll() is None, f"the study ended before the interrupt:\n{log.read_text()[-4000:]}"
        assert time.time() < deadline, f"trial 3 never reported an epoch:\n{log.read_text()[-4000:]}"
        job.send_signal(signal.SIGINT)
        rc = job.wait(timeout=180)
    finally:
        for proc in (job, watch):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    watched, problems = watch.communicate()
    assert watch.returncode == 0, problems[-3000:]
    live_pgs = json.loads(watched.strip().splitlines()[-1])
    output = log.read_text()
    assert rc == 130, output[-4000:]
    assert "interrupted: the study was saved; continue it with: python jobs/tune.py --resume" in output
    assert "Traceback" not in output, output[-4000:]
    assert "registered model version" not in output  # a partial study registers nothing

    # Trials 1 and 2 were stopped by ASHA (trial 1 at max_t, trial 2 at the first rung) and left
    # no worker placement group behind: at most trial 3's own one (1 CPU) is there.
    worker_pgs = [pg for pg in live_pgs if any(b.get("CPU", 0) >= 1 for b in pg["bundles"].values())]
    assert len(worker_pgs) <= 1, f"placement groups left behind by stopped trials: {live_pgs}"

    # MLflow: the study's parent run is marked KILLED (it can be resumed), not left RUNNING.
    uri = f"sqlite:///{storage / 'demo' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("test")
    parents = [r for r in client.search_runs([experiment.experiment_id]) if tags.STUDY_DIR_TAG in r.data.tags]
    assert [r.info.status for r in parents] == ["KILLED"], [(r.info.run_id, r.info.status) for r in parents]

    trials = _trials(tune_dir)
    before = {n: _epochs(path) for n, path in trials.items()}
    assert sorted(before) == [1, 2, 3]
    assert before[1] == list(range(EPOCHS)), before  # ran to max_t
    assert before[2] == [0], before  # ASHA-stopped after the grace epoch
    assert 1 <= len(before[3]) < EPOCHS and before[3] == list(range(len(before[3]))), before

    # --- run 2: --resume finishes the study ---
    proc = run_job("tune.py", "--resume", str(storage / "demo"), *overrides, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "now @champion" in proc.stdout, proc.stdout[-3000:]

    after = {n: _epochs(path) for n, path in _trials(tune_dir).items()}
    assert sorted(after) == [1, 2, 3], "resume started new trials"
    assert after[1] == before[1] and after[2] == before[2], f"stopped trials ran again: {before} -> {after}"
    # Trial 3 went on from its Train run's latest checkpoint: no second epoch 0, to max_t. Its first
    # report is the restored epoch again (fracture.train.worker), so an epoch checkpointed but not yet
    # received by Tune when the SIGINT came is not lost; when Tune had it, it is the one repeat.
    # (Tune rewrites a restored trial's result.json with the results after the restore, so the
    # first run's lines come from `before`.)
    resumed = after[3][len(before[3]) :] if after[3][: len(before[3])] == before[3] else after[3]
    replayed = [int(r["epoch"]) for r in _results(trials[3]) if r.get("replayed")]
    epochs = before[3] + resumed
    assert resumed and resumed[0] >= before[3][-1], f"trial 3 started over: {before[3]} then {resumed}"
    assert replayed == [resumed[0]], f"the restored epoch was not reported first: {replayed}, {resumed}"
    assert sorted(set(epochs)) == list(range(EPOCHS)), f"an epoch was lost: {epochs}"
    assert [e for e in set(epochs) if epochs.count(e) > 1] in ([], replayed), epochs
    assert f"trial_003 restored its checkpoint of epoch {resumed[0] + 1}/{EPOCHS}" in proc.stdout + proc.stderr, (
        "the worker did not restore trial 3's checkpoint"
    )
    state = json.loads(
        max(
            (storage / "demo" / "train").glob(f"demo-trial_{_trial_id(trials[3])}/checkpoint_*/state.json"),
            key=lambda p: json.loads(p.read_text())["epoch"],
        ).read_text()
    )
    assert [h["epoch"] for h in state["history"]] == list(range(EPOCHS))  # one history, carried across

    # The frozen-model premise held: each trial reported its precomputed AUROC.
    for n, hidden in ((1, best), (2, worst), (3, best)):
        first = json.loads((trials[n] / "result.json").read_text().splitlines()[0])
        assert first["val_auc"] == pytest.approx(auc[hidden], abs=1e-6), (n, hidden, auc)

    # MLflow: the resumed study reopened its parent run and finished it; one child run per trial
    # (the resumed trial kept its run), all under that parent; champion registered.
    everything = client.search_runs([experiment.experiment_id])
    after_parents = [r for r in everything if tags.STUDY_DIR_TAG in r.data.tags]
    assert [(r.info.run_id, r.info.status) for r in after_parents] == [(parents[0].info.run_id, "FINISHED")]
    runs = [r for r in everything if tags.TRIAL_TAG in r.data.tags]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parents[0].info.run_id}
    by_trial = {r.data.tags[tags.TRIAL_TAG]: r for r in runs}
    assert len(runs) == 3 == len(by_trial)
    ids = {n: _trial_id(path) for n, path in _trials(tune_dir).items()}
    assert len(client.get_metric_history(by_trial[ids[2]].info.run_id, "val_auc")) == 1
    steps = sorted(m.step for m in client.get_metric_history(by_trial[ids[3]].info.run_id, "val_auc"))
    assert steps == list(range(EPOCHS)), steps  # every epoch once: a replay Tune already had is not logged twice
    assert client.get_model_version_by_alias("fracture", registry.CHAMPION)
