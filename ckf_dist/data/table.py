"""The internal tables every loader produces and every later stage reads.

`RecData` is what a loader returns: raw ids, one row per interaction, plus item (and optional
user) metadata. `SplitData` is the same after splitting and id remapping: dense integer ids
``u`` / ``i`` (assigned by a seeded permutation, so an id's number never encodes order or
answers) and a ``split`` column. This module owns the column schema; it knows nothing of CF
models, prompts or the LLM.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from ckf_dist.fsutil import atomic_write, atomic_write_text
from ckf_dist.rating_scale import RatingScale

# Columns of RecData.interactions. `rating` and `label` are float with NaN where absent;
# `review`/`summary` are "" where absent; `split` is "" unless the source fixes it.
INTERACTION_COLUMNS = ["user", "item", "timestamp", "rating", "label", "review", "summary", "split"]
ITEM_COLUMNS = ["item", "title", "description"]
SPLITS = ("train", "valid", "test")


@dataclass
class RecData:
    """A loaded dataset with raw (string) ids."""

    name: str
    interactions: pd.DataFrame
    """Columns INTERACTION_COLUMNS; user/item are str, timestamp int64."""
    items: pd.DataFrame
    """Columns ITEM_COLUMNS, one row per item id; title may be "" until derived."""
    users: Optional[pd.DataFrame] = None
    """Optional user metadata: a `user` column plus free attributes."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Bad records skipped under data.on_bad_record=skip: reason -> count."""
    rating_scale: Optional[list[float]] = None
    """[lo, hi, step] of the ratings (set by the loader; see ckf_dist.rating_scale)."""

    @property
    def has_rating(self) -> bool:
        return bool(self.interactions["rating"].notna().any())

    @property
    def has_label(self) -> bool:
        return bool(self.interactions["label"].notna().any())

    @property
    def has_text(self) -> bool:
        return bool((self.interactions["review"].str.len() > 0).any())


