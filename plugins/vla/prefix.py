"""The prefix engine of the VLA family: π0's prefix language model computed on a subset of its tokens per layer.

Strategies that build on it: ``vla_cache`` (tokens that did not change since the last inference keep that
inference's keys, values and layer outputs), ``prefix_prune`` and the token family's ``fastv`` (image tokens leave
from a layer on) and ``visionzip`` (image tokens leave before the first layer, the rest merged into a few). The engine
does the mechanics once, for a :class:`LayerPlan` per layer:

- ``computed`` positions run through the layer's own forward: a forward pre-hook hands it their hidden states and
  the matching rows of the attention mask, rotary embeddings and position ids;
- ``reused`` positions take keys and values from the last inference (pre-filled into the layer's cache before it
  runs, so the computed tokens attend to them) and that inference's layer output;
- ``dropped`` positions are not computed and never attended to: the mask leaves them out here, their cache
  entries are zeros, and an attention function on the action expert masks them in the expert's layer of the same
  index (π0's expert layer i attends to the prefix cache of layer i);
- a forward hook puts the layer's cache back in token order at full length and returns the full hidden states.

Attention statistics (the instruction's attention to each position, the attention's entropy) come from an attention
function registered in transformers' ``AttentionInterface`` that calls the model's own SDPA or eager function and,
for the layers a strategy asks, computes the instruction rows' probabilities on the side.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from ...core.errors import UnsupportedModelError
from ..engine.policy_calls import PolicyCall, current_call
from ..engine.token_kernels import query_rows_attention
from ..engine.tokens import register_wrapped_attention
from .engine import PolicyEngine

_PREFIX = "dynaccel_vla_"
_OWNER = "_dynaccel_vla_prefix"
SUPPORTED_ATTENTION = ("sdpa", "eager")


@dataclass
class Inference:
    """One inference's prefix: its inputs, and what the layers left (keys, values, outputs, statistics)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    pixels: torch.Tensor
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)
    entropy: dict[int, torch.Tensor] = field(default_factory=dict)  # 0-d tensors (read when planning)
    relevance: torch.Tensor | None = None  # (B, L) attention the instruction pays each position


@dataclass
class LayerPlan:
    computed: torch.Tensor  # positions the layer computes
    reused: torch.Tensor  # positions with the last inference's keys, values and output
    dropped: torch.Tensor  # positions neither computed nor attended to (zero cache entries)
    inputs: torch.Tensor | None = None  # (B, L, D): replaces the layer's input hidden states (merged tokens)

    @property
    def order(self) -> torch.Tensor:
        """The positions in the order the layer's cache holds them while it runs: reused, then computed."""
        return torch.cat([self.reused, self.computed])


def original_attention(config: Any) -> str:
    impl = getattr(config, "_attn_implementation", None) or "eager"
    return impl[len(_PREFIX):] if impl.startswith(_PREFIX) else impl


def check_attention(strategy: str, config: Any, what: str) -> str:
    impl = original_attention(config)
    if impl not in SUPPORTED_ATTENTION:
        raise UnsupportedModelError(
            f"strategy {strategy!r} needs the {what}'s attention to be one of {', '.join(SUPPORTED_ATTENTION)}; "
            f"this model uses {impl!r} (load it with attn_implementation='sdpa')")
    return impl


