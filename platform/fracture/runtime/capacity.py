"""What a cluster can hold, now and once its autoscaler has launched nodes, and waiting for that.

A Ray workaround: Ray 2.60's cluster launcher (autoscaler v1) keeps the node types it may launch
only in the config file its monitor process was started with (`ray start --head
--autoscaling-config=...`; `ray up` writes ~/ray_bootstrap_config.yaml), not behind any API a
driver can call. The monitor publishes its status, pid included, in the GCS; a driver on the head
(where `ray job submit` runs it) reads that file through the pid. A driver elsewhere, or a
cluster without an autoscaler, sees only the nodes that are up, as before.

Without this, a cluster that scales GPU workers from zero shows 0 GPUs at submit time and a study
was refused before the autoscaler was ever asked; and a trial the autoscaler could not launch
(a quota the account lacks) would wait on a billed head for ever.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

STATUS_KEY = "__autoscaling_status"  # ray._private.ray_constants.DEBUG_AUTOSCALING_STATUS
POLL_S = 2.0
PROGRESS_EVERY_S = 20.0


@dataclasses.dataclass(frozen=True)
class NodeType:
    """A node type the autoscaler may launch: its resources and how many of it at most."""

    name: str
    resources: dict
    max_workers: int


def fits(bundle: dict, resources: dict) -> bool:
    return all(resources.get(key, 0) >= amount for key, amount in bundle.items() if amount)


def place(bundles: list[dict], nodes: list[dict]) -> bool:
    """Whether the bundles (a trial's workers) fit on these nodes' total resources, first fit."""
    free = [dict(n) for n in nodes]
    for bundle in sorted(bundles, key=lambda b: (-b.get("GPU", 0), -b.get("CPU", 0))):
        node = next((n for n in free if fits(bundle, n)), None)
        if node is None:
            return False
        for key, amount in bundle.items():
            node[key] = node.get(key, 0) - amount
    return True


def autoscaler_status() -> dict | None:
    """The autoscaler monitor's last published status (None without an autoscaler)."""
    from ray.experimental import internal_kv

    raw = internal_kv._internal_kv_get(STATUS_KEY)
    return json.loads(raw) if raw else None


def node_types(status: dict | None = None) -> list[NodeType] | None:
    """The worker node types this cluster's autoscaler may launch; None where none can be read.

    None means a fixed cluster (no autoscaler config: a laptop's `ray start`, a local study) or a
    driver that is not on the head; the nodes that are up are then all there is to go by.
    """
    status = autoscaler_status() if status is None else status
    config = _autoscaling_config((status or {}).get("monitor_pid"))
    if not config:
        return None
    cap = config.get("max_workers")  # the cluster-wide cap on worker nodes, over every type
    cap = int(cap) if cap is not None else 10**6
    head = config.get("head_node_type")
    types = [
        NodeType(name, dict(spec.get("resources") or {}), min(int(spec.get("max_workers", 0)), cap))
        for name, spec in (config.get("available_node_types") or {}).items()
        if name != head
    ]
    return [t for t in types if t.resources and t.max_workers > 0]


def _autoscaling_config(pid: int | None) -> dict | None:
    """The config file named on the monitor process's command line, when that process runs here."""
    import psutil
    import yaml

    if not pid:
        return None
    try:
        cmdline = psutil.Process(int(pid)).cmdline()
    except (psutil.Error, ValueError):
        return None  # the monitor runs on another host: this driver is not on the head
    if not any(part.endswith("monitor.py") for part in cmdline):
        return None  # a pid of another host's monitor, reused here by an unrelated process
    named = [part.split("=", 1)[1] for part in cmdline if part.startswith("--autoscaling-config=")]
    if not named:
        return None  # a local instance's monitor: no node types to launch
    try:
        return yaml.safe_load(Path(named[0]).expanduser().read_text())
    except (OSError, yaml.YAMLError) as exc:
        log.warning("cannot read the autoscaler's config %s (%s): judging by the nodes that are up", named[0], exc)
        return None


def alive_nodes() -> list[dict]:
    import ray

    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


@dataclasses.dataclass(frozen=True)
class Demand:
    """What the study asks of the cluster: one trial's bundles, and how many trials run at once."""

    bundles: list  # one dict per worker (and Ray Data's CPU), as they must each fit on a node
    trials: int
    timeout_s: float

    def nodes_for(self, kind: NodeType) -> int:
        """How many nodes of `kind` hold `trials` trials (at most its max_workers)."""
        per_node = min(
            math.floor(kind.resources.get(key, 0) / amount) for b in self.bundles for key, amount in b.items() if amount
        )
        want = math.ceil(len(self.bundles) * self.trials / max(per_node, 1))
        return max(1, min(want, kind.max_workers))


def wait_for(
    demand: Demand,
    kinds: list[NodeType],
    *,
    nodes: Callable[[], list[dict]] = alive_nodes,
    status: Callable[[], dict | None] = autoscaler_status,
) -> None:
    """Ask the autoscaler for the study's nodes and wait until one trial fits on the nodes that are up.

    The request is withdrawn as soon as a trial fits (the pending trials then ask for the rest
    themselves) and on every way out: a request left behind would keep nodes, and their bill, up
    after the study.

    Raises:
        CapacityError after demand.timeout_s without room for one trial, with what the autoscaler said.
    """
    from ray.autoscaler.sdk import request_resources

    from fracture.core.errors import CapacityError

    if place(demand.bundles, nodes()):
        return
    # The node type the trials' workers go to: the first whose node holds a worker (a GPU type for GPU workers).
    kind = next(k for k in kinds if fits(demand.bundles[0], k.resources))
    want = demand.nodes_for(kind)
    request_resources(bundles=[dict(b) for b in demand.bundles] * demand.trials)
    start = last_said = time.monotonic()
    said = None
    try:
        while True:
            report = (status() or {}).get("autoscaler_report") or {}
            now = nodes()
            up = sum(fits(demand.bundles[0], n) for n in now)  # nodes a worker fits on: the head is not one
            line = f"waiting for {want} {kind.name} node{'s' if want > 1 else ''} ({shape(kind)}): {up} up"
            if place(demand.bundles, now):
                log.info("%s: a trial fits; the rest of the study's nodes follow its trials", line)
                return
            waited = time.monotonic() - start
            if waited >= demand.timeout_s:
                raise CapacityError(
                    f"no room for one trial after {demand.timeout_s:g} s (cluster.capacity_timeout_s): {line}"
                    f"{_why(report, kind.name)}; `ray status` on the head shows the autoscaler's view "
                    "(an instance quota, capacity in the zones), then run the job again"
                )
            if line != said or time.monotonic() - last_said >= PROGRESS_EVERY_S:
                log.info("%s (%.0f s of cluster.capacity_timeout_s=%g)", line, waited, demand.timeout_s)
                said, last_said = line, time.monotonic()
            time.sleep(POLL_S)
    finally:
        request_resources(bundles=[])


def shape(kind: NodeType) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(kind.resources.items()) if k in ("CPU", "GPU"))


def _why(report: dict, kind: str) -> str:
    """What the autoscaler reported about launches of `kind` (failed launches, unavailable types)."""
    parts = []
    pending = (report.get("pending_launches") or {}).get(kind)
    if pending:
        parts.append(f"{pending} launch{'es' if pending > 1 else ''} pending")
    failed = [n for n in report.get("failed_nodes") or [] if kind in map(str, n)]
    if failed:
        parts.append(f"{len(failed)} failed")
    info = ((report.get("node_availability_summary") or {}).get("node_availabilities") or {}).get(kind) or {}
    unavailable = info.get("unavailable_node_information") or {}
    if info and not info.get("is_available", True):
        parts.append(f"unavailable: {unavailable.get('details') or unavailable.get('category') or 'launch failed'}")
    return f" ({'; '.join(parts)})" if parts else ""
