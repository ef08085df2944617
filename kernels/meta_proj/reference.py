"""Plain-torch reference of the personalized bridge: materialize W_u, then bmm.

Test oracle for the Triton kernels and the ``kernels.backend=torch`` path. For each user b:

    W_u[b] = (z[b] meta_weightᵀ + meta_bias).view(d, d)      (row-major)
    u'[b]  = lam * e_u[b] W_u[b] + (1 - lam) * e_u[b] W_g
"""

from __future__ import annotations

import torch


def meta_proj_reference(
    e_u: torch.Tensor,  # [B, d]
    z: torch.Tensor,  # [B, h]
    meta_weight: torch.Tensor,  # [d*d, h]
    meta_bias: torch.Tensor | None,  # [d*d]
    general: torch.Tensor,  # [d, d]
    lam: float,
) -> torch.Tensor:  # [B, d]
    b, d = e_u.shape
    w_u = z @ meta_weight.t()
    if meta_bias is not None:
        w_u = w_u + meta_bias
    w_u = w_u.view(b, d, d)
    personal = torch.bmm(e_u.unsqueeze(1), w_u).squeeze(1)
    return lam * personal + (1.0 - lam) * (e_u @ general)
