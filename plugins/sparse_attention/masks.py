"""Block masks over video tokens: token orders (permutations) and which key blocks each query block may attend.

Video tokens arrive in raster order ``(frame, row, column)`` on a grid ``(F, H, W)`` (after patching). A block-sparse
kernel can only exploit locality that is contiguous in the sequence, so each mask comes with a token order:

- :func:`tile_order`: tile-major (3D tiles of ``(tf, th, tw)`` tokens, raster inside a tile), so that a block of
  ``tf * th * tw`` tokens is one tile when the grid divides evenly (edge tiles are smaller when it does not);
- :func:`spatial_major_order`: all frames of one spatial position next to each other (SVG's temporal heads).

A :class:`MaskPlan` is the order plus the block mask over queries ``[video in that order]`` and keys
``[video in that order, text]``. Text key blocks are always allowed (every video token sees the prompt); the
attention of text queries is computed densely by the caller. Block relations are decided from the range of
coordinates each block covers: the gap between two blocks along a dimension is 0 when their ranges overlap, else
the distance between the nearest coordinates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Grid = tuple[int, int, int]


@dataclass(frozen=True)
class MaskPlan:
    """Token order and block mask for one (grid, text length, block size)."""

    order: torch.Tensor  # (Nv,) long: video token index (raster) at each position of the reordered sequence
    block_mask: torch.Tensor  # (1 or H, nQ, nK) bool over [video reordered] x [video reordered, text]
    block_size: int
    num_video: int
    num_text: int

    @property
    def density(self) -> float:
        """Fraction of (query block, key block) pairs computed."""
        return float(self.block_mask.float().mean())

    def video_density(self) -> float:
        """Fraction of video-to-video block pairs computed (text columns left out)."""
        nkv = self.num_video // self.block_size  # key blocks holding video only
        return float(self.block_mask[..., :nkv].float().mean()) if nkv else 1.0


def _check_grid(grid: Grid) -> None:
    if len(grid) != 3 or any(int(g) < 1 for g in grid):
        raise ValueError(f"token grid {grid!r}; accepted: three positive sizes (frames, height, width)")


def raster_coords(grid: Grid) -> torch.Tensor:
    """(F*H*W, 3) coordinates (frame, row, column) of the tokens in raster order."""
    f, h, w = grid
    ff, hh, ww = torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack((ff.reshape(-1), hh.reshape(-1), ww.reshape(-1)), dim=1)


def tile_order(grid: Grid, tile: Grid) -> torch.Tensor:
    """Raster indices of the video tokens in tile-major order (tiles in raster order, raster inside a tile)."""
    _check_grid(grid)
    _check_grid(tile)
    c = raster_coords(grid)
    tc = c // torch.tensor(tile)
    f, h, w = grid
    th, tw = -(-h // tile[1]), -(-w // tile[2])
    tile_id = (tc[:, 0] * th + tc[:, 1]) * tw + tc[:, 2]
    inner = ((c[:, 0] % tile[0]) * tile[1] + c[:, 1] % tile[1]) * tile[2] + c[:, 2] % tile[2]
    key = tile_id * (tile[0] * tile[1] * tile[2]) + inner
    return torch.argsort(key, stable=True)


def spatial_major_order(grid: Grid) -> torch.Tensor:
    """Raster indices ordered by spatial position, then frame (one position's frames contiguous)."""
    _check_grid(grid)
    f, h, w = grid
    return torch.arange(f * h * w).reshape(f, h * w).t().reshape(-1)


def block_ranges(values: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per block of ``block_size`` consecutive rows of ``values`` (N, C): the min and max of each column."""
    n, c = values.shape
    nb = -(-n // block_size)
    pad = nb * block_size - n
    big = torch.iinfo(torch.long).max
    lo = torch.cat((values, values.new_full((pad, c), big))).reshape(nb, block_size, c).amin(1)
    hi = torch.cat((values, values.new_full((pad, c), -big))).reshape(nb, block_size, c).amax(1)
    return lo, hi


def block_gaps(values: torch.Tensor, block_size: int) -> torch.Tensor:
    """(nB, nB, C): per pair of blocks and per column, the gap between their value ranges (0 when they overlap)."""
    lo, hi = block_ranges(values, block_size)
    return (lo[None, :, :] - hi[:, None, :]).clamp(min=0) + (lo[:, None, :] - hi[None, :, :]).clamp(min=0)


def with_text(video_mask: torch.Tensor, num_video: int, num_text: int, block_size: int) -> torch.Tensor:
    """Widen a video x video block mask (..., nQ, nQ) to keys [video, text]: every block holding text is allowed."""
    nq = video_mask.shape[-1]
    nk = -(-(num_video + num_text) // block_size)
    out = torch.zeros(*video_mask.shape[:-1], nk, dtype=torch.bool, device=video_mask.device)
    out[..., :nq] = video_mask
    first_text_block = num_video // block_size
    if num_text:
        out[..., first_text_block:] = True
    return out


def sliding_tile_mask(grid: Grid, tile: Grid, radius: Grid, block_size: int, num_text: int = 0) -> MaskPlan:
    """Sliding tile attention (STA): a query tile attends the key tiles within ``radius`` tiles along each of
    frames, height and width (a window of ``2 * radius + 1`` tiles, clipped at the edges)."""
    order = tile_order(grid, tile)
    tiles = raster_coords(grid)[order] // torch.tensor(tile)
    gaps = block_gaps(tiles, block_size)
    mask = (gaps <= torch.tensor(radius)).all(-1)
    n = order.numel()
    return MaskPlan(order, with_text(mask, n, num_text, block_size)[None], block_size, n, num_text)


def radial_mask(
    grid: Grid, tile_hw: tuple[int, int], window: int, dense_frames: int, block_size: int, num_text: int = 0
) -> MaskPlan:
    """Radial attention: full attention between frames at most ``dense_frames`` apart; beyond, a spatial window of
    ``window >> floor(log2(d))`` tiles (d = frame distance), halving each time the distance doubles, down to the
    key tile at the query's own position. Tiles are one frame deep, ``tile_hw`` tokens across."""
    tile = (1, *tile_hw)
    order = tile_order(grid, tile)
    coords = raster_coords(grid)[order] // torch.tensor(tile)
    gaps = block_gaps(coords, block_size)
    d = gaps[..., 0]
    spatial = gaps[..., 1:].amax(-1)
    shift = torch.floor(torch.log2(d.clamp(min=1).double())).long()
    radius = torch.div(torch.full_like(d, window), 2 ** shift, rounding_mode="floor")
    mask = (d <= dense_frames) | (spatial <= radius)
    n = order.numel()
    return MaskPlan(order, with_text(mask, n, num_text, block_size)[None], block_size, n, num_text)


def spatial_head_mask(grid: Grid, frame_window: int, block_size: int, num_text: int = 0) -> MaskPlan:
    """SVG spatial heads: raster order, each frame attends the frames at most ``frame_window`` away."""
    _check_grid(grid)
    order = torch.arange(grid[0] * grid[1] * grid[2])
    frames = raster_coords(grid)[:, :1]
    mask = block_gaps(frames, block_size)[..., 0] <= frame_window
    n = order.numel()
    return MaskPlan(order, with_text(mask, n, num_text, block_size)[None], block_size, n, num_text)


def temporal_head_mask(grid: Grid, position_window: int, block_size: int, num_text: int = 0) -> MaskPlan:
    """SVG temporal heads: spatial-major order, each spatial position attends every frame of the positions at
    most ``position_window`` away in that order."""
    order = spatial_major_order(grid)
    c = raster_coords(grid)[order]
    pos = (c[:, 1] * grid[2] + c[:, 2])[:, None]
    mask = block_gaps(pos, block_size)[..., 0] <= position_window
    n = order.numel()
    return MaskPlan(order, with_text(mask, n, num_text, block_size)[None], block_size, n, num_text)


def topk_block_mask(scores: torch.Tensor, keep: torch.Tensor, always: torch.Tensor) -> torch.Tensor:
    """Per row of ``scores`` (..., nQ, nK): the ``keep[...]`` highest-scoring key blocks, plus ``always``."""
    nk = scores.shape[-1]
    ranked = torch.argsort(scores.masked_fill(always, float("inf")), dim=-1, descending=True)
    rank = torch.empty_like(ranked)
    rank.scatter_(-1, ranked, torch.arange(nk, device=scores.device).expand_as(ranked))
    return (rank < keep[..., None]) | always


def blocks_for_density(density: float, num_blocks: int) -> int:
    """How many of ``num_blocks`` key blocks a row keeps at ``density`` (at least one)."""
    return max(1, min(num_blocks, math.ceil(density * num_blocks)))
