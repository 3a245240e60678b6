"""Block-sparse attention: a Triton forward kernel, a fast torch path and a dense masked reference.

The sequence is cut into blocks of ``block_size`` tokens (queries and keys alike; a power of two, at least 16 for
the Triton kernel, at least 8 for the torch path and the reference). A boolean block mask of shape
``(B or 1, H or 1, ceil(Sq / block_size), ceil(Sk / block_size))`` says which key blocks each query block may
attend to; every token of an allowed block is attended, every token of a refused block is not. Keys at positions
``>= kv_len[b]`` (text padding) are never attended. A query row with no allowed key gets zeros.

Files: this module holds the public entry and its dispatch; :mod:`.kernels_reference` the dense reference,
:mod:`.kernels_torch` the torch path, :mod:`.kernels_triton` the Triton kernel, :mod:`.kernels_blocks` the block
masks, index lists and pooled keys they share.

- :func:`block_sparse_attention`: the public entry. ``backend="auto"`` runs Triton on CUDA, else the torch path
  (see :mod:`dynaccel.kernels.dispatch`).
- Triton: FlashAttention-style online softmax (float32 statistics, exp2) that visits only the allowed key blocks of
  each query block, read from a compact per-row index list; float16, bfloat16 and float32 inputs; head dims up to
  256 (64 and 128 are the tuned cases); any sequence length (tails are masked).
- torch path (:func:`block_sparse_attention_torch`): gathers the allowed key/value blocks of each query block and
  runs one batched softmax over them, in chunks of query blocks; float32 arithmetic. On the CPU this is the fast
  path; at full density it calls ``scaled_dot_product_attention``.
- :func:`block_sparse_attention_reference`: dense attention with the block mask expanded to tokens, in float32.
  Slow (quadratic memory); the tests' ground truth.

Skipped key blocks (``remainder``): ``"drop"`` (default) leaves them out. ``"pooled"`` lets each refused key block
``b`` still contribute through one representative key, its mean key ``k̄_b`` and mean value ``v̄_b`` over its
``n_b`` valid tokens, with the logit ``q · k̄_b * scale + log(n_b)``, in the same softmax as the exact keys (the
coarse/fine split of two-stage sparse attention, e.g. Video Sparse Attention, arXiv 2505.13389). It approximates
``sum_{t in b} exp(q · k_t * scale) v_t`` by ``n_b exp(q · k̄_b * scale) v̄_b``; the cost is one key row per refused
block (``1 / block_size`` of the refused part), so the share of blocks computed exactly is unchanged. With nothing
refused it is exactly the ``"drop"`` result.

Layout: ``q`` is ``(B, H, Sq, D)``, ``k`` and ``v`` are ``(B, H, Sk, D)``; any strides (e.g. a ``(B, S, H, D)``
tensor transposed) are accepted. The output is ``(B, H, Sq, D)`` in ``q``'s dtype.
"""

from __future__ import annotations

import os

import torch

from ...kernels.dispatch import dispatch
from .kernels_blocks import (
    MIN_BLOCK,
    REMAINDERS,
    TRITON_MIN_BLOCK,
    BlockIndex,
    block_index,
    block_mask_to_indices,
    expand_block_mask,
    pooled_key_blocks,
)
from .kernels_reference import block_sparse_attention_reference
from .kernels_torch import block_sparse_attention_torch
from .kernels_triton import block_sparse_attention_triton, triton

__all__ = [
    "BlockIndex",
    "block_index",
    "block_sparse_attention",
    "block_sparse_attention_torch",
    "block_sparse_attention_reference",
    "block_sparse_attention_triton",
    "block_mask_to_indices",
    "expand_block_mask",
    "pooled_key_blocks",
    "MIN_BLOCK",
    "REMAINDERS",
    "TRITON_MIN_BLOCK",
]


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    block_size: int = 64,
    *,
    kv_len: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
    remainder: str = "drop",
) -> torch.Tensor:
    """Block-sparse attention ``softmax(q k^T * scale + mask) v`` visiting only the allowed key blocks.

    ``block_mask``: a bool tensor, or a :class:`BlockIndex` prepared once with :func:`block_index` for masks used
    many times (the conversion to index lists is then not repeated). ``remainder``: ``"drop"`` leaves the refused
    key blocks out, ``"pooled"`` adds each through its mean key and value (see the module docstring).

    Example::

        q = k = v = torch.randn(1, 2, 1000, 64)
        mask = torch.rand(1, 2, 16, 16) < 0.2        # ceil(1000 / 64) = 16 blocks each way
        out = block_sparse_attention(q, k, v, mask, 64)   # (1, 2, 1000, 64)
        approx = block_sparse_attention(q, k, v, mask, 64, remainder="pooled")  # refused blocks pooled, not dropped

    Blocks smaller than 16 tokens (8: tiny models) run on the torch path: ``"auto"`` picks it quietly,
    ``backend="triton"`` raises.
    """
    if isinstance(block_size, int) and block_size < TRITON_MIN_BLOCK and backend == "auto":
        # an automatic choice falls back quietly; DYNACCEL_KERNEL_BACKEND=triton is an explicit one (it raises)
        if os.environ.get("DYNACCEL_KERNEL_BACKEND", "auto") != "triton":
            backend = "torch"
    return dispatch(
        block_sparse_attention_triton, block_sparse_attention_torch, q, k, v,
        backend=backend, block_mask=block_mask, block_size=block_size, kv_len=kv_len, scale=scale,
        remainder=remainder,
    )
