"""The token family's strategies on a robot policy's prefix: ``fastv``, ``visionzip`` and ``layer_skip`` on π0.

On a VLM these strategies prune the prompt's tokens or skip decoder layers in generation (the token engine,
:mod:`dynaccel.plugins.engine.tokens`). A flow-matching policy has no generation: its prefix (PaliGemma over the
camera images and the instruction) is computed once per inference into a KV cache that the action expert reads at
every denoising step, its layer i reading the prefix's layer i. The same strategies apply there, through the policy
adapter (:data:`~dynaccel.core.adapters.FLOW_POLICY`), with these differences:

- ``fastv``: the image tokens are ranked by the attention the *instruction* pays them at layer ``layer - 1`` (the
  prefix attends both ways, and its last position may be padding); from layer ``layer`` on only the ``keep_ratio``
  best are computed and cached, and the expert's layers from ``layer`` on do not attend to the others. Same
  mechanics as ``prefix_prune`` with ``diverse=0``; ``recent`` has no meaning here.
- ``visionzip``: the dominant image tokens are the ones the vision tower's last attention layer attends to most
  (attention received, averaged over queries: SigLIP has no class token); ``contextual`` of the kept budget are
  evenly spaced targets among the rest, each other token averaged into its most similar target (cosine similarity
  of the prefix's input features). The rest leave before the first prefix layer, for the prefix and the expert.
- ``layer_skip``: skips the ``1 - keep_ratio`` fraction of the prefix layers (rounded; never the first), and with
  any ``keep_ratio < 1`` at least the free ones below. A skipped
  layer passes its input through, and still caches its keys and values for the expert: they depend on the layer's
  input alone (input norm, key/value projections, rotary embedding), so the expert reads exactly what that layer
  would have cached for its input. Hence the **last** prefix layer is skipped first and for free: its output is
  never read (the expert reads its keys and values only; the actions are unchanged); so is every prefix layer from
  the expert's depth - 1 on when the expert has fewer layers than the prefix. The others are chosen by
  redundancy, the cosine similarity of a layer's input and output averaged over the prefix's tokens (ShortGPT's
  Block Influence, the measure EfficientVLA prunes layers by), measured on the first inference after
  ``enable_accel`` or ``reset()`` (a new episode), which computes them all; the following inferences skip the most
  similar ones (at or above ``min_similarity``).
"""

from __future__ import annotations

import math
import types
from typing import Any

import torch

from ..engine.policy_calls import current_call
from ..engine.token_kernels import query_rows_attention
from .engine import PolicyEngine
from .prefix import LayerPlan, PruningEngine
from .prefix_prune import PrefixPruneEngine


def fastv_engine(model: Any, adapter: Any, config: Any, strategy: str) -> PrefixPruneEngine:
    """FastV on the prefix: ``prefix_prune``'s engine with the instruction's ranking and no diversity."""
    return PrefixPruneEngine(model, adapter, types.SimpleNamespace(keep_ratio=config.keep_ratio, layer=config.layer,
                                                                    diverse=0.0), strategy)


