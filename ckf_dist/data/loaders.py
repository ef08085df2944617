"""One entry point from ``data.*`` config to a loaded RecData: dispatch on ``data.format``."""

from __future__ import annotations

import logging
from pathlib import Path

from ckf_dist.config import DataConfig
from ckf_dist.data.errors import DataError
from ckf_dist.data.table import RecData

log = logging.getLogger(__name__)

FORMATS = ("movielens-100k", "movielens-1m", "amazon-json", "csv", "synthetic")


def load_dataset(cfg: DataConfig, seed: int) -> RecData:
    """Load the data set `cfg` describes; `seed` only drives the synthetic generator."""
    fmt = cfg.format
    if fmt == "synthetic":
        from ckf_dist.data.synthetic import generate_synthetic

        data = generate_synthetic(cfg.synthetic, seed)
    else:
        if not cfg.path:
            raise DataError(f"data.path is required for data.format={fmt}")
        path = Path(cfg.path).expanduser()
        if not path.exists():
            raise DataError(f"{path}: not found (data.path for data.format={fmt})")
        if fmt == "movielens-100k":
            from ckf_dist.data.movielens import load_movielens_100k

            data = load_movielens_100k(path, cfg.on_bad_record)
        elif fmt == "movielens-1m":
            from ckf_dist.data.movielens import load_movielens_1m

            data = load_movielens_1m(path, cfg.on_bad_record)
        elif fmt == "amazon-json":
            from ckf_dist.data.amazon import load_amazon_json

            meta = Path(cfg.meta_path).expanduser() if cfg.meta_path else None
            data = load_amazon_json(path, meta, cfg.on_bad_record)
        elif fmt == "csv":
            from ckf_dist.data.generic_csv import load_csv

            data = load_csv(path, cfg.on_bad_record)
        else:
            raise DataError(f"unknown data.format {fmt!r} (choose from {', '.join(FORMATS)})")
    inter = data.interactions
    log.info("loaded %s: %d interactions, %d users, %d items", data.name, len(inter),
             inter["user"].nunique(), inter["item"].nunique())
    return data
