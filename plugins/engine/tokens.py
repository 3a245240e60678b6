"""The token engine: run a transformers decoder on a changing subset of its tokens, through transformers' own hooks.

Token pruning (FastV, SlimInfer, ...), visual-token exit and layer skipping all say the same thing: *at decoder layer
i, in this forward, only these tokens are computed*; the others carry their hidden state unchanged (pruned tokens
leave the sequence, a skipped layer computes no token at all). The engine implements that once:

- a forward pre-hook (with kwargs) on the entry module records ``input_ids`` and the 2-D attention mask of each
  forward (which positions are visual, which are padding);
- a forward pre-hook on every decoder layer asks the policy which tokens the layer computes, gathers the hidden
  states, and gives the layer the matching rows and columns of the attention mask, rotary embeddings and
  ``position_ids`` (so kept tokens keep their original positions);
- a custom cache layer (:class:`SubsetCacheLayer`, a ``DynamicLayer``) stores keys and values of the computed tokens
  only, remembers their original positions, and reports the original sequence length, so positions and masks of
  later steps are built as for the plain model and the engine picks the columns each layer keeps;
- a forward hook on the last layer scatters the computed tokens back into the full sequence: outputs keep their
  shape (pruned positions hold the hidden state they had when they left);
- for policies that rank tokens by attention, an attention function registered through transformers'
  ``AttentionInterface`` (with the matching ``AttentionMaskInterface`` entry) wraps the model's own SDPA or eager
  attention and, in the layers that need it, computes only the query rows needed (the last token's attention,
  :func:`~dynaccel.plugins.engine.token_kernels.query_rows_attention`), never the full map.

Nothing of transformers is replaced; removing the engine removes the hooks, restores the attention implementation
name, and leaves a model that computes exactly what it computed before.
"""

from __future__ import annotations

import sys
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ...core.errors import UnsupportedModelError
from .base import Engine
from .token_kernels import query_rows_attention

_PREFIX = "dynaccel_"
_SUPPORTED_ATTENTION = ("sdpa", "eager")
#: attention module -> engine that owns it (the registered attention function looks its engine up here)
_OWNER_ATTR = "_dynaccel_token_engine"


def owner_of(module: torch.nn.Module) -> "TokenEngine | None":
    """The engine that owns an attention module (the registered attention function asks). Kept on the module, not
    in a global table: a table entry whose engine refers back to the model would keep the model alive forever."""
    return module.__dict__.get(_OWNER_ATTR)


class Same:
    """Returned by a policy's ``before_layer`` when the layer computes the same tokens as the layer before."""


SAME = Same()


# ------------------------------------------------------------------------------------------------ tensor helpers


def gather_tokens(t: torch.Tensor, idx: torch.Tensor, dim: int) -> torch.Tensor:
    """Pick tokens ``idx`` (B, n) along ``dim`` of ``t``, whose batch dimension is ``dim - 1`` (size B or 1)."""
    dim = dim % t.dim()
    b, n = idx.shape
    shape = list(t.shape)
    shape[dim - 1] = b
    t = t.expand(shape)
    view = [1] * t.dim()
    view[dim - 1], view[dim] = b, n
    out_shape = list(shape)
    out_shape[dim] = n
    return t.gather(dim, idx.view(view).expand(out_shape))


