"""VisionZip: keep the dominant visual tokens and merge the rest into a few contextual tokens, before the LLM.

Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models", CVPR 2025, arXiv 2412.04467.
Dominant tokens are the ones the vision encoder attends to most: the class token's attention in the layer whose
output feeds the projector (CLIP towers), or the attention each token receives, averaged over queries (towers
without a class token, e.g. Qwen2-VL's, summed over each merged 2x2 patch group); these scores are computed in that
encoder layer by the query-row kernel, never from a materialised map of the whole model. The model adapter's score
map puts them where the VLM puts the tokens (``plugins/adapters/vision_score_maps.py``): Qwen2.5-VL's window order is
undone, LLaVA-OneVision's anyres packing (unpadding, downsizing, newline tokens) and video pooling are applied to the
scores as to the features; newline tokens have no score and stay. The remaining visual tokens
are merged: ``contextual`` of the kept budget goes to evenly spaced target tokens, each other token is averaged
into its most similar target (cosine similarity of the projected features; the paper uses the encoder's keys).
The LLM then runs on ``keep_ratio`` of the visual tokens from its first layer on, at their original positions.
On a robot policy (π0, π0.5) the same selection prunes the image tokens of the prefix the action expert reads
(:mod:`dynaccel.plugins.vla.prefix_tokens`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ...core.adapters import DECODER_LAYERS, FLOW_POLICY, VISION_SCORES, VISUAL_TOKENS
from ...core.config import StrategyConfig, option
from .base import TokenStrategy
from ..engine.tokens import SAME, Forward, Policy
from .kernels import query_rows_attention


@dataclass(frozen=True)
class VisionZipConfig(StrategyConfig):
    quality_knob: ClassVar[str] = "keep_ratio"  # what calibrate searches (closed-loop success on a policy)

    keep_ratio: float = option(0.25, doc="fraction of the visual tokens the LLM sees (1.0 keeps everything)", min=0.0, min_exclusive=True, max=1.0, step=0.05)
    contextual: float = option(0.15, doc="share of the kept visual tokens that are merged contextual tokens", min=0.0, max=0.9, step=0.05)


class VisionZipPolicy(Policy):
    def __init__(self, config: VisionZipConfig):
        self.cfg = config
        self.kind, self.group = "mean", 1
        self.stats: dict[str, Any] = {}
        self.map: Any = None  # the adapter's VisionScoreMap: records encoder calls, maps scores onto the prompt

    def reset(self) -> None:
        if self.map is not None:
            self.map.reset()

    def vision_modules(self, adapter: Any) -> list[torch.nn.Module]:
        if self.cfg.keep_ratio >= 1.0:
            return []
        if self.map is None:
            self.map = adapter.vision_score_map()
            if self.map is None:  # adapters that only name the scored layer: one score per visual token, in order
                from ..adapters.vision_score_maps import VisionScoreMap

                self.map = VisionScoreMap(adapter, *adapter.vision_score_layer())
        self.kind, self.group = self.map.kind, self.map.group
        return [self.map.attention_module]

    def observers(self, adapter: Any) -> list:
        return [] if self.map is None else self.map.observers()

    def on_vision_attention(self, fwd, query, key, scaling) -> None:
        query, key = query.detach(), key.detach()
        if self.kind == "cls":
            scores = query_rows_attention(query[:, :, :1], key, scale=scaling)[:, 0, 1:]
        else:
            scores = query_rows_attention(query, key, scale=scaling).mean(dim=1)
            if self.group > 1:
                scores = scores.view(scores.shape[0], -1, self.group).sum(-1)
        self.map.add(scores)

    def before_layer(self, layer: int, fwd: Forward, hidden: torch.Tensor) -> Any:
        if layer != 0 or not fwd.first or self.cfg.keep_ratio >= 1.0 or fwd.visual is None or self.map is None:
            return SAME
        if not self.map.calls:
            return SAME
        mapped = self.map.score_map(fwd.input_ids, fwd.inputs, hidden)  # raises on a layout it cannot map
        if mapped is None:
            self.stats = {"note": "vision scores did not line up with the visual tokens; nothing pruned"}
            return SAME
        vscore, candidates = mapped
        visual = fwd.visual
        b, length = visual.shape
        pad = fwd.padding()
        priority = torch.full((b, length), float("inf"), device=hidden.device)
        values = hidden.clone()
        drops, kept_visual = [], []
        for row in range(b):
            pos = torch.nonzero(candidates[row]).flatten()  # visual tokens with a tower score (not newline tokens)
            n_vis = pos.numel()
            keep = max(1, math.ceil(self.cfg.keep_ratio * n_vis)) if n_vis else 0
            n_ctx = min(int(round(keep * self.cfg.contextual)), max(keep - 1, 0))
            n_dom = keep - n_ctx
            order = vscore[row, pos].argsort(descending=True)
            dom, rest = pos[order[:n_dom]], pos[order[n_dom:]].sort().values
            priority[row, pos] = vscore[row, pos]  # droppable, the least attended first
            priority[row, dom] = float("inf")
            if n_ctx and rest.numel():
                pick = torch.linspace(0, rest.numel() - 1, n_ctx, device=hidden.device).round().long().unique()
                targets = rest[pick]
                others = rest[~torch.isin(rest, targets)]
                if others.numel():
                    h = hidden[row].float()
                    sim = torch.nn.functional.normalize(h[others], dim=-1) @ torch.nn.functional.normalize(h[targets], dim=-1).T
                    assign = sim.argmax(dim=1)
                    sums = h[targets].clone().index_add_(0, assign, h[others])
                    counts = torch.ones(targets.numel(), device=hidden.device).index_add_(0, assign, torch.ones(others.numel(), device=hidden.device))
                    values[row, targets] = (sums / counts[:, None]).to(values.dtype)
                priority[row, targets] = float("inf")
            if pad is not None:
                priority[row, pad[row]] = -1.0
            drops.append(n_vis - keep + (int(pad[row].sum()) if pad is not None else 0))
            kept_visual.append(keep)
        drop = min(drops)
        if drop <= 0:
            return SAME
        kept = priority.topk(length - drop, dim=1).indices.sort(dim=1).values
        actual = visual.gather(1, kept).sum(1).tolist()  # rows with padding may keep a few more (equal drop counts)
        self.stats = {"kept_visual_tokens": kept_visual, "visual_tokens_in_sequence": actual, "kept_tokens": int(kept.shape[1])}
        if self.map.layouts:
            self.stats["layouts"] = list(self.map.layouts)
        return kept, values


class VisionZip(TokenStrategy):
    """VisionZip (arXiv 2412.04467): dominant + merged contextual visual tokens, chosen before the LLM."""

    name = "visionzip"
    family = "token_pruning"
    Config = VisionZipConfig
    summary = "keep the visual tokens the vision encoder attends to most, merge the rest into contextual tokens"
    paper = "arXiv 2412.04467"
    needs_capabilities = frozenset({DECODER_LAYERS, VISUAL_TOKENS, VISION_SCORES})
    alternative_capabilities = (frozenset({FLOW_POLICY}),)

    def make_policy(self, adapter, config, num_layers):
        return VisionZipPolicy(config)

    def policy_engine(self, model, adapter, config):
        from ..vla.prefix_tokens import VisionZipPrefixEngine

        return VisionZipPrefixEngine(model, adapter, config, self.name)
