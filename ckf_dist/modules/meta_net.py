"""CF-to-LLM mapping: history pooling, the meta-network ("personalized bridge"), projections.

Owns: turning frozen CF vectors into soft tokens of the LLM's hidden size (the CKF paper, arXiv 2410.20642).
Must not know: the LLM, tokenizers, prompts, DeepSpeed. The caller gives it CF vectors and the
LLM's token-embedding norm; it returns vectors to splice.

For user u with history items H_u (CF size d, LLM hidden size D)::

    p_u  = pool({e_i : i in H_u})                          mean, or attention with a learned query
    z_u  = ReLU(W_1 p_u + b_1)                             [h]
    W_u  = reshape(W_2 z_u + b_2, d x d)                   never materialized (meta_proj kernel)
    u'   = lambda e_u W_u + (1 - lambda) e_u W_g            [d]
    user token = P_u(u'),   item token = P_i(e_i)           [D], separate projections

``model.meta_net=false`` keeps the general bridge only (u' = e_u W_g); ``model.mapping=collm``
replaces all of it by one MLP shared by users and items (CoLLM), no bridge; ``model.mapping=allmrec``
by two MLPs, F_U for the user vector and F_I for the item's aligned vector (A-LLMRec's stage 2).

Modules: :class:`HistoryPooling`, :class:`MetaNet` (W_1, W_2), :class:`PersonalBridge` (pooling,
MetaNet, W_g, lambda; calls the ``meta_proj`` kernel), :class:`ScaledProjection` (P_u, P_i) and
:class:`CFMapper`, which composes them and holds no parameter of its own.

Initialisation: W_2 small and b_2 = vec(I), W_g = I, so u' starts at e_u and training moves the
bridge away from the identity instead of starting from noise.

Output scale (why it matters): a soft token is fused by attention with ordinary token embeddings.
A vector much larger than them dominates every attention score and the first RMSNorm's statistics
(the LLM sees noise); a much smaller one is ignored (the CF signal never reaches the answer).
CF tables have arbitrary scale (MF embeddings ~0.1-1 per coordinate, depending on weight decay),
so the projection ends with an RMS normalisation times ``target_norm / sqrt(D)`` and a learned
per-channel gain (init 1): every soft token starts with the L2 norm of an average token
embedding of this LLM (``target_norm``), whatever the CF table's scale. That normalisation drops
each row's own magnitude, which a dot-product CF model scores with (the length of a user or item
vector is part of u . i); ``model.token_norm=table`` puts it back: the token's norm is
``target_norm`` times the input's L2 norm over the mean norm of the CF table's rows (``ref_norm``),
so tokens are at the LLM's scale on average and keep their relative lengths.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ckf_dist.config import ModelConfig
from ckf_dist.kernels.meta_proj import meta_proj

META_OUT_INIT_SCALE = 0.01
"""W_2 starts at nn.Linear's default init times this: W_u = I + O(0.01)."""


