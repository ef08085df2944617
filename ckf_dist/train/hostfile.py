"""DeepSpeed hostfiles: parse, validate, and check them against a config before launching.

A hostfile has one node per line, ``HOST slots=N`` (N processes, one per GPU); blank lines and
``#`` comments are ignored. The `deepspeed` launcher only finds a bad line or a world size that
does not fit the batch settings after starting work on every node; ``ckf cluster
check-hostfile`` (run by cluster/deepspeed_launch.sh) finds both first, naming file and line.
"""

from __future__ import annotations

import re
from pathlib import Path

from ckf_dist.config import Config, ConfigError

_LINE = re.compile(r"^(?P<host>[A-Za-z0-9_.:\-\[\]]+)\s+slots=(?P<slots>\d+)$")


def parse_hostfile(path: str | Path) -> dict[str, int]:
    """{host: slots} in file order; a one-line ConfigError names the file and line of a bad entry."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: hostfile not found")
    hosts: dict[str, int] = {}
    for n, raw in enumerate(p.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _LINE.match(line)
        if m is None:
            raise ConfigError(f"{p}:{n}: expected `HOST slots=N`, got {raw.strip()!r}")
        host, slots = m["host"], int(m["slots"])
        if slots < 1:
            raise ConfigError(f"{p}:{n}: host {host!r} has slots={slots}; at least 1 is needed")
        if host in hosts:
            raise ConfigError(f"{p}:{n}: host {host!r} is listed twice")
        hosts[host] = slots
    if not hosts:
        raise ConfigError(f"{p}: no `HOST slots=N` line")
    return hosts


def check_launch(path: str | Path, cfg: Config, on_gpu: bool) -> tuple[dict[str, int], int]:
    """Parse the hostfile and build the DeepSpeed config for its world size (raises on a batch
    mismatch); returns ({host: slots}, world size)."""
    from ckf_dist.train.deepspeed_config import deepspeed_config

    hosts = parse_hostfile(path)
    world = sum(hosts.values())
    deepspeed_config(cfg, world, on_gpu=on_gpu)
    return hosts, world