class PrefixEngine(PolicyEngine):
    """Subset computation of the prefix layers (see the module docstring). Subclasses plan in :meth:`before` (the
    whole inference) or :meth:`plan_layer` (a layer, when it starts), and say which attention statistics they need
    (:meth:`wants_statistics`)."""

    #: whether dropped positions must be masked in the action expert's attention
    masks_expert = False

    def __init__(self, model, adapter, config, strategy):
        super().__init__(model, adapter, config, strategy)
        self.prefix = adapter.prefix_model()
        self.layers = adapter.prefix_layers()
        self.text_config = adapter.prefix_text_config()
        self.expert_layers = list(adapter.expert().layers)
        self.expert_config = adapter.expert().config
        self.original_impl = check_attention(strategy, self.text_config, "prefix model")
        self.expert_impl = check_attention(strategy, self.expert_config, "action expert") if self.masks_expert else None
        self.hooks: list[Any] = []
        self.swapped: list[tuple[Any, str]] = []
        self.last: Inference | None = None
        self.now: Inference | None = None
        self.plan: dict[int, LayerPlan] = {}
        self.active = False  # inside the prefix forward of an inference
        self.layer_ctx: dict[int, tuple | None] = {}
        self.attn_ctx: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> (query positions, key positions)
        self.text_positions: torch.Tensor | None = None
        self.dropped_now: dict[int, torch.Tensor] = {}  # expert layer -> prefix positions it must not attend to

    # ---- installation -------------------------------------------------------------------------------------------
    def install(self) -> None:
        super().install()
        self.hooks.append(self.prefix.register_forward_pre_hook(self._prefix_start))
        self.hooks.append(self.prefix.register_forward_hook(self._prefix_end))
        for i, layer in enumerate(self.layers):
            self.hooks.append(layer.register_forward_pre_hook(self._layer_pre(i), with_kwargs=True))
            self.hooks.append(layer.register_forward_hook(self._layer_post(i)))
            layer.self_attn.__dict__[_OWNER] = (self, "prefix", i)
        self._swap(self.text_config, self.original_impl)
        if self.masks_expert:
            for i, layer in enumerate(self.expert_layers):
                layer.self_attn.__dict__[_OWNER] = (self, "expert", i)
            self._swap(self.expert_config, self.expert_impl)

    def _swap(self, config: Any, impl: str) -> None:
        name = _register_attention(impl)
        self.swapped.append((config, impl))
        config._attn_implementation = name

    def uninstall(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []
        for layer in self.layers + self.expert_layers:
            if layer.self_attn.__dict__.get(_OWNER, (None,))[0] is self:
                layer.self_attn.__dict__.pop(_OWNER, None)
        for config, impl in reversed(self.swapped):
            config._attn_implementation = impl
        self.swapped = []
        super().uninstall()

    def clear(self) -> None:
        self.last, self.now, self.plan = None, None, {}
        self.layer_ctx, self.attn_ctx, self.dropped_now = {}, {}, {}
        self.active = False

    # ---- per inference ------------------------------------------------------------------------------------------
    def before(self, call: PolicyCall) -> None:
        kw = call.kwargs
        ids, mask, pixels = kw.get("input_ids"), kw.get("attention_mask"), kw.get("pixel_values")
        self.plan, self.dropped_now = {}, {}
        if ids is None or pixels is None:
            self.now = None
            return
        self.now = Inference(ids.detach().clone(), None if mask is None else mask.detach().clone(), pixels.detach())
        self.plan = self.plan_inference(self.now, self.last)

    def after(self, call: PolicyCall, result: Any) -> None:
        if self.now is not None and self.now.keys:
            self.last = self.now
        self.now, self.plan, self.dropped_now = None, {}, {}
        return None

    # ---- what a strategy overrides ------------------------------------------------------------------------------
    def plan_inference(self, now: Inference, last: Inference | None) -> dict[int, LayerPlan]:
        """Plans known before the prefix runs (vla_cache)."""
        return {}

    def plan_layer(self, index: int, hs: torch.Tensor) -> LayerPlan | None:
        """A plan made when layer ``index`` starts (prefix_prune, from statistics of the layers before)."""
        return None

    def wants_statistics(self, index: int) -> bool:
        return False

    def statistics(self, index: int, probs: torch.Tensor, key_positions: torch.Tensor) -> None:
        """``probs``: (B, instruction rows, keys) attention probabilities at prefix layer ``index``; the keys are
        the positions ``key_positions``."""

    def prefix_done(self) -> None:
        """The prefix forward ended (the cache holds the layers' keys and values)."""


    # ---- the prefix forward -------------------------------------------------------------------------------------
    def image_positions(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """The image-token positions, when every row of the batch has them in the same places."""
        image = self.adapter.image_token_mask(input_ids)
        first = image[0].nonzero().flatten()
        if not len(first) or not bool((image == image[0:1]).all()):
            return None
        return first

    def _prefix_start(self, module, args) -> None:
        self.active = current_call(self.model) is not None and self.now is not None
        if self.active:
            mask = self.now.attention_mask
            image = self.adapter.image_token_mask(self.now.input_ids)
            text = ~image if mask is None else (~image & mask.bool())
            self.text_positions = text.all(0).nonzero().flatten()  # the instruction (in every row of a batch)

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
        self.prefix_done()

    def _layer_pre(self, i: int):
        def hook(module, args, kwargs):
            if not self.active:
                return None
            hs = args[0] if args else kwargs["hidden_states"]
            L, dev = hs.shape[1], hs.device
            plan = self.plan.get(i)
            if plan is None:
                plan = self.plan_layer(i, hs)
                if plan is not None:
                    self.plan[i] = plan
            everything = torch.arange(L, device=dev)
            self.attn_ctx[i] = (everything, everything)
            cache = kwargs.get("cache")
            if cache is None:
                cache = kwargs.get("past_key_values")
            if plan is None or cache is None or (len(plan.reused) and self.last is None):
                self.layer_ctx[i] = None
                return None
            if plan.inputs is not None:
                hs = plan.inputs.to(hs.dtype)
            computed, reused, dropped = plan.computed.to(dev), plan.reused.to(dev), plan.dropped.to(dev)
            order = torch.cat([reused, computed])
            if len(reused):
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
            if args:
                new_args = (hs[:, computed],) + tuple(args[1:])
            else:
                new_args = ()
                kw["hidden_states"] = hs[:, computed]
            if len(dropped):
                self.dropped_now[i] = dropped
            self.layer_ctx[i] = (cache, computed, reused, order, hs, L)
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
            cache, computed, reused, order, hs, L = ctx
            full = hs.clone()  # dropped positions carry their hidden state
            if len(reused):
                full[:, reused] = self.last.outputs[i][:, reused].to(full.dtype)
            full[:, computed] = out
            layer = cache.layers[i]
            b, h, _, d = layer.keys.shape
            keys = layer.keys.new_zeros(b, h, L, d)
            values = layer.values.new_zeros(b, h, L, layer.values.shape[-1])
            keys[:, :, order] = layer.keys
            values[:, :, order] = layer.values
            layer.keys, layer.values = keys, values
            self.now.outputs[i] = full
            return (full,) + tuple(output[1:]) if isinstance(output, tuple) else full

        return hook

    # ---- attention ----------------------------------------------------------------------------------------------
    def attention(self, module, part: str, index: int, query, key, value, attention_mask, **kwargs):
        if part == "expert":
            dropped = self.dropped_now.get(index)
            if dropped is not None and attention_mask is not None and attention_mask.dtype == torch.bool:
                attention_mask = attention_mask.clone()
                attention_mask[..., dropped.to(attention_mask.device)] = False
            elif dropped is not None and attention_mask is not None:
                attention_mask = attention_mask.clone()
                attention_mask[..., dropped.to(attention_mask.device)] = torch.finfo(attention_mask.dtype).min
            elif dropped is not None:
                q, k = query.shape[2], key.shape[2]
                attention_mask = torch.ones(query.shape[0], 1, q, k, dtype=torch.bool, device=query.device)
                attention_mask[..., dropped.to(query.device)] = False
            return _attention_function(self.expert_impl, module)(module, query, key, value, attention_mask, **kwargs)
        if (self.active and self.now is not None and self.text_positions is not None and len(self.text_positions)
                and self.wants_statistics(index)):
            self._measure(index, module, query, key, attention_mask)
        return _attention_function(self.original_impl, module)(module, query, key, value, attention_mask, **kwargs)

    @torch.no_grad()
    def _measure(self, index: int, module, query, key, attention_mask) -> None:
        q_pos, k_pos = self.attn_ctx.get(index, (None, None))
        if q_pos is None or query.shape[2] != len(q_pos) or key.shape[2] != len(k_pos):
            return
        rows = torch.isin(q_pos, self.text_positions.to(q_pos.device)).nonzero().flatten()
        if not len(rows):
            return
        bias = None
        if attention_mask is not None and attention_mask.dim() == 4:
            m = attention_mask[:, 0, rows]
            bias = (torch.zeros_like(m, dtype=torch.float32).masked_fill(~m, float("-inf"))
                    if m.dtype == torch.bool else m.float())
            bias = bias.expand(query.shape[0], -1, -1).contiguous()
        probs = query_rows_attention(query[:, :, rows].float(), key.float(), bias,
                                     scale=getattr(module, "scaling", None), backend="torch")  # (B, R, N)
        self.statistics(index, probs, k_pos)


def _attention_function(name: str, module):
    from transformers import AttentionInterface

    if name == "eager":  # the model's own eager function, from its modeling module
        return sys.modules[type(module).__module__].eager_attention_forward
    return AttentionInterface._global_mapping[name]


def _vla_attention(module, query, key, value, attention_mask, **kwargs):
    owner = module.__dict__.get(_OWNER)
    if owner is None:  # a module no engine owns (another model sharing the config name): its own attention
        impl = original_attention(module.config)
        return _attention_function(impl, module)(module, query, key, value, attention_mask, **kwargs)
    engine, part, index = owner
    return engine.attention(module, part, index, query, key, value, attention_mask, **kwargs)


def _register_attention(original: str) -> str:
    return register_wrapped_attention(_PREFIX, original, _vla_attention)


class PruningEngine(PrefixEngine):
    """A prefix engine whose plans drop image tokens (prefix_prune, fastv, visionzip): dropped positions are masked
    in the expert too, and the share of prefix token-layers computed is counted."""

    masks_expert = True

    def __init__(self, model, adapter, config, strategy):
        super().__init__(model, adapter, config, strategy)
        self.totals = {"token_layers": 0, "token_layers_computed": 0}
        self.last_kept: list[int] = []

    def reset(self, num_steps: int | None = None) -> None:
        super().reset(num_steps)
        self.totals = {"token_layers": 0, "token_layers_computed": 0}

    def prefix_done(self) -> None:
        L, n = self.now.input_ids.shape[1], len(self.layers)
        self.totals["token_layers"] += L * n
        self.totals["token_layers_computed"] += sum(len(self.plan[i].computed) if i in self.plan else L
                                                    for i in range(n))

    def extra_stats(self) -> dict[str, Any]:
        t = self.totals
        return {"prefix_token_layers": t["token_layers"], "prefix_token_layers_computed": t["token_layers_computed"],
                "computed_fraction": t["token_layers_computed"] / t["token_layers"] if t["token_layers"] else 1.0,
                "last_kept_positions": [int(p) for p in self.last_kept]}
