"""SlimInfer: block-wise pruning of hidden states, repeated every few layers, for long prompts.

Long et al., "SlimInfer: Accelerating Long-Context LLM Inference via Dynamic Token Pruning", arXiv 2508.06447.
The prompt is cut into blocks of ``block_size`` tokens; at layer ``layer`` and then every ``interval`` layers, the
blocks the last token attends to least (mean attention over the block, measured in the layer before) leave the
sequence: each step keeps ``keep_ratio`` of the prunable tokens still present. Later layers compute, and cache, fewer
tokens; the first token and the last ``recent`` ones stay. On a VLM the visual tokens are the prunable ones.
(The paper's asynchronous KV-cache offloading is not part of this implementation.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ...core.config import StrategyConfig, option
from .base import TokenStrategy, check_layer
from ..engine.tokens import SAME, Forward, Policy, select_tokens, text_candidates


@dataclass(frozen=True)
class SlimInferConfig(StrategyConfig):
    layer: int = option(4, doc="first decoder layer that computes fewer tokens", min=1, max=1000)
    interval: int = option(4, doc="layers between pruning steps", min=1, max=1000)
    keep_ratio: float = option(0.7, doc="fraction of the prunable tokens kept at each step (1.0 keeps everything)", min=0.0, min_exclusive=True, max=1.0, step=0.05)
    block_size: int = option(16, doc="tokens per block (blocks are ranked and dropped together)", min=1, max=4096)
    recent: int = option(8, doc="the last tokens of the prompt that are never pruned", min=1, max=100000)


class SlimInferPolicy(Policy):
    needs_scores = True

    def __init__(self, steps: list[int], config: SlimInferConfig):
        self.steps, self.cfg = steps, config
        self.stats: dict[str, Any] = {}

    def wants_scores(self, layer: int, fwd: Forward) -> bool:
        return fwd.first and self.cfg.keep_ratio < 1.0 and (layer + 1) in self.steps

    def before_layer(self, layer: int, fwd: Forward, hidden) -> Any:
        if not fwd.first or layer not in self.steps or self.cfg.keep_ratio >= 1.0:
            return SAME
        scores = fwd.scores.get(layer - 1)
        if scores is None:
            return SAME
        if fwd.visual is not None and bool(fwd.visual.any()):
            cand = fwd.visual
        else:
            cand = text_candidates(fwd, self.cfg.recent, hidden.device)
        n = scores.shape[1]
        bs = self.cfg.block_size
        blocks = -(-n // bs)
        pad = blocks * bs - n
        padded = torch.nn.functional.pad(scores.float(), (0, pad))
        counts = torch.nn.functional.pad(torch.ones_like(scores, dtype=torch.float32), (0, pad))
        mean = padded.view(-1, blocks, bs).sum(-1) / counts.view(-1, blocks, bs).sum(-1)
        block_scores = mean.repeat_interleave(bs, dim=1)[:, :n]
        kept = select_tokens(fwd, block_scores, cand, self.cfg.keep_ratio)
        self.stats.setdefault("kept_per_step", {})[layer] = int(kept.shape[1])
        return kept, None


class SlimInfer(TokenStrategy):
    """SlimInfer (arXiv 2508.06447): drop the least-attended token blocks every few layers."""

    name = "sliminfer"
    family = "token_pruning"
    Config = SlimInferConfig
    summary = "block-wise hidden-state pruning, repeated every `interval` layers, ranked by the last token's attention"
    paper = "arXiv 2508.06447"

    def make_policy(self, adapter, config, num_layers):
        check_layer(self.name, "layer", config.layer, 1, num_layers - 1, num_layers)
        steps = list(range(config.layer, num_layers, config.interval))
        return SlimInferPolicy(steps, config)
