"""Layer skipping: decode steps skip the decoder layers whose output barely differs from their input.

The redundancy measure is ShortGPT's Block Influence (Men et al., "ShortGPT: Layers in Large Language Models are More
Redundant Than You Expect", arXiv 2403.03853): one minus the cosine similarity between a layer's input and output
hidden states. ShortGPT removes the least influential layers for good, measured on a calibration set; here the
measure comes from the prompt itself, training-free and per generation: the prefill computes every layer and
records, for the last prompt token, the cosine similarity of each layer's input and output; the decode steps then
skip the ``1 - keep_ratio`` fraction of layers with the highest similarity (never the first and last layer, and only
layers at or above ``min_similarity``). A skipped layer passes the hidden state through and stores nothing in its KV
cache for that token; later tokens attend to the entries it has. ``keep_ratio=1`` skips nothing.

On a robot policy (π0, π0.5), whose prefix is computed once per inference, the similarity (over the prefix's tokens)
is measured on the first inference of an episode and the later ones skip prefix layers; a skipped layer still caches
the keys and values of its input for the action expert (:mod:`dynaccel.plugins.vla.prefix_tokens`). This is the
cosine-similarity layer pruning of EfficientVLA (arXiv 2506.10100), measured per episode rather than offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ...core.adapters import FLOW_POLICY
from ...core.config import StrategyConfig, option
from ..token_pruning.base import TokenStrategy
from ..engine.tokens import Forward, Policy


@dataclass(frozen=True)
class LayerSkipConfig(StrategyConfig):
    quality_knob: ClassVar[str] = "keep_ratio"  # what calibrate searches (closed-loop success on a policy)

    keep_ratio: float = option(0.75, doc="fraction of the decoder layers computed in decode steps (1.0 keeps all)", min=0.0, min_exclusive=True, max=1.0, step=0.05)
    min_similarity: float = option(0.0, doc="only layers whose input/output cosine similarity reaches this may be skipped", min=-1.0, max=1.0, step=0.01)


class LayerSkipPolicy(Policy):
    needs_layer_outputs = True

    def __init__(self, keep_ratio: float, min_similarity: float, num_layers: int):
        self.keep_ratio, self.min_similarity, self.num_layers = keep_ratio, min_similarity, num_layers
        self.n_skip = min(int(round((1.0 - keep_ratio) * num_layers)), max(num_layers - 2, 0))
        self.similarity: dict[int, float] = {}
        self.skip: set[int] = set()
        self.stats: dict[str, Any] = {}

    def reset(self) -> None:
        self.similarity, self.skip = {}, set()

    def after_layer(self, layer: int, fwd: Forward, inp: torch.Tensor, out: torch.Tensor) -> None:
        if fwd.first and self.n_skip > 0 and inp.shape[1] > 0 and out.shape[1] == inp.shape[1]:
            a, b = inp[:, -1].detach().float(), out[:, -1].detach().float()
            self.similarity[layer] = float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())

    def end_forward(self, fwd: Forward) -> None:
        if fwd.first and self.n_skip > 0:
            candidates = [(s, i) for i, s in self.similarity.items() if 0 < i < self.num_layers - 1 and s >= self.min_similarity]
            self.skip = {i for _, i in sorted(candidates, reverse=True)[: self.n_skip]}
            self.stats = {"skipped_layers": sorted(self.skip), "similarity": {i: round(s, 4) for i, s in sorted(self.similarity.items())}}

    def layers_to_skip(self, fwd: Forward) -> set[int]:
        return set() if fwd.first else set(self.skip)


class LayerSkip(TokenStrategy):
    """Layer skipping by input/output cosine similarity (ShortGPT's Block Influence, arXiv 2403.03853), per prompt."""

    name = "layer_skip"
    family = "early_exit"
    Config = LayerSkipConfig
    summary = "decode steps skip the layers whose input/output cosine similarity (measured on the prompt) is highest"
    paper = "arXiv 2403.03853 (ShortGPT Block Influence; here per prompt, decode only); EfficientVLA arXiv 2506.10100"
    alternative_capabilities = (frozenset({FLOW_POLICY}),)

    def make_policy(self, adapter, config, num_layers):
        return LayerSkipPolicy(config.keep_ratio, config.min_similarity, num_layers)

    def policy_engine(self, model, adapter, config):
        from ..vla.prefix_tokens import PrefixLayerSkipEngine

        return PrefixLayerSkipEngine(model, adapter, config, self.name)
