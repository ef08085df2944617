"""torch.distributed rendezvous whose store listens on MASTER_ADDR only.

torch's default rendezvous (``env://`` or ``tcp://``) starts rank 0's TCPStore server on every
interface ('::'), whatever MASTER_ADDR says, so a job meant to stay on 127.0.0.1 would open a
port to the network. Here rank 0 binds the listening socket itself, to MASTER_ADDR, and hands
its descriptor to ``TCPStore(master_listen_fd=...)``; the other ranks connect as usual. Both
launch paths use it: the `deepspeed` launcher's processes (:func:`init_from_env`) and Ray Train
(:class:`ckf_dist.train.ray_backend.BoundStoreTorchConfig`, which replaces Ray's process-group
setup).
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Optional


def open_listen_socket(addr: str, port: int = 0) -> tuple[str, int, int]:
    """Bind and listen on (addr, port) (0 = a free port); returns (addr, port, fd).

    The socket object is detached: the descriptor stays open in this process, owned by whoever
    passes it to the TCPStore next (no Python object has to stay alive in between).
    """
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, port))
        sock.listen(socket.SOMAXCONN)
    except OSError as e:
        sock.close()
        raise RuntimeError(f"cannot listen on MASTER_ADDR {addr}:{port} for the rendezvous store: {e}") from None
    port = sock.getsockname()[1]
    return addr, port, sock.detach()


def init_process_group(backend: str, rank: int, world_size: int, addr: str, port: int,
                       listen_fd: Optional[int] = None, timeout_s: float = 1800) -> None:
    """``torch.distributed.init_process_group`` over a TCPStore at addr:port.

    Rank 0 serves the store: on `listen_fd` when given (see :func:`open_listen_socket`), else it
    binds addr:port itself; either way only on `addr`.
    """
    import torch.distributed as dist

    if rank == 0 and listen_fd is None:
        _, port, listen_fd = open_listen_socket(addr, port)
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(addr, port, world_size, rank == 0, timeout=timeout,
                          master_listen_fd=listen_fd if rank == 0 else None)
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size, timeout=timeout)


def init_from_env(backend: str, timeout_s: float = 1800) -> None:
    """The `deepspeed` launcher's variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) -> process group."""
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"the deepspeed launcher sets {', '.join(missing)}; they are missing from the environment")
    init_process_group(backend, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                       os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), timeout_s=timeout_s)
