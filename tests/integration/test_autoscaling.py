"""A study on a cluster whose autoscaler starts with no worker node, as `ray up cluster.yaml` does.

Ray's fake multi-node provider (what ray.cluster_utils.AutoscalingCluster runs; its config
template is not shipped in the wheel, so the config is written here) launches real Ray nodes on
this machine when the autoscaler asks for them. The head has 1 CPU; the autoscaler may launch one
worker node in all (max_workers 1), of 2 CPU or of 4, none at first: like cluster.yaml's CPU head
and GPU workers from zero. A trial that needs 2 CPU fits no node that is up, only one the
autoscaler may launch; once a 2-CPU node is up, the cluster's cap leaves no room for a 4-CPU one,
as an instance quota would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from procs import job_env, ray_head

from fracture.runtime import cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
WORKER, BIG = "cpu_worker", "big_worker"


def _config(gcs: str) -> dict:
    """The autoscaler's config: ray up's fields, for the fake provider."""
    commands = ("initialization", "setup", "head_setup", "worker_setup", "head_start_ray", "worker_start_ray")
    return {
        "cluster_name": "fracture-test",
        "max_workers": 1,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs,  # the launched nodes join this head, not a default port
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            WORKER: {"resources": {"CPU": 2}, "node_config": {}, "min_workers": 0, "max_workers": 1},
            BIG: {"resources": {"CPU": 4}, "node_config": {}, "min_workers": 0, "max_workers": 1},
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "docker": {},
        **{f"{name}_commands": [] for name in commands},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


@pytest.fixture
def autoscaling_head(tmp_path):
    """A `ray start --head` of 1 CPU whose autoscaler may launch one 2-CPU node; none is up."""
    config, port = tmp_path / "autoscaler.json", cluster.free_port()
    config.write_text(json.dumps(_config(f"127.0.0.1:{port}")))
    fake = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    with ray_head(tmp_path, f"--autoscaling-config={config}", env=fake, num_cpus=1, port=port) as head:
        yield head


def _tune(head, synthetic_root, storage: Path, tiny_args, *extra: str) -> subprocess.CompletedProcess:
    """jobs/tune.py run on the head's machine against the cluster, as `ray job submit` runs it there."""
    args = tiny_args(synthetic_root, storage, "cluster.storage_shared=true", "cluster.cpus_per_worker=2", *extra)
    env = job_env(head.env) | {"RAY_ADDRESS": head.gcs}
    command = [sys.executable, str(ROOT / "jobs" / "tune.py"), "--config", "jobs/studies/demo.yaml", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)


def test_a_study_waits_for_the_autoscalers_nodes_and_is_refused_what_it_can_never_get(
    autoscaling_head, tmp_path, synthetic_root, tiny_args
):
    storage = tmp_path / "runs"
    # 5 CPU for one worker: no node type ever holds it. Refused at once, nothing launched.
    proc = _tune(autoscaling_head, synthetic_root, storage, tiny_args, "cluster.cpus_per_worker=5")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (
        "error: one training worker needs 5 CPU and 0 GPU on a single node (cluster.num_workers=1, "
        "cpus_per_worker=5, use_gpu=False), but the largest node has 4 CPU and 0 GPU with every node "
        f"its autoscaler may launch (up to 1 x {WORKER}: 2 CPU; up to 1 x {BIG}: 4 CPU)"
    ) in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr

    # 2 CPU: the study asks the autoscaler, says what it waits for, and runs once a node is up.
    proc = _tune(autoscaling_head, synthetic_root, storage, tiny_args, "search.num_trials=2")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert f"waiting for 1 {WORKER} node (2 CPU): 0 up" in output, output[-4000:]
    assert f"waiting for 1 {WORKER} node (2 CPU): 1 up: a trial fits" in output, output[-4000:]
    assert "now @champion" in output

    # 4 CPU: a node type could hold it, but the cluster's cap is reached and no node comes. One
    # error line after cluster.capacity_timeout_s, with what it waited for; nothing started.
    proc = _tune(
        autoscaling_head,
        synthetic_root,
        storage,
        tiny_args,
        "cluster.cpus_per_worker=4",
        "cluster.capacity_timeout_s=6",
        "name=never",
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"waiting for 1 {BIG} node (4 CPU): 0 up (0 s of cluster.capacity_timeout_s=6)" in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: no room for one trial after 6 s (cluster.capacity_timeout_s): waiting for 1 {BIG} node (4 CPU): 0 up"
    ), proc.stderr[-3000:]
    assert "then run the job again" in errors[0] and "Traceback" not in proc.stderr
    assert not (storage / "never" / "tune").exists()  # (preflight made its manifest there)
