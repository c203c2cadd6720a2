"""Shared fixtures-as-functions for the test_recovery_* files."""
from __future__ import annotations

import torch

from ebsd.recovery import SliceRecoveryTransformer


def tiny_model(seed: int = 0) -> SliceRecoveryTransformer:
    """A randomly initialised (fixed seed) small model; the tests are model-agnostic."""
    torch.manual_seed(seed)
    net = SliceRecoveryTransformer(d_model=32, depth=1, heads=2, mlp_ratio=2.0, max_z=16, max_xy=32)
    net.inference_settings = {"tile": 16, "overlap": 4, "context": 2}
    return net.eval()


def equal_up_to_sign(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> torch.Tensor:
    return torch.minimum((a - b).abs().amax(-1), (a + b).abs().amax(-1)) <= atol


def in_set(q: torch.Tensor, means: torch.Tensor, atol: float = 1e-5) -> torch.Tensor:
    """For each quaternion of ``q (..., 4)``, whether it equals (up to sign) a row of ``means (K, 4)``."""
    flat = q.reshape(-1, 1, 4)
    return equal_up_to_sign(flat, means.reshape(1, -1, 4), atol).any(-1).reshape(q.shape[:-1])