def scatter_tokens(full: torch.Tensor, idx: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """``full`` (B, L, D) with rows ``idx`` (B, n) replaced by ``part`` (B, n, D); out of place."""
    return full.scatter(1, idx[:, :, None].expand(-1, -1, full.shape[-1]), part.to(full.dtype))


def _mask_rows_cols(mask: torch.Tensor, b: int, rows: torch.Tensor | None, cols: torch.Tensor | None) -> torch.Tensor:
    m = mask.expand(b, *mask.shape[1:])
    if rows is not None:
        m = m.gather(2, rows[:, None, :, None].expand(b, m.shape[1], rows.shape[1], m.shape[3]))
    if cols is not None:
        m = m.gather(3, cols[:, None, None, :].expand(b, m.shape[1], m.shape[2], cols.shape[1]))
    return m


# ---------------------------------------------------------------------------------------------------- cache layer


def _dynamic_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    return DynamicLayer


_SUBSET_LAYER: type | None = None


def subset_layer_class() -> type:
    """:class:`SubsetCacheLayer`, built on first use so that importing dynaccel never imports transformers."""
    global _SUBSET_LAYER
    if _SUBSET_LAYER is None:
        DynamicLayer = _dynamic_layer_class()

        class SubsetCacheLayer(DynamicLayer):
            """A ``DynamicLayer`` that stores some of the tokens it has seen.

            ``positions`` (B, P) holds the original positions of the stored entries (None: all of them, in order);
            ``seen`` counts every token of the sequence, stored or not. The cache reports ``seen`` as its length, so
            the model derives positions and masks of later steps exactly as without pruning.
            """

            is_croppable = False

            def __init__(self, **kwargs: Any):
                super().__init__(**kwargs)
                self.positions: torch.Tensor | None = None
                self.seen = 0

            @classmethod
            def from_layer(cls, layer: Any) -> "SubsetCacheLayer":
                new = cls()
                if layer.is_initialized:
                    new.lazy_initialization(layer.keys, layer.values)
                    new.keys, new.values = layer.keys, layer.values
                    new.seen = layer.get_seq_length()
                return new

            def get_seq_length(self) -> int:
                return self.seen

            def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
                return self.seen + query_length, 0

            def stored(self) -> int:
                return 0 if not self.is_initialized or self.keys is None or self.keys.numel() == 0 else self.keys.shape[-2]

            def reset(self) -> None:
                super().reset()
                self.positions = None
                self.seen = 0

            def crop(self, tokens_to_remove: int) -> None:
                raise NotImplementedError("a pruned KV cache cannot be cropped (its entries are a subset of the tokens)")

            def batch_select_indices(self, indices: torch.Tensor) -> None:
                super().batch_select_indices(indices)
                if self.positions is not None:
                    self.positions = self.positions[indices]

            def batch_repeat_interleave(self, repeats: int) -> None:
                super().batch_repeat_interleave(repeats)
                if self.positions is not None:
                    self.positions = self.positions.repeat_interleave(repeats, dim=0)

        _SUBSET_LAYER = SubsetCacheLayer
    return _SUBSET_LAYER


# ------------------------------------------------------------------------------------------ attention interface


def _dynaccel_attention(module: torch.nn.Module, query, key, value, attention_mask, **kwargs):
    engine = owner_of(module)
    if engine is None:  # a module we do not own (should not happen): plain SDPA
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return engine.attention(module, query, key, value, attention_mask, **kwargs)


def register_wrapped_attention(prefix: str, original: str, function: Callable) -> str:
    """Register ``<prefix><original>`` in transformers' attention interface (``function``) and mask interface (the
    original's mask function), once per process; returns the name. Shared with the VLA family's prefix engine."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    name = prefix + original
    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, function)
    if name not in AttentionMaskInterface._global_mapping:
        AttentionMaskInterface.register(name, AttentionMaskInterface._global_mapping[original])
    return name


def _register_attention(original: str) -> str:
    """Register ``dynaccel_<original>`` in transformers' attention and mask interfaces; returns the name."""
    return register_wrapped_attention(_PREFIX, original, _dynaccel_attention)


def original_attention_name(config: Any) -> str:
    impl = getattr(config, "_attn_implementation", None) or "eager"
    return impl[len(_PREFIX):] if impl.startswith(_PREFIX) else impl


def check_attention(strategy: str, config: Any) -> None:
    impl = original_attention_name(config)
    if impl not in _SUPPORTED_ATTENTION:
        raise UnsupportedModelError(
            f"strategy {strategy!r} needs the model's attention implementation to be one of "
            f"{', '.join(_SUPPORTED_ATTENTION)}; this model uses {impl!r} (load it with attn_implementation='sdpa')"
        )


# ------------------------------------------------------------------------------------------------------- forward


class Memo(dict):
    """Values computed once per forward, keyed by the identity of the tensors they derive from.

    ``key(kind, *objects)`` builds the key from ``id()`` of each object and keeps the objects alive as long as the
    memo: an ``id`` is unique only while its object lives, and a freed tensor's id can come back for a new tensor
    of another shape (a stale hit: position embeddings gathered for an earlier token subset).
    """

    def __init__(self):
        super().__init__()
        self.pinned: list[Any] = []

    def key(self, kind: str, *objects: Any) -> tuple:
        self.pinned.extend(o for o in objects if o is not None)
        return (kind, *(None if o is None else id(o) for o in objects))


@dataclass
class Forward:
    """What the engine knows about one forward pass of the model."""

    input_ids: torch.Tensor | None = None
    attention_mask_2d: torch.Tensor | None = None
    visual: torch.Tensor | None = None  # (B, L) bool, VLMs only
    first: bool = True  # the cache was empty: a prefill (decisions are made here)
    length: int = 0  # tokens in this forward
    batch: int = 0
    cache: Any = None
    idx: torch.Tensor | None = None  # tokens the current layer computes (B, n), None: all
    full: torch.Tensor | None = None  # full-length hidden states of the tokens not computed
    scores: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> last-token attention over its keys
    computed: list[int] = field(default_factory=list)  # tokens computed per layer
    memo: Memo = field(default_factory=Memo)
    enabled: bool = True  # False when the cache cannot hold subsets (e.g. a static cache)
    started: bool = False  # the first decoder layer has run
    inputs: dict = field(default_factory=dict)  # the entry module's keyword arguments (pixel_values, grids ...)

    def padding(self) -> torch.Tensor | None:
        """(B, L) bool: left/right padding positions of this forward, or None."""
        m = self.attention_mask_2d
        if m is None or m.dim() != 2 or m.shape[1] < self.length:
            return None
        return ~m[:, -self.length:].bool()


class Policy:
    """What a strategy decides; the engine does the rest. Subclasses override what they need."""

    #: whether any layer may need last-token attention scores (installs the attention function)
    needs_scores = False
    #: whether after_layer must be called (installs forward hooks on every layer)
    needs_layer_outputs = False
    #: whether attention_keys may narrow the keys a layer attends to (installs the attention function)
    needs_attention = False

    def vision_modules(self, adapter: Any) -> list[torch.nn.Module]:
        """Vision-encoder attention modules whose calls :meth:`on_vision_attention` must see."""
        return []

    def on_vision_attention(self, fwd: Forward | None, query: torch.Tensor, key: torch.Tensor, scaling: float | None) -> None:
        pass

    def observers(self, adapter: Any) -> list[tuple[torch.nn.Module, str, Callable]]:
        """(module, "pre" | "post", hook) forward hooks (with kwargs) that only observe, installed with the engine."""
        return []

    def attention_keys(self, layer: int, fwd: Forward, key: torch.Tensor, value: torch.Tensor, mask: Any) -> Any:
        """None, or (key, value, mask) narrowed to the entries this layer attends to in this step."""
        return None

    def wants_scores(self, layer: int, fwd: Forward) -> bool:
        return False

    def before_layer(self, layer: int, fwd: Forward, hidden: torch.Tensor) -> Any:
        """SAME, or a pair (idx, values): idx (B, n) sorted token indices of this forward (None: all tokens);
        values: None, or full-length (B, L, D) hidden states to use instead of the current ones (merging)."""
        return SAME

    def after_layer(self, layer: int, fwd: Forward, inp: torch.Tensor, out: torch.Tensor) -> None:
        pass

    def layers_to_skip(self, fwd: Forward) -> set[int]:
        """Decoder layers this forward does not run at all (decided when the forward starts)."""
        return set()

    def end_forward(self, fwd: Forward) -> None:
        pass

    def reset(self) -> None:
        pass


class TokenEngine(Engine):
    """Installs a :class:`Policy` on a transformers model through its adapter; :meth:`uninstall` undoes it."""

    def __init__(self, adapter: Any, policy: Policy, strategy: str = ""):
        self.strategy = strategy
        self.adapter = adapter
        self.policy = policy
        self.layers = adapter.decoder_layers()
        self.num_layers = len(self.layers)
        self.fwd: Forward | None = None
        self._handles: list[Any] = []
        self._layer_of: dict[int, int] = {}
        self._orig_attention: Callable | None = None
        self._swapped: dict[int, torch.nn.Module] = {}
        self._swapped_configs: list[tuple[Any, Any]] = []
        self._owned: list[torch.nn.Module] = []  # attention modules this engine owns (see owner_of)
        self._vision_ids: set[int] = set()
        self._orig_vision_attention: Callable | None = None
        self.counts: dict[str, Any] = {}
        self._reset_counts()

    # -------------------------------------------------------------------------------------------------- install

    def install(self) -> None:
        entry = self.adapter.entry_module()
        self._handles.append(entry.register_forward_pre_hook(self._on_entry, with_kwargs=True))
        self._handles.append(entry.register_forward_hook(self._on_entry_done, with_kwargs=True, always_call=True))
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_pre_hook(self._pre(i), with_kwargs=True))
            if self.policy.needs_layer_outputs:
                self._handles.append(layer.register_forward_hook(self._post(i), with_kwargs=True))
        self._handles.append(self.layers[-1].register_forward_hook(self._on_last_output))
        if self.policy.needs_scores or self.policy.needs_attention:
            attn_modules = [self.adapter.attention_module(layer) for layer in self.layers]
            self._orig_attention = self._swap_attention(self.adapter.text_config(), attn_modules[0])
            for i, m in enumerate(attn_modules):
                self._own(m)
                self._layer_of[id(m)] = i
        vision = self.policy.vision_modules(self.adapter)
        if vision:
            self._orig_vision_attention = self._swap_attention(self.adapter.vision_config(), vision[0])
            for m in vision:
                self._own(m)
                self._vision_ids.add(id(m))
        for module, when, hook in self.policy.observers(self.adapter):
            if when == "pre":
                self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            else:
                self._handles.append(module.register_forward_hook(hook, with_kwargs=True))

    def _own(self, module: torch.nn.Module) -> None:
        module.__dict__[_OWNER_ATTR] = self
        self._owned.append(module)

    def _swap_attention(self, config: Any, module: torch.nn.Module) -> Callable:
        """Point ``config`` at our registered attention function; return the function it used before."""
        original = original_attention_name(config)
        name = _register_attention(original)
        if original == "sdpa":
            from transformers.integrations.sdpa_attention import sdpa_attention_forward

            fn = sdpa_attention_forward
        else:  # the model's own eager function, from its modeling module
            fn = sys.modules[type(module).__module__].eager_attention_forward
        self._swapped_configs.append((config, config._attn_implementation))
        config._attn_implementation = name
        return fn

    def uninstall(self) -> None:
        """Remove the hooks, give back the attention implementation names; safe after a partial install."""
        self._restore_layers()
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for m in self._owned:
            if owner_of(m) is self:
                del m.__dict__[_OWNER_ATTR]
        self._owned = []
        for config, name in reversed(self._swapped_configs):
            config._attn_implementation = name
        self._swapped_configs = []
        self.fwd = None

    def reset(self, num_steps: int | None = None) -> None:
        """Clear the counters and the policy's per-generation state (``num_steps`` is not used by token policies)."""
        self._reset_counts()
        self.policy.reset()

    def stats(self) -> dict[str, Any]:
        s = dict(self.counts)
        s.update(getattr(self.policy, "stats", {}))
        return s

    def summary(self) -> str:
        s = self.stats()
        parts = [f"{self.strategy}:"]
        if s["prefill_token_layers_full"]:
            parts.append(
                f"prefill computed {s['prefill_token_layers']}/{s['prefill_token_layers_full']} token-layers "
                f"({s['prefill_tokens']} tokens x {s['layers']} layers)"
            )
        if s["decode_token_layers_full"]:
            parts.append(f"decode {s['decode_token_layers']}/{s['decode_token_layers_full']} token-layers over {s['decode_steps']} steps")
        if s["kv_entries_full"]:
            parts.append(f"KV cache {s['kv_entries']}/{s['kv_entries_full']} entries")
        return " ".join(parts)

    def _reset_counts(self) -> None:
        self.counts = {
            "layers": self.num_layers,
            "prefill_tokens": 0,
            "prefill_computed_per_layer": [],
            "prefill_token_layers": 0,
            "prefill_token_layers_full": 0,
            "decode_steps": 0,
            "decode_token_layers": 0,
            "decode_token_layers_full": 0,
            "kv_entries": 0,
            "kv_entries_full": 0,
        }

    # ---------------------------------------------------------------------------------------------------- hooks

    def _on_entry(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
        mask = kwargs.get("attention_mask")
        fwd = Forward(input_ids=input_ids, attention_mask_2d=mask if isinstance(mask, torch.Tensor) else None, inputs=kwargs)
        if input_ids is not None:
            fwd.visual = self.adapter.visual_token_mask(input_ids)
        self.fwd = fwd
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        fwd.first = cache is None or cache.get_seq_length() == 0
        skips = self.policy.layers_to_skip(fwd) if self._cache_ok(cache) else set()
        if skips:
            container = self.adapter.decoder_layer_container()
            for i in sorted(skips):
                self._swapped[i] = container[i]
                container[i] = _SkippedLayer(self, i)
        return None

    def _on_entry_done(self, module, args, kwargs, output):
        self._restore_layers()
        return None

    def _restore_layers(self) -> None:
        if self._swapped:
            container = self.adapter.decoder_layer_container()
            for i, layer in self._swapped.items():
                container[i] = layer
            self._swapped = {}

    def _cache_ok(self, cache: Any) -> bool:
        if cache is None:
            return True
        layers = getattr(cache, "layers", None)
        Dyn, Sub = _dynamic_layer_class(), subset_layer_class()
        return layers is not None and all(type(c) in (Dyn, Sub) for c in layers)

    def skipped(self, i: int, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """A skipped layer: its cache books the step's tokens as seen and stores none of them."""
        fwd = self.fwd
        if fwd is not None:
            self._cache_columns(i, fwd, stored=hidden.new_zeros((hidden.shape[0], 0), dtype=torch.long))
            fwd.computed.append(0)
        return hidden

    def _pre(self, i: int):
        def hook(module, args, kwargs):
            return self._before_layer(i, args, kwargs)

        return hook

    def _post(self, i: int):
        def hook(module, args, kwargs, output):
            fwd = self.fwd
            if fwd is not None and fwd.enabled:
                inp = args[0] if args else kwargs["hidden_states"]
                out = output[0] if isinstance(output, tuple) else output
                self.policy.after_layer(i, fwd, inp, out)
            return None

        return hook

    def _start_forward(self, hidden: torch.Tensor, kwargs: dict) -> Forward:
        fwd = self.fwd if self.fwd is not None and not self.fwd.started else Forward()
        self.fwd = fwd
        fwd.started = True
        fwd.batch, fwd.length = hidden.shape[0], hidden.shape[1]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        fwd.cache = cache
        fwd.first = cache is None or cache.get_seq_length() == 0
        fwd.enabled = self._cache_ok(cache)
        if fwd.visual is not None and fwd.visual.shape[1] != fwd.length:
            fwd.visual = None  # inputs_embeds of another length than input_ids: visual positions unknown
        return fwd

    def _before_layer(self, i: int, args: tuple, kwargs: dict):
        hidden = args[0] if args else kwargs["hidden_states"]
        if i == 0 or self.fwd is None:
            self._start_forward(hidden, kwargs)
        fwd = self.fwd
        if not fwd.enabled:
            return None
        change = self.policy.before_layer(i, fwd, hidden)
        if not isinstance(change, Same):
            new_idx, values = change
            full = hidden if fwd.idx is None else scatter_tokens(fwd.full, fwd.idx, hidden)
            if values is not None:
                full = values
            fwd.full = full if new_idx is not None else None
            fwd.idx = new_idx
            hidden = full if new_idx is None else gather_tokens(full, new_idx, 1)
        fwd.computed.append(fwd.length if fwd.idx is None else fwd.idx.shape[1])
        kwargs = dict(kwargs)
        cols = self._cache_columns(i, fwd)
        if fwd.cache is None and fwd.idx is not None:  # no cache: the keys are exactly the tokens computed
            cols = fwd.idx
        if fwd.idx is not None or cols is not None:
            self._adapt_kwargs(i, fwd, kwargs, cols)
        if args:
            args = (hidden,) + tuple(args[1:])
        else:
            kwargs["hidden_states"] = hidden
        return args, kwargs

    def _cache_columns(self, i: int, fwd: Forward, stored: torch.Tensor | None = None) -> torch.Tensor | None:
        """Book the tokens this layer stores in its cache (``stored``, default the tokens it computes); return the
        original positions of all its entries after this step (None: all positions in order)."""
        cache = fwd.cache
        idx = fwd.idx if stored is None else stored
        if cache is None:
            return None
        Sub = subset_layer_class()
        while len(cache.layers) <= i:  # caches that add layers lazily
            cache.layers.append(_dynamic_layer_class()())
        layer = cache.layers[i]
        if not isinstance(layer, Sub):
            if idx is None:
                return None
            layer = cache.layers[i] = Sub.from_layer(layer)
        seen, past = layer.seen, layer.positions
        if idx is None and past is None:
            layer.seen = seen + fwd.length
            return None
        key = fwd.memo.key("cols", past, idx) + ((("all", seen),) if past is None else ())
        cols = fwd.memo.get(key)
        if cols is None:
            device = idx.device if idx is not None else past.device
            if past is None:
                past = torch.arange(seen, device=device).expand(fwd.batch, seen)
            cur = torch.arange(fwd.length, device=device).expand(fwd.batch, fwd.length) if idx is None else idx
            cols = torch.cat([past, cur + seen], dim=1)
            fwd.memo[key] = cols
        layer.positions, layer.seen = cols, seen + fwd.length
        return cols

    def _adapt_kwargs(self, i: int, fwd: Forward, kwargs: dict, cols: torch.Tensor | None) -> None:
        idx = fwd.idx
        if idx is not None:
            pe = kwargs.get("position_embeddings")
            if isinstance(pe, tuple):
                key = fwd.memo.key("pe", pe[0], idx)
                if key not in fwd.memo:
                    fwd.memo[key] = tuple(gather_tokens(t, idx, t.dim() - 2) for t in pe)
                kwargs["position_embeddings"] = fwd.memo[key]
            pid = kwargs.get("position_ids")
            if isinstance(pid, torch.Tensor) and pid.dim() >= 2 and pid.shape[-1] == fwd.length:
                key = fwd.memo.key("pid", pid, idx)
                if key not in fwd.memo:
                    fwd.memo[key] = gather_tokens(pid, idx, pid.dim() - 1)
                kwargs["position_ids"] = fwd.memo[key]
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 4:
            key = fwd.memo.key("mask", mask, idx, cols)
            if key not in fwd.memo:
                fwd.memo[key] = _mask_rows_cols(mask, fwd.batch, idx, cols)
            kwargs["attention_mask"] = fwd.memo[key]
        elif mask is None:
            n = fwd.length if idx is None else idx.shape[1]
            past = 0 if cols is None else cols.shape[1] - n
            if n > 1 and past > 0:  # "causal over everything" no longer holds for a subset: spell it out
                key = fwd.memo.key("causal", idx, cols)
                if key not in fwd.memo:
                    seen = self._seen_before(fwd, i)
                    q = (torch.arange(fwd.length, device=cols.device).expand(fwd.batch, -1) if idx is None else idx) + seen
                    fwd.memo[key] = (cols[:, None, None, :] <= q[:, None, :, None])
                kwargs["attention_mask"] = fwd.memo[key]

    def _seen_before(self, fwd: Forward, i: int) -> int:
        return fwd.cache.layers[i].seen - fwd.length

    def _on_last_output(self, module, args, output):
        fwd = self.fwd
        if fwd is None:
            return None
        self._account(fwd)
        self.policy.end_forward(fwd)
        if fwd.idx is None:
            fwd.full = None
            return None
        out = output[0] if isinstance(output, tuple) else output
        full = scatter_tokens(fwd.full, fwd.idx, out)
        fwd.full, fwd.idx, fwd.memo = None, None, Memo()
        fwd.length = 0
        return (full,) + tuple(output[1:]) if isinstance(output, tuple) else full

    def _account(self, fwd: Forward) -> None:
        s = self.counts
        if fwd.first:
            s["prefill_tokens"] = fwd.length
            s["prefill_computed_per_layer"] = list(fwd.computed)
            s["prefill_token_layers"] = sum(fwd.computed)
            s["prefill_token_layers_full"] = fwd.length * len(fwd.computed)
        else:
            s["decode_steps"] += 1
            s["decode_token_layers"] += sum(fwd.computed)
            s["decode_token_layers_full"] += fwd.length * len(fwd.computed)
        cache = fwd.cache
        if cache is not None and getattr(cache, "layers", None):
            Sub = subset_layer_class()
            stored = full = 0
            for layer in cache.layers:
                n = layer.get_seq_length() if not isinstance(layer, Sub) else layer.seen
                full += n
                stored += layer.stored() if isinstance(layer, Sub) else n
            s["kv_entries"], s["kv_entries_full"] = stored, full
        fwd.computed = []

    # ------------------------------------------------------------------------------------------------ attention

    def attention(self, module, query, key, value, attention_mask, **kwargs):
        fwd = self.fwd
        if id(module) in self._vision_ids:  # generate() runs the vision encoder before the model's forward
            self.policy.on_vision_attention(fwd, query, key, kwargs.get("scaling"))
            return self._orig_vision_attention(module, query, key, value, attention_mask, **kwargs)
        i = self._layer_of.get(id(module))
        if fwd is not None and fwd.enabled and i is not None and query.shape[2] > 0:
            if self.policy.wants_scores(i, fwd):
                fwd.scores[i] = last_token_scores(query, key, attention_mask, kwargs.get("scaling"))
            narrowed = self.policy.attention_keys(i, fwd, key, value, attention_mask)
            if narrowed is not None:
                key, value, attention_mask = narrowed
        return self._orig_attention(module, query, key, value, attention_mask, **kwargs)


class _SkippedLayer(torch.nn.Module):
    """Stands in for a decoder layer during one forward: returns its input, books the KV cache."""

    def __init__(self, engine: TokenEngine, index: int):
        super().__init__()
        self._engine_ref = weakref.ref(engine)
        self.index = index

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        engine = self._engine_ref()
        return hidden_states if engine is None else engine.skipped(self.index, hidden_states, kwargs)


def last_token_scores(query, key, attention_mask, scaling) -> torch.Tensor:
    """(B, N) float32: the last query row's head-averaged attention over the N keys, mask applied."""
    b = query.shape[0]
    n = key.shape[2]
    bias = None
    if attention_mask is not None:
        row = attention_mask[:, :, -1, :n]
        row = row.expand(b, row.shape[1], n)[:, :1]  # (B, 1, N): masks do not differ across heads here
        if row.dtype == torch.bool:
            bias = torch.zeros(row.shape, dtype=torch.float32, device=row.device).masked_fill(~row, float("-inf"))
        else:
            bias = row.float()
    return query_rows_attention(query[:, :, -1:, :].detach(), key.detach(), bias, scale=scaling)[:, 0]


# --------------------------------------------------------------------------------------------------- selection


def select_tokens(
    fwd: Forward, scores: torch.Tensor, candidates: torch.Tensor, keep_ratio: float
) -> torch.Tensor:
    """Tokens to keep (B, m), sorted, in this forward's coordinates.

    ``scores`` (B, n) ranks the tokens the current layer computes (``fwd.idx``, or all); ``candidates`` (B, L)
    marks the prunable positions of the forward. Padding goes first, then the lowest-scored candidates, until each
    row has ``ceil(keep_ratio * its candidates)`` of them; every row drops the same number of tokens (the
    smallest of the rows' counts), so rows with more candidates keep a little more than the ratio.
    """
    b = scores.shape[0]
    cur = fwd.idx
    n = scores.shape[1]
    cand = candidates if cur is None else candidates.gather(1, cur)
    pad = fwd.padding()
    pad_cur = torch.zeros_like(cand) if pad is None else (pad if cur is None else pad.gather(1, cur))
    cand = cand & ~pad_cur
    n_cand = cand.sum(1)
    keep = torch.ceil(n_cand.double() * keep_ratio).long()
    drop = int(((n_cand - keep) + pad_cur.sum(1)).min())
    if drop <= 0:
        return cur if cur is not None else torch.arange(n, device=scores.device).expand(b, n)
    priority = torch.where(cand, scores.float(), torch.full_like(scores, float("inf"), dtype=torch.float32))
    priority = torch.where(pad_cur, torch.full_like(priority, -1.0), priority)
    kept = priority.topk(n - drop, dim=1).indices.sort(dim=1).values
    return kept if cur is None else cur.gather(1, kept)


def text_candidates(fwd: Forward, recent: int, device: torch.device) -> torch.Tensor:
    """(B, L) bool: prunable text positions: every real token except the first (the attention sink) and the last
    ``recent`` ones (the instruction the answer starts from)."""
    b, length = fwd.batch, fwd.length
    pos = torch.arange(length, device=device).expand(b, length)
    pad = fwd.padding()
    first_real = torch.zeros(b, dtype=torch.long, device=device) if pad is None else pad.long().sum(1)  # left padding
    return (pos > first_real[:, None]) & (pos < length - recent)
