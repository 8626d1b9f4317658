"""Ray at the edge of a job: join the cluster or start a local one, and check that it can run the study.

A local instance keeps every port on 127.0.0.1 and is sized for one trial plus Ray Data's tasks;
a cluster (RAY_ADDRESS, as `ray job submit` sets it) keeps the addresses and resources its
`ray start` / `ray up` gave it, and check_cluster refuses a study it could never place. ray is
imported inside the functions: init_ray sets environment variables that Ray reads at import.
"""

from __future__ import annotations

import os

from fracture.core import storage
from fracture.core.config import Config, ConfigError
from fracture.runtime import capacity

DRIVER_CPU = 0.01  # each trial's driver fn: it only orchestrates, and Tune refuses an empty request
DATA_CPU = 1.0  # Ray Data's read/augment tasks (1 CPU each) beside the training workers


def _trial(cfg: Config) -> tuple[list[dict], str]:
    """One trial's resource bundles (each must fit on one node) and what they are for."""
    workers, cpus = cfg.cluster.num_workers, cfg.cluster.cpus_per_worker
    worker = {"CPU": cpus, **({"GPU": 1} if cfg.cluster.use_gpu else {})}
    if cfg.cluster.in_trial:
        # The trial itself is the worker and reads the study's materialized datasets: no Ray Data task.
        return [worker], f"{cpus:g} for the trial, which trains in its own process"
    parts = f"{workers} x {cpus:g} for its workers, {DATA_CPU:g} for Ray Data, {DRIVER_CPU:g} for its driver"
    return [worker] * workers + [{"CPU": DATA_CPU + DRIVER_CPU}], parts


def check_resources(cfg: Config, kinds: list[capacity.NodeType] | None = None) -> capacity.Demand | None:
    """Refuse, instead of waiting forever, a trial that this cluster can never place.

    A trial that trains in its own process (ClusterConfig.in_trial) holds its worker's CPUs (and
    GPU). A TorchTrainer's trial holds its driver's sliver of a CPU and its workers' CPUs (and
    GPUs), and Ray Data's split tasks need a whole CPU beyond that, or the workers wait for batches
    that are never made. Each worker must also fit on one node.

    Args:
        kinds: the node types the cluster's autoscaler may launch (capacity.node_types); None for a
            fixed cluster, where the nodes that are up are all there will be.
    Returns:
        What to wait for (capacity.wait_for) when a trial fits only once the autoscaler has
        launched nodes; None when it fits now, or on a fixed cluster.
    """
    bundles, parts = _trial(cfg)
    nodes = capacity.alive_nodes()
    ever = nodes + [k.resources for k in kinds or () for _ in range(k.max_workers)]
    shape = f"cluster.num_workers={cfg.cluster.num_workers}, cpus_per_worker={cfg.cluster.cpus_per_worker:g}, "
    shape += f"use_gpu={cfg.cluster.use_gpu}"
    launchable = f" with every node its autoscaler may launch ({_kinds(kinds)})" if kinds else ""
    need_cpu, need_gpu = (sum(b.get(key, 0) for b in bundles) for key in ("CPU", "GPU"))
    have_cpu, have_gpu = (sum(n.get(key, 0) for n in ever) for key in ("CPU", "GPU"))
    if need_cpu > have_cpu or need_gpu > have_gpu:
        raise ConfigError(
            f"one trial needs {need_cpu:g} CPU ({parts}) and {need_gpu:g} GPU ({shape}), but the cluster has "
            f"{have_cpu:g} CPU and {have_gpu:g} GPU in all{launchable}: lower cluster.*, add nodes or node "
            "types, or give `ray start` more --num-cpus"
        )
    worker = bundles[0]
    if ever and not any(capacity.fits(worker, n) for n in ever):
        biggest = max(ever, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)))
        raise ConfigError(
            f"one training worker needs {worker['CPU']:g} CPU and {worker.get('GPU', 0)} GPU on a single node "
            f"({shape}), but the largest node has {biggest.get('CPU', 0):g} CPU and {biggest.get('GPU', 0):g} GPU"
            f"{launchable}"
        )
    if not kinds or capacity.place(bundles, nodes):
        return None
    if not capacity.place(bundles, ever):
        raise ConfigError(f"one trial's workers ({parts}; {shape}) fit on no set of this cluster's nodes{launchable}")
    trials = min(max(cfg.search.max_concurrent, 1), cfg.search.num_trials)
    return capacity.Demand(bundles, trials, cfg.cluster.capacity_timeout_s)


def _kinds(kinds: list[capacity.NodeType]) -> str:
    return "; ".join(f"up to {k.max_workers} x {k.name}: {capacity.shape(k)}" for k in kinds)


