"""CoRA's collaborative query generator: a row's CF vectors -> the codes of its LoRA weights.

CoRA (Liu et al., AAAI 2025, "CoRA: Collaborative Information Perception by Large Language
Model's Weights for Recommendation", arXiv 2408.10645) keeps the prompt text-only and the LLM
frozen: a generator turns the user and item CF embeddings into low-rank incremental weights that
are merged into the LLM's weights for that sample, so collaborative knowledge enters through the
weights instead of the input sequence. Shapes (d: CF size, h: ``model.meta_hidden``, r:
``lora.task.r``, B: rows)::

    tokens = [LN(W_u e_u), LN(W_i e_i), q_1, ..., q_r]        [B, 2 + r, h]   q: learned queries
    z      = LN(Block(tokens))[:, 2:] / sqrt(h)               [B, r, h]       one pre-norm transformer block

Each wrapped projection m of the LLM (``MultiLoRALinear`` with a row adapter, see
:mod:`ckf_dist.modules.multi_lora`) turns z into its own factors with two bias-free linear maps,
A_b = z_b G^A_mᵀ [r, d_in] and B_b = (z_b G^B_mᵀ)ᵀ [d_out, r], and computes
y = W x + (alpha / r) B_b A_b x for the rows of sample b: a LoRA of rank r per row, whose factors
are generated from the row's CF vectors. G^B_m starts at zero, so the model starts as the frozen LLM.

The 1 / sqrt(h) keeps a generated LoRA at a plain LoRA's scale: with G^A_m initialised like PEFT's A
(kaiming-uniform over its h inputs), A_b's entries then have PEFT's variance when h = d_in, and an
Adam step on G^B_m moves B_b by about one learning rate, not sqrt(h) to h of them. Without it the
generated factors are sqrt(h) times larger and the training loss diverged (ML-100K, h = 64:
non-finite gradient norm at step 776 after loss spikes from 1.3 to 8).

Paper choices kept: learned queries that read the CF embeddings through attention (its
collaborative query generator), a frozen LLM with no other adapter, a low-rank delta on the
attention projections. Choices of this system: one transformer block of width h, one pair of
linear maps per projection (the generator is shared by all layers), the rank r and scale alpha / r
of ``lora.task`` on the modules of ``lora.shared.targets`` + ``lora.task.targets``; the item vector
of a row with several items (topk candidates) is the mean of theirs.

Must not know: the LLM, prompts, DeepSpeed. Every parameter belongs to a module that is called
(ZeRO-3 gathers it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Attention(nn.Module):
    def __init__(self, h: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(h, h) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape
        split = lambda t: t.view(b, n, self.heads, h // self.heads).transpose(1, 2)  # noqa: E731
        y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return self.o(y.transpose(1, 2).reshape(b, n, h))


class CoRAGenerator(nn.Module):
    """(e_u [B, d], e_i [B, d]) -> row codes z [B, r, h] (module docstring)."""

    def __init__(self, d: int, hidden: int, rank: int, heads: int = 4):
        super().__init__()
        heads = heads if hidden % heads == 0 else 1
        self.user_in, self.item_in = nn.Linear(d, hidden), nn.Linear(d, hidden)
        self.norm_in = nn.LayerNorm(hidden)
        self.queries = nn.Embedding(rank, hidden)
        self.norm1, self.norm2, self.norm_out = nn.LayerNorm(hidden), nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.attn = _Attention(hidden, heads)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))
        self.rank = rank
        self.code_scale = hidden ** -0.5

    def forward(self, e_u: torch.Tensor, e_i: torch.Tensor) -> torch.Tensor:
        b = e_u.shape[0]
        q = self.queries(torch.arange(self.rank, device=e_u.device)).unsqueeze(0).expand(b, -1, -1)
        cf = torch.stack([self.norm_in(self.user_in(e_u)), self.norm_in(self.item_in(e_i))], 1)  # [B, 2, h]
        x = torch.cat([cf, q.to(cf.dtype)], 1)
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return self.norm_out(x[:, 2:]) * self.code_scale
