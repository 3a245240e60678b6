"""The pure-torch reference of :func:`~.token_kernels.query_rows_attention` (the parity tests' ground truth and
the CPU path)."""

from __future__ import annotations

import torch

__all__ = ["query_rows_attention_reference"]


def query_rows_attention_reference(
    q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Pure-torch reference of :func:`query_rows_attention`: (B, R, N) float32, computed in float32."""
    b, h, r, d = q.shape
    hkv, n = k.shape[1], k.shape[2]
    groups = h // hkv
    qf = q.float().reshape(b, hkv, groups * r, d)
    logits = torch.matmul(qf, k.float().transpose(-1, -2)).reshape(b, h, r, n) * scale
    if bias is not None:
        logits = logits + bias.float()[:, None]
    probs = torch.softmax(logits, dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # a row whose keys are all masked contributes nothing
    return probs.mean(dim=1)
