"""Pure-torch references of the cache kernels (the ground truth of the parity tests, and the CPU path).

- :func:`l1_sums_reference`: per batch row ``[sum|a - b|, sum|b|]`` in float32;
- :func:`residual_add_reference`: ``base + residual`` in float32, cast back to ``base.dtype``.
"""

import torch

__all__ = ["l1_sums_reference", "residual_add_reference"]


def l1_sums_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per batch row: ``[sum|a - b|, sum|b|]`` as a (B, 2) float32 tensor, computed in float32 with torch."""
    batch = a.shape[0]
    a32 = a.reshape(batch, -1).float()
    b32 = b.reshape(batch, -1).float()
    return torch.stack(((a32 - b32).abs().sum(dim=1), b32.abs().sum(dim=1)), dim=1)


def residual_add_reference(base: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``base + residual`` computed in float32 and cast to ``base.dtype``, with torch."""
    return (base.float() + residual.float()).to(base.dtype)
