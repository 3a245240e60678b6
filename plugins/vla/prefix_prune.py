"""``prefix_prune``: image tokens leave π0's prefix from a layer on, chosen by the instruction's attention.

FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", arXiv 2403.06764) ranks the image tokens by the
attention they receive at layer K-1 and computes only the best ``keep_ratio`` of them from layer K on; EfficientVLA
(Yang et al., arXiv 2506.10100) keeps the task-relevant tokens and, for the rest of the budget, tokens that differ
most from those already kept (diversity), so that the scene's coverage survives. Here the ranking is the
instruction's attention to each image token at layer ``layer - 1`` of the same inference; ``diverse`` is the share of
the kept budget chosen for diversity (greedy: the token whose hidden state has the lowest largest cosine
similarity to the tokens kept so far), 0 for FastV's pure ranking.

On π0 the prefix is a KV cache the action expert attends to at every denoising step (its layer i reads the prefix's
layer i): a dropped token has no keys or values from layer K on, and the expert's layers from K on do not attend to
it (its attention mask hides it). The instruction and the state tokens are always kept. ``keep_ratio=1`` keeps
everything and gives bit-identical actions.

    policy.enable_accel("prefix_prune", keep_ratio=0.5)            # FastV-style, from the middle layer on
    policy.enable_accel("prefix_prune", keep_ratio=0.5, diverse=0.5)  # EfficientVLA-style selection
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
from .prefix import LayerPlan, PruningEngine


@dataclass(frozen=True)
class PrefixPruneConfig(StrategyConfig):
    quality_knob: ClassVar[str] = "keep_ratio"

    keep_ratio: float = option(0.5, doc="fraction of the image tokens computed from `layer` on (1 keeps all)",
                               min=0.0, min_exclusive=True, max=1.0, step=0.05)
    layer: int = option(-1, doc="the first prefix layer that computes only the kept tokens; the ranking is read at "
                        "the layer before; -1: the middle layer", min=-1, max=1024)
    diverse: float = option(0.0, doc="share of the kept budget chosen for diversity (EfficientVLA); 0: by the "
                            "instruction's attention alone (FastV)", min=0.0, max=1.0, step=0.05)


class PrefixPruneEngine(PruningEngine):
    def __init__(self, model, adapter, config, strategy):
        super().__init__(model, adapter, config, strategy)
        n = len(self.layers)
        self.layer = max(1, n // 2) if config.layer < 0 else config.layer
        if not 1 <= self.layer < n:
            raise ConfigError(f"option 'layer': got {config.layer}; accepted: -1 (the middle layer) or "
                              f"1 <= layer < {n} (this model's prefix has {n} layers)")
        self.relevance: torch.Tensor | None = None
        self.kept_plan: LayerPlan | None = None

    def plan_inference(self, now, last):
        self.relevance, self.kept_plan = None, None
        return {}

    def wants_statistics(self, index: int) -> bool:
        return self.config.keep_ratio < 1.0 and index == self.layer - 1

    def statistics(self, index: int, probs: torch.Tensor, key_positions: torch.Tensor) -> None:
        rel = torch.zeros(probs.shape[0], self.now.input_ids.shape[1], device=probs.device)
        rel[:, key_positions.to(probs.device)] = probs.mean(1)
        self.relevance = rel

    def plan_layer(self, index: int, hs: torch.Tensor) -> LayerPlan | None:
        if index < self.layer or self.config.keep_ratio >= 1.0:
            return None
        if self.kept_plan is None:
            self.kept_plan = self._select(hs)
        return self.kept_plan

    def _select(self, hs: torch.Tensor) -> LayerPlan | None:
        pos = self.image_positions(self.now.input_ids)
        if pos is None or self.relevance is None:
            return None
        pos = pos.to(hs.device)
        n_img = len(pos)
        keep = max(1, int(math.ceil(self.config.keep_ratio * n_img - 1e-9)))
        if keep >= n_img:
            return None
        rel = self.relevance[:, pos].to(hs.device).max(0).values  # relevant for any row of the batch
        n_diverse = int(round(self.config.diverse * keep))
        by_rank = torch.argsort(rel, descending=True, stable=True)
        chosen = by_rank[: keep - n_diverse]
        if n_diverse:
            chosen = _diverse(hs[:, pos].float(), chosen, n_diverse)
        kept = pos[torch.sort(chosen).values]
        L = hs.shape[1]
        everything = torch.arange(L, device=hs.device)
        dropped = pos[~torch.isin(pos, kept)]
        computed = everything[~torch.isin(everything, dropped)]
        self.last_kept = kept
        return LayerPlan(computed, everything[:0], dropped)

    def extra_stats(self) -> dict[str, Any]:
        return {"layer": self.layer, **super().extra_stats()}

    def summary(self) -> str:
        s = self.stats()
        return (f"prefix_prune: {s['inferences']} inferences, {100 * s['computed_fraction']:.1f}% of the prefix "
                f"token-layers computed (image tokens pruned from layer {self.layer})")


def _diverse(features: torch.Tensor, chosen: torch.Tensor, count: int) -> torch.Tensor:
    """Add ``count`` tokens to ``chosen``, each the one whose largest cosine similarity to the chosen ones (any
    row of the batch) is lowest. ``features``: (B, n, D)."""
    f = torch.nn.functional.normalize(features, dim=-1)
    sim = torch.einsum("bnd,bmd->bnm", f, f).amax(0)  # (n, n), the most similar over the batch
    n = sim.shape[0]
    taken = torch.zeros(n, dtype=torch.bool, device=sim.device)
    taken[chosen] = True
    closest = sim[:, chosen].amax(1) if len(chosen) else torch.full((n,), -2.0, device=sim.device)
    picks = [chosen]
    for _ in range(count):
        score = closest.masked_fill(taken, float("inf"))
        j = torch.argmin(score)
        taken[j] = True
        picks.append(j.view(1))
        closest = torch.maximum(closest, sim[:, j])
    return torch.cat(picks)


class PrefixPrune(Strategy):
    """Image tokens leave π0's prefix from a layer on (FastV, arXiv 2403.06764; EfficientVLA's selection)."""

    name = "prefix_prune"
    family = "vla"
    Config = PrefixPruneConfig
    summary = "image tokens leave the policy's prefix from a layer on, ranked by the instruction's attention"
    paper = "FastV, arXiv 2403.06764; EfficientVLA, arXiv 2506.10100"
    needs_capabilities = frozenset({FLOW_POLICY})

    def apply(self, target, config, adapter, run_probe):
        return apply_engine(self, target, config, PrefixPruneEngine(target, adapter, config, self.name),
                            PolicyHandle)
