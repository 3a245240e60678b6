"""Importance scores for token pruning: the attention rows a few query tokens give every key, averaged over heads.

FastV, SlimInfer, DyCoke's decode-time pruning and the adaptive visual exit rank tokens by how much attention the
last token pays them. With SDPA the model never materialises attention weights, and switching the whole model to
eager attention to get them would cost the full (L x L) map in every layer. :func:`query_rows_attention` computes
only the rows needed, from the layer's query and key states:

    scores[b, r, j] = mean_h softmax_j(scale * q[b, h, r] . k[b, h // groups, j] + bias[b, r, j])

with grouped-query attention (``groups`` query heads per key head) and an additive bias (the attention mask's rows,
``-inf`` where a key is masked). Cost O(B * H * R * N * D) instead of O(B * H * N^2 * D).

The reference is in :mod:`.token_kernels_reference`, the Triton kernel in :mod:`.token_kernels_triton`; this
module holds the public function and its dispatch. Every public function takes
``backend="auto" | "triton" | "torch"`` (see :mod:`dynaccel.kernels.dispatch`).
"""

from __future__ import annotations

import torch

from ...kernels.dispatch import dispatch
from .token_kernels_reference import query_rows_attention_reference
from .token_kernels_triton import _query_rows_attention_triton

__all__ = ["query_rows_attention", "query_rows_attention_reference"]

#: ``backend="auto"`` takes the torch reference above this many keys: one program per (batch, head, row) walks the
#: keys serially, which on an H100 (scripts/gpu_check_token_kernels.py, docs/results/h100-token-kernels.txt) was
#: 0.9-1.4x the torch path up to 4096 keys and 0.08-0.15x at 32k.
AUTO_TRITON_MAX_KEYS = 4096


def query_rows_attention(
    q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None, *, scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Head-averaged attention probabilities of ``R`` query rows over ``N`` keys, as (B, R, N) float32.

    ``q``: (B, H, R, D) query states (after rotary embedding, as the attention sees them); ``k``: (B, Hkv, N, D)
    key states with H a multiple of Hkv (grouped-query attention); ``bias``: None or (B, R, N) additive, ``-inf``
    where masked; ``scale`` defaults to ``D ** -0.5``. A row whose keys are all masked gives zeros.
    """
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"query_rows_attention: q and k must be 4-D (B, H, R, D) / (B, Hkv, N, D); got {tuple(q.shape)}, {tuple(k.shape)}")
    b, h, r, d = q.shape
    if k.shape[0] != b or k.shape[3] != d or h % k.shape[1] != 0:
        raise ValueError(
            f"query_rows_attention: k {tuple(k.shape)} does not fit q {tuple(q.shape)}; need the same batch and head "
            "size and a query-head count that is a multiple of the key-head count"
        )
    if bias is not None and tuple(bias.shape) != (b, r, k.shape[2]):
        raise ValueError(f"query_rows_attention: bias must be (B, R, N) = {(b, r, k.shape[2])}; got {tuple(bias.shape)}")
    scale = d**-0.5 if scale is None else scale
    if backend == "auto" and k.shape[2] > AUTO_TRITON_MAX_KEYS:
        backend = "torch"
    tensors = (q, k) if bias is None else (q, k, bias)
    return dispatch(
        lambda *t, **kw: _query_rows_attention_triton(q, k, bias, scale),
        lambda *t, **kw: query_rows_attention_reference(q, k, bias, scale),
        *tensors, backend=backend,
    )
