"""``vla_cache``: reuse the prefix keys and values of image tokens that did not change since the last inference.

VLA-Cache (Xu et al., "VLA-Cache: Towards Efficient Vision-Language-Action Model via Adaptive Token Caching in
Robotic Manipulation", arXiv 2502.02175; training-free, up to 1.7x lower latency at unchanged success on LIBERO
and SIMPLER). Consecutive camera frames of a manipulation task are mostly the same: the background, the table and
the parts of the arm that did not move. For those image tokens the prefix language model would compute the same
keys and values as at the last inference, so it reuses them and computes only the others:

1. **Static tokens.** Each image token comes from one image patch. A patch whose pixels have a cosine similarity
   of at least ``similarity`` with the same patch of the previous inference's frame is static; at most
   ``max_reuse`` of the image tokens are reused, the most similar first (the paper: 0.996 and the top 150 of 256).
2. **Task-relevant tokens are recomputed.** The instruction's attention to the image tokens at ``relevance_layer``
   (measured at the previous inference) ranks them; the ``task_relevant`` fraction it attends to most are never
   reused, static or not (the paper: the top 100 of 256). Reusing every static token instead cost the paper 10
   points of success (84.4% -> 74.2%): ``task_relevant=0, layer_adaptive=False`` is that naive variant.
3. **Per-layer reuse.** Layer l reuses a fraction 1 - H_l of the candidates, H_l being the normalised entropy of
   the instruction's attention at that layer (previous inference): layers that attend broadly reuse less.

In a layer, the reused tokens keep the previous inference's keys, values and output hidden states; the other
tokens (always the instruction and the state) are computed by the layer's own forward on that subset, attending to
the reused keys and values and their own. The KV cache the action expert then reads is in the original token order.
The first inference of an episode (after ``handle.reset()``), or one whose instruction, batch or image size
differs from the last, computes everything. ``max_reuse=0`` reuses nothing and gives bit-identical actions.

    policy.enable_accel("vla_cache", similarity=0.996, max_reuse=0.6, task_relevant=0.4)
    for episode in episodes:
        dynaccel.active_handles(policy)[0].reset()      # a new episode: nothing carried over
        ...

The subset computation, the cache bookkeeping and the attention statistics are the prefix engine's
(:mod:`dynaccel.plugins.vla.prefix`); the prefix model must use ``sdpa`` or ``eager`` attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ...core.adapters import FLOW_POLICY
from ...core.config import StrategyConfig, option
from ...core.errors import ConfigError
from ...core.strategy import Strategy
from ..engine.base import apply_engine
from .engine import PolicyHandle
from .prefix import Inference, LayerPlan, PrefixEngine


@dataclass(frozen=True)
class VlaCacheConfig(StrategyConfig):
    quality_knob: ClassVar[str] = "max_reuse"

    similarity: float = option(0.996, doc="an image patch is static when the cosine similarity of its pixels with "
                               "the previous frame's patch reaches this", min=0.0, max=1.0, step=0.001)
    max_reuse: float = option(0.6, doc="at most this fraction of the image tokens reuses the last inference's keys "
                              "and values (most similar first); 0 reuses nothing", min=0.0, max=1.0, step=0.05)
    task_relevant: float = option(0.4, doc="fraction of the image tokens the instruction attends to most that are "
                                  "always recomputed; 0: reuse every static token (naive)", min=0.0, max=1.0,
                                  step=0.05)
    relevance_layer: int = option(-1, doc="prefix layer whose instruction-to-image attention ranks the tokens; -1: "
                                  "the middle layer", min=-1, max=1024)
    layer_adaptive: bool = option(True, doc="each layer reuses a fraction 1 - (normalised entropy of the "
                                  "instruction's attention) of the candidates; off: every layer reuses them all")


def cosine_patch_similarity(now: torch.Tensor, before: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, cams, C, H, W) frames -> (B, cams * (H/patch) * (W/patch)) cosine similarity per patch, in the raster
    order of the image tokens (camera, row, column)."""
    def patches(x):
        b, c, ch, h, w = x.shape
        x = x.float().reshape(b, c, ch, h // patch, patch, w // patch, patch)
        return x.permute(0, 1, 3, 5, 2, 4, 6).reshape(b, c * (h // patch) * (w // patch), ch * patch * patch)

    return torch.nn.functional.cosine_similarity(patches(now), patches(before), dim=-1, eps=1e-8)


class VlaCacheEngine(PrefixEngine):
    def __init__(self, model, adapter, config, strategy):
        super().__init__(model, adapter, config, strategy)
        n = len(self.layers)
        self.relevance_layer = n // 2 if config.relevance_layer < 0 else config.relevance_layer
        if self.relevance_layer >= n:
            raise ConfigError(f"option 'relevance_layer': got {config.relevance_layer}; accepted: -1 (the middle "
                              f"layer) or 0 <= relevance_layer < {n} (this model's prefix has {n} layers)")
        self.totals = {"inferences_reusing": 0, "token_layers": 0, "token_layers_reused": 0}
        self.last_reuse: dict[str, Any] = {}

    def reset(self, num_steps: int | None = None) -> None:
        super().reset(num_steps)
        self.totals = {"inferences_reusing": 0, "token_layers": 0, "token_layers_reused": 0}

    def plan_inference(self, now: Inference, last: Inference | None) -> dict[int, LayerPlan]:
        cfg = self.config
        self.last_reuse = {"static": 0, "candidates": 0, "reused_per_layer": [0] * len(self.layers)}
        if last is None or cfg.max_reuse <= 0 or not last.keys:
            return {}
        if (now.input_ids.shape != last.input_ids.shape or not torch.equal(now.input_ids, last.input_ids)
                or now.pixels.shape != last.pixels.shape
                or (now.attention_mask is None) != (last.attention_mask is None)
                or (now.attention_mask is not None and not torch.equal(now.attention_mask, last.attention_mask))):
            return {}
        pos = self.image_positions(now.input_ids)
        if pos is None:
            return {}  # image tokens in different places per row: compute everything
        n_img = len(pos)
        h, w = now.pixels.shape[-2:]
        grid = n_img // now.pixels.shape[1] if now.pixels.shape[1] else 0
        side = int(round(math.sqrt(grid))) if grid else 0
        if side * side != grid or h % side or w % side or h // side != w // side:
            return {}  # patches we cannot map to the image tokens
        sim = cosine_patch_similarity(now.pixels, last.pixels, h // side).min(0).values  # every row must agree
        pos = pos.to(sim.device)
        static = (sim >= cfg.similarity).nonzero().flatten()
        order = static[torch.argsort(sim[static], descending=True, stable=True)]
        cap = int(math.floor(cfg.max_reuse * n_img + 1e-9))
        candidates = order[:cap]
        if cfg.task_relevant > 0 and last.relevance is not None and len(candidates):
            rel = last.relevance[:, pos].max(0).values  # (n_img,) relevant for any row
            k = int(math.ceil(cfg.task_relevant * n_img - 1e-9))
            top = torch.topk(rel, min(k, n_img)).indices
            candidates = candidates[~torch.isin(candidates, top)]
        self.last_reuse.update(static=int(len(static)), candidates=int(len(candidates)))
        if not len(candidates):
            return {}
        candidate_pos = pos[candidates]
        L = now.input_ids.shape[1]
        everything = torch.arange(L, device=candidate_pos.device)
        none = everything[:0]
        entropy: dict[int, float] = {}
        if cfg.layer_adaptive and last.entropy:  # one host read for every layer
            keys = sorted(last.entropy)
            entropy = dict(zip(keys, torch.stack([last.entropy[k] for k in keys]).tolist()))
        plan = {}
        for i in range(len(self.layers)):
            if i not in last.keys or i not in last.outputs:
                continue
            frac = max(0.0, min(1.0, 1.0 - entropy.get(i, 1.0))) if cfg.layer_adaptive else 1.0
            r = int(math.floor(frac * len(candidate_pos) + 1e-9))
            if r == 0:
                continue
            reused = torch.sort(candidate_pos[:r]).values
            plan[i] = LayerPlan(everything[~torch.isin(everything, reused)], reused, none)
            self.last_reuse["reused_per_layer"][i] = r
            self.last_reuse.setdefault("reused_positions", {})[i] = reused  # a list when stats are read
        return plan

    def wants_statistics(self, index: int) -> bool:
        cfg = self.config
        return cfg.max_reuse > 0 and (cfg.layer_adaptive or (cfg.task_relevant > 0 and index == self.relevance_layer))

    def statistics(self, index: int, probs: torch.Tensor, key_positions: torch.Tensor) -> None:
        if self.config.layer_adaptive:
            valid = probs.gt(0).sum(-1).clamp_min(2).float()
            entropy = -(probs.clamp_min(1e-12).log() * probs).sum(-1) / valid.log()
            self.now.entropy[index] = entropy.mean()
        if index == self.relevance_layer and self.config.task_relevant > 0:
            rel = torch.zeros(probs.shape[0], self.now.input_ids.shape[1], device=probs.device)
            rel[:, key_positions.to(probs.device)] = probs.mean(1)
            self.now.relevance = rel

    def prefix_done(self) -> None:
        L = self.now.input_ids.shape[1]
        reused = sum(len(p.reused) for p in self.plan.values())
        self.totals["token_layers"] += L * len(self.layers)
        self.totals["token_layers_reused"] += reused
        self.totals["inferences_reusing"] += int(reused > 0)

    def extra_stats(self) -> dict[str, Any]:
        t = self.totals
        return {
            "prefix_token_layers": t["token_layers"],
            "prefix_token_layers_reused": t["token_layers_reused"],
            "reused_fraction": t["token_layers_reused"] / t["token_layers"] if t["token_layers"] else 0.0,
            "inferences_reusing": t["inferences_reusing"],
            "last": {k: ({i: p.tolist() for i, p in v.items()} if k == "reused_positions" else v)
                     for k, v in self.last_reuse.items()},
        }

    def summary(self) -> str:
        s = self.stats()
        return (f"vla_cache: {s['inferences']} inferences, {s['inferences_reusing']} reused prefix keys/values; "
                f"{100 * s['reused_fraction']:.1f}% of the prefix token-layers reused")


class VlaCache(Strategy):
    """VLA-Cache (arXiv 2502.02175): reuse the prefix keys/values of static, task-irrelevant image tokens."""

    name = "vla_cache"
    family = "vla"
    Config = VlaCacheConfig
    summary = "reuse the prefix keys/values of image tokens that did not change since the last inference"
    paper = "VLA-Cache, arXiv 2502.02175"
    needs_capabilities = frozenset({FLOW_POLICY})

    def apply(self, target, config, adapter, run_probe):
        return apply_engine(self, target, config, VlaCacheEngine(target, adapter, config, self.name), PolicyHandle)
