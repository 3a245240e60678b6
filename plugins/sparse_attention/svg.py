"""Sparse VideoGen (Xi et al., "Sparse VideoGen: Accelerating Video Diffusion Transformers with Spatial-Temporal
Sparsity", arXiv 2502.01776).

Attention heads of video DiTs mostly behave in one of two ways: *spatial* heads attend within their own frame,
*temporal* heads attend the same spatial position across frames. SVG classifies every head online, at every
attention call: it samples ``sample_rows`` query rows, computes their exact attention and their attention under
each of the two masks, and gives each head (per sample) the mask with the smaller error. Spatial heads run in
raster order with a block-diagonal-by-frame mask (frames at most ``frame_window`` apart); temporal heads run in
spatial-major order (one position's frames contiguous: the layout transformation that makes the temporal pattern
block-sparse) with positions at most ``position_window`` apart. Text is attended densely. The first
``dense_steps`` steps run dense (the paper's warm-up).

Dense setting: ``frame_window`` >= frames - 1 (e.g. 1000: the spatial mask covers everything) or ``dense_steps``
>= the step count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...core.config import option
from .engine import CallInfo, Pass, SparseAttentionConfig, SparseAttentionStrategy, SparsePolicy
from .masks import spatial_head_mask, temporal_head_mask


@dataclass(frozen=True)
class SVGConfig(SparseAttentionConfig):
    frame_window: int = option(0, doc="spatial heads attend frames at most this far apart", min=0, max=1000)
    position_window: int = option(
        0, doc="temporal heads attend positions at most this far apart (spatial-major order)", min=0, max=1_000_000
    )
    sample_rows: int = option(32, doc="query rows sampled per call to classify the heads", min=1, max=4096)


class _SVGPolicy(SparsePolicy):
    def __init__(self, config):
        super().__init__(config)
        self.spatial_heads = 0
        self.temporal_heads = 0

    def run_started(self):
        self.spatial_heads = self.temporal_heads = 0

    def _head_plans(self, grid, num_text):
        c = self.config
        sp = self.plan(("s", grid, num_text), lambda: spatial_head_mask(grid, c.frame_window, c.block_size, num_text))
        tp = self.plan(("t", grid, num_text), lambda: temporal_head_mask(grid, c.position_window, c.block_size, num_text))
        return sp, tp

    def full(self, grid, step):
        return bool(self._head_plans(grid, 0)[0].block_mask.all())

    def passes(self, call: CallInfo):
        sp, tp = self._head_plans(call.grid, call.num_text)
        spatial = self.classify(call, sp, tp)  # (B, H) bool
        self.spatial_heads += int(spatial.sum())
        self.temporal_heads += int((~spatial).sum())
        out = []
        for plan, chosen in ((sp, spatial), (tp, ~spatial)):
            if bool(chosen.any()):
                bm = plan.block_mask[None].to(chosen.device) & chosen[:, :, None, None]
                out.append(Pass(plan, bm, heads=chosen))
        return out

    def classify(self, call: CallInfo, sp, tp) -> torch.Tensor:
        """Per (sample, head): True when the spatial mask reproduces the sampled rows better than the temporal."""
        q, k, v = call.q, call.k, call.v
        nv, s = q.shape[1], k.shape[1]
        dev = q.device
        rows = torch.linspace(0, nv - 1, min(self.config.sample_rows, nv), device=dev).round().long()
        qs = q[:, rows].float().transpose(1, 2)  # (B, H, r, D)
        kt, vt = k.float().transpose(1, 2), v.float().transpose(1, 2)
        scores = qs @ kt.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, r, S)
        valid = torch.ones(q.shape[0], s, dtype=torch.bool, device=dev)
        if call.kv_len is not None:
            valid = torch.arange(s, device=dev)[None, :] < call.kv_len[:, None]
        full = self._attend(scores, vt, valid[:, None, None, :])
        errs = []
        for plan in (sp, tp):
            inv = torch.empty_like(plan.order)
            inv[plan.order] = torch.arange(nv)
            key_pos = torch.cat([inv, torch.arange(nv, s)]).to(dev)  # each key's position in the reordered keys
            bm = plan.block_mask[0].to(dev)
            allowed = bm[(key_pos[rows] // plan.block_size)[:, None], (key_pos // plan.block_size)[None, :]]
            o = self._attend(scores, vt, allowed[None, None] & valid[:, None, None, :])
            errs.append(((o - full) ** 2).sum((-1, -2)))
        return errs[0] <= errs[1]

    @staticmethod
    def _attend(scores, v, mask):
        p = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0)
        return p @ v

    def extra_stats(self):
        total = self.spatial_heads + self.temporal_heads
        return {"spatial_head_share": self.spatial_heads / total if total else None}


class SVG(SparseAttentionStrategy):
    """Sparse VideoGen (arXiv 2502.01776): heads classified online as spatial or temporal, each run block-sparse.

    Example::

        pipe.enable_accel("svg", dense_steps=5, sample_rows=32, block_size=64)
    """

    name = "svg"
    Config = SVGConfig
    Policy = _SVGPolicy
    summary = "online per-head choice between a same-frame (spatial) and a same-position (temporal) mask"
    paper = "Xi et al., Sparse VideoGen: Spatial-Temporal Sparsity for Video DiTs (arXiv 2502.01776)"