class VisionZipPrefixEngine(PruningEngine):
    """VisionZip on the prefix (see the module docstring)."""

    def __init__(self, model, adapter, config, strategy):
        super().__init__(model, adapter, config, strategy)
        self.vision_attention = adapter.vision_score_attention()
        self.scores: torch.Tensor | None = None
        self.first_plan: LayerPlan | None = None
        self.later_plan: LayerPlan | None = None
        self.last_merged: int = 0

    def install(self) -> None:
        super().install()
        self.hooks.append(self.vision_attention.register_forward_pre_hook(self._vision_pre, with_kwargs=True))

    @torch.no_grad()
    def _vision_pre(self, module, args, kwargs) -> None:
        if self.config.keep_ratio >= 1.0 or current_call(self.model) is None or self.now is None:
            return
        hs = args[0] if args else kwargs["hidden_states"]
        q, k, scale = self.adapter.vision_query_key(module, hs)
        # attention each patch receives, averaged over the queries (and heads): (B * cameras, patches)
        self.scores = query_rows_attention(q.float(), k.float(), None, scale=scale, backend="torch").mean(1)

    def plan_inference(self, now, last):
        self.first_plan, self.later_plan = None, None
        return {}

    def plan_layer(self, index: int, hs: torch.Tensor) -> LayerPlan | None:
        if self.config.keep_ratio >= 1.0:
            return None
        if index == 0:
            self.first_plan = self._select(hs)
            if self.first_plan is not None:
                p = self.first_plan
                self.later_plan = LayerPlan(p.computed, p.reused, p.dropped)
            return self.first_plan
        return self.later_plan

    def _select(self, hs: torch.Tensor) -> LayerPlan | None:
        pos = self.image_positions(self.now.input_ids)
        if pos is None or self.scores is None:
            return None
        call = current_call(self.model)
        mask = None if call is None else call.kwargs.get("pixel_attention_mask")
        mapped = self.adapter.image_token_scores(self.scores, self.now.input_ids, mask)  # (B, L)
        pos = pos.to(hs.device)
        score = mapped[:, pos].to(hs.device).nan_to_num(-1.0).amax(0)  # dominant for any row of the batch
        n_img = len(pos)
        keep = max(1, int(math.ceil(self.config.keep_ratio * n_img - 1e-9)))
        if keep >= n_img:
            return None
        n_ctx = min(int(round(keep * self.config.contextual)), keep - 1)
        order = torch.argsort(score, descending=True, stable=True)
        dominant, rest = pos[order[: keep - n_ctx]], pos[order[keep - n_ctx:]].sort().values
        inputs = None
        targets = rest[:0]
        if n_ctx:
            pick = torch.linspace(0, len(rest) - 1, n_ctx, device=hs.device).round().long().unique()
            targets = rest[pick]
            others = rest[~torch.isin(rest, targets)]
            if len(others):
                inputs = hs.clone()
                f = hs.float()
                for row in range(hs.shape[0]):
                    sim = (torch.nn.functional.normalize(f[row, others], dim=-1)
                           @ torch.nn.functional.normalize(f[row, targets], dim=-1).T)
                    assign = sim.argmax(dim=1)
                    sums = f[row, targets].clone().index_add_(0, assign, f[row, others])
                    counts = torch.ones(len(targets), device=hs.device).index_add_(
                        0, assign, torch.ones(len(others), device=hs.device))
                    inputs[row, targets] = (sums / counts[:, None]).to(hs.dtype)
        kept = torch.sort(torch.cat([dominant, targets])).values
        everything = torch.arange(hs.shape[1], device=hs.device)
        dropped = pos[~torch.isin(pos, kept)]
        self.last_kept, self.last_merged = kept.tolist(), int(len(targets))
        return LayerPlan(everything[~torch.isin(everything, dropped)], everything[:0], dropped, inputs)

    def extra_stats(self) -> dict[str, Any]:
        return {**super().extra_stats(), "last_contextual_tokens": self.last_merged}

    def summary(self) -> str:
        s = self.stats()
        return (f"visionzip: {s['inferences']} inferences, {100 * s['computed_fraction']:.1f}% of the prefix "
                f"token-layers computed (image tokens chosen by the vision tower's attention)")


