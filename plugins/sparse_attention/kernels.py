"""Block-sparse attention: a Triton forward kernel, a fast torch path and a dense masked reference.

The sequence is cut into blocks of ``block_size`` tokens (queries and keys alike; a power of two, at least 16 for
the Triton kernel, at least 8 for the torch path and the reference). A boolean block mask of shape
``(B or 1, H or 1, ceil(Sq / block_size), ceil(Sk / block_size))`` says which key blocks each query block may
attend to; every token of an allowed block is attended, every token of a refused block is not. Keys at positions
``>= kv_len[b]`` (text padding) are never attended. A query row with no allowed key gets zeros.

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

import functools
import math
import os
from dataclasses import dataclass

import torch

from ...core.errors import KernelBackendError
from ...kernels.dispatch import dispatch

try:
    import triton
    import triton.language as tl
except Exception:  # ImportError, or a broken install: the torch paths still work
    triton = None
    tl = None

__all__ = [
    "BlockIndex",
    "block_index",
    "block_sparse_attention",
    "block_sparse_attention_torch",
    "block_sparse_attention_reference",
    "block_mask_to_indices",
    "expand_block_mask",
    "pooled_key_blocks",
    "REMAINDERS",
]

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


_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)
#: what happens to the key blocks a mask refuses (see the module docstring)
REMAINDERS = ("drop", "pooled")
#: smallest block of the torch path and the reference (tiny models: 8-token blocks give a finer selection)
MIN_BLOCK = 8
#: smallest block of the Triton kernel: its tl.dot tiles need at least 16 rows and columns
TRITON_MIN_BLOCK = 16
#: the torch path processes this many (query block x allowed key) score elements at once, at most
_GATHER_CHUNK_ELEMS = 1 << 24


# ------------------------------------------------------------------------------------------------------ checks


def _check(q, k, v, block_mask, block_size, kv_len, remainder="drop"):
    name = "block_sparse_attention"
    if remainder not in REMAINDERS:
        raise ValueError(f"{name}: remainder={remainder!r}; accepted: {', '.join(map(repr, REMAINDERS))}")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"{name}: q, k, v must be 4-D (B, H, S, D); got {q.dim()}, {k.dim()}, {v.dim()} dims")
    if k.shape != v.shape:
        raise ValueError(f"{name}: k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"{name}: q {tuple(q.shape)} and k {tuple(k.shape)} must share B, H and D")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in _SUPPORTED:
        raise ValueError(
            f"{name}: dtypes {q.dtype}, {k.dtype}, {v.dtype}; accepted: one of float16, bfloat16, float32 for all"
        )
    if not isinstance(block_size, int) or block_size < MIN_BLOCK or block_size & (block_size - 1):
        raise ValueError(f"{name}: block_size={block_size!r}; accepted: a power of two >= {MIN_BLOCK}")
    b, h, sq, _ = q.shape
    sk = k.shape[2]
    nq, nk = -(-sq // block_size), -(-sk // block_size)
    if block_mask.dtype != torch.bool or block_mask.dim() != 4:
        raise ValueError(f"{name}: block_mask must be a 4-D bool tensor; got {block_mask.dtype} {block_mask.dim()}-D")
    bb, bh, bq, bk = block_mask.shape
    if bb not in (1, b) or bh not in (1, h) or (bq, bk) != (nq, nk):
        raise ValueError(
            f"{name}: block_mask shape {tuple(block_mask.shape)}; accepted: ({b} or 1, {h} or 1, {nq}, {nk}) for "
            f"Sq={sq}, Sk={sk}, block_size={block_size}"
        )
    if kv_len is not None and (kv_len.shape != (b,) or kv_len.dtype not in (torch.int32, torch.int64)):
        raise ValueError(f"{name}: kv_len must be an integer tensor of shape ({b},); got {kv_len.dtype} {tuple(kv_len.shape)}")


def expand_block_mask(block_mask: torch.Tensor, block_size: int, sq: int, sk: int) -> torch.Tensor:
    """The token-level mask ``(B', H', sq, sk)`` a block mask stands for."""
    m = block_mask.repeat_interleave(block_size, dim=-2).repeat_interleave(block_size, dim=-1)
    return m[..., :sq, :sk]


def block_mask_to_indices(block_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query block: the allowed key-block indices, ascending and left-packed (``int32``, ``(..., nQ, nK)``;
    entries past the count are padding), and their count (``int32``, ``(..., nQ)``)."""
    nk = block_mask.shape[-1]
    # sort key: allowed blocks first, each group in ascending order (stable sort on "refused")
    order = torch.sort((~block_mask).to(torch.int8), dim=-1, stable=True).indices
    counts = block_mask.sum(-1, dtype=torch.int32)
    return order.to(torch.int32).contiguous(), counts.contiguous()


