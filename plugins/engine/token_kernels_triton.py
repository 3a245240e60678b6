"""The Triton kernel of :func:`~.token_kernels.query_rows_attention`: one program per (batch, head, query row),
two passes over the keys. Imports without Triton (the launcher then raises)."""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch

from ...core.errors import KernelBackendError
from ...kernels.dispatch import interpreter_enabled

try:
    import triton
    import triton.language as tl
except Exception:  # ImportError, or a broken install: the reference still works
    triton = None
    tl = None

_BLOCK_N = 128  # keys per loop iteration
_WARPS = 4



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
        out_base = out_ptr + batch * (R * n) + row * n
        for phase in tl.static_range(2):  # unrolled: 0 gathers the statistics, 1 writes the probabilities
            if phase == 1:
                m = tl.max(m_i, axis=0)
                total = tl.sum(s_i * tl.exp(m_i - m), axis=0)
                inv = tl.where(total > 0, 1.0 / tl.maximum(total * H, 1e-30), 0.0)  # no 1/0 for an all-masked row
            for start in range(0, n, BLOCK_N):
                cols = start + lanes
                cmask = cols < n
                kv = tl.load(k_base + cols[:, None] * sk_n + dims[None, :], mask=cmask[:, None] & dmask[None, :],
                             other=0.0)
                logit = tl.sum(kv.to(tl.float32) * qv[None, :], axis=1) * scale
                if HAS_BIAS:
                    logit += tl.load(bias_ptr + batch * sb_b + row * sb_r + cols, mask=cmask, other=0.0).to(tl.float32)
                logit = tl.where(cmask, logit, float("-inf"))  # lanes past the keys: 0, not exp(0 - m)
                if phase == 0:
                    m_new = tl.maximum(m_i, logit)
                    s_i = s_i * tl.exp(m_i - m_new) + tl.exp(logit - m_new)
                    m_i = m_new
                else:
                    p = tl.exp(logit - m) * inv
                    tl.atomic_add(out_base + cols, p, mask=cmask)


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