@dataclass
class SplitData:
    """Split, remapped interactions: the single input of CF training and sample building."""

    name: str
    inter: pd.DataFrame
    """Columns: u, i (int64 dense ids), timestamp, rating, label, review, summary, split
    (train|valid|test), pos (1.0 positive / 0.0 negative); sorted by (u, timestamp)."""
    user_ids: list[str]
    """Raw user id of each u."""
    item_ids: list[str]
    """Raw item id of each i."""
    item_titles: list[str]
    """Title of each i (pseudo-titles derived on the training split where the source has none)."""
    item_text: list[str]
    """Optional description of each i ("" when absent)."""
    cold_threshold: int = 5
    """Users with <= this many training interactions are cold."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Bad records skipped while loading: reason -> count."""
    protocol: str = "leave_last"
    """The split protocol that produced `split` (leave_last | global_time | column)."""
    rating_scale: list[float] = field(default_factory=lambda: [1.0, 5.0, 1.0])
    """[lo, hi, step] of the ratings: rating answers are its levels (ckf_dist.rating_scale)."""

    @property
    def scale(self) -> RatingScale:
        return RatingScale(*self.rating_scale)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def has_rating(self) -> bool:
        return bool(self.inter["rating"].notna().any())

    @property
    def has_label(self) -> bool:
        return bool(self.inter["label"].notna().any())

    @property
    def has_text(self) -> bool:
        return bool((self.inter["review"].str.len() > 0).any())

    def part(self, split: str) -> pd.DataFrame:
        return self.inter[self.inter["split"] == split]

    def train_counts(self) -> np.ndarray:
        """Training interactions per user, shape [num_users]."""
        return np.bincount(self.part("train")["u"].to_numpy(), minlength=self.num_users)

    def warm_mask(self) -> np.ndarray:
        """True for warm users (more than cold_threshold training interactions), shape [num_users]."""
        return self.train_counts() > self.cold_threshold

    def user_groups(self) -> np.ndarray:
        """Per user: "warm" (> cold_threshold training interactions), "cold" (1..cold_threshold) or
        "new" (none: the user first appears after training), object [num_users]."""
        n = self.train_counts()
        return np.where(n == 0, "new", np.where(n > self.cold_threshold, "warm", "cold")).astype(object)

    @staticmethod
    def parts_dir(folder: str | Path) -> Path:
        """The folder of the interaction table's parts (``part-NNNNN.parquet``, in (u, time) order)."""
        return Path(folder) / "interactions"

    @classmethod
    def clear(cls, folder: str | Path) -> None:
        """Remove a saved split from `folder` (before a new one is written there)."""
        folder = Path(folder)
        shutil.rmtree(cls.parts_dir(folder), ignore_errors=True)
        for name in ("interactions.parquet", "meta.json"):
            (folder / name).unlink(missing_ok=True)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.clear(folder)
        parts = self.parts_dir(folder)
        parts.mkdir(parents=True, exist_ok=True)
        atomic_write(parts / "part-00000.parquet", lambda tmp: self.inter.to_parquet(tmp, index=False))
        atomic_write_text(folder / "meta.json", json.dumps(self.meta_dict()))

    def meta_dict(self) -> dict:
        return {
            "name": self.name,
            "user_ids": self.user_ids,
            "item_ids": self.item_ids,
            "item_titles": self.item_titles,
            "item_text": self.item_text,
            "cold_threshold": self.cold_threshold,
            "skipped": self.skipped,
            "protocol": self.protocol,
            "rating_scale": self.rating_scale,
        }

    @staticmethod
    def read_meta(folder: str | Path) -> dict:
        """ids, titles and protocol of a saved split, without reading the interactions."""
        return json.loads((Path(folder) / "meta.json").read_text())

    @classmethod
    def load(cls, folder: str | Path, columns: Optional[list[str]] = None) -> "SplitData":
        """The saved split; `columns` reads only those columns of the interactions (e.g. the CF
        stage leaves out the review text, most of the table's memory)."""
        folder = Path(folder)
        meta = cls.read_meta(folder)
        parts = sorted(cls.parts_dir(folder).glob("part-*.parquet"))
        if parts:
            inter = pd.concat([pd.read_parquet(p, columns=columns) for p in parts], ignore_index=True)
        else:  # a split saved before the table came in parts
            inter = pd.read_parquet(folder / "interactions.parquet", columns=columns)
        for col in ("review", "summary"):
            if col in inter.columns:
                inter[col] = inter[col].fillna("")
        return cls(inter=inter, **meta)


def interactions_frame(
    user: list,
    item: list,
    timestamp: list,
    rating: Optional[list] = None,
    label: Optional[list] = None,
    review: Optional[list] = None,
    summary: Optional[list] = None,
    split: Optional[list] = None,
) -> pd.DataFrame:
    """Build a RecData.interactions frame with the exact columns and dtypes of the schema.

    Missing columns get their "absent" value: NaN for rating/label, "" for text and split.
    """
    n = len(user)

    def col(values: Optional[list], fill):
        return [fill] * n if values is None else values

    df = pd.DataFrame(
        {
            "user": pd.Series(user, dtype=object).astype(str),
            "item": pd.Series(item, dtype=object).astype(str),
            "timestamp": np.asarray(timestamp, dtype=np.int64),
            "rating": np.asarray(col(rating, np.nan), dtype=np.float64),
            "label": np.asarray(col(label, np.nan), dtype=np.float64),
            "review": pd.Series(col(review, ""), dtype=object).fillna("").astype(str),
            "summary": pd.Series(col(summary, ""), dtype=object).fillna("").astype(str),
            "split": pd.Series(col(split, ""), dtype=object).fillna("").astype(str),
        }
    )
    return df[INTERACTION_COLUMNS]


def items_frame(item: list, title: Optional[list] = None, description: Optional[list] = None) -> pd.DataFrame:
    """Build a RecData.items frame (ITEM_COLUMNS); absent titles/descriptions are ""."""
    n = len(item)
    return pd.DataFrame(
        {
            "item": pd.Series(item, dtype=object).astype(str),
            "title": pd.Series(title if title is not None else [""] * n, dtype=object).fillna("").astype(str),
            "description": pd.Series(description if description is not None else [""] * n, dtype=object)
            .fillna("")
            .astype(str),
        }
    )[ITEM_COLUMNS]
