"""Triton kernels of ckf_dist (imported as ckf_dist.kernels; only torch and triton here)."""
