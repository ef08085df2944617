"""Matrix factorisation with user, item and global biases.

score(u, i) = b + b_u + b_i + p_u . q_i

Trained by ``ckf_dist.cf.fit`` with MSE on explicit ratings (the score is a predicted rating)
or BPR on implicit positives (user and global biases cancel in a BPR difference, so they stay
at zero; the item bias learns popularity). Its L2 penalty is Adam's weight decay (see
``ckf_dist.cf.fit``). This module is the nn.Module only: no data, no loop.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn


class MF(nn.Module):
    """user_emb: [U, d], item_emb: [I, d], user_bias: [U], item_bias: [I], global_bias: [1]."""

    name = "mf"

    def __init__(
        self,
        num_users: int,
        num_items: int,
        dim: int,
        *,
        init_std: float = 0.1,
        global_bias: float = 0.0,
        generator: Optional[torch.Generator] = None,
    ):
        super().__init__()
        self.user_emb = nn.Parameter(torch.empty(num_users, dim))
        self.item_emb = nn.Parameter(torch.empty(num_items, dim))
        nn.init.normal_(self.user_emb, std=init_std, generator=generator)
        nn.init.normal_(self.item_emb, std=init_std, generator=generator)
        self.user_bias = nn.Parameter(torch.zeros(num_users))
        self.item_bias = nn.Parameter(torch.zeros(num_items))
        self.global_bias = nn.Parameter(torch.tensor([float(global_bias)]))

    def forward(self, users: torch.Tensor, *item_sets: torch.Tensor) -> list[torch.Tensor]:
        """users: [B] int64; each item set: [B] int64 -> one score tensor [B] float32 per set."""
        pu = self.user_emb[users]
        base = self.global_bias + self.user_bias[users]
        return [base + self.item_bias[items] + (pu * self.item_emb[items]).sum(-1) for items in item_sets]

    @torch.no_grad()
    def export(self) -> dict[str, np.ndarray | float]:
        """The tables: user_emb [U, d], item_emb [I, d], user_bias [U], item_bias [I], global_bias."""
        return {
            "user_emb": self.user_emb.detach().numpy().copy(),
            "item_emb": self.item_emb.detach().numpy().copy(),
            "user_bias": self.user_bias.detach().numpy().copy(),
            "item_bias": self.item_bias.detach().numpy().copy(),
            "global_bias": float(self.global_bias.item()),
        }