class PrefixLayerSkipEngine(PolicyEngine):
    """layer_skip on the prefix (see the module docstring)."""

    def __init__(self, model, adapter, config, strategy):
        super().__init__(model, adapter, config, strategy)
        self.layers = adapter.prefix_layers()
        n = len(self.layers)
        self.n_skip = min(int(round((1.0 - config.keep_ratio) * n)), max(n - 1, 0)) if config.keep_ratio < 1 else 0
        # expert layer i reads prefix layer i's keys and values, and those depend on the layer's input alone: the
        # output of prefix layer i is read only if an expert layer reads a layer after it. The outputs of the last
        # prefix layer (of every layer from the expert's depth - 1 on) are never read: skipped from the start, free
        depth = len(adapter.expert().layers)
        self.always = {i for i in range(max(depth - 1, 1), n)} if config.keep_ratio < 1 else set()
        self.similarity: dict[int, list[float]] = {}
        self.skip: set[int] = set(self.always)
        self.measured = False
        self.measuring = False
        self.hooks: list[Any] = []
        self.totals = {"layers": 0, "layers_skipped": 0, "measured": 0}

    def install(self) -> None:
        super().install()
        for i, layer in enumerate(self.layers):
            self.hooks.append(layer.register_forward_hook(self._measure(i), with_kwargs=True))
            original = layer.forward
            layer.__dict__["forward"] = self._forward(i, layer, original)

    def uninstall(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []
        for layer in self.layers:
            layer.__dict__.pop("forward", None)
        super().uninstall()

    def clear(self) -> None:
        self.similarity, self.skip, self.measured, self.measuring = {}, set(self.always), False, False

    def reset(self, num_steps: int | None = None) -> None:
        super().reset(num_steps)
        self.totals = {"layers": 0, "layers_skipped": 0, "measured": 0}

    def before(self, call) -> None:
        self.measuring = self.n_skip > len(self.always) and not self.measured
        if self.measuring:
            self.similarity = {}

    def after(self, call, result) -> None:
        self.totals["layers"] += len(self.layers)
        self.totals["layers_skipped"] += len(self.skip)
        if self.measuring:
            self.totals["measured"] += 1
            candidates = [(min(s), i) for i, s in self.similarity.items()
                          if 0 < i and i not in self.always and min(s) >= self.config.min_similarity]
            chosen = sorted(candidates, reverse=True)[: max(self.n_skip - len(self.always), 0)]
            self.skip = set(self.always) | {i for _, i in chosen}
            self.measuring, self.measured = False, True
        return None

    def _measure(self, i: int):
        @torch.no_grad()
        def hook(module, args, kwargs, output):
            if not self.measuring or i in self.skip or current_call(self.model) is None:
                return None
            inp = args[0] if args else kwargs["hidden_states"]
            out = output[0] if isinstance(output, tuple) else output
            if out.shape != inp.shape:
                return None
            sim = torch.nn.functional.cosine_similarity(inp.float(), out.float(), dim=-1).mean(-1)  # (B,)
            self.similarity[i] = sim.tolist()
            return None

        return hook

    def _forward(self, i: int, layer: torch.nn.Module, original):
        def forward(*args, **kwargs):
            if i not in self.skip or current_call(self.model) is None:
                return original(*args, **kwargs)
            hs = args[0] if args else kwargs["hidden_states"]
            cache = kwargs.get("cache")
            if cache is None:
                cache = kwargs.get("past_key_values")
            if cache is not None:
                keys, values = self.adapter.prefix_layer_keys_values(layer, hs, kwargs)
                cache.update(keys, values, layer.self_attn.layer_idx)
            return hs

        return forward

    def extra_stats(self) -> dict[str, Any]:
        t = self.totals
        return {"skipped_layers": sorted(self.skip), "layers_to_skip": self.n_skip,
                "similarity": {i: round(min(s), 4) for i, s in sorted(self.similarity.items())},
                "measured_inferences": t["measured"], "prefix_layers_run": t["layers"] - t["layers_skipped"],
                "prefix_layers": t["layers"],
                "computed_fraction": (t["layers"] - t["layers_skipped"]) / t["layers"] if t["layers"] else 1.0}

    def summary(self) -> str:
        s = self.stats()
        return (f"layer_skip: {s['inferences']} inferences, prefix layers {s['skipped_layers']} skipped after "
                f"{s['measured_inferences']} measuring inference(s); {100 * s['computed_fraction']:.1f}% of the "
                f"prefix layers run")
