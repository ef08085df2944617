"""LightGCN (He et al., SIGIR 2020): embeddings smoothed over the user-item graph.

E^0 = [user ego embeddings; item ego embeddings]        [U + I, d]
E^{l+1} = A_hat E^l,   A_hat = D^-1/2 A D^-1/2            (A: the symmetric bipartite adjacency)
E = mean(E^0, ..., E^L);   score(u, i) = E_u . E_i

A holds the *training* positive interactions only (no validation/test edge ever enters the
graph). Propagation is a CSR sparse-dense product (with a symmetric backward), recomputed every training step (the ego
embeddings change); it is cheap at MovieLens scale. No biases: the exported tables are the
propagated E. This module is the nn.Module only: no data loading, no loop.
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import torch
from torch import nn


def normalized_adjacency(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the bipartite graph with edges (u, U + i), both directions, duplicate
    edges merged. users, items: [E] int. Returns a sparse CSR tensor [U + I, U + I] float32.
    Isolated nodes keep a zero row (their degree is clamped to 1)."""
    n = num_users + num_items
    key = np.unique(users.astype(np.int64) * num_items + items.astype(np.int64))
    u, i = key // num_items, key % num_items + num_users
    rows = np.concatenate([u, i])
    cols = np.concatenate([i, u])
    deg = np.bincount(rows, minlength=n).astype(np.float64)
    inv_sqrt = 1.0 / np.sqrt(np.maximum(deg, 1.0))
    vals = (inv_sqrt[rows] * inv_sqrt[cols]).astype(np.float32)
    idx = torch.from_numpy(np.stack([rows, cols]))
    coo = torch.sparse_coo_tensor(idx, torch.from_numpy(vals), (n, n), check_invariants=True).coalesce()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return coo.to_sparse_csr()


class _SymmetricSpmm(torch.autograd.Function):
    """y = A x for a symmetric sparse CSR A: [N, N], x: [N, d]; the gradient is A g as well.

    NOTE: torch's own backward of a sparse-dense product transposes A on every call. On the
    ML-100K training graph (108,792 non-zeros, d = 32, 2 layers) forward + backward took 20.4 ms
    with torch.sparse.mm on COO, 13.0 ms on CSR, and 1.8 ms with this function (2 CPU cores)."""

    @staticmethod
    def forward(ctx, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.adj = adj
        return adj @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, ctx.adj @ grad


class LightGCN(nn.Module):
    """ego: [U + I, d] trainable; adj: [U + I, U + I] sparse (a buffer, not trained)."""

    name = "lightgcn"

    def __init__(
        self,
        num_users: int,
        num_items: int,
        dim: int,
        adj: torch.Tensor,
        *,
        layers: int = 2,
        init_std: float = 0.1,
        generator: Optional[torch.Generator] = None,
    ):
        super().__init__()
        self.num_users, self.num_items, self.layers = num_users, num_items, layers
        self.ego = nn.Parameter(torch.empty(num_users + num_items, dim))
        nn.init.normal_(self.ego, std=init_std, generator=generator)
        self.register_buffer("adj", adj, persistent=False)

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (users [U, d], items [I, d]): the layer mean of A_hat^l E^0, l = 0..L."""
        e = self.ego
        acc = e
        for _ in range(self.layers):
            e = _SymmetricSpmm.apply(self.adj, e)
            acc = acc + e
        out = acc / (self.layers + 1)
        return out[: self.num_users], out[self.num_users :]

    def forward(self, users: torch.Tensor, *item_sets: torch.Tensor) -> list[torch.Tensor]:
        """users: [B] int64; each item set: [B] int64 -> one score tensor [B] per set. One
        propagation serves all sets."""
        eu, ei = self.propagate()
        pu = eu[users]
        return [(pu * ei[items]).sum(-1) for items in item_sets]

    def l2(self, users: torch.Tensor, *item_sets: torch.Tensor) -> torch.Tensor:
        """Per-sample squared norm of the *ego* rows the batch touches (as in the paper): [B]."""
        r = self.ego[users].pow(2).sum(-1)
        for items in item_sets:
            r = r + self.ego[self.num_users + items].pow(2).sum(-1)
        return r

    @torch.no_grad()
    def export(self) -> dict[str, np.ndarray]:
        """The propagated tables: user_emb [U, d], item_emb [I, d]."""
        eu, ei = self.propagate()
        return {"user_emb": eu.numpy().copy(), "item_emb": ei.numpy().copy()}
