"""Fold-in: the CF vector of a user the CF model never trained on, from the row's history.

A user without training interactions (new after a global time split) has an all-zero CF row
(:mod:`ckf_dist.cf.tables`). Every consumer (the CF baselines, the CKF model's user token, BinLLM's
codes, A-LLMRec's alignment) folds such a user in from the history of the row being predicted,
by one rule, :func:`fold_in`:

- **rated history, MF with biases** (``cf.loss=mse``): the classic explicit-feedback fold-in of
  matrix factorisation, a ridge regression of the history's rating residuals
  ``r - b_i - b`` on ``(1, e_i)``, which gives the user a bias and a vector: the ratings the user
  gave decide, so a user who disliked what it watched gets a low bias. The penalty
  (``cf.fold_in_ridge``, the same for bias and vector) pulls both towards the zero of an average
  user when the history is short;
- **otherwise** (no rated history item, or a model without biases: LightGCN, BPR): the mean of
  the history items' vectors, bias 0 (item-based CF's fold-in);
- an empty history gives zeros, the global prior.

Users with a trained row keep it. The same function serves numpy consumers (through
:meth:`CFTables.fold_in`) and the model (torch, batched), so the two can never disagree.
"""

from __future__ import annotations

from typing import Optional

import torch

from ckf_dist.config_sections import CFConfig

DEFAULT_RIDGE = CFConfig().fold_in_ridge
"""For tables written before ``cf.fold_in_ridge`` existed."""


def fold_in(e_u: torch.Tensor, e_hist: torch.Tensor, mask: torch.Tensor, ratings: Optional[torch.Tensor] = None,
            hist_bias: Optional[torch.Tensor] = None, global_bias: float = 0.0, ridge: float = DEFAULT_RIDGE,
            b_u: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(vectors [B, d], biases [B]) of each row's user.

    e_u [B, d]: the users' trained rows (all zero: untrained); e_hist [B, H, d]: the history items'
    vectors; mask [B, H] bool: real history entries; ratings [B, H]: the rating given to each
    history item (NaN: unknown); hist_bias [B, H]: the history items' biases (None: a model
    without biases, which folds in by the mean); b_u [B]: the trained users' biases (default 0).
    Rows with a trained vector return it unchanged, with b_u."""
    dtype = e_u.dtype
    e_u32, e_h = e_u.float(), e_hist.float()
    m = mask.to(torch.float32).unsqueeze(-1)
    mean = (e_h * m).sum(1) / m.sum(1).clamp_min(1.0)
    known = (e_u32 != 0).any(-1)
    trained_bias = b_u.float() if b_u is not None else e_u32.new_zeros(e_u32.shape[0])
    vec, bias = mean, e_u32.new_zeros(e_u32.shape[0])
    if ratings is not None and hist_bias is not None:
        # every row solved (no data-dependent branch: no host read on an accelerator); rows
        # without a rated history item solve to 0 and keep the mean
        rated = mask & torch.isfinite(ratings)
        w = rated.to(torch.float32).unsqueeze(-1)
        x = torch.cat([torch.ones_like(e_h[..., :1]), e_h], -1) * w  # [B, H, d + 1]
        y = torch.nan_to_num(ratings.float() - hist_bias.float() - float(global_bias)) * w.squeeze(-1)
        a = x.transpose(1, 2) @ x + float(ridge) * torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
        sol = torch.linalg.solve_ex(a, x.transpose(1, 2) @ y.unsqueeze(-1))[0].squeeze(-1)  # [B, d + 1]; a is SPD
        use = rated.any(1, keepdim=True)
        vec, bias = torch.where(use, sol[:, 1:], mean), torch.where(use.squeeze(1), sol[:, 0], bias)
    vec = torch.where(known.unsqueeze(-1), e_u32, vec)
    bias = torch.where(known, trained_bias, bias)
    return vec.to(dtype), bias.to(dtype)

