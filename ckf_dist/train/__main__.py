"""`python -m ckf_dist.train --config FILE [key=value ...]`: one training process.

This is what the `deepspeed` launcher starts on every node (it sets RANK, WORLD_SIZE,
MASTER_ADDR); with `dist.launcher=ray` or `local` it behaves like `ckf train` minus the
evaluation. The earlier stages (data, CF tables, tiny LLM) must already be in `run.dir`:
run `ckf data prepare`, `ckf cf train` and `ckf model init-tiny` (or set `model.path`) first.
"""

import argparse
import os
import sys

from ckf_dist.config import ConfigError, load_config
from ckf_dist.data.errors import DataError
from ckf_dist.run import Run, release_locks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ckf_dist.train")
    p.add_argument("--config", "-c")
    p.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher")
    p.add_argument("--wait", action="store_true", help="if another command holds the run directory, wait for it")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if "RANK" in os.environ and cfg.dist.launcher != "deepspeed":
            cfg.dist.launcher = "deepspeed"
        from ckf_dist.train.launch import launch

        run = Run(cfg)
        if cfg.dist.exposure():
            print(f"warning: {cfg.dist.exposure()}", file=sys.stderr)
        if os.environ.get("RANK", "0") == "0":  # one writer: global rank 0 holds the run directory
            run.lock_for_writing(wait=args.wait)
        launch(run)
    except (ConfigError, FileNotFoundError, DataError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    finally:
        release_locks()
    return 0


if __name__ == "__main__":
    sys.exit(main())
