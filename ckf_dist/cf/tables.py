"""Frozen CF embedding tables: the one artefact CF training hands to the rest of ckf_dist.

A table file is a single safetensors file (written to ``<path>.tmp`` then renamed, so a reader
never sees a half-written file) holding

    user_emb     [U, d] float32     item_emb     [I, d] float32
    user_bias    [U]    float32     item_bias    [I]    float32     global_bias [1] float32
    (biases only for models that have them: MF)
    seq.<name>   the weights of a sequential backbone's encoder (SASRec, DIN; see cf/sequential.py)
    xfit.<name>  with ``cf.cross_fit = K``: the K out-of-fold tables, user_emb [K, U, d], item_emb
                 [K, I, d] (and user_bias [K, U], item_bias [K, I]; see cf/crossfit.py)

    user_ids_utf8 / item_ids_utf8         uint8  the raw id of each row (so a table can be checked
    user_ids_offsets / item_ids_offsets   int64  against a SplitData), UTF-8, row k = bytes
                                                 offsets[k]..offsets[k+1]

and one metadata entry ``ckf_cf``: a JSON object with the training facts (model, loss, dim, chosen
weight decay, validation metric and score, ...). The ids are tensors, not metadata: safetensors
caps its header at 100 MB, which a few million ids exceed (43M Amazon-2018 reviewers take ~700
MB as JSON). Keeping ids and tensors in one file keeps the write atomic. (Files written when the
ids were metadata entries ``user_ids`` / ``item_ids`` still load.)

**Rows without training data.** A user or item with no training interaction (new after a global
time split, or a held-out-only item) has an all-zero row (and zero biases): no untrained random
vector ever leaves CF training. Consumers fold such a *user* in from the history of the row being
predicted (:meth:`CFTables.fold_in`, and the same function in the CKF model): with MF's biases and
the ratings the user gave its history items, a ridge fold-in of a bias and a vector; otherwise
the mean of its history items' rows (:mod:`ckf_dist.cf.foldin`). A zero item row scores as the
global prior.

**Sequential backbones** (SASRec, DIN) encode a row's history into its user vector: with a
history, :meth:`CFTables.user_vectors` and :meth:`CFTables.score_with_history` run the backbone
(:mod:`ckf_dist.cf.sequential`) instead of reading ``user_emb``, which holds each user's encoding
of its training history for consumers without a row (:meth:`CFTables.score`).

Arrays are numpy (``torch.from_numpy`` is zero-copy for consumers that want tensors). This module
knows nothing of how the tables were trained nor of the LLM.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ckf_dist.fsutil import atomic_write

META_KEY = "ckf_cf"


@dataclass
class CFTables:
    """User/item embeddings of a trained CF backbone, with raw ids and training metadata."""

    user_emb: np.ndarray
    """[U, d] float32."""
    item_emb: np.ndarray
    """[I, d] float32."""
    user_ids: list[str]
    """Raw id of each user row (SplitData.user_ids)."""
    item_ids: list[str]
    """Raw id of each item row (SplitData.item_ids)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """model, loss, dim, weight_decay, valid_metric, valid_score, ..."""
    user_bias: Optional[np.ndarray] = None
    """[U] float32, or None (LightGCN)."""
    item_bias: Optional[np.ndarray] = None
    """[I] float32, or None."""
    global_bias: float = 0.0
    """Global offset (MF-MSE: about the mean training rating)."""
    encoder: dict[str, np.ndarray] = field(default_factory=dict)
    """A sequential backbone's weights (empty for MF / LightGCN); meta["encoder"] holds its shape."""
    cross_fit: dict[str, np.ndarray] = field(default_factory=dict)
    """The out-of-fold tables of ``cf.cross_fit`` (empty without): user_emb [K, U, d], item_emb
    [K, I, d], user_bias [K, U], item_bias [K, I] (biases for MF); see :mod:`ckf_dist.cf.crossfit`."""

    @property
    def sequential(self) -> bool:
        """True for SASRec / DIN tables: the user vector of a row is the encoding of its history."""
        return bool(self.encoder)

    def _seq_model(self):
        from ckf_dist.cf.sequential import build_model

        if getattr(self, "_model", None) is None:
            self._model = build_model(self)
        return self._model

    def __post_init__(self) -> None:
        if self.user_emb.ndim != 2 or self.item_emb.ndim != 2 or self.user_emb.shape[1] != self.item_emb.shape[1]:
            raise ValueError(f"bad embedding shapes {self.user_emb.shape} / {self.item_emb.shape}")
        if len(self.user_ids) != self.user_emb.shape[0] or len(self.item_ids) != self.item_emb.shape[0]:
            raise ValueError(
                f"{len(self.user_ids)} user ids / {len(self.item_ids)} item ids for tables "
                f"{self.user_emb.shape} / {self.item_emb.shape}"
            )
        if self.cross_fit:
            k = self.cross_fit.get("user_emb", np.zeros((0,))).shape[0]
            want = {"user_emb": (k, *self.user_emb.shape), "item_emb": (k, *self.item_emb.shape),
                    "user_bias": (k, self.num_users), "item_bias": (k, self.num_items)}
            bad = {n: a.shape for n, a in self.cross_fit.items() if n not in want or tuple(a.shape) != want[n]}
            if bad or k < 1 or "item_emb" not in self.cross_fit or (("user_bias" in self.cross_fit) != ("item_bias" in self.cross_fit)):
                raise ValueError(f"bad cross-fit tables {({n: tuple(a.shape) for n, a in self.cross_fit.items()})} "
                                 f"for tables {self.user_emb.shape} / {self.item_emb.shape}")

    def id_mismatch(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> Optional[str]:
        """None when these tables' rows are exactly the given users and items, in that order (the
        dense ids of one split); else what differs, in words. A table from another split would
        hand users other users' vectors: every consumer checks this before looking vectors up."""
        for what, mine, theirs in (("user", self.user_ids, user_ids), ("item", self.item_ids, item_ids)):
            if len(mine) != len(theirs):
                return f"{len(mine)} {what} rows, the split has {len(theirs)} {what}s"
            if list(mine) != [str(x) for x in theirs]:
                k = next(k for k, (a, b) in enumerate(zip(mine, theirs)) if a != str(b))
                return f"{what} row {k} is {mine[k]!r}, the split's {what} {k} is {theirs[k]!r} (built from another split)"
        return None

    @property
    def dim(self) -> int:
        return int(self.user_emb.shape[1])

    @property
    def num_users(self) -> int:
        return int(self.user_emb.shape[0])

    @property
    def num_items(self) -> int:
        return int(self.item_emb.shape[0])

    def save(self, path: str | Path) -> Path:
        """Write these tables with :func:`save_cf_tables` (meta included); returns the path."""
        has_bias = self.user_bias is not None or self.item_bias is not None or self.global_bias != 0.0
        return save_cf_tables(
            path, self.user_emb, self.item_emb, self.user_ids, self.item_ids, self.meta,
            user_bias=self.user_bias, item_bias=self.item_bias, global_bias=self.global_bias if has_bias else None,
            encoder=self.encoder or None, cross_fit=self.cross_fit or None,
        )

    @property
    def folds(self) -> int:
        """The number of out-of-fold tables (0: none)."""
        return int(self.cross_fit["user_emb"].shape[0]) if self.cross_fit else 0

    def model_inputs(self, with_biases: bool = True, stacked: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(users [U, d'], items [I, d']) float32: the vectors the CKF model is fed. With biases (MF),
        each row gets its bias as one more coordinate (d' = d + 1): the per-user and per-item rating
        offsets are part of what the CF model learned, and e_u . e_i alone would hide them. A row
        without training data stays all zero (its bias is zero too).

        `stacked` (tables with ``cross_fit``): the full tables followed by each fold's, ([(K + 1) U, d'],
        [(K + 1) I, d']); block 0 is the full model, block k + 1 fold k's (what the training collator
        indexes, :mod:`ckf_dist.data.folds`)."""
        biases = with_biases and self.user_bias is not None and self.item_bias is not None
        blocks = [(self.user_emb, self.item_emb, self.user_bias, self.item_bias)]
        if stacked:
            xf = self.cross_fit
            blocks += [(xf["user_emb"][k], xf["item_emb"][k], xf.get("user_bias", [None] * self.folds)[k],
                        xf.get("item_bias", [None] * self.folds)[k]) for k in range(self.folds)]
        users, items = [], []
        for ue, ie, ub, ib in blocks:
            users.append(np.concatenate([ue, ub[:, None]], 1) if biases else ue)
            items.append(np.concatenate([ie, ib[:, None]], 1) if biases else ie)
        return np.concatenate(users).astype(np.float32), np.concatenate(items).astype(np.float32)

    def model_item_bias(self, stacked: bool = False) -> Optional[np.ndarray]:
        """[I] (or, `stacked`, [(K + 1) I]) float32 item biases in the row order of :meth:`model_inputs`."""
        if self.item_bias is None:
            return None
        parts = [self.item_bias] + ([self.cross_fit["item_bias"][k] for k in range(self.folds)] if stacked else [])
        return np.concatenate(parts).astype(np.float32)

    @property
    def fold_in_ridge(self) -> float:
        """The fold-in's ridge penalty (``cf.fold_in_ridge`` when the tables were trained)."""
        from ckf_dist.cf.foldin import DEFAULT_RIDGE

        return float(self.meta.get("fold_in_ridge", DEFAULT_RIDGE))

    def fold_in(self, users: Sequence[int], histories: Sequence[Sequence[int]],
                ratings: Optional[Sequence[Sequence[Optional[float]]]] = None) -> tuple[np.ndarray, np.ndarray]:
        """(vectors [n, d], biases [n]) float64 of each row's user: its trained row and bias, or for
        a user without one, the fold-in from the row's history and the ratings it gave those items
        (:func:`ckf_dist.cf.foldin.fold_in`: a ridge fold-in on MF with biases, else the mean)."""
        import torch

        from ckf_dist.cf.foldin import fold_in

        u = np.asarray(users, dtype=np.int64)
        n, h = len(u), max([1, *(len(x) for x in histories)])
        ids = np.zeros((n, h), dtype=np.int64)
        mask = np.zeros((n, h), dtype=bool)
        rated = np.full((n, h), np.nan)
        for k, x in enumerate(histories):
            ids[k, : len(x)], mask[k, : len(x)] = x, True
            if ratings is not None:
                rated[k, : len(x)] = [np.nan if r is None else float(r) for r in ratings[k]]
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))  # noqa: E731
        with_bias = self.item_bias is not None and ratings is not None
        vec, bias = fold_in(t(self.user_emb[u]), t(self.item_emb[ids]), torch.from_numpy(mask),
                            t(rated) if with_bias else None, t(self.item_bias[ids]) if with_bias else None,
                            self.global_bias, self.fold_in_ridge,
                            t(self.user_bias[u]) if self.user_bias is not None else None)
        return vec.numpy(), bias.numpy()

    def user_vectors(self, users: Sequence[int], histories: Sequence[Sequence[int]],
                     targets: Optional[Sequence[Sequence[int]]] = None,
                     ratings: Optional[Sequence[Sequence[Optional[float]]]] = None) -> np.ndarray:
        """[n, d] float64: each user's trained row, or for a user without one (all zero: no training
        interaction) its fold-in from the row's history (:meth:`fold_in`; `ratings`: the rating of
        each history item, None where unknown). Sequential tables: the backbone's encoding of each
        history (`targets`, the items of each row, are DIN's attention target; see
        :mod:`ckf_dist.cf.sequential`)."""
        if self.sequential:
            from ckf_dist.cf.sequential import encode_rows

            return encode_rows(self, histories, targets, self._seq_model())
        return self.fold_in(users, histories, ratings)[0]

    def score_with_history(self, users: Sequence[int], histories: Sequence[Sequence[int]], items: Any,
                           ratings: Optional[Sequence[Sequence[Optional[float]]]] = None) -> np.ndarray:
        """Like :meth:`score`, with users folded in from their histories and the ratings given to
        them (:meth:`fold_in`).

        items: [n] (one per user) or [n, C] (C candidates per user). Sequential tables: the
        backbone's own score after each history (DIN's is not a dot product)."""
        if self.sequential:
            from ckf_dist.cf.sequential import score_rows

            return score_rows(self, histories, items, self._seq_model())
        i = np.asarray(items, dtype=np.int64)
        vec, ub = self.fold_in(users, histories, ratings)  # [n, d], [n]
        if i.ndim == 1:
            s = np.einsum("nd,nd->n", vec, self.item_emb[i].astype(np.float64))
        else:
            s = np.einsum("nd,ncd->nc", vec, self.item_emb[i].astype(np.float64))
            ub = ub[:, None]
        if self.user_bias is not None:
            s = s + ub
        if self.item_bias is not None:
            s = s + self.item_bias[i]
        return s + self.global_bias

    def score(self, users: Any, items: Any) -> np.ndarray:
        """MF-style score e_u . e_i + b_u + b_i + b (biases where present), float64.

        users and items are integer arrays that broadcast against each other, e.g. users [n] with
        items [n] (one pair per row) or users [n, 1] with items [n, C] (C candidates per row).
        For an MSE-trained MF this is the predicted rating; for BPR models an unbounded
        preference score. Either way higher = more likely liked."""
        u = np.asarray(users, dtype=np.int64)
        i = np.asarray(items, dtype=np.int64)
        u, i = np.broadcast_arrays(u, i)
        s = np.einsum("...d,...d->...", self.user_emb[u].astype(np.float64), self.item_emb[i].astype(np.float64))
        if self.user_bias is not None:
            s = s + self.user_bias[u]
        if self.item_bias is not None:
            s = s + self.item_bias[i]
        return s + self.global_bias


def _np32(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def save_cf_tables(
    path: str | Path,
    user_emb: Any,
    item_emb: Any,
    user_ids: Sequence[str],
    item_ids: Sequence[str],
    extra: Optional[dict[str, Any]] = None,
    *,
    user_bias: Any = None,
    item_bias: Any = None,
    global_bias: Optional[float] = None,
    encoder: Optional[dict[str, Any]] = None,
    cross_fit: Optional[dict[str, Any]] = None,
) -> Path:
    """Write a table file atomically (see the module docstring); returns its path.

    user_emb: [U, d], item_emb: [I, d] (numpy or torch, stored float32); extra: JSON-serialisable
    facts stored in the metadata (model name, dim, weight decay, valid score, ...)."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"user_emb": _np32(user_emb), "item_emb": _np32(item_emb)}
    if user_bias is not None:
        tensors["user_bias"] = _np32(user_bias).reshape(-1)
    if item_bias is not None:
        tensors["item_bias"] = _np32(item_bias).reshape(-1)
    if global_bias is not None:
        tensors["global_bias"] = np.array([global_bias], dtype=np.float32)
    for k, v in (encoder or {}).items():
        tensors[f"seq.{k}"] = _np32(v)
    for k, v in (cross_fit or {}).items():
        tensors[f"xfit.{k}"] = _np32(v)
    # Validate before writing anything.
    CFTables(tensors["user_emb"], tensors["item_emb"], list(user_ids), list(item_ids))
    meta = dict(extra or {})
    meta.setdefault("dim", int(tensors["user_emb"].shape[1]))
    for kind, ids in (("user", user_ids), ("item", item_ids)):
        tensors[f"{kind}_ids_utf8"], tensors[f"{kind}_ids_offsets"] = _pack_ids(ids)
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)}))


def _pack_ids(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Ids as one UTF-8 byte array and [n + 1] offsets."""
    encoded = [str(x).encode("utf-8") for x in ids]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets


def _unpack_ids(data: np.ndarray, offsets: np.ndarray) -> list[str]:
    raw = data.tobytes()
    bounds = offsets.tolist()
    return [raw[a:b].decode("utf-8") for a, b in zip(bounds[:-1], bounds[1:])]


def load_cf_tables(path: str | Path) -> CFTables:
    """Read a table file written by :func:`save_cf_tables`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CF table file not found: {path}")
    with safe_open(str(path), framework="numpy") as f:
        raw = (f.metadata() or {}).get(META_KEY)
        if raw is None:
            raise ValueError(f"{path}: not a CF table file (no '{META_KEY}' metadata)")
        tensors = {k: np.require(f.get_tensor(k), requirements=["W", "C"]) for k in f.keys()}
    meta = json.loads(raw)
    ids = {}
    for kind in ("user", "item"):
        if f"{kind}_ids_utf8" in tensors:
            ids[kind] = _unpack_ids(tensors.pop(f"{kind}_ids_utf8"), tensors.pop(f"{kind}_ids_offsets"))
        else:
            ids[kind] = meta.pop(f"{kind}_ids")
    user_ids, item_ids = ids["user"], ids["item"]
    gb = tensors.get("global_bias")
    return CFTables(
        user_emb=tensors["user_emb"],
        item_emb=tensors["item_emb"],
        user_ids=user_ids,
        item_ids=item_ids,
        meta=meta,
        user_bias=tensors.get("user_bias"),
        item_bias=tensors.get("item_bias"),
        global_bias=float(gb[0]) if gb is not None else 0.0,
        encoder={k[len("seq."):]: v for k, v in tensors.items() if k.startswith("seq.")},
        cross_fit={k[len("xfit."):]: v for k, v in tensors.items() if k.startswith("xfit.")},
    )
