"""One entry point from ``data.*`` config to a data set: dispatch on ``data.format``.

:func:`open_source` opens the input as a :class:`~ckf_dist.data.source.Source` (read tasks that any
worker can run); :func:`load_dataset` reads it all in this process into a RecData.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np

from ckf_dist.config import DataConfig
from ckf_dist.data.errors import BadRecords, DataError
from ckf_dist.data.source import Source, read_all
from ckf_dist.data.table import RecData
from ckf_dist.rating_scale import RatingScale, RatingScaleError

log = logging.getLogger(__name__)

FORMATS = ("movielens-100k", "movielens-1m", "movielens-latest", "amazon-json", "csv", "parquet", "synthetic")
# The rating scale each format documents; csv and parquet have none (their scale comes from the ratings).
FORMAT_SCALES: dict[str, Optional[list[float]]] = {
    "movielens-100k": [1.0, 5.0, 1.0], "movielens-1m": [1.0, 5.0, 1.0], "movielens-latest": [0.5, 5.0, 0.5],
    "amazon-json": [1.0, 5.0, 1.0], "synthetic": [1.0, 5.0, 1.0], "csv": None, "parquet": None,
}


def given_scale(cfg: DataConfig) -> Optional[list[float]]:
    """data.rating_scale, else the format's scale; None = infer it from the ratings."""
    return list(cfg.rating_scale) if cfg.rating_scale is not None else FORMAT_SCALES.get(cfg.format)


def open_source(cfg: DataConfig, seed: int, bad: BadRecords) -> Source:
    """The input `cfg` describes, opened (item file and header read, bad records into `bad`);
    `seed` only drives the synthetic generator. Ratings outside the scale (`data.rating_scale`,
    else the format's) are bad records."""
    fmt = cfg.format
    given = given_scale(cfg)
    bounds = (given[0], given[1]) if given else None
    if fmt == "synthetic":
        from ckf_dist.data.synthetic import SyntheticSource

        return SyntheticSource(cfg.synthetic, seed)
    if not cfg.path:
        raise DataError(f"data.path is required for data.format={fmt}")
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: not found (data.path for data.format={fmt})")
    if fmt == "movielens-100k":
        from ckf_dist.data.movielens import movielens_100k_source

        return movielens_100k_source(path, bad, bounds)
    if fmt == "movielens-1m":
        from ckf_dist.data.movielens import movielens_1m_source

        return movielens_1m_source(path, bad, bounds)
    if fmt == "movielens-latest":
        from ckf_dist.data.movielens import movielens_latest_source

        return movielens_latest_source(path, bad, bounds)
    if fmt == "amazon-json":
        from ckf_dist.data.amazon import AmazonSource

        return AmazonSource(path, Path(cfg.meta_path).expanduser() if cfg.meta_path else None, bounds)
    if fmt == "csv":
        from ckf_dist.data.generic_csv import CsvSource

        return CsvSource(path, bad, bounds)
    if fmt == "parquet":
        from ckf_dist.data.parquet_input import ParquetSource

        return ParquetSource(path, bad, bounds)
    raise DataError(f"unknown data.format {fmt!r} (choose from {', '.join(FORMATS)})")


def resolve_scale(cfg: DataConfig, ratings: np.ndarray) -> list[float]:
    """[lo, hi, step] in force: the given scale, else the one of the distinct `ratings`."""
    given = given_scale(cfg)
    try:
        scale = RatingScale.from_list(given) if given else RatingScale.infer(ratings)
    except RatingScaleError as e:
        raise DataError(f"{cfg.path}: {e}") from None
    return scale.as_list()


def load_dataset(cfg: DataConfig, seed: int) -> RecData:
    """Load the data set `cfg` describes in this process (see open_source)."""
    bad = BadRecords(cfg.on_bad_record)
    source = open_source(cfg, seed, bad)
    data = read_all(source, cfg.on_bad_record, block_bytes=int(cfg.block_mb * (1 << 20)), counts=Counter(bad.counts))
    inter = data.interactions
    data.rating_scale = resolve_scale(cfg, inter["rating"].to_numpy())
    log.info("loaded %s: %d interactions, %d users, %d items", data.name, len(inter),
             inter["user"].nunique(), inter["item"].nunique())
    return data
