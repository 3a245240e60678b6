"""Block-sparse attention, the Triton forward kernel: FlashAttention-style online softmax (float32 statistics,
exp2) over the allowed key blocks of each query block, read from a compact per-row index list. Imports without
Triton (the launcher then raises). The launch settings are module values here, so the GPU scripts can sweep them."""

from __future__ import annotations

import functools
import math

import torch

from ...core.errors import KernelBackendError
from ...kernels.dispatch import interpreter_enabled
from .kernels_blocks import TRITON_MIN_BLOCK, _check, _split, block_mask_to_indices, pooled_key_blocks

try:
    import triton
    import triton.language as tl
except Exception:  # ImportError, or a broken install: the torch paths still work
    triton = None
    tl = None

__all__ = ["block_sparse_attention_triton"]

#: launch settings of the Triton kernel per head dim (module constants so the GPU script can sweep them)
NUM_WARPS = {64: 4, 128: 8}
NUM_STAGES = 2
# shared memory a pipelined key/value tile pair may take (an H100/H200 SM has 228 KiB; leave room for the rest)
_SMEM_BUDGET = 160 * 1024


def _warps(block: int, block_d: int) -> int:
    """Warps per program: NUM_WARPS by head dim for 128-row query blocks, 4 for smaller ones."""
    return NUM_WARPS.get(block_d, 4) if block >= 128 else 4


def _stages(block: int, block_d: int, elem: int) -> int:
    """Pipeline stages for the key/value loads: NUM_STAGES unless that many key + value tiles would not fit the
    shared-memory budget (float32 at block 128 x head dim 128 takes 128 KiB per stage), then 1."""
    per_stage = 2 * block * block_d * elem
    return NUM_STAGES if per_stage * NUM_STAGES <= _SMEM_BUDGET else 1


