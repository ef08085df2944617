"""A-LLMRec's first stage: align the frozen CF item embeddings with text embeddings of the items.

A-LLMRec (Kim et al., KDD 2024, "Large Language Models meet Collaborative Filtering: An Efficient
All-round LLM-based Recommender System") trains, before the LLM sees anything, an alignment
network between the frozen CF item embedding e_i [d] and a text embedding q_i [D] of the item::

    z_i = sigmoid(W_1 e_i + b_1)   e^_i = W_2 z_i + b_2      item encoder / decoder   (z_i: [d'])
    p_i = sigmoid(V_1 q_i + c_1)   q^_i = V_2 p_i + c_2      text encoder / decoder   (p_i: [d'])

    L = L_match + 0.5 L_item-recon + 0.2 L_text-recon + L_rec
    L_match = MSE(z_i, p_i)     L_item-recon = MSE(e^_i, e_i)     L_text-recon = MSE(q^_i, q_i)
    L_rec   = BCE(mean_k(x_u * e^_pos)_k, 1) + BCE(mean_k(x_u * e^_neg)_k, 0)

over the training positives (u, pos) with one uniformly sampled item the user never interacted with
(neg) each; x_u is the CF user vector of the row (the trained row, a fold-in, or a sequential
backbone's encoding of the row's history: :meth:`CFTables.user_vectors`). The joint space z (d' =
``model.allmrec_dim``, 128 in the paper) is what the second stage projects into the LLM as item
soft tokens (``ckf_dist.modules.meta_net.CFMapper``, mapping=allmrec), next to the projected user
vector. Epochs ``model.align_epochs``, Adam at ALIGN_LR, batches of ``cf.batch_size`` rows.

Paper choices kept: the sigmoid autoencoders of width d', the four losses and their weights (1, 0.5,
0.2, 1, as in A-LLMRec's code), the mean-over-dimensions score, frozen CF embeddings. Differences,
each a choice of this system: the text embedding is the mean-pooled last hidden state of the LLM in
use over the item's text (title, and description where the data have one) instead of a
fine-tuned Sentence-BERT (none can be downloaded; computed by :mod:`ckf_dist.models.text_embed`,
frozen); an item without training interactions (no CF signal: a zero row) takes the joint vector
of its text, p_i, which the matching loss has aligned with z: the cold-item path the paper targets.

This module knows SplitData, CF tables and numpy text vectors; it knows nothing of the LLM.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ckf_dist.cf.pairs import PairData
from ckf_dist.cf.tables import CFTables
from ckf_dist.data.table import SplitData
from ckf_dist.fsutil import atomic_write

FORMAT = "ckf_allmrec/1"
ALIGN_LR = 1e-3
"""Adam learning rate of the alignment stage."""
WEIGHTS = {"match": 1.0, "item_recon": 0.5, "text_recon": 0.2, "rec": 1.0}
"""A-LLMRec's loss weights."""


class AutoEncoder(nn.Module):
    """x [n, k] -> (z = sigmoid(enc(x)) [n, d'], x^ = dec(z) [n, k])."""

    def __init__(self, k: int, latent: int):
        super().__init__()
        self.enc, self.dec = nn.Linear(k, latent), nn.Linear(latent, k)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.sigmoid(self.enc(x))
        return z, self.dec(z)


class AlignmentNet(nn.Module):
    """The item and text autoencoders of the first stage."""

    def __init__(self, d_cf: int, d_text: int, latent: int):
        super().__init__()
        self.item, self.text = AutoEncoder(d_cf, latent), AutoEncoder(d_text, latent)

    def losses(self, x_u: torch.Tensor, e_pos: torch.Tensor, e_neg: torch.Tensor, q_pos: torch.Tensor,
               q_neg: torch.Tensor) -> dict[str, torch.Tensor]:
        """The four losses (module docstring) of a batch: x_u [n, d], e_* [n, d], q_* [n, D]."""
        z_p, r_p = self.item(e_pos)
        z_n, r_n = self.item(e_neg)
        p_p, s_p = self.text(q_pos)
        p_n, s_n = self.text(q_neg)
        pos, neg = (x_u * r_p).mean(-1), (x_u * r_n).mean(-1)
        return {
            "match": F.mse_loss(z_p, p_p) + F.mse_loss(z_n, p_n),
            "item_recon": F.mse_loss(r_p, e_pos) + F.mse_loss(r_n, e_neg),
            "text_recon": F.mse_loss(s_p, q_pos) + F.mse_loss(s_n, q_neg),
            "rec": F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
            + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg)),
        }


