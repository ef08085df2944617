"""ckf_dist: distributed training of CKF (Collaborative Knowledge Fusion) for LLM-based multi-task recommendation."""
__version__ = "0.1.0"
