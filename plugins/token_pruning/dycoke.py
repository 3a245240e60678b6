"""DyCoke: temporal token merging across frames, plus dynamic KV-cache pruning while decoding.

Tao et al., "DyCoke: Dynamic Compression of Tokens for Fast Video Large Language Models", CVPR 2025,
arXiv 2411.15024. Two training-free stages:

1. Temporal merging before the LLM: frames are taken in windows of ``window``; in each window a token of a later frame
   that is nearly the same as the token at the same place in the frame before (cosine similarity of the projected
   features) is redundant: the most similar ``1 - keep_ratio`` of each later frame's tokens leave the sequence (the
   earlier frame's token stands for both).
2. Dynamic KV pruning while decoding: at every decode step, layer ``kv_layer - 1``'s attention of the new token ranks
   the cached visual entries; layers from ``kv_layer`` on attend to the best ``kv_keep_ratio`` of them only (plus
   every text entry). The cache keeps all entries, so a visual token dropped at one step can return at the next.

Frames are the video frames of Qwen2-VL (``video_grid_thw``), LLaVA-OneVision's pooled video frames (the newline
token after the video is no frame's and stays) or, on Llava, the images of a multi-image prompt.
``keep_ratio=1`` and ``kv_keep_ratio=1`` change nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ...core.adapters import DECODER_LAYERS, VISUAL_FRAMES, VISUAL_TOKENS
from ...core.config import StrategyConfig, option
from ...core.errors import ConfigError
from .base import TokenStrategy, check_layer
from ..engine.tokens import SAME, Forward, Policy


@dataclass(frozen=True)
class DyCokeConfig(StrategyConfig):
    keep_ratio: float = option(0.7, doc="temporal merging: fraction of each later frame's tokens kept in a window (1.0 keeps all)", min=0.0, min_exclusive=True, max=1.0, step=0.05)
    window: int = option(4, doc="frames per temporal-merging window", min=2, max=64)
    kv_layer: int = option(3, doc="decode-time KV pruning applies from this layer on (ranked by the layer before)", min=1, max=1000)
    kv_keep_ratio: float = option(0.5, doc="decode-time: fraction of the cached visual entries attended to (1.0: off)", min=0.0, min_exclusive=True, max=1.0, step=0.05)


class DyCokePolicy(Policy):
    def __init__(self, adapter: Any, config: DyCokeConfig):
        self.adapter, self.cfg = adapter, config
        self.needs_scores = self.needs_attention = config.kv_keep_ratio < 1.0
        self.visual_positions: torch.Tensor | None = None  # (B, L0) bool over original positions
        self.stats: dict[str, Any] = {}
        self.chunks: list[int] = []  # LLM tokens per vision-encoder attention call since the last prefill
        self.group = 1

    def reset(self) -> None:
        self.visual_positions = None
        self.chunks = []

    def vision_modules(self, adapter: Any) -> list[torch.nn.Module]:
        # encoders that attend within one frame at a time (Qwen2-VL) tell the frame sizes by their calls
        found = adapter.frame_attention_module() if self.cfg.keep_ratio < 1.0 else None
        if found is None:
            return []
        module, self.group = found
        return [module]

    def on_vision_attention(self, fwd, query, key, scaling) -> None:
        self.chunks.append(query.shape[2] // self.group)

    # ---------------------------------------------------------------------------------------- temporal merging

    def before_layer(self, layer: int, fwd: Forward, hidden: torch.Tensor) -> Any:
        if layer != 0 or not fwd.first:
            return SAME
        self.visual_positions = fwd.visual
        self.stats = {"decode_visual_entries": 0, "decode_visual_entries_attended": 0}
        if self.cfg.keep_ratio >= 1.0 or fwd.input_ids is None or fwd.visual is None:
            return SAME
        frames = self.adapter.visual_frames(fwd.input_ids, fwd.inputs, self.chunks)
        self.chunks = []
        if frames is None:
            self.stats["note"] = "fewer than two frames: no temporal merging"
            return SAME
        b, length = hidden.shape[:2]
        priority = torch.full((b, length), float("inf"), device=hidden.device)
        pad = fwd.padding()
        drops = []
        for row, f in enumerate(frames):
            f = f.to(hidden.device)
            n_frames, per_frame = f.shape
            drop_per_frame = per_frame - math.ceil(self.cfg.keep_ratio * per_frame)
            h = torch.nn.functional.normalize(hidden[row].detach().float(), dim=-1)
            dropped = 0
            for i in range(n_frames):
                if i % self.cfg.window == 0 or drop_per_frame == 0:
                    continue  # the first frame of each window stays whole
                sim = (h[f[i]] * h[f[i - 1]]).sum(-1)
                top = sim.topk(drop_per_frame).indices  # this frame's tokens most similar to the frame before
                priority[row, f[i][top]] = -1.0 - sim[top]  # droppable (in [-2, 0]), the most similar first
                dropped += drop_per_frame
            if pad is not None:
                priority[row, pad[row]] = -3.0
            drops.append(dropped + (int(pad[row].sum()) if pad is not None else 0))
        drop = min(drops)
        if drop <= 0:
            return SAME
        kept = priority.topk(length - drop, dim=1).indices.sort(dim=1).values
        self.stats["kept_tokens"] = int(kept.shape[1])
        return kept, None

    # ----------------------------------------------------------------------------------- decode-time KV pruning

    def wants_scores(self, layer: int, fwd: Forward) -> bool:
        return not fwd.first and layer == self.cfg.kv_layer - 1 and self.visual_positions is not None

    def attention_keys(self, layer: int, fwd: Forward, key, value, mask) -> Any:
        if fwd.first or layer < self.cfg.kv_layer or self.visual_positions is None or fwd.cache is None:
            return None
        scores = fwd.scores.get(self.cfg.kv_layer - 1)
        if scores is None or scores.shape[1] != key.shape[2]:
            return None
        memo_key = fwd.memo.key("dycoke", scores)
        idx = fwd.memo.get(memo_key)
        if idx is None:
            idx = self._select(fwd, layer, scores, key.shape[2])
            fwd.memo[memo_key] = idx
        if idx is False:
            return None
        b, hkv, _, d = key.shape
        gather = idx[:, None, :, None].expand(b, hkv, idx.shape[1], d)
        key, value = key.gather(2, gather), value.gather(2, gather)
        if isinstance(mask, torch.Tensor):
            m = mask.expand(b, *mask.shape[1:])
            mask = m.gather(3, idx[:, None, None, :].expand(b, m.shape[1], m.shape[2], idx.shape[1]))
        return key, value, mask

    def _select(self, fwd: Forward, layer: int, scores: torch.Tensor, n: int) -> Any:
        cache_layer = fwd.cache.layers[layer]
        positions = getattr(cache_layer, "positions", None)
        device = scores.device
        b = scores.shape[0]
        if positions is None:
            positions = torch.arange(n, device=device).expand(b, n)
        if positions.shape[1] != n:
            return False
        vis0 = self.visual_positions.to(device)
        inside = positions < vis0.shape[1]
        visual = vis0.gather(1, positions.clamp(max=vis0.shape[1] - 1)) & inside
        n_vis = visual.sum(1)
        keep = torch.ceil(n_vis.double() * self.cfg.kv_keep_ratio).long()
        drop = int((n_vis - keep).min())
        if drop <= 0:
            return False
        priority = torch.where(visual, scores.float(), torch.full_like(scores, float("inf"), dtype=torch.float32))
        self.stats["decode_visual_entries"] += int(n_vis.sum())
        self.stats["decode_visual_entries_attended"] += int((n_vis - drop).sum())
        return priority.topk(n - drop, dim=1).indices.sort(dim=1).values


class DyCoke(TokenStrategy):
    """DyCoke (arXiv 2411.15024): temporal merging across frames, dynamic visual KV pruning while decoding."""

    name = "dycoke"
    family = "token_pruning"
    Config = DyCokeConfig
    summary = "merge tokens repeated across neighbouring frames, then attend to the top visual KV entries per decode step"
    paper = "arXiv 2411.15024"
    needs_capabilities = frozenset({DECODER_LAYERS, VISUAL_TOKENS, VISUAL_FRAMES})

    def make_policy(self, adapter, config, num_layers):
        check_layer(self.name, "kv_layer", config.kv_layer, 1, num_layers - 1, num_layers)
        return DyCokePolicy(adapter, config)
