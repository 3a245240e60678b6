"""Block masks and what every block-sparse attention path shares: input checks, token-level expansion of a block
mask, per-row index lists (:class:`BlockIndex`), and the pooled key/value per key block (``remainder="pooled"``).
See :mod:`.kernels` for the layout and the semantics."""

from __future__ import annotations

from dataclasses import dataclass

import torch

_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)
#: what happens to the key blocks a mask refuses (see :mod:`.kernels`)
REMAINDERS = ("drop", "pooled")
#: smallest block of the torch path and the reference (tiny models: 8-token blocks give a finer selection)
MIN_BLOCK = 8
#: smallest block of the Triton kernel: its tl.dot tiles need at least 16 rows and columns
TRITON_MIN_BLOCK = 16


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
