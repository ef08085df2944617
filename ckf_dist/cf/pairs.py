"""The interactions CF training reads: training pairs, uniform negatives, validation pairs.

Shared by the CF backbones (:mod:`ckf_dist.cf.fit`, :mod:`ckf_dist.cf.sequential`) and the
binarisation layer of BinLLM (:mod:`ckf_dist.cf.binarize`). Knows SplitData only.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ckf_dist.data.table import SplitData

VALID_NEGATIVES = 100
"""Sampled negatives per validation positive for the BPR models' validation AUC."""
INIT_STD = 0.1
"""Std of the normal initialisation of all embeddings."""


class PairData:
    """The numpy/torch views of a SplitData that training needs."""

    def __init__(self, sd: SplitData, loss: str, seed: int):
        self.num_users, self.num_items = sd.num_users, sd.num_items
        train, valid = sd.part("train"), sd.part("valid")
        if loss == "mse":
            train, valid = train[train["rating"].notna()], valid[valid["rating"].notna()]
            r = train["rating"].to_numpy(np.float32, copy=True)
            self.rating = torch.from_numpy(r)
            self.rating_range = (float(r.min()), float(r.max())) if len(r) else (0.0, 1.0)
            self.mean_rating = float(r.mean()) if len(r) else 0.0
            self.valid_r = valid["rating"].to_numpy(np.float64)
        else:
            train, valid = train[train["pos"] >= 0.5], valid[valid["pos"] >= 0.5]
        self.u = torch.from_numpy(train["u"].to_numpy(np.int64, copy=True))  # [N] training pairs
        self.i = torch.from_numpy(train["i"].to_numpy(np.int64, copy=True))
        self.user_seen = np.bincount(self.u.numpy(), minlength=self.num_users) > 0
        self.item_seen = np.bincount(self.i.numpy(), minlength=self.num_items) > 0
        # Validation rows of users the model has a vector for (after a global time split most
        # validation users are new: their zero rows would only add ties); all rows if none is known.
        known = self.user_seen[valid["u"].to_numpy(np.int64)]
        if known.any():
            valid = valid[known]
            if loss == "mse":
                self.valid_r = valid["rating"].to_numpy(np.float64)
        self.valid_index = valid.index.to_numpy()
        """Row labels (in SplitData.inter) of the validation pairs below."""
        self.valid_u = valid["u"].to_numpy(np.int64)
        self.valid_i = valid["i"].to_numpy(np.int64)
        if loss == "bpr":
            # Sorted keys u * I + i of the training positives, for negative rejection.
            self.pos_keys = np.unique(self.u.numpy() * self.num_items + self.i.numpy())
            rng = np.random.default_rng([seed, 7])
            n = len(self.valid_u)
            neg = self.sample_negatives(np.repeat(self.valid_u, VALID_NEGATIVES), rng, exclude=np.repeat(self.valid_i, VALID_NEGATIVES))
            self.valid_neg = neg.reshape(n, VALID_NEGATIVES)  # [n_valid, VALID_NEGATIVES]

    def _is_pos(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.num_items + items
        at = np.searchsorted(self.pos_keys, keys)
        at = np.minimum(at, len(self.pos_keys) - 1)
        return self.pos_keys[at] == keys if len(self.pos_keys) else np.zeros(len(keys), bool)

    def sample_negatives(self, users: np.ndarray, rng: np.random.Generator, exclude: Optional[np.ndarray] = None) -> np.ndarray:
        """One item per entry of users, uniform over items that are not that user's training
        positives (nor `exclude`). Rejection sampling; a user who has every item as a positive
        (degenerate) keeps whatever the last draw gave."""
        neg = rng.integers(0, self.num_items, size=len(users))
        for _ in range(50):
            bad = self._is_pos(users, neg)
            if exclude is not None:
                bad |= neg == exclude
            if not bad.any():
                break
            neg[bad] = rng.integers(0, self.num_items, size=int(bad.sum()))
        return neg

    @property
    def has_valid(self) -> bool:
        return len(self.valid_u) > 0
