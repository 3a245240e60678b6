"""Block-sparse attention, the reference: dense attention in float32 with the block mask expanded to tokens.
Slow (quadratic memory); the ground truth of the parity tests."""

from __future__ import annotations

import math

import torch

from .kernels_blocks import _check, _split, expand_block_mask, pooled_key_blocks

__all__ = ["block_sparse_attention_reference"]


def block_sparse_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor, block_size: int,
    kv_len: torch.Tensor | None = None, scale: float | None = None, remainder: str = "drop",
) -> torch.Tensor:
    """Dense attention in float32 with the block mask expanded to tokens; rows with no allowed key give zeros.
    ``remainder="pooled"``: every refused key block with a valid token adds its pooled key (see the module
    docstring) to the softmax of the rows of the query blocks that refuse it."""
    block_mask = _split(block_mask)[0]
    _check(q, k, v, block_mask, block_size, kv_len, remainder)
    b, h, sq, d = q.shape
    sk = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    mask = expand_block_mask(block_mask, block_size, sq, sk)
    if kv_len is not None:
        keep = torch.arange(sk, device=q.device)[None, :] < kv_len[:, None].to(q.device)
        mask = mask & keep[:, None, None, :]
    scores = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    values = v.float().expand(b, h, sk, d)
    if remainder == "pooled":  # the pooled keys as extra key columns, biased by log(n_b)
        kp, vp, logn = pooled_key_blocks(k, v, block_size, kv_len)
        pooled = torch.einsum("bhqd,bhkd->bhqk", q.float(), kp) * scale + logn[:, None, None, :]
        refused = ~block_mask.to(q.device).repeat_interleave(block_size, dim=-2)[..., :sq, :]  # (B', H', Sq, nK)
        pooled = pooled.masked_fill(~refused, float("-inf"))
        scores = torch.cat([scores.expand(b, h, sq, sk), pooled], dim=-1)
        values = torch.cat([values, vp], dim=2)
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # fully masked rows: softmax of -inf is nan -> 0
    return torch.einsum("bhqk,bhkd->bhqd", probs, values).to(q.dtype)
