"""Visual-token exit: every visual token leaves the sequence after a fixed or adaptively chosen layer.

Training-free take on DyVTE (Sun et al., "Accelerating Multimodal Large Language Models via Dynamic Visual-Token Exit
and the Empirical Findings", NeurIPS 2025, arXiv 2411.19628). DyVTE observes that visual tokens stop contributing once
the text tokens have absorbed the image, and removes all of them after a layer chosen per sample by small trained
hyper-networks. Here the choice needs no training: ``mode="fixed"`` exits at ``layer``; ``mode="adaptive"`` exits at
the first layer, from ``layer`` on, where the last token pays the visual tokens less than ``threshold`` of its
attention (measured in the layer before, for every sample of the batch). Text tokens and their positions are
unchanged; ``layer`` equal to the number of decoder layers never exits (the no-op setting).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...core.adapters import DECODER_LAYERS, VISUAL_TOKENS
from ...core.config import StrategyConfig, option
from ..token_pruning.base import TokenStrategy, check_layer
from ..engine.tokens import SAME, Forward, Policy, select_tokens


@dataclass(frozen=True)
class VisualExitConfig(StrategyConfig):
    layer: int = option(8, doc="fixed: visual tokens leave before this layer; adaptive: the earliest layer they may leave (the number of layers: never)", min=1, max=1000)
    mode: str = option("fixed", doc="fixed layer, or adaptive (the first layer where the visual attention share drops below threshold)", choices=("fixed", "adaptive"))
    threshold: float = option(0.1, doc="adaptive: exit when the last token's attention share on visual tokens is below this", min=0.0, max=1.0, step=0.01)


class VisualExitPolicy(Policy):
    def __init__(self, layer: int, mode: str, threshold: float, num_layers: int):
        self.layer, self.mode, self.threshold, self.num_layers = layer, mode, threshold, num_layers
        self.needs_scores = mode == "adaptive" and layer < num_layers
        self.stats: dict[str, Any] = {}
        self._exited = False

    def wants_scores(self, layer: int, fwd: Forward) -> bool:
        return fwd.first and not self._exited and layer >= self.layer - 1 and layer < self.num_layers - 1

    def before_layer(self, layer: int, fwd: Forward, hidden) -> Any:
        if layer == 0:
            self._exited = False
        if not fwd.first or self._exited or layer < self.layer or fwd.visual is None or not bool(fwd.visual.any()):
            return SAME
        if self.mode == "adaptive":
            scores = fwd.scores.get(layer - 1)
            if scores is None:
                return SAME
            vis = fwd.visual if fwd.idx is None else fwd.visual.gather(1, fwd.idx)
            share = (scores * vis[:, : scores.shape[1]].float()).sum(1)
            self.stats["visual_attention_share"] = [round(float(x), 4) for x in share]
            if bool((share >= self.threshold).any()):
                return SAME
        self._exited = True
        kept = select_tokens(fwd, hidden.new_zeros(hidden.shape[0], hidden.shape[1], dtype=hidden.dtype).float(), fwd.visual, 0.0)
        self.stats["exit_layer"] = layer
        return kept, None


class VisualExit(TokenStrategy):
    """Visual-token exit (training-free DyVTE, arXiv 2411.19628): drop all visual tokens after a layer."""

    name = "visual_exit"
    family = "early_exit"
    Config = VisualExitConfig
    summary = "drop every visual token after a fixed layer, or the first layer where the last token stops attending to them"
    paper = "arXiv 2411.19628 (DyVTE; here training-free)"
    needs_capabilities = frozenset({DECODER_LAYERS, VISUAL_TOKENS})

    def make_policy(self, adapter, config, num_layers):
        check_layer(self.name, "layer", config.layer, 1, num_layers, num_layers)
        return VisualExitPolicy(config.layer, config.mode, config.threshold, num_layers)
