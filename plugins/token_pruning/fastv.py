"""FastV: prune tokens after layer K by the attention the last token pays them (prefill).

Chen et al., "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration for Large
Vision-Language Models", ECCV 2024, arXiv 2403.06764. In the prefill, layer K-1's attention of the last prompt token
ranks the visual tokens; from layer K on only the ``keep_ratio`` best-ranked ones (and every text token) are
computed and cached. Kept tokens keep their original positions. On a text-only model the same rule ranks the prompt
tokens instead (all but the first one and the last ``recent`` ones), as FastV's text-side ablation does. On a robot
policy (π0, π0.5) it prunes the image tokens of the prefix the action expert reads, ranked by the instruction's
attention (:mod:`dynaccel.plugins.vla.prefix_tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...core.adapters import FLOW_POLICY
from ...core.config import StrategyConfig, option
from .base import TokenStrategy, check_layer
from ..engine.tokens import SAME, Forward, Policy, select_tokens, text_candidates


@dataclass(frozen=True)
class FastVConfig(StrategyConfig):
    quality_knob: ClassVar[str] = "keep_ratio"  # what calibrate searches (closed-loop success on a policy)

    layer: int = option(2, doc="prune after this many decoder layers (K; layer K-1's attention ranks the tokens)", min=1, max=1000)
    keep_ratio: float = option(0.5, doc="fraction of the prunable tokens kept (1.0 keeps everything)", min=0.0, min_exclusive=True, max=1.0, step=0.05)
    recent: int = option(8, doc="text-only models: the last tokens of the prompt that are never pruned", min=1, max=100000)


class FastVPolicy(Policy):
    needs_scores = True

    def __init__(self, layer: int, keep_ratio: float, recent: int):
        self.layer, self.keep_ratio, self.recent = layer, keep_ratio, recent
        self.stats: dict[str, Any] = {}

    def wants_scores(self, layer: int, fwd: Forward) -> bool:
        return fwd.first and layer == self.layer - 1 and self.keep_ratio < 1.0

    def candidates(self, fwd: Forward, device) -> Any:
        if fwd.visual is not None and bool(fwd.visual.any()):
            return fwd.visual
        return text_candidates(fwd, self.recent, device)

    def before_layer(self, layer: int, fwd: Forward, hidden) -> Any:
        if not fwd.first or layer != self.layer or self.keep_ratio >= 1.0:
            return SAME
        scores = fwd.scores.get(self.layer - 1)
        if scores is None:
            return SAME
        kept = select_tokens(fwd, scores, self.candidates(fwd, hidden.device), self.keep_ratio)
        self.stats = {"kept_tokens": int(kept.shape[1]), "pruned_at_layer": layer}
        return kept, None


class FastV(TokenStrategy):
    """FastV (arXiv 2403.06764): after layer K, keep the tokens the last token attends to most (prefill)."""

    name = "fastv"
    family = "token_pruning"
    Config = FastVConfig
    summary = "prefill pruning at layer K by the last token's attention (visual tokens on VLMs, prompt tokens on LMs)"
    paper = "arXiv 2403.06764"
    alternative_capabilities = (frozenset({FLOW_POLICY}),)

    def make_policy(self, adapter, config, num_layers):
        check_layer(self.name, "layer", config.layer, 1, num_layers - 1, num_layers)
        return FastVPolicy(config.layer, config.keep_ratio, config.recent)

    def policy_engine(self, model, adapter, config):
        from ..vla.prefix_tokens import fastv_engine

        n = len(adapter.prefix_layers())
        check_layer(self.name, "layer", config.layer, 1, n - 1, n)
        return fastv_engine(model, adapter, config, self.name)
