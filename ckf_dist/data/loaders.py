"""One entry point from ``data.*`` config to a loaded RecData: dispatch on ``data.format``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from ckf_dist.config import DataConfig
from ckf_dist.data.errors import DataError
from ckf_dist.data.table import RecData
from ckf_dist.rating_scale import RatingScale, RatingScaleError

log = logging.getLogger(__name__)

FORMATS = ("movielens-100k", "movielens-1m", "movielens-latest", "amazon-json", "csv", "synthetic")
# The rating scale each format documents; csv has none (its scale comes from the ratings).
FORMAT_SCALES: dict[str, Optional[list[float]]] = {
    "movielens-100k": [1.0, 5.0, 1.0], "movielens-1m": [1.0, 5.0, 1.0], "movielens-latest": [0.5, 5.0, 0.5],
    "amazon-json": [1.0, 5.0, 1.0], "synthetic": [1.0, 5.0, 1.0], "csv": None,
}


def load_dataset(cfg: DataConfig, seed: int) -> RecData:
    """Load the data set `cfg` describes; `seed` only drives the synthetic generator. Ratings
    outside the scale (`data.rating_scale`, else the format's) are bad records."""
    fmt = cfg.format
    given = list(cfg.rating_scale) if cfg.rating_scale is not None else FORMAT_SCALES.get(fmt)
    bounds = (given[0], given[1]) if given else None
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

            data = load_movielens_100k(path, cfg.on_bad_record, bounds)
        elif fmt == "movielens-1m":
            from ckf_dist.data.movielens import load_movielens_1m

            data = load_movielens_1m(path, cfg.on_bad_record, bounds)
        elif fmt == "movielens-latest":
            from ckf_dist.data.movielens import load_movielens_latest

            data = load_movielens_latest(path, cfg.on_bad_record, bounds)
        elif fmt == "amazon-json":
            from ckf_dist.data.amazon import load_amazon_json

            meta = Path(cfg.meta_path).expanduser() if cfg.meta_path else None
            data = load_amazon_json(path, meta, cfg.on_bad_record, bounds)
        elif fmt == "csv":
            from ckf_dist.data.generic_csv import load_csv

            data = load_csv(path, cfg.on_bad_record, bounds)
        else:
            raise DataError(f"unknown data.format {fmt!r} (choose from {', '.join(FORMATS)})")
    inter = data.interactions
    try:
        scale = RatingScale.from_list(given) if given else RatingScale.infer(inter["rating"].to_numpy())
    except RatingScaleError as e:
        raise DataError(f"{cfg.path}: {e}") from None
    data.rating_scale = scale.as_list()
    log.info("loaded %s: %d interactions, %d users, %d items", data.name, len(inter),
             inter["user"].nunique(), inter["item"].nunique())
    return data