class HistoryPooling(nn.Module):
    """Pool history item vectors into one vector per user.

    mode "mean": masked mean. mode "attention": softmax(hist · q / sqrt(d)) weighted sum with a
    learned query q (init zero, so it starts as the mean). Users with an empty history get zeros.
    """

    def __init__(self, d: int, mode: str = "mean"):
        super().__init__()
        if mode not in ("mean", "attention"):
            raise ValueError(f"unknown pooling {mode!r} (mean, attention)")
        self.mode = mode
        self.d = d
        if mode == "attention":
            self.query = nn.Parameter(torch.zeros(d))

    def forward(self, hist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hist: [B, H, d] float; mask: [B, H] bool (True = real item) -> [B, d]."""
        m = mask.to(hist.dtype)
        if self.mode == "mean":
            return (hist * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp_min(1.0)
        scores = (hist @ self.query) / math.sqrt(self.d)  # [B, H]
        scores = scores.masked_fill(~mask, float("-inf"))
        w = torch.softmax(scores, dim=1)
        w = torch.nan_to_num(w, nan=0.0)  # all-masked rows
        return (w.unsqueeze(-1) * hist).sum(1)


class ScaledProjection(nn.Module):
    """d -> D projection whose output starts at the LLM's token-embedding norm.

    kind "mlp": Linear(d, D) - GELU - Linear(D, D); kind "linear": Linear(d, D). Then
    y = gain ⊙ h / rms(h) * target_norm / sqrt(D)  (so ||y|| = target_norm while gain = 1),
    times ||x|| / ref_norm when `ref_norm` is given (``model.token_norm=table``).
    """

    def __init__(self, d: int, hidden: int, kind: str, target_norm: float, ref_norm: Optional[float] = None):
        super().__init__()
        if ref_norm is not None and not (math.isfinite(ref_norm) and ref_norm > 0):
            raise ValueError(f"ref_norm must be a positive finite norm, got {ref_norm}")
        self.ref_norm = ref_norm
        if kind == "mlp":
            self.net = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        elif kind == "linear":
            self.net = nn.Linear(d, hidden)
        else:
            raise ValueError(f"unknown projection {kind!r} (mlp, linear)")
        self.gain = nn.Parameter(torch.ones(hidden))
        self.register_buffer("out_scale", torch.tensor(float(target_norm) / math.sqrt(hidden)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, d] -> [N, D]."""
        h = self.net(x)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        if self.ref_norm is not None:
            h = h * (torch.sqrt(x.pow(2).sum(-1, keepdim=True) + 1e-12) / self.ref_norm)  # eps: finite gradient at 0
        return h * self.gain * self.out_scale


class MetaNet(nn.Module):
    """The 2-layer MLP d -> h -> d*d producing the personal bridge W_u (kept as parameters only).

    ``hidden(p)`` gives z [B, h]; ``out.weight`` [d*d, h] and ``out.bias`` [d*d] are handed to the
    meta_proj kernel, which applies W_u = reshape(z W_outᵀ + b_out) without materialising it.
    """

    def __init__(self, d: int, h: int):
        super().__init__()
        self.hidden = nn.Linear(d, h)
        self.out = nn.Linear(h, d * d)
        with torch.no_grad():
            self.out.weight.mul_(META_OUT_INIT_SCALE)
            self.out.bias.copy_(torch.eye(d).reshape(-1))

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        """p: [B, d] pooled history -> z: [B, h]."""
        return F.relu(self.hidden(p))


class PersonalBridge(nn.Module):
    """u' = e_u (lambda W_u + (1 - lambda) W_g), W_u from the MetaNet on the pooled history.

    Owns the pooling, the MetaNet (None when ``model.meta_net=false``: u' = e_u W_g) and the
    general bridge ``general`` = W_g [d, d] (init identity). Its forward hands ``meta.out``'s
    parameters to the meta_proj op without calling ``meta.out``; when a sharding framework has
    released them (ZeRO-3: ``numel() == 0`` outside the gather window) it calls ``meta.out``
    instead, whose own hooks gather them, and mixes the bridges in plain torch (same result).
    ``backend`` ("torch" | "triton") is set by the owner.
    """

    def __init__(self, d: int, cfg: ModelConfig):
        super().__init__()
        self.lam = float(cfg.meta_lambda) if cfg.meta_net else 0.0
        self.pool: Optional[HistoryPooling] = HistoryPooling(d, cfg.pooling) if cfg.meta_net else None
        self.meta: Optional[MetaNet] = MetaNet(d, cfg.meta_hidden) if cfg.meta_net else None
        self.general = nn.Parameter(torch.eye(d))
        self.backend = "torch"

    def forward(self, e_u: torch.Tensor, hist: torch.Tensor, hist_mask: torch.Tensor) -> torch.Tensor:
        """e_u: [B, d]; hist: [B, H, d] history item vectors; hist_mask: [B, H] bool -> u' [B, d]."""
        if self.meta is None:
            return e_u @ self.general
        z = self.meta(self.pool(hist, hist_mask))  # [B, h]
        out = self.meta.out
        if out.weight.numel() == 0:  # partitioned: let the module's own hooks gather it
            d = e_u.shape[-1]
            w_u = out(z).view(-1, d, d)  # [B, d, d]
            personal = torch.bmm(e_u.unsqueeze(1), w_u).squeeze(1)
            return self.lam * personal + (1.0 - self.lam) * (e_u @ self.general)
        return meta_proj(e_u, z, out.weight, out.bias, self.general, self.lam, backend=self.backend)


class CFMapper(nn.Module):
    """CF vectors -> soft tokens of the LLM hidden size.

    Args:
      d: CF embedding size. hidden: LLM hidden size D.
      cfg: ModelConfig (mapping, meta_net, meta_lambda, pooling, meta_hidden, projection).
      target_norm: mean L2 norm of the LLM's token embeddings (see the module docstring).
      item_dim: size of the item vectors when it differs from d (allmrec: the joint space).
      ref_norms: (users', items') mean row norms of the CF tables for ``model.token_norm=table``
        (None: every token normalised to target_norm).
    Holds no parameters of its own: only submodules that are called (ZeRO-3 hooks fire).
    ``backend`` ("torch" | "triton") is the meta_proj backend, forwarded to the bridge.
    """

    def __init__(self, d: int, hidden: int, cfg: ModelConfig, target_norm: float, item_dim: Optional[int] = None,
                 ref_norms: Optional[tuple[float, float]] = None):
        super().__init__()
        self.d = d
        self.mapping = cfg.mapping
        user_ref, item_ref = ref_norms if ref_norms is not None else (None, None)
        if cfg.mapping == "collm":
            shared_ref = None if ref_norms is None else (user_ref + item_ref) / 2
            self.shared_proj = ScaledProjection(d, hidden, "mlp", target_norm, shared_ref)
            return
        if cfg.mapping == "allmrec":  # F_U and F_I: 2-layer MLPs, as in A-LLMRec
            self.user_proj = ScaledProjection(d, hidden, "mlp", target_norm, user_ref)
            self.item_proj = ScaledProjection(item_dim or d, hidden, "mlp", target_norm, item_ref)
            return
        if cfg.mapping != "ckf":
            raise ValueError(f"unknown soft-token mapping {cfg.mapping!r} (ckf, collm, allmrec)")
        self.bridge = PersonalBridge(d, cfg)  # starts at the identity: u' = e_u, so e_u's norms serve
        self.user_proj = ScaledProjection(d, hidden, cfg.projection, target_norm, user_ref)
        self.item_proj = ScaledProjection(d, hidden, cfg.projection, target_norm, item_ref)

    @property
    def backend(self) -> str:
        return self.bridge.backend if self.mapping == "ckf" else "torch"

    @backend.setter
    def backend(self, value: str) -> None:
        if self.mapping == "ckf":
            self.bridge.backend = value

    def map_users(self, e_u: torch.Tensor, hist: torch.Tensor, hist_mask: torch.Tensor) -> torch.Tensor:
        """e_u: [B, d]; hist: [B, H, d] history item vectors; hist_mask: [B, H] bool -> [B, D]."""
        if self.mapping == "collm":
            return self.shared_proj(e_u)
        if self.mapping == "allmrec":
            return self.user_proj(e_u)
        return self.user_proj(self.bridge(e_u, hist, hist_mask))

    def map_items(self, e_i: torch.Tensor) -> torch.Tensor:
        """e_i: [M, d] (allmrec: [M, d'], the aligned vectors) -> [M, D] (items are not personalized)."""
        if self.mapping == "collm":
            return self.shared_proj(e_i)
        return self.item_proj(e_i)

    def forward(self, e_u: torch.Tensor, hist: torch.Tensor, hist_mask: torch.Tensor,
                e_i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(users [B, D], items [M, D]) from e_u [B, d], hist [B, H, d], hist_mask [B, H], e_i [M, d]."""
        users = self.map_users(e_u, hist, hist_mask)
        items = self.map_items(e_i) if e_i.shape[0] else users.new_zeros((0, users.shape[1]))
        return users, items
