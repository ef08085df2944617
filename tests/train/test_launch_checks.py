"""Checks before and at launch: hostfiles, and a rendezvous store that listens on MASTER_ADDR only."""

import json
import socket
import subprocess
import sys

import pytest

from ckf_dist.cli import main
from ckf_dist.config import ConfigError, load_config
from ckf_dist.train.hostfile import check_launch, parse_hostfile
from ckf_dist.train.rendezvous import open_listen_socket
from dist_testutils import ROOT, loopback_env


def _write(tmp_path, text: str):
    p = tmp_path / "hostfile"
    p.write_text(text)
    return p


def test_hostfile_parses_comments_and_counts_ranks(tmp_path):
    p = _write(tmp_path, "# two nodes\nnode-a slots=8\n\nnode-b slots=4  # the small one\n")
    assert parse_hostfile(p) == {"node-a": 8, "node-b": 4}
    hosts, world = check_launch(p, load_config("configs/quickstart.yaml", []), on_gpu=False)
    assert world == 12


@pytest.mark.parametrize("text, expected", [
    ("node-a slots=8\nnode-b slots=x\n", ":2: expected `HOST slots=N`"),
    ("node-a slots=8\nnode-a slots=8\n", ":2: host 'node-a' is listed twice"),
    ("node-a slots=0\n", ":1: host 'node-a' has slots=0"),
    ("# nothing\n", "no `HOST slots=N` line"),
])
def test_bad_hostfile_is_one_line_naming_file_and_line(tmp_path, text, expected):
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        parse_hostfile(p)
    assert expected in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)


def test_check_hostfile_cli_rejects_world_size_that_breaks_the_batch(tmp_path, capsys):
    p = _write(tmp_path, "a slots=2\nb slots=1\n")
    assert main(["cluster", "check-hostfile", "--hostfile", str(p), "--config", "configs/quickstart.yaml"]) == 0
    assert "2 node(s), 3 rank(s); global batch 24" in capsys.readouterr().out
    rc = main(["cluster", "check-hostfile", "--hostfile", str(p), "--config", "configs/quickstart.yaml",
               "dist.deepspeed_overrides={train_batch_size: 16}"])
    err = capsys.readouterr().err
    assert rc == 2 and "train_batch_size 16 != micro batch 8 x grad accum 1 x world size 3" in err


def test_listen_socket_on_an_address_not_of_this_machine_fails_clearly():
    with pytest.raises(RuntimeError, match="cannot listen on MASTER_ADDR 192.0.2.1"):
        open_listen_socket("192.0.2.1")  # TEST-NET-1: never a local address


RANK_SCRIPT = """
import json, os, psutil, torch, torch.distributed as dist
from ckf_dist.train.rendezvous import init_from_env
init_from_env("gloo", timeout_s=60)
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
listening = [[c.laddr.ip, c.laddr.port] for c in psutil.Process().net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
print(json.dumps({"rank": dist.get_rank(), "sum": t.item(), "listening": listening}))
dist.barrier()
dist.destroy_process_group()
"""


def test_rendezvous_store_listens_on_master_addr_only():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen([sys.executable, "-c", RANK_SCRIPT], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=loopback_env(RANK=str(r), WORLD_SIZE="2", MASTER_PORT=str(port)))
        for r in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    res = {d["rank"]: d for d in (json.loads(o.strip().splitlines()[-1]) for o, _ in outs)}
    assert res[0]["sum"] == res[1]["sum"] == 3.0  # the group works
    store = [ip for ip, p in res[0]["listening"] if p == port]
    assert store == ["127.0.0.1"], res[0]["listening"]  # rank 0 serves the store, on MASTER_ADDR only
    wide = [(ip, p) for r in res.values() for ip, p in r["listening"] if ip not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
    assert not wide, wide