def check_cluster(cfg: Config) -> None:
    """Checks that need the running cluster: resources a trial needs, storage every node reaches.

    On a cluster whose autoscaler must first launch the nodes a trial needs (GPU workers that
    scale from zero), asks for them and waits, with a progress line, up to cluster.capacity_timeout_s.
    """
    kinds = capacity.node_types()
    demand = check_resources(cfg, kinds)
    nodes = capacity.alive_nodes()
    if not storage.is_remote(cfg.cluster.storage_path) and not cfg.cluster.storage_shared and (len(nodes) > 1 or kinds):
        many = f"{len(nodes)} nodes" if len(nodes) > 1 else "an autoscaler that launches more nodes"
        raise ConfigError(
            f"cluster.storage_path={cfg.cluster.storage_path} is local to this node, but the cluster has "
            f"{many} and Ray needs checkpoint storage they all reach: use s3://..., gs://... or "
            "a shared mount with cluster.storage_shared=true"
        )
    if demand is not None:
        capacity.wait_for(demand, kinds)


def spans_nodes() -> bool:
    """Whether trials may run on another node than this driver's (several nodes, or an autoscaler)."""
    return len(capacity.alive_nodes()) > 1 or bool(capacity.node_types())


def init_ray(cfg: Config, *, verbose: bool = False) -> None:
    """Join the cluster named by RAY_ADDRESS (ray job submit sets it), else start a local one.

    A local one listens on 127.0.0.1 only (_loopback_only); a cluster keeps the addresses its
    `ray start` / `ray up` gave it.

    A local instance gets at least (trial CPUs + 2) logical CPUs: Ray Data's decode and augment
    tasks need CPUs of their own beside the training workers, or a 2-core laptop would deadlock.
    Unless verbose, Ray's own chatter is kept off the console (fracture.runtime.logs.NOISE).
    """
    if not verbose:
        # Tune's legacy output engine prints nothing at verbose=0 (search.build_tuner); the new one
        # still prints a config table and a final status table. fracture.tune.console prints instead.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    import ray

    from fracture.runtime import logs

    if ray.is_initialized():
        return
    if not verbose:
        logs.quiet_ray()
    # fracture.tune.console prints a line per epoch; Ray Data's per-epoch bars would drown it.
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    runtime_env = {"env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"]}}
    if os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
        if "://" not in address and address != "auto":
            # Workers' State API clients (Ray Train's placement-group cleaner, see below) would
            # otherwise look for "the latest `ray start`" on their node, which may be another cluster.
            runtime_env["env_vars"]["RAY_ADDRESS"] = address
        ray.init(address=address, runtime_env=runtime_env)
    else:
        _init_local(cfg, runtime_env)
    _quiet_data()
    if not verbose:
        logs.quiet_worker_logs()


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _loopback_only() -> None:
    """Keep a local instance's every port (GCS, raylet, workers, agents, metrics) on 127.0.0.1.

    Ray 2.60 binds its servers to 127.0.0.1 only when the node's IP is loopback, and picks loopback
    only where "clusters" are disabled (its default on macOS and Windows); on Linux it listens on
    all interfaces, so a laptop study would be open to its network. Ray's processes read the
    variable from the environment they inherit; this process read it when ray was imported, hence
    the constant too. A user who sets the variable (e.g. to 1) keeps Ray's behaviour.
    """
    if LOOPBACK_ENV in os.environ:
        return
    os.environ[LOOPBACK_ENV] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def _init_local(cfg: Config, runtime_env: dict) -> None:
    import ray

    from fracture.runtime import reaper

    _loopback_only()
    reaper.watch(os.getpid())  # a kill -9 of this driver must not leave Ray's agents running

    need = cfg.cluster.num_workers * cfg.cluster.cpus_per_worker * max(1, cfg.search.max_concurrent) + 2
    dashboard = {"include_dashboard": False}
    if not cfg.cluster.in_trial:
        # When ASHA stops a trial (and at max_t it stops every trial), Tune kills the trial's actor
        # and with it the Train controller, before the controller removes its workers' placement
        # group. Ray Train's detached PlacementGroupCleaner removes it then, but it finds the cluster
        # through the State API, i.e. the dashboard; a local instance has no `ray start` address file
        # to find it by (and a laptop may run several). Without the cleaner every stopped trial leaks
        # its workers' CPUs until the next trial cannot start. So: a dashboard on loopback, named to
        # workers. Trials that train in their own process (ClusterConfig.in_trial) make no placement
        # group of Train's, and go without the dashboard (a process, and CPU, on a small machine).
        port = free_port()
        runtime_env["env_vars"]["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        dashboard = {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port}
    # Ray Train's PreemptionWatcher (an actor per trial) watches for nodes being drained, which a
    # one-machine cluster never is. It logs a core error line at every start, and a traceback
    # when ASHA stops its trial while it polls.
    runtime_env["env_vars"]["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = os.environ.get(
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0"
    )
    ray.init(
        address="local",
        num_cpus=max(int(need + 0.5), os.cpu_count() or 1),
        runtime_env=runtime_env,
        **dashboard,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the moment."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _quiet_data() -> None:
    import ray.data

    # Datasets carry the driver's DataContext to the actors that execute them.
    ray.data.DataContext.get_current().enable_progress_bars = False
