"""Ray Train's torch backend, with DDP's rendezvous store on 127.0.0.1 when the run is local.

Ray Train starts DDP by giving every worker MASTER_ADDR:MASTER_PORT and letting torch's env://
rendezvous make rank 0 host a TCPStore there. torch's libuv TCPStore listens on all interfaces
whatever MASTER_ADDR says, so a laptop study (whose Ray keeps to loopback, see cluster.init_ray)
would still open one port to its network. When worker 0's node IP is loopback, the single-machine
case, worker 0 hosts the store itself on a socket bound to 127.0.0.1 and every rank joins it as a
client (torch's "agent store" mode, meant for exactly this: a store someone else serves). On a
cluster nothing changes: Ray's own backend runs.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import ray
import ray.util
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend

# Worker 0's store and its socket: alive for as long as the worker process trains.
_SERVED: dict[str, object] = {}


def _serve_on_loopback(world_size: int, timeout_s: int) -> int | None:
    """On worker 0: host the rendezvous store on 127.0.0.1 and return its port; None off loopback."""
    import torch.distributed as dist

    if not ipaddress.ip_address(ray.util.get_node_ip_address()).is_loopback:
        return None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    store = dist.TCPStore(
        "127.0.0.1",
        port,
        world_size,
        is_master=True,
        master_listen_fd=sock.fileno(),
        wait_for_workers=False,
        timeout=timedelta(seconds=timeout_s),
    )
    _SERVED.update(sock=sock, store=store)
    return port


def _join_served_store(port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), TORCHELASTIC_USE_AGENT_STORE="True")
    # Gloo's own connections between ranks listen on the address the host name resolves to,
    # unless told which interface to use.
    loopback = [name for _, name in socket.if_nameindex() if name.startswith("lo")]
    if loopback:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback[0])


class _LoopbackTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: TorchConfig):
        resources = worker_group.get_resources_per_worker()
        backend = backend_config.backend or ("nccl" if resources.get("GPU", 0) > 0 else "gloo")
        world_size = len(worker_group)
        port = worker_group.execute_single(0, _serve_on_loopback, world_size, backend_config.timeout_s)
        if port is None:
            return super().on_start(worker_group, backend_config)
        worker_group.execute(_join_served_store, port)
        worker_group.execute(_set_torch_distributed_env_vars)
        futures = [
            worker_group.execute_single_async(
                rank,
                _setup_torch_process_group,
                backend=backend,
                world_rank=rank,
                world_size=world_size,
                init_method="env://",
                timeout_s=backend_config.timeout_s,
            )
            for rank in range(world_size)
        ]
        ray.get(futures)


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """TorchConfig whose backend keeps a single-machine run's rendezvous port on loopback."""

    @property
    def backend_cls(self):
        return _LoopbackTorchBackend
