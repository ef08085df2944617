"""Cross-fitting folds: which of `cf.cross_fit` folds a training interaction belongs to.

A CF model fits the very training ratings the LLM then learns to predict from its vectors: on a
training row the CF vectors are in-sample (on Amazon Musical Instruments MF's score ranks the
training ctr rows at AUC 0.95 and the test rows at 0.65), so the LLM learns to trust them far more
than a held-out row warrants. With ``cf.cross_fit = K`` the CF stage also trains K models, model k
on the training interactions outside fold k, and a training row whose target interaction is in
fold k reads model k's vectors: fit without its own label, as a test row's are
(:mod:`ckf_dist.cf.crossfit`). Evaluation always reads the model fit on all training rows.

The fold of an interaction is a fixed hash of its (user, item) dense ids: the CF stage that leaves
a fold out and the collator that picks a row's table compute it independently and agree, with
nothing stored per row.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

_MASK = np.uint64(0xFFFFFFFF)


def interaction_folds(users: Any, items: Any, folds: int) -> np.ndarray:
    """[n] int64 in [0, folds): the fold of each (user, item) pair (a 32-bit integer hash of both
    ids, so a user's interactions spread over the folds)."""
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    u = np.asarray(users, dtype=np.uint64).reshape(-1)
    i = np.asarray(items, dtype=np.uint64).reshape(-1)
    h = (u * np.uint64(0x9E3779B1) + i * np.uint64(0x85EBCA77) + np.uint64(0x27D4EB2F)) & _MASK
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x2C1B3C6D)) & _MASK
    h ^= h >> np.uint64(12)
    h = (h * np.uint64(0x297A2D39)) & _MASK
    h ^= h >> np.uint64(15)
    return (h % np.uint64(folds)).astype(np.int64)


def target_item(sample: Mapping[str, Any]) -> int:
    """The item of the interaction a sample's answer comes from: a topk row's true candidate, else
    its (first) item."""
    if sample["task"] == "topk":
        return int(sample["candidates"][sample["answer"]])
    return int(sample["items"][0])


def sample_folds(samples: Any, folds: int) -> np.ndarray:
    """[n] int64: the fold of each sample's target interaction (:func:`target_item`)."""
    return interaction_folds([int(s["user"]) for s in samples], [target_item(s) for s in samples], folds)
