"""BinLLM's text-like encoding of CF vectors: a learned linear layer and a sign, written as text.

BinLLM (Zhang et al., 2024, "Text-like Encoding of Collaborative Information in Large Language
Models for Recommendation") turns the CF embedding of a user or an item into a binary code and
writes that code into the prompt as ordinary text, so the LLM needs no soft token::

    h_u = sign(tanh(W_u e_u + b_u)),   h_i = sign(tanh(W_i e_i + b_i))      [bits] in {-1, +1}
    score(u, i) = a <h_u, h_i> / bits + c                                    (a, c learned scalars)

Training (the run's ``mode`` stage, before the LLM sees a code): the CF tables stay frozen and
only W_u, b_u, W_i, b_i, a, c train, with binary cross-entropy on the training interactions
labelled by ``pos`` (rating >= like threshold, or the given label) plus one uniformly sampled
item the user never interacted with, labelled 0, per positive (resampled every epoch, so the codes
also rank unseen items: the topk task). The sign has no gradient: the straight-through estimator
passes the gradient of the code to tanh unchanged, and, as in BinLLM's code, each coordinate uses
the continuous tanh value with probability 1 - beta and its sign with probability beta, beta
rising linearly from 0 to 1 over the first half of the epochs (then codes only). Early stopping
on the sampled validation AUC of the *binary* codes (``cf.patience``), Adam with ``cf.lr`` and
``cf.batch_size``, over ``cf.epochs`` at most. After the stage the codes are fixed.

Paper choices kept: 32 bits (``model.binllm_bits``), one layer per side (users, items), tanh
before the sign, the straight-through gradient and the beta schedule, the bit string as the text
(``model.binllm_compress`` switches to the dot-decimal variant). Differences, each a choice of
this system: the CF backbone is the run's frozen backbone (BinLLM fine-tunes its MF jointly), and
the learned scale a and offset c keep the BCE logits in range (the codes do not depend on them).

Text of a code: bit k is "1" for +1 and "0" for -1 (sign(0) = +1), first bit first. Compressed:
each group of 8 bits (first bit most significant) as a decimal number 0-255, groups joined by
".", e.g. 32 bits -> "172.16.254.1"; a last group of fewer bits is read with the width that is
left. :func:`decode_code` inverts :func:`encode_code` exactly.

Users: the code of a row's user is the code of its user vector, the same vector every mode uses
(:meth:`CFTables.user_vectors`: the trained row, a fold-in from the row's history for a user
with no training data, or a sequential backbone's encoding of the history).

This module knows SplitData and CF tables; it knows nothing of prompts or the LLM beyond the
code strings :class:`TextCodes` hands to the collator.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ckf_dist.cf.fit import torch_threads
from ckf_dist.cf.pairs import VALID_NEGATIVES, PairData
from ckf_dist.cf.tables import CFTables
from ckf_dist.config import CFConfig
from ckf_dist.data.samples import history_ratings
from ckf_dist.data.table import SplitData
from ckf_dist.fsutil import atomic_write

log = logging.getLogger(__name__)

FORMAT = "ckf_binllm/1"


class _SignSTE(torch.autograd.Function):
    """sign with sign(0) = +1; the gradient passes through unchanged (straight-through)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x < 0, -torch.ones_like(x), torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class Binarizer(nn.Module):
    """W_u, b_u (``user``), W_i, b_i (``item``): [bits, d] linear layers; a, c: the score's scale and offset."""

    def __init__(self, d: int, bits: int, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.user = nn.Linear(d, bits)
        self.item = nn.Linear(d, bits)
        if generator is not None:
            for lin in (self.user, self.item):
                bound = 1.0 / math.sqrt(d)
                with torch.no_grad():
                    lin.weight.uniform_(-bound, bound, generator=generator)
                    lin.bias.uniform_(-bound, bound, generator=generator)
        self.scale = nn.Parameter(torch.tensor(4.0))
        self.offset = nn.Parameter(torch.tensor(0.0))
        self.bits = bits

    def codes(self, x: torch.Tensor, side: str, beta: float = 1.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """x: [n, d] -> [n, bits]: sign(tanh(layer(x))) where a uniform draw is below beta, tanh elsewhere."""
        z = torch.tanh((self.user if side == "user" else self.item)(x))
        h = _SignSTE.apply(z)
        if beta >= 1.0:
            return h
        pick = torch.rand(z.shape, generator=generator) < beta
        return torch.where(pick, h, z)

    def score(self, hu: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        return self.scale * (hu * hi).sum(-1) / self.bits + self.offset


def binary_codes(vectors: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """[n, d] vectors -> [n, bits] bool codes (True = +1): sign(x Wᵀ + b), sign(0) = +1 (tanh keeps the sign)."""
    return (np.asarray(vectors, dtype=np.float64) @ weight.T.astype(np.float64) + bias.astype(np.float64)) >= 0


def encode_code(bits: np.ndarray, compress: bool = False) -> str:
    """A code [bits] bool as text: "0110..." or, compressed, dot-decimal groups of 8 bits ("102.31.7")."""
    b = np.asarray(bits, dtype=bool).reshape(-1)
    if not compress:
        return "".join("1" if x else "0" for x in b)
    groups = [b[k : k + 8] for k in range(0, len(b), 8)]
    return ".".join(str(int("".join("1" if x else "0" for x in g), 2)) for g in groups)


def decode_code(text: str, bits: int, compress: bool = False) -> np.ndarray:
    """Inverse of :func:`encode_code` for a code of `bits` bits -> [bits] bool. Raises ValueError on
    text that is not such a code."""
    if not compress:
        if len(text) != bits or set(text) - {"0", "1"}:
            raise ValueError(f"not a {bits}-bit code: {text!r}")
        return np.array([c == "1" for c in text], dtype=bool)
    parts = text.split(".")
    widths = [min(8, bits - k) for k in range(0, bits, 8)]
    if len(parts) != len(widths) or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a dot-decimal {bits}-bit code: {text!r}")
    out: list[bool] = []
    for p, w in zip(parts, widths):
        v = int(p)
        if v >= 1 << w:
            raise ValueError(f"not a dot-decimal {bits}-bit code: {text!r} ({v} does not fit {w} bits)")
        out += [c == "1" for c in format(v, f"0{w}b")]
    return np.array(out, dtype=bool)


def _labelled_train(sd: SplitData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, labels 0/1) of the training interactions with a known ``pos``."""
    train = sd.part("train")
    pos = train["pos"].to_numpy(np.float64)
    keep = ~np.isnan(pos)
    return (train["u"].to_numpy(np.int64)[keep], train["i"].to_numpy(np.int64)[keep],
            (pos[keep] >= 0.5).astype(np.float32))


def train_binarizer(sd: SplitData, tables: CFTables, cfg: CFConfig, bits: int, seed: int,
                    progress_every: int = 0) -> tuple[dict[str, np.ndarray], dict]:
    """Fit the binarisation layers on the frozen `tables` (module docstring); keep the epoch with the
    best validation AUC of the binary codes. Returns (weights, report): weights ``user.weight``
    [bits, d], ``user.bias`` [bits], ``item.weight``, ``item.bias``; report: valid_auc, best_epoch,
    epochs_run, history, seconds."""
    t0 = time.perf_counter()
    data = PairData(sd, "bpr", seed)  # negatives that avoid the user's training positives, validation pairs
    users, items, labels = _labelled_train(sd)
    if len(users) == 0:
        raise ValueError(f"binllm: no labelled training interactions in {sd.name}")
    u_vec = torch.from_numpy(np.asarray(tables.user_emb, dtype=np.float32))
    i_vec = torch.from_numpy(np.asarray(tables.item_emb, dtype=np.float32))
    gen = torch.Generator().manual_seed(seed)
    model = Binarizer(tables.dim, bits, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng([seed, 23])
    pos_rows = np.flatnonzero(labels >= 0.5)
    half = max(1, cfg.epochs // 2)
    best, best_epoch, best_state, bad, history = -math.inf, 0, None, 0, []
    epoch = 0
    with torch_threads(1):
        for epoch in range(1, cfg.epochs + 1):
            beta = min(1.0, (epoch - 1) / half)
            neg = data.sample_negatives(users[pos_rows], rng)
            eu = np.concatenate([users, users[pos_rows]])
            ei = np.concatenate([items, neg])
            y = torch.from_numpy(np.concatenate([labels, np.zeros(len(neg), np.float32)]))
            perm = torch.randperm(len(eu), generator=gen)
            eu_t, ei_t = torch.from_numpy(eu), torch.from_numpy(ei)
            total = 0.0
            for start in range(0, len(eu), cfg.batch_size):
                idx = perm[start : start + cfg.batch_size]
                hu = model.codes(u_vec[eu_t[idx]], "user", beta, gen)
                hi = model.codes(i_vec[ei_t[idx]], "item", beta, gen)
                loss = nn.functional.binary_cross_entropy_with_logits(model.score(hu, hi), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            rec = {"epoch": epoch, "beta": beta, "train_loss": total / len(eu), "valid_auc": None}
            history.append(rec)
            if not data.has_valid:
                continue
            rec["valid_auc"] = score = _valid_auc(model, u_vec, i_vec, data)
            if progress_every and epoch % progress_every == 0:
                log.info("binllm epoch %d beta %.2f loss %.4f valid auc %.4f", epoch, beta, rec["train_loss"], score)
            if beta >= 1.0 and score > best:  # only the binary codes count: they are what the LLM reads
                best, best_epoch, bad = score, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            elif beta >= 1.0:
                bad += 1
                if bad >= cfg.patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    weights = {k: v.detach().numpy().astype(np.float32).copy() for k, v in model.state_dict().items()
               if k.startswith(("user.", "item."))}
    report = {"bits": bits, "valid_metric": f"sampled_auc@{VALID_NEGATIVES} of the binary codes",
              "valid_auc": best if best_state is not None else None,
              "best_epoch": best_epoch if best_state is not None else epoch, "epochs_run": epoch,
              "num_train": int(len(users)), "history": history, "seconds": round(time.perf_counter() - t0, 3)}
    return weights, report


@torch.no_grad()
def _valid_auc(model: Binarizer, u_vec: torch.Tensor, i_vec: torch.Tensor, data: PairData) -> float:
    hu = model.codes(u_vec[torch.as_tensor(np.array(data.valid_u))], "user")  # [n, bits]
    s_pos = (hu * model.codes(i_vec[torch.as_tensor(np.array(data.valid_i))], "item")).sum(-1, keepdim=True)
    neg = torch.as_tensor(np.array(data.valid_neg))  # [n, K]
    s_neg = (hu.unsqueeze(1) * model.codes(i_vec[neg.reshape(-1)], "item").view(*neg.shape, -1)).sum(-1)
    return float(((s_neg < s_pos).double() + 0.5 * (s_neg == s_pos).double()).mean())


def save_binarizer(path: str | Path, weights: Mapping[str, np.ndarray], report: dict) -> Path:
    """Write the layers of :func:`train_binarizer` (safetensors, atomically) with the report as metadata."""
    from safetensors.numpy import save_file

    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
    meta = {"format": FORMAT, "report": json.dumps({k: v for k, v in report.items() if k != "history"})}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_binarizer(path: str | Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: BinLLM codes not found (the run's mode stage writes them)")
    with safe_open(str(p), framework="numpy") as f:
        if (f.metadata() or {}).get("format") != FORMAT:
            raise ValueError(f"{p}: not a BinLLM binarisation file")
        return {k: f.get_tensor(k) for k in f.keys()}


class TextCodes:
    """The code strings of a row's user and items, for the collator (``model.mapping=binllm``).

    tables: the run's CF tables (the CF source); weights: :func:`load_binarizer`; compress:
    ``model.binllm_compress``. Item codes are computed once; a row's user code from its user
    vector (:meth:`CFTables.user_vectors` with the row's history and items)."""

    def __init__(self, tables: CFTables, weights: Mapping[str, np.ndarray], compress: bool = False):
        self.tables = tables
        self.w_u, self.b_u = weights["user.weight"], weights["user.bias"]
        self.w_i, self.b_i = weights["item.weight"], weights["item.bias"]
        if self.w_u.shape[1] != tables.dim or self.w_i.shape[1] != tables.dim:
            raise ValueError(f"binarisation layers expect CF size {self.w_u.shape[1]}, the tables have {tables.dim}")
        self.bits = int(self.w_u.shape[0])
        self.compress = bool(compress)
        self.item_bits = binary_codes(tables.item_emb, self.w_i, self.b_i)  # [I, bits]
        self._item_text = [encode_code(b, self.compress) for b in self.item_bits]

    def user_bits(self, users: Sequence[int], histories: Sequence[Sequence[int]],
                  targets: Optional[Sequence[Sequence[int]]] = None,
                  ratings: Optional[Sequence[Sequence[Optional[float]]]] = None) -> np.ndarray:
        """[n, bits] bool codes of these rows' user vectors (`ratings`: of each history item, for the fold-in)."""
        return binary_codes(self.tables.user_vectors(users, histories, targets, ratings), self.w_u, self.b_u)

    def item_code(self, item: int) -> str:
        return self._item_text[int(item)]

    def sample_codes(self, samples: Sequence[Mapping[str, Any]]) -> list[list[str]]:
        """Per sample: [user code, code of each of its items in order] (what its placeholders become)."""
        if not samples:
            return []
        ub = self.user_bits([s["user"] for s in samples], [s["history"] for s in samples], [s["items"] for s in samples],
                            history_ratings(samples))
        return [[encode_code(b, self.compress)] + [self.item_code(i) for i in s["items"]] for b, s in zip(ub, samples)]
