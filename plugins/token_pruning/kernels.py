"""Importance scores for token pruning: the attention rows a few query tokens give every key, averaged over heads.

FastV, SlimInfer, DyCoke's decode-time pruning and the adaptive visual exit rank tokens by how much attention the
last token pays them. With SDPA the model never materialises attention weights, and switching the whole model to
eager attention to get them would cost the full (L x L) map in every layer. :func:`query_rows_attention` computes
only the rows needed, from the layer's query and key states:

    scores[b, r, j] = mean_h softmax_j(scale * q[b, h, r] . k[b, h // groups, j] + bias[b, r, j])

with grouped-query attention (``groups`` query heads per key head) and an additive bias (the attention mask's rows,
``-inf`` where a key is masked). Cost O(B * H * R * N * D) instead of O(B * H * N^2 * D).

Every public function takes ``backend="auto" | "triton" | "torch"`` (see :mod:`dynaccel.kernels.dispatch`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch

from ...core.errors import KernelBackendError
from ...kernels.dispatch import dispatch, interpreter_enabled

try:
    import triton
    import triton.language as tl
except Exception:  # ImportError, or a broken install: the reference still works
    triton = None
    tl = None

__all__ = ["query_rows_attention", "query_rows_attention_reference"]

_BLOCK_N = 128  # keys per loop iteration
_WARPS = 4


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


if triton is not None:

    def _rows_kernel(
        q_ptr, k_ptr, bias_ptr, out_ptr, n, scale,
        sq_b, sq_h, sq_r, sk_b, sk_h, sk_n, sb_b, sb_r,
        H: tl.constexpr, R: tl.constexpr, GROUPS: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_N: tl.constexpr, HAS_BIAS: tl.constexpr,
    ):
        # one program per (batch, head, row): two passes over the keys (running max and sum of exponentials, then
        # the normalised probabilities divided by H, added into out[b, r, :] with atomics: the head average)
        pid = tl.program_id(0)
        row = pid % R
        head = (pid // R) % H
        batch = pid // (R * H)
        dims = tl.arange(0, BLOCK_D)
        dmask = dims < D
        qv = tl.load(q_ptr + batch * sq_b + head * sq_h + row * sq_r + dims, mask=dmask, other=0.0).to(tl.float32)
        k_base = k_ptr + batch * sk_b + (head // GROUPS) * sk_h
        lanes = tl.arange(0, BLOCK_N)
        m_i = tl.full([BLOCK_N], -1e30, dtype=tl.float32)  # finite: masked keys (-inf) never give inf - inf
        s_i = tl.zeros([BLOCK_N], dtype=tl.float32)
        for start in range(0, n, BLOCK_N):
            cols = start + lanes
            cmask = cols < n
            kv = tl.load(k_base + cols[:, None] * sk_n + dims[None, :], mask=cmask[:, None] & dmask[None, :], other=0.0)
            logit = tl.sum(kv.to(tl.float32) * qv[None, :], axis=1) * scale
            if HAS_BIAS:
                logit += tl.load(bias_ptr + batch * sb_b + row * sb_r + cols, mask=cmask, other=0.0).to(tl.float32)
            logit = tl.where(cmask, logit, float("-inf"))
            m_new = tl.maximum(m_i, logit)
            s_i = s_i * tl.exp(m_i - m_new) + tl.exp(logit - m_new)
            m_i = m_new
        m = tl.max(m_i, axis=0)
        total = tl.sum(s_i * tl.exp(m_i - m), axis=0)
        inv = tl.where(total > 0, 1.0 / tl.maximum(total * H, 1e-30), 0.0)  # no 1/0 for an all-masked row
        out_base = out_ptr + batch * (R * n) + row * n
        for start in range(0, n, BLOCK_N):
            cols = start + lanes
            cmask = cols < n
            kv = tl.load(k_base + cols[:, None] * sk_n + dims[None, :], mask=cmask[:, None] & dmask[None, :], other=0.0)
            logit = tl.sum(kv.to(tl.float32) * qv[None, :], axis=1) * scale
            if HAS_BIAS:
                logit += tl.load(bias_ptr + batch * sb_b + row * sb_r + cols, mask=cmask, other=0.0).to(tl.float32)
            logit = tl.where(cmask, logit, float("-inf"))  # lanes past the keys: 0, not exp(0 - m)
            p = tl.exp(logit - m) * inv
            tl.atomic_add(out_base + cols, p, mask=cmask)


#: ``backend="auto"`` takes the torch reference above this many keys: one program per (batch, head, row) walks the
#: keys serially, which on an H100 (scripts/gpu_check_token_kernels.py, docs/results/h100-token-kernels.txt) was
#: 0.9-1.4x the torch path up to 4096 keys and 0.08-0.15x at 32k.
AUTO_TRITON_MAX_KEYS = 4096


@functools.lru_cache(maxsize=None)
def _jit(fn: Callable[..., Any], interpret: bool) -> Any:
    return triton.jit(fn)  # interpret is part of the cache key only: triton.jit reads the environment itself


def _query_rows_attention_triton(
    q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None, scale: float
) -> torch.Tensor:
    if triton is None:
        raise KernelBackendError("query_rows_attention: the 'triton' backend needs triton, which does not import here")
    b, h, r, d = q.shape
    hkv, n = k.shape[1], k.shape[2]
    out = torch.zeros((b, r, n), dtype=torch.float32, device=q.device)
    if b == 0 or r == 0 or n == 0:
        return out
    if k.stride(-1) != 1:
        k = k.contiguous()
    if q.stride(-1) != 1:
        q = q.contiguous()
    if bias is not None:
        bias = bias.float().contiguous()
    grid = (b * h * r,)
    ctx = torch.cuda.device(q.device) if q.device.type == "cuda" else _null()
    with ctx:
        _jit(_rows_kernel, interpreter_enabled())[grid](
            q, k, bias if bias is not None else out, out, n, float(scale),
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            bias.stride(0) if bias is not None else 0, bias.stride(1) if bias is not None else 0,
            H=h, R=r, GROUPS=h // hkv, D=d, BLOCK_D=triton.next_power_of_2(d), BLOCK_N=_BLOCK_N,
            HAS_BIAS=bias is not None, num_warps=_WARPS,
        )
    return out


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


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