if triton is not None:
    # A plain function turned into a Triton kernel at its first launch (see _kernel): triton.jit picks the CPU
    # interpreter or the GPU compiler from TRITON_INTERPRET when it runs.

    def _bsa_fwd_kernel(
        Q, K, V, O, IDX, CNT, KVLEN, KP, VP, LOGN, BM,
        sqb, sqh, sqs, sqd,
        skb, skh, sks, skd,
        svb, svh, svs, svd,
        sob, soh, sos, sod,
        sib, sih, siq,
        scb, sch,
        smb, smh, smq,
        H, SQ, SK, D, NK, qk_scale,
        BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, HAS_KVLEN: tl.constexpr, PREC: tl.constexpr,
        UPCAST: tl.constexpr, POOLED: tl.constexpr, EVEN: tl.constexpr,
    ):
        # program (query block, batch*head): online softmax over the allowed key blocks of this query block
        qblk = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        offs_m = qblk * BLOCK + tl.arange(0, BLOCK)
        offs_n = tl.arange(0, BLOCK)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        q_ptrs = Q + b * sqb + h * sqh + offs_m[:, None] * sqs + offs_d[None, :] * sqd
        if EVEN:  # every key block is whole and valid, the head dim fills BLOCK_D: loads without masks
            q = tl.load(q_ptrs, mask=(offs_m < SQ)[:, None], other=0.0)
        else:
            q = tl.load(q_ptrs, mask=(offs_m < SQ)[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
        kv_limit = SK
        if HAS_KVLEN:
            kv_limit = tl.minimum(tl.load(KVLEN + b).to(tl.int32), SK)
        m_i = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK], dtype=tl.float32)
        acc = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
        count = tl.load(CNT + b * scb + h * sch + qblk)
        idx_base = IDX + b * sib + h * sih + qblk * siq
        for i in range(0, count):
            kblk = tl.load(idx_base + i)
            offs_k = kblk * BLOCK + offs_n
            k_ok = offs_k < kv_limit
            k_ptrs = K + b * skb + h * skh + offs_k[None, :] * sks + offs_d[:, None] * skd
            v_ptrs = V + b * svb + h * svh + offs_k[:, None] * svs + offs_d[None, :] * svd
            if EVEN:
                kt = tl.load(k_ptrs)
            else:
                kt = tl.load(k_ptrs, mask=k_ok[None, :] & d_ok[:, None], other=0.0)
            if UPCAST:
                kt = kt.to(tl.float32)
            s = tl.dot(q, kt, input_precision=PREC) * qk_scale
            if not EVEN:
                s = tl.where(k_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing allowed yet stays empty
            alpha = tl.exp2(m_i - m_use)
            p = tl.exp2(s - m_use[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            if EVEN:
                vv = tl.load(v_ptrs)
            else:
                vv = tl.load(v_ptrs, mask=k_ok[:, None] & d_ok[None, :], other=0.0)
            if UPCAST:
                vv = vv.to(tl.float32)
            acc = acc * alpha[:, None] + tl.dot(p.to(vv.dtype), vv, input_precision=PREC)
            m_i = m_new
        if POOLED:
            # the refused key blocks, one pooled key row each (contiguous (B, H, NK, D) in Q's dtype), biased by
            # log2(n_b) (LOGN: (B, NK) float32, -inf for an empty block), in the same online softmax
            for j in range(0, NK, BLOCK):
                offs_p = j + offs_n
                p_in = offs_p < NK
                refused = tl.load(BM + b * smb + h * smh + qblk * smq + offs_p, mask=p_in, other=1) == 0
                bias = tl.load(LOGN + b * NK + offs_p, mask=p_in, other=float("-inf"))
                use = refused & p_in & (bias > float("-inf"))
                kpt = tl.load(
                    KP + (bh * NK + offs_p[None, :]) * D + offs_d[:, None], mask=p_in[None, :] & d_ok[:, None],
                    other=0.0,
                )
                if UPCAST:
                    kpt = kpt.to(tl.float32)
                s = tl.dot(q, kpt, input_precision=PREC) * qk_scale + bias[None, :]
                s = tl.where(use[None, :], s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
                alpha = tl.exp2(m_i - m_use)
                p = tl.exp2(s - m_use[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                vp = tl.load(
                    VP + (bh * NK + offs_p[:, None]) * D + offs_d[None, :], mask=p_in[:, None] & d_ok[None, :],
                    other=0.0,
                )
                if UPCAST:
                    vp = vp.to(tl.float32)
                acc = acc * alpha[:, None] + tl.dot(p.to(vp.dtype), vp, input_precision=PREC)
                m_i = m_new
        l_safe = tl.where(l_i > 0.0, l_i, 1.0)
        out = acc / l_safe[:, None]
        o_ptrs = O + b * sob + h * soh + offs_m[:, None] * sos + offs_d[None, :] * sod
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=(offs_m < SQ)[:, None] & d_ok[None, :])

    @functools.lru_cache(maxsize=None)
    def _kernel(interpret: bool):
        return triton.jit(_bsa_fwd_kernel)


def block_sparse_attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor, block_size: int,
    kv_len: torch.Tensor | None = None, scale: float | None = None, remainder: str = "drop",
) -> torch.Tensor:
    """The Triton forward kernel (see the module docstring); raises when Triton is unavailable."""
    if triton is None:
        raise KernelBackendError("block_sparse_attention: triton does not import")
    block_mask, idx, cnt = _split(block_mask)
    _check(q, k, v, block_mask, block_size, kv_len, remainder)
    if block_size < TRITON_MIN_BLOCK:
        raise KernelBackendError(
            f"block_sparse_attention: block_size={block_size} with backend 'triton'; the Triton kernel accepts a "
            f"power of two >= {TRITON_MIN_BLOCK} (its tl.dot tiles); smaller blocks run on backend 'torch' (or 'auto')"
        )
    b, h, sq, d = q.shape
    sk = k.shape[2]
    if d > 256:
        raise ValueError(f"block_sparse_attention: head dim {d}; the Triton kernel accepts head dims up to 256")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    nq = -(-sq // block_size)
    if idx is None or idx.device != q.device:
        idx, cnt = block_mask_to_indices(block_mask.to(q.device))
    bb, hh = block_mask.shape[:2]
    # broadcast batch/head dims of the mask with zero strides
    idx = idx.expand(b, h, *idx.shape[2:])
    cnt = cnt.expand(b, h, nq)
    sib, sih = (idx.stride(0) if bb > 1 else 0), (idx.stride(1) if hh > 1 else 0)
    scb, sch = (cnt.stride(0) if bb > 1 else 0), (cnt.stride(1) if hh > 1 else 0)
    out = torch.empty(b, h, sq, d, device=q.device, dtype=q.dtype)
    kvlen = kv_len.to(device=q.device, dtype=torch.int32).contiguous() if kv_len is not None else cnt
    nk = -(-sk // block_size)
    pooled = remainder == "pooled"
    if pooled:  # pooled keys/values in the input dtype (the kernel's tl.dot operands), bias in log2 units
        kp, vp, logn = pooled_key_blocks(k, v, block_size, kv_len)
        kp, vp = kp.to(q.dtype).contiguous(), vp.to(q.dtype).contiguous()
        logn = (logn * 1.4426950408889634).contiguous()
        bm = block_mask.to(device=q.device, dtype=torch.int8).contiguous()
        smb, smh, smq = (bm.stride(0) if bb > 1 else 0), (bm.stride(1) if hh > 1 else 0), bm.stride(2)
    else:  # unused by the compiled kernel (POOLED=False): any tensors
        kp = vp = q
        logn = bm = cnt
        smb = smh = smq = 0
    block_d = max(16, triton.next_power_of_2(d))
    kernel = _kernel(interpreter_enabled())
    kernel[(nq, b * h)](
        q, k, v, out, idx, cnt, kvlen, kp, vp, logn, bm,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        sib, sih, idx.stride(2),
        scb, sch,
        smb, smh, smq,
        h, sq, sk, d, nk, scale * 1.4426950408889634,
        BLOCK=block_size, BLOCK_D=block_d, HAS_KVLEN=kv_len is not None, POOLED=pooled,
        PREC="ieee" if q.dtype == torch.float32 else "tf32",
        # Triton's CPU interpreter computes bfloat16 tl.dot wrongly (triton 3.9: garbage); there the bfloat16 tiles
        # are widened to float32 after loading. Compiled GPU kernels always take the native path.
        UPCAST=interpreter_enabled() and q.device.type != "cuda" and q.dtype == torch.bfloat16,
        EVEN=kv_len is None and sk % block_size == 0 and block_d == d,
        num_warps=_warps(block_size, block_d), num_stages=_stages(block_size, block_d, q.element_size()),
    )
    return out