def train_alignment(sd: SplitData, tables: CFTables, text: np.ndarray, latent: int, epochs: int, seed: int,
                    batch_size: int = 1024, history_len: int = 10) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """Fit the alignment network (module docstring). text: [I, D] the items' text embeddings.
    Returns (aligned [I, d'] float32: z_i, or p_i for items without training data; weights; report
    with the per-epoch mean of each loss and of the total)."""
    t0 = time.perf_counter()
    if text.shape[0] != tables.num_items:
        raise ValueError(f"{text.shape[0]} text embeddings for {tables.num_items} items")
    data = PairData(sd, "bpr", seed)
    train = sd.part("train")
    train = train[train["pos"] >= 0.5]
    users = train["u"].to_numpy(np.int64)
    items = train["i"].to_numpy(np.int64)
    if len(users) == 0:
        raise ValueError(f"allmrec: no training positives in {sd.name}")
    histories = _histories(sd, train, history_len) if tables.sequential else [[] for _ in users]
    x_u = torch.from_numpy(tables.user_vectors(users, histories, [[i] for i in items]).astype(np.float32))
    e = torch.from_numpy(np.asarray(tables.item_emb, dtype=np.float32))
    q = torch.from_numpy(np.asarray(text, dtype=np.float32))
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = AlignmentNet(e.shape[1], q.shape[1], latent)
    opt = torch.optim.Adam(net.parameters(), lr=ALIGN_LR)
    rng = np.random.default_rng([seed, 41])
    history = []
    items_t = torch.from_numpy(items.copy())
    for epoch in range(1, epochs + 1):
        neg = torch.from_numpy(data.sample_negatives(users, rng))
        perm = torch.randperm(len(users), generator=gen)
        sums = {k: 0.0 for k in (*WEIGHTS, "total")}
        for start in range(0, len(users), batch_size):
            idx = perm[start : start + batch_size]
            pos_i, neg_i = items_t[idx], neg[idx]
            parts = net.losses(x_u[idx], e[pos_i], e[neg_i], q[pos_i], q[neg_i])
            loss = sum(WEIGHTS[k] * v for k, v in parts.items())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in parts.items():
                sums[k] += float(v.detach()) * len(idx)
            sums["total"] += float(loss.detach()) * len(idx)
        history.append({"epoch": epoch, **{k: v / len(users) for k, v in sums.items()}})
    with torch.no_grad():
        z, _ = net.item(e)
        p, _ = net.text(q)
        trained = np.bincount(sd.part("train")["i"].to_numpy(np.int64), minlength=sd.num_items) > 0
        aligned = torch.where(torch.from_numpy(trained).unsqueeze(1), z, p).numpy().astype(np.float32)
    weights = {k: v.detach().numpy().astype(np.float32).copy() for k, v in net.state_dict().items()}
    report = {"latent": latent, "epochs": epochs, "lr": ALIGN_LR, "loss_weights": WEIGHTS, "num_train": int(len(users)),
              "text_dim": int(q.shape[1]), "items_from_text": int((~trained).sum()), "history": history,
              "seconds": round(time.perf_counter() - t0, 3)}
    return aligned, weights, report


def _histories(sd: SplitData, rows, history_len: int) -> list[list[int]]:
    from ckf_dist.cf.sequential import row_histories

    ids, lengths = row_histories(sd, history_len)
    pos_of = {label: k for k, label in enumerate(sd.inter.index)}
    return [ids[pos_of[x], : lengths[pos_of[x]]].tolist() for x in rows.index]


def save_alignment(path: str | Path, aligned: np.ndarray, weights: Mapping[str, np.ndarray], report: dict) -> Path:
    """The aligned item table (``aligned`` [I, d']) and the network's weights, atomically."""
    from safetensors.numpy import save_file

    tensors = {"aligned": np.ascontiguousarray(aligned, dtype=np.float32),
               **{f"net.{k}": np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}}
    meta = {"format": FORMAT, "report": json.dumps({k: v for k, v in report.items() if k != "history"})}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_aligned_items(path: str | Path, num_items: Optional[int] = None) -> np.ndarray:
    """[I, d'] the aligned item table of :func:`save_alignment`."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: A-LLMRec alignment not found (the run's mode stage writes it)")
    with safe_open(str(p), framework="numpy") as f:
        if (f.metadata() or {}).get("format") != FORMAT:
            raise ValueError(f"{p}: not an A-LLMRec alignment file")
        aligned = f.get_tensor("aligned")
    if num_items is not None and aligned.shape[0] != num_items:
        raise ValueError(f"{p}: {aligned.shape[0]} aligned items, the CF tables have {num_items}")
    return aligned
