"""Joining a Ray cluster or starting one on this machine: the one place every Ray user goes through.

`address` (``dist.ray_address``), else ``RAY_ADDRESS`` (a ``ray job submit`` driver has it), names a
running cluster to join; without either a local Ray starts, bound to 127.0.0.1. An address that
does not answer fails in seconds with one line (Ray itself retries for minutes).
"""

from __future__ import annotations

import os
from typing import Optional

from ckf_dist.config import ConfigError


def check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """A one-line ConfigError when a `host:port` Ray address does not answer."""
    import socket
    from urllib.parse import urlparse

    if address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    if not parsed.hostname or not parsed.port:
        return
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout_s):
            pass
    except OSError as e:
        raise ConfigError(f"dist.ray_address: cannot reach Ray at {address} ({e.strerror or e})") from None


def init_ray(address: Optional[str], *, num_cpus: int, dashboard_host: str = "127.0.0.1",
             include_dashboard: bool = True, env_vars: Optional[dict[str, str]] = None) -> bool:
    """Join `address` / RAY_ADDRESS or start a local Ray with `num_cpus` CPUs; True when this call
    started one (the caller shuts it down). `env_vars` go to the workers of a local Ray."""
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if ray.is_initialized():
        return False
    found = address or os.environ.get("RAY_ADDRESS")
    if found:
        check_reachable(found)
        try:
            ray.init(address=address or "auto", log_to_driver=True)
        except (ConnectionError, RuntimeError) as e:
            raise ConfigError(f"dist.ray_address: cannot reach Ray at {found} ({str(e).splitlines()[0]})") from None
        return False
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=include_dashboard,
        dashboard_host=dashboard_host,
        log_to_driver=True,
        _node_ip_address="127.0.0.1",
        **({"runtime_env": {"env_vars": env_vars}} if env_vars else {}),
    )
    return True
