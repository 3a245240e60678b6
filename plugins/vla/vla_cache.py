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

Attention statistics come from an attention function registered in transformers' ``AttentionInterface`` (the
model's own SDPA or eager attention, plus the instruction rows' probabilities computed on the side); the prefix
model must use ``sdpa`` or ``eager`` attention.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ...core.adapters import FLOW_POLICY
from ...core.config import StrategyConfig, option
from ...core.errors import ConfigError, UnsupportedModelError
from ...core.strategy import Strategy
from ..engine.base import apply_engine
from ..engine.policy_calls import PolicyCall, current_call
from ..engine.token_kernels import query_rows_attention
from .engine import PolicyEngine, PolicyHandle

_PREFIX = "dynaccel_vla_"
_OWNER = "_dynaccel_vla_cache"
_SUPPORTED = ("sdpa", "eager")


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


@dataclass
class _Inference:
    """What one inference leaves for the next (and its statistics)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    pixels: torch.Tensor
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)
    entropy: dict[int, torch.Tensor] = field(default_factory=dict)  # 0-d tensors (read once, when planning)
    relevance: torch.Tensor | None = None  # (B, L) attention the instruction pays each position


@dataclass
class _LayerPlan:
    reused: torch.Tensor  # (r,) positions that reuse the last inference's keys, values and output
    computed: torch.Tensor  # (L - r,) positions the layer computes
    order: torch.Tensor  # (L,) positions in the order the layer's cache holds them: reused, then computed


class VlaCacheEngine(PolicyEngine):
    def __init__(self, model, adapter, config, strategy):
        super().__init__(model, adapter, config, strategy)
        self.prefix = adapter.prefix_model()
        self.layers = adapter.prefix_layers()
        self.text_config = adapter.prefix_text_config()
        n = len(self.layers)
        self.relevance_layer = n // 2 if config.relevance_layer < 0 else config.relevance_layer
        if self.relevance_layer >= n:
            raise ConfigError(f"option 'relevance_layer': got {config.relevance_layer}; accepted: -1 (the middle "
                              f"layer) or 0 <= relevance_layer < {n} (this model's prefix has {n} layers)")
        impl = self.text_config._attn_implementation or "eager"
        self.original_impl = impl[len(_PREFIX):] if impl.startswith(_PREFIX) else impl
        if self.original_impl not in _SUPPORTED:
            raise UnsupportedModelError(
                f"strategy 'vla_cache' needs the prefix model's attention to be one of {', '.join(_SUPPORTED)}; "
                f"this model uses {self.original_impl!r} (load it with attn_implementation='sdpa')")
        self.hooks: list[Any] = []
        self.swapped = False
        self.last: _Inference | None = None
        self.now: _Inference | None = None
        self.plan: dict[int, _LayerPlan] = {}
        self.active = False  # inside the prefix forward of an inference
        self.layer_ctx: dict[int, tuple] = {}
        self.attn_ctx: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> (query positions, key positions)
        self.text_positions: torch.Tensor | None = None
        self.totals = {"inferences_reusing": 0, "token_layers": 0, "token_layers_reused": 0}
        self.last_reuse: dict[str, Any] = {}

    # ---- installation -------------------------------------------------------------------------------------------
    def install(self) -> None:
        super().install()
        self.hooks.append(self.prefix.register_forward_pre_hook(self._prefix_start))
        self.hooks.append(self.prefix.register_forward_hook(self._prefix_end))
        for i, layer in enumerate(self.layers):
            self.hooks.append(layer.register_forward_pre_hook(self._layer_pre(i), with_kwargs=True))
            self.hooks.append(layer.register_forward_hook(self._layer_post(i)))
            layer.self_attn.__dict__[_OWNER] = (self, i)
        name = _register_attention(self.original_impl)
        self.text_config._attn_implementation = name
        self.swapped = True

    def uninstall(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []
        for layer in self.layers:
            layer.self_attn.__dict__.pop(_OWNER, None)
        if self.swapped:
            self.text_config._attn_implementation = self.original_impl
            self.swapped = False
        super().uninstall()

    def clear(self) -> None:
        self.last, self.now, self.plan = None, None, {}
        self.layer_ctx, self.attn_ctx = {}, {}
        self.active = False

    def reset(self, num_steps: int | None = None) -> None:
        super().reset(num_steps)
        self.totals = {"inferences_reusing": 0, "token_layers": 0, "token_layers_reused": 0}

    # ---- per inference ------------------------------------------------------------------------------------------
    def before(self, call: PolicyCall) -> None:
        kw = call.kwargs
        ids, mask, pixels = kw.get("input_ids"), kw.get("attention_mask"), kw.get("pixel_values")
        if ids is None or pixels is None:
            self.now = None
            return
        self.now = _Inference(ids.detach().clone(), None if mask is None else mask.detach().clone(), pixels.detach())
        self.plan = self._plan(self.now, self.last)

    def after(self, call: PolicyCall, result: Any) -> None:
        if self.now is not None and self.now.keys:
            self.last = self.now
        self.now, self.plan = None, {}
        return None

    def _plan(self, now: _Inference, last: _Inference | None) -> dict[int, _LayerPlan]:
        cfg = self.config
        self.last_reuse = {"static": 0, "candidates": 0, "reused_per_layer": [0] * len(self.layers)}
        if last is None or cfg.max_reuse <= 0 or not last.keys:
            return {}
        if (now.input_ids.shape != last.input_ids.shape or not torch.equal(now.input_ids, last.input_ids)
                or now.pixels.shape != last.pixels.shape
                or (now.attention_mask is None) != (last.attention_mask is None)
                or (now.attention_mask is not None and not torch.equal(now.attention_mask, last.attention_mask))):
            return {}
        image = self.adapter.image_token_mask(now.input_ids)  # (B, L)
        positions = [row.nonzero().flatten() for row in image]
        n_img = int(image[0].sum())
        h, w = now.pixels.shape[-2:]
        grid = n_img // now.pixels.shape[1] if now.pixels.shape[1] else 0
        side = int(round(math.sqrt(grid))) if grid else 0
        if (n_img == 0 or any(len(p) != n_img or not torch.equal(p, positions[0]) for p in positions)
                or side * side != grid or h % side or w % side or h // side != w // side):
            return {}  # image tokens in different places per row, or patches we cannot map: compute everything
        patch = h // side
        sim = cosine_patch_similarity(now.pixels, last.pixels, patch).min(0).values  # every row must agree
        pos = positions[0].to(sim.device)
        static = (sim >= cfg.similarity).nonzero().flatten()
        order = static[torch.argsort(sim[static], descending=True, stable=True)]
        cap = int(math.floor(cfg.max_reuse * n_img + 1e-9))
        candidates = order[:cap]
        if cfg.task_relevant > 0 and last.relevance is not None and len(candidates):
            rel = last.relevance[:, pos].max(0).values  # (n_img,) relevant for any row
            k = int(math.ceil(cfg.task_relevant * n_img - 1e-9))
            top = torch.topk(rel, min(k, n_img)).indices
            keep = ~torch.isin(candidates, top)
            candidates = candidates[keep]
        self.last_reuse.update(static=int(len(static)), candidates=int(len(candidates)))
        if not len(candidates):
            return {}
        candidate_pos = pos[candidates]
        L = now.input_ids.shape[1]
        everything = torch.arange(L, device=candidate_pos.device)
        plan = {}
        entropy: dict[int, float] = {}
        if cfg.layer_adaptive and last.entropy:  # one host read for every layer
            keys = sorted(last.entropy)
            entropy = dict(zip(keys, torch.stack([last.entropy[k] for k in keys]).tolist()))
        for i in range(len(self.layers)):
            if i not in last.keys or i not in last.outputs:
                continue
            frac = 1.0
            if cfg.layer_adaptive:
                frac = max(0.0, min(1.0, 1.0 - entropy.get(i, 1.0)))
            r = int(math.floor(frac * len(candidate_pos) + 1e-9))
            if r == 0:
                continue
            reused = torch.sort(candidate_pos[:r]).values
            computed = everything[~torch.isin(everything, reused)]
            plan[i] = _LayerPlan(reused, computed, torch.cat([reused, computed]))
            self.last_reuse["reused_per_layer"][i] = r
            self.last_reuse.setdefault("reused_positions", {})[i] = reused  # a list when stats are read
        return plan

    # ---- the prefix forward -------------------------------------------------------------------------------------
    def _prefix_start(self, module, args) -> None:
        call = current_call(self.model)
        self.active = call is not None and self.now is not None
        if self.active:
            mask = self.now.attention_mask
            image = self.adapter.image_token_mask(self.now.input_ids)
            text = ~image if mask is None else (~image & mask.bool())
            rows = text.all(0)  # instruction positions (the same in every row of a batch, or none counted)
            self.text_positions = rows.nonzero().flatten()

    def _prefix_end(self, module, args, output) -> None:
        if not self.active:
            return
        self.active = False
        cache = getattr(output, "cache", None)
        if cache is None:
            cache = getattr(output, "past_key_values", None)
        if cache is None or self.now is None:
            self.now = None
            return
        L = self.now.input_ids.shape[1]
        for i, layer in enumerate(cache.layers[: len(self.layers)]):
            if getattr(layer, "keys", None) is None:
                continue
            self.now.keys[i] = layer.keys[:, :, :L]
            self.now.values[i] = layer.values[:, :, :L]
        n_tok = L * len(self.layers)
        reused = sum(len(p.reused) for p in self.plan.values())
        self.totals["token_layers"] += n_tok
        self.totals["token_layers_reused"] += reused
        self.totals["inferences_reusing"] += int(reused > 0)

    def _layer_pre(self, i: int):
        def hook(module, args, kwargs):
            if not self.active:
                return None
            hs = args[0] if args else kwargs["hidden_states"]
            plan = self.plan.get(i)
            L = hs.shape[1]
            self.attn_ctx[i] = (torch.arange(L, device=hs.device), torch.arange(L, device=hs.device))
            if plan is None:
                self.layer_ctx[i] = None
                return None
            cache = kwargs.get("cache")
            if cache is None:
                cache = kwargs.get("past_key_values")
            if cache is None or self.last is None:
                self.layer_ctx[i] = None
                return None
            dev = hs.device
            reused, computed, order = plan.reused.to(dev), plan.computed.to(dev), plan.order.to(dev)
            cache.update(self.last.keys[i][:, :, reused], self.last.values[i][:, :, reused], i)
            kw = dict(kwargs)
            mask = kw.get("attention_mask")
            if mask is None:
                mask = torch.ones(hs.shape[0], 1, L, L, dtype=torch.bool, device=dev)  # the prefix is bidirectional
            kw["attention_mask"] = mask[:, :, computed][:, :, :, order]
            if kw.get("position_embeddings") is not None:
                kw["position_embeddings"] = tuple(t[:, computed] for t in kw["position_embeddings"])
            if kw.get("position_ids") is not None:
                kw["position_ids"] = kw["position_ids"][:, computed]
            rest = args[1:] if args else ()
            if args:
                new_args = (hs[:, computed],) + tuple(rest)
            else:
                new_args = ()
                kw["hidden_states"] = hs[:, computed]
            self.layer_ctx[i] = (plan, cache, reused, computed, order, L)
            self.attn_ctx[i] = (computed, order)
            return new_args, kw

        return hook

    def _layer_post(self, i: int):
        def hook(module, args, output):
            if not self.active or self.now is None:
                return None
            ctx = self.layer_ctx.pop(i, None)
            out = output[0] if isinstance(output, tuple) else output
            if ctx is None:
                self.now.outputs[i] = out
                return None
            plan, cache, reused, computed, order, L = ctx
            full = self.last.outputs[i].clone()
            full[:, computed] = out
            layer = cache.layers[i]
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(L, device=order.device)
            layer.keys = layer.keys[:, :, inverse]
            layer.values = layer.values[:, :, inverse]
            self.now.outputs[i] = full
            return (full,) + tuple(output[1:]) if isinstance(output, tuple) else full

        return hook

    # ---- attention ----------------------------------------------------------------------------------------------
    def attention(self, module, index: int, query, key, value, attention_mask, **kwargs):
        original = _attention_function(self.original_impl, module)
        cfg = self.config
        wanted = cfg.max_reuse > 0 and (cfg.layer_adaptive or (cfg.task_relevant > 0 and index == self.relevance_layer))
        if wanted and self.active and self.now is not None and self.text_positions is not None \
                and len(self.text_positions):
            self._measure(index, query, key, attention_mask)
        return original(module, query, key, value, attention_mask, **kwargs)

    @torch.no_grad()
    def _measure(self, index: int, query, key, attention_mask) -> None:
        q_pos, k_pos = self.attn_ctx.get(index, (None, None))
        if q_pos is None or query.shape[2] != len(q_pos) or key.shape[2] != len(k_pos):
            return
        rows = torch.isin(q_pos, self.text_positions.to(q_pos.device)).nonzero().flatten()
        if not len(rows):
            return
        q = query[:, :, rows]
        bias = None
        if attention_mask is not None:
            m = attention_mask[:, 0, rows] if attention_mask.dim() == 4 else None
            if m is not None:
                bias = (torch.zeros_like(m, dtype=torch.float32).masked_fill(~m, float("-inf"))
                        if m.dtype == torch.bool else m.float())
                bias = bias.expand(query.shape[0], -1, -1).contiguous()
        probs = query_rows_attention(q.float(), key.float(), bias, scale=getattr(self._module(index), "scaling", None),
                                     backend="torch")  # (B, R, N)
        if self.config.layer_adaptive:
            valid = probs.gt(0).sum(-1).clamp_min(2).float()
            entropy = -(probs.clamp_min(1e-12).log() * probs).sum(-1) / valid.log()
            self.now.entropy[index] = entropy.mean()
        if index == self.relevance_layer and self.config.task_relevant > 0:
            rel = torch.zeros(probs.shape[0], self.now.input_ids.shape[1], device=probs.device)
            rel[:, k_pos.to(probs.device)] = probs.mean(1)
            self.now.relevance = rel

    def _module(self, index: int):
        return self.layers[index].self_attn

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


def _attention_function(name: str, module):
    from transformers import AttentionInterface

    if name == "eager":  # the model's own eager function, from its modeling module
        return sys.modules[type(module).__module__].eager_attention_forward
    return AttentionInterface._global_mapping[name]


def _vla_attention(module, query, key, value, attention_mask, **kwargs):
    owner = module.__dict__.get(_OWNER)
    if owner is None:
        impl = getattr(module.config, "_attn_implementation", "sdpa")
        return _attention_function(impl[len(_PREFIX):] if impl.startswith(_PREFIX) else impl, module)(
            module, query, key, value, attention_mask, **kwargs)
    engine, index = owner
    return engine.attention(module, index, query, key, value, attention_mask, **kwargs)


def _register_attention(original: str) -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    name = _PREFIX + original
    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, _vla_attention)
    if name not in AttentionMaskInterface._global_mapping:
        AttentionMaskInterface.register(name, AttentionMaskInterface._global_mapping[original])
    return name


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
