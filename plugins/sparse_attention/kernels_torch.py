"""Block-sparse attention, the torch path: gathers the allowed key/value blocks of each query block and runs one
batched softmax over them, in chunks of query blocks, in float32. The fast path on the CPU; at full density it
calls ``scaled_dot_product_attention``."""

from __future__ import annotations

import math

import torch

from .kernels_blocks import _check, _split, block_mask_to_indices, pooled_key_blocks

__all__ = ["block_sparse_attention_torch"]

#: the torch path processes this many (query block x allowed key) score elements at once, at most
_GATHER_CHUNK_ELEMS = 1 << 24



def block_sparse_attention_torch(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor, block_size: int,
    kv_len: torch.Tensor | None = None, scale: float | None = None, remainder: str = "drop",
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