@dataclass(frozen=True)
class BlockIndex:
    """A block mask with its per-row index lists, prepared once (:func:`block_index`) and reused across calls: the
    kernels accept it wherever they accept a block mask, and then skip the conversion (a sort over the mask)."""

    mask: torch.Tensor  # (B', H', nQ, nK) bool
    indices: torch.Tensor  # (B', H', nQ, nK) int32, allowed blocks first, ascending
    counts: torch.Tensor  # (B', H', nQ) int32

    @property
    def shape(self):
        return self.mask.shape


def block_index(block_mask: torch.Tensor) -> BlockIndex:
    """Prepare ``block_mask`` (on the device the attention will run on) for repeated use."""
    idx, cnt = block_mask_to_indices(block_mask)
    return BlockIndex(block_mask, idx, cnt)


def _split(block_mask):
    """(mask, indices or None, counts or None) from a bool mask or a BlockIndex."""
    if isinstance(block_mask, BlockIndex):
        return block_mask.mask, block_mask.indices, block_mask.counts
    return block_mask, None, None


def pooled_key_blocks(
    k: torch.Tensor, v: torch.Tensor, block_size: int, kv_len: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One representative per key block: the mean key and mean value over the block's valid tokens (float32,
    ``(B, H, nK, D)``) and ``log(n_b)`` (float32, ``(B, nK)``; ``-inf`` for a block with no valid token). Tokens at
    positions ``>= kv_len[b]`` do not count."""
    b, h, sk, d = k.shape
    nk = -(-sk // block_size)
    pad = nk * block_size - sk
    limit = torch.full((b,), sk, device=k.device, dtype=torch.long) if kv_len is None else kv_len.to(k.device).long()
    valid = torch.arange(nk * block_size, device=k.device)[None, :] < limit.clamp(max=sk)[:, None]  # (B, nK*bs)
    w = valid.float().reshape(b, 1, nk, block_size, 1)

    def block_sum(x):
        x = torch.nn.functional.pad(x.float(), (0, 0, 0, pad))
        return (x.reshape(b, h, nk, block_size, d) * w).sum(3)

    n = valid.reshape(b, nk, block_size).sum(-1).float()  # (B, nK)
    denom = n.clamp(min=1.0)[:, None, :, None]
    return block_sum(k) / denom, block_sum(v) / denom, torch.log(n)


# -------------------------------------------------------------------------------------------------- reference


def block_sparse_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    block_size: int,
    kv_len: torch.Tensor | None = None,
    scale: float | None = None,
    remainder: str = "drop",
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


# ------------------------------------------------------------------------------------------------- torch path


def block_sparse_attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    block_size: int,
    kv_len: torch.Tensor | None = None,
    scale: float | None = None,
    remainder: str = "drop",
) -> torch.Tensor:
    """Gathered block-sparse attention: per query block, one softmax over its allowed key blocks only (and, with
    ``remainder="pooled"``, the pooled keys of the refused ones)."""
    block_mask, pre_idx, pre_cnt = _split(block_mask)
    _check(q, k, v, block_mask, block_size, kv_len, remainder)
    b, h, sq, d = q.shape
    sk = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    bs = block_size
    nq, nk = -(-sq // bs), -(-sk // bs)
    bm = block_mask.to(q.device).expand(b, h, nq, nk)
    if bool(bm.all()):  # full density: plain SDPA (with the padding mask when there is one); nothing to pool
        attn_mask = None
        if kv_len is not None:
            attn_mask = (torch.arange(sk, device=q.device)[None, :] < kv_len[:, None].to(q.device))[:, None, None, :]
        out = torch.nn.functional.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), attn_mask=attn_mask, scale=scale
        )
        if attn_mask is not None:  # rows whose keys are all padding: zeros, as in the reference
            out = out.masked_fill((kv_len.to(q.device) == 0)[:, None, None, None], 0.0)
        return out.to(q.dtype)

    pooled = remainder == "pooled"
    if pre_idx is not None and pre_idx.device == q.device:
        idx, cnt = pre_idx.expand(b, h, nq, nk), pre_cnt.expand(b, h, nq)
    else:
        idx, cnt = block_mask_to_indices(bm)
    maxk = int(cnt.max()) if cnt.numel() else 0
    out = torch.zeros(b, h, nq * bs, d, device=q.device, dtype=torch.float32)
    if maxk == 0 and not pooled:
        return out[:, :, :sq].to(q.dtype)
    maxk = max(maxk, 1)  # pooled with no exact block anywhere: one gathered slot, all of it masked
    idx = idx[..., :maxk].long().reshape(b * h, nq, maxk)
    slot_ok = (torch.arange(maxk, device=q.device) < cnt.reshape(b * h, nq, 1))  # (BH, nQ, maxk)

    def pad_blocks(x, n):
        x = x.float()
        if x.shape[2] < n * bs:
            x = torch.nn.functional.pad(x, (0, 0, 0, n * bs - x.shape[2]))
        return x.reshape(b * h, n, bs, d)

    qb, kb, vb = pad_blocks(q, nq), pad_blocks(k, nk), pad_blocks(v, nk)
    if pooled:
        kp, vp, logn = pooled_key_blocks(k, v, bs, kv_len)
        kp, vp = kp.reshape(b * h, 1, nk, d), vp.reshape(b * h, 1, nk, d)
        # per (BH, query block, key block): the pooled key's bias, -inf where it is not used
        bias = logn.repeat_interleave(h, dim=0)[:, None, :].masked_fill(bm.reshape(b * h, nq, nk), float("-inf"))
    tok = torch.arange(nk * bs, device=q.device).reshape(nk, bs)
    limit = torch.full((b,), sk, device=q.device, dtype=torch.long) if kv_len is None else kv_len.to(q.device).long()
    limit = limit.clamp(max=sk).repeat_interleave(h)  # (BH,)
    rows = torch.arange(b * h, device=q.device)[:, None, None]
    chunk = max(1, _GATHER_CHUNK_ELEMS // ((maxk * bs + (nk if pooled else 0)) * bs * max(1, b * h)))
    for s in range(0, nq, chunk):
        e = min(nq, s + chunk)
        sel = idx[:, s:e]  # (BH, c, maxk)
        flat = (rows * nk + sel).reshape(-1)  # index_select on the flattened blocks: faster than kb[rows, sel]
        kg = kb.reshape(b * h * nk, bs, d).index_select(0, flat).reshape(b * h, e - s, maxk * bs, d)
        vg = vb.reshape(b * h * nk, bs, d).index_select(0, flat).reshape(b * h, e - s, maxk * bs, d)
        ok = slot_ok[:, s:e, :, None] & (tok[sel] < limit[:, None, None, None])  # (BH, c, maxk, bs)
        scores = torch.matmul(qb[:, s:e], kg.transpose(-1, -2)) * scale  # (BH, c, bs, maxk*bs)
        scores = scores.masked_fill(~ok.reshape(b * h, e - s, 1, maxk * bs), float("-inf"))
        if pooled:  # the refused blocks' pooled keys as nK extra columns
            ps = torch.matmul(qb[:, s:e], kp.transpose(-1, -2)) * scale + bias[:, s:e, None, :]
            probs = torch.softmax(torch.cat([scores, ps], dim=-1), dim=-1).nan_to_num(0.0)
            o = torch.matmul(probs[..., : maxk * bs], vg) + torch.matmul(probs[..., maxk * bs:], vp)
        else:
            o = torch.matmul(torch.softmax(scores, dim=-1).nan_to_num(0.0), vg)
        out.view(b * h, nq, bs, d)[:, s:e] = o
    return out[:, :, :sq].to(q.dtype)


# ----------------------------------------------------------------------------------------------------- Triton

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
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    block_size: int,
    kv_len: torch.Tensor | None = None,
    scale: float | None = None,
    remainder: str = "drop",
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
    from ...kernels.dispatch import interpreter_enabled

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
