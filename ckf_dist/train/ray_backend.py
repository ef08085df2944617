"""Ray Train's torch backend with a rendezvous store bound to the node's Ray address.

Ray's own ``TorchConfig`` lets torch's default rendezvous start rank 0's store on every
interface; :class:`BoundStoreTorchConfig` sets up the same process group (same env variables,
same backend and timeout) through :func:`ckf_dist.train.rendezvous.init_process_group`, whose
store listens only on the address Ray reports for rank 0's node: 127.0.0.1 for a local cluster,
the node's cluster IP otherwise. It builds on Ray's internal `_TorchBackend` (pinned Ray
versions; tests/train/test_job_submit.py checks the sockets).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import ray
from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
from ray.train.torch.config import TorchConfig, _set_torch_distributed_env_vars, _TorchBackend

from ckf_dist.train.rendezvous import init_process_group, open_listen_socket


def _store_socket() -> tuple[str, int, int]:
    """On rank 0's worker: listen on this node's Ray IP; returns (addr, port, fd)."""
    return open_listen_socket(ray.util.get_node_ip_address())


def _set_master_env(addr: str, port: int) -> None:
    os.environ["MASTER_ADDR"] = addr
    os.environ["MASTER_PORT"] = str(port)


class BoundStoreBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config) -> None:
        addr, port, fd = worker_group.execute_single(0, _store_socket)
        worker_group.execute(_set_master_env, addr=addr, port=port)
        if not isinstance(worker_group, V1WorkerGroup):
            worker_group.execute(_set_torch_distributed_env_vars)
        n = len(worker_group)
        ray.get([
            # positional: execute_single_async has a `rank` parameter of its own
            worker_group.execute_single_async(
                i, init_process_group, backend_config.backend, i, n, addr, port, fd if i == 0 else None,
                backend_config.timeout_s)
            for i in range(n)
        ])


@dataclass
class BoundStoreTorchConfig(TorchConfig):
    """``TorchConfig(backend=..., timeout_s=...)`` whose store binds to rank 0's node address."""

    @property
    def backend_cls(self):
        return BoundStoreBackend
