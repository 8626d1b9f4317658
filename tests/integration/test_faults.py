"""Node failure mid-run on a multi-node cluster, and the cluster checks a study makes before it starts.

A `ray.cluster_utils.Cluster` on this machine: a head (2 CPUs: the Ray Data work, the Train
controller) and three worker nodes of 1 CPU and one `trainer_slot` each, so the two DDP workers
always land on worker nodes and one node is spare. The datasets are built before the worker nodes
join, so their blocks live on the head and survive the node that is removed.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
import ray.train
from ray.cluster_utils import Cluster

from fracture.core.config import Config, ConfigError, load
from fracture.data import pipeline
from fracture.runtime import cluster
from fracture.train.trainer import build_trainer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 4
SLOT = "trainer_slot"


@pytest.fixture(scope="module")
def multinode(tmp_path_factory, synthetic_root):
    """Head + 3 worker nodes, the driver connected; torn down with the module."""
    was_local = ray.is_initialized()  # e.g. the session's ray_local from an earlier module
    if was_local:
        ray.shutdown()
    storage = tmp_path_factory.mktemp("faults")
    cfg = load(
        ROOT / "jobs" / "studies" / "demo.yaml",
        [
            f"data.root={synthetic_root}",
            f"cluster.storage_path={storage}",
            f"data.cache_dir={tmp_path_factory.getbasetemp() / 'decoded-cache'}",
            "data.image_size=32",
            f"train.epochs={EPOCHS}",
            "train.batch_size_per_worker=8",
            "cluster.num_workers=2",
            "cluster.cpus_per_worker=1",
            "cluster.storage_shared=true",
            "cluster.max_failures=3",
        ],
    )
    # Ray only uses loopback addresses when it believes it is on a single machine (Ray resolves
    # 127.0.0.1 to the host's address otherwise): this process decides now, its nodes at import.
    patch = pytest.MonkeyPatch()
    patch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    patch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        assert nodes.address.startswith("127.0.0.1:"), nodes.address
        ray.init(address=nodes.address, runtime_env={"env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}})
        ray.data.DataContext.get_current().enable_progress_bars = False
        datasets = pipeline.build_datasets(cfg)  # materialized on the head, before any worker node exists
        workers = [nodes.add_node(num_cpus=1, resources={SLOT: 1}) for _ in range(3)]
        yield SimpleNamespace(
            cluster=nodes,
            workers=workers,
            cfg=cfg,
            datasets=datasets,
            pos_weight=pipeline.pos_weight(cfg),
            storage=storage,
        )
    finally:
        ray.shutdown()
        nodes.shutdown()
        patch.undo()
        if was_local:  # put the session's local instance back for later modules (as conftest's ray_local)
            cluster.init_ray(Config().replace(cluster={"num_workers": 2, "cpus_per_worker": 1}))


def _registered_epochs(run_dir: Path) -> list[int]:
    """Epochs of the checkpoints the Train controller has registered (all workers reported them).

    A checkpoint directory alone is not enough: rank 0 writes it before the report completes, and a
    report that a lost worker never joins is discarded (that epoch is trained again).
    """
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    return [r["metrics"]["epoch"] for r in snapshot["checkpoint_results"]]


def _worker_node_ids() -> set[str]:
    """Nodes that hold a bundle of the (live) training worker group's placement group."""
    nodes = set()
    for pg in ray.util.placement_group_table().values():
        if pg["state"] == "CREATED" and any(SLOT in b for b in pg["bundles"].values()):
            nodes |= set(pg["bundles_to_node_id"].values())
    return nodes


def test_worker_node_lost_mid_run_restarts_the_group_from_the_last_checkpoint(multinode):
    cfg = multinode.cfg
    trainer = build_trainer(
        cfg.replace(cluster={"max_failures": 3}),
        multinode.datasets,
        multinode.pos_weight,
        "faults",
        storage_path=str(multinode.storage),
        scaling=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1, SLOT: 1}),
        keep=None,  # keep all: the history shows restarts
    )
    run_dir = multinode.storage / "faults"

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fit = pool.submit(trainer.fit)
        deadline = time.time() + 300
        while not _registered_epochs(run_dir) and not fit.done() and time.time() < deadline:
            time.sleep(0.2)
        assert not fit.done(), f"the run ended before its first checkpoint: {fit.result().error}"
        hosting = _worker_node_ids()
        victim = next((n for n in multinode.workers if n.node_id in hosting), None)
        assert victim is not None, f"no worker node holds a training worker: {hosting}"
        killed_after = _registered_epochs(run_dir)
        multinode.cluster.remove_node(victim, allow_graceful=False)
        result = fit.result(timeout=420)

    assert max(killed_after) < EPOCHS - 1, "the node was removed after training had finished"
    assert result.error is None, result.error
    assert result.metrics["epoch"] == EPOCHS - 1
    # The group restarted from the last checkpoint, not from scratch: every epoch was reported and
    # checkpointed exactly once (a restart from scratch would report epoch 0 again), and the last
    # checkpoint carries the whole history.
    assert list(result.metrics_dataframe["epoch"]) == list(range(EPOCHS))
    assert _registered_epochs(run_dir) == list(range(EPOCHS))
    with result.checkpoint.as_directory() as directory:
        state = json.loads((Path(directory) / "state.json").read_text())
    assert [h["epoch"] for h in state["history"]] == list(range(EPOCHS))
    assert len([n for n in ray.nodes() if n["Alive"]]) == 3  # head + the two nodes left


def test_check_cluster_refuses_a_trial_the_cluster_can_never_place(multinode):
    with pytest.raises(
        ConfigError,
        match=r"one trial needs 65.01 CPU \(64 x 1 for its workers, 1 for Ray Data, "
        r"0.01 for its driver\) .* but the cluster has .* lower cluster",
    ):
        cluster.check_cluster(multinode.cfg.replace(cluster={"num_workers": 64}))
    # Enough CPUs in all (4 or 5), but no node has room for one worker of 2.5.
    with pytest.raises(
        ConfigError,
        match=r"one training worker needs 2.5 CPU and 0 GPU on a single node .* "
        r"the largest node has 2 CPU",
    ):
        cluster.check_cluster(multinode.cfg.replace(cluster={"num_workers": 1, "cpus_per_worker": 2.5}))


def test_check_cluster_wants_storage_that_every_node_reaches(multinode):
    local = multinode.cfg.replace(cluster={"storage_shared": False})
    with pytest.raises(ConfigError, match=r"is local to this node, but the cluster has \d+ nodes"):
        cluster.check_cluster(local)
    cluster.check_cluster(multinode.cfg)  # storage_shared=true
    cluster.check_cluster(local.replace(cluster={"storage_path": "s3://bucket/runs"}))  # a URI every node reaches
