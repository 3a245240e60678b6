"""Run a sparse-attention strategy's policy inside ComfyUI, through the ModelPatcher only.

The diffusers path installs the adapter's attention processors, which compute q, k, v and ask the
:class:`~dynaccel.plugins.sparse_attention.engine.SparseAttentionEngine` (the *router*) for the attention output.
Here the *same* engine and the *same* policy (``Strategy.Policy``) are driven by ComfyUI's own extension points, on a
``model.clone()``:

- ``WrappersMP.OUTER_SAMPLE``: once per sampling run. A fresh engine (run state) is made for every run with that
  run's step count; at the end a line like ``dynaccel [node 3]: sliding_tile: 30/40 attention calls sparse, mean
  density 0.33 over 10 steps`` is logged and the engine's stats (``mean_density``, ``attention_sparsity``,
  ``density_per_step``...) are kept for the Stats node.
- ``WrappersMP.DIFFUSION_MODEL``: around every diffusion-model call. The step is the position of the call's sigma
  in the run's sigmas, the CFG branch comes from ``cond_or_uncond`` (as for the cache runner); the engine's
  ``model_forward`` reads the token grid from the adapter and tells the policy of new steps (its latent input).
- block replace patches on the blocks the adapter names (:meth:`ComfyAdapter.self_attention_blocks`): while such a
  block runs, its first attention call is its video self-attention (the layer index the policy sees).
- ``transformer_options["optimized_attention_override"]``: ComfyUI's attention functions (``wrap_attn``) call it as
  ``override(func, q, k, v, heads=..., transformer_options=..., ...)``. A marked self-attention call goes to
  ``engine.attend`` when the engine says the call is sparse (``sparse_now()``); every other call (cross-attention,
  a dense step, a full mask, calls outside a sampling run) runs ``func`` itself, untouched, so dense settings are
  bit-identical to the plain model. An override set before this node (another pack's) is kept for those calls.

ComfyUI itself is imported only in :meth:`SparseAttentionAccelerator.install` (``comfy.patcher_extension``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..core.strategy import Strategy
from ..plugins.sparse_attention.engine import SparseAttentionEngine
from .adapters import ComfyAdapter, attention_call, attention_output
from .runner import add_run_wrappers, branch_of, close_run, log_line, pass_context


def summary_line(stats: dict[str, Any]) -> str:
    """``sliding_tile: 30/40 attention calls sparse, mean density 0.33 over 10 steps`` (the engine's summary)."""
    if not stats["attention_calls"]:
        return f"{stats['strategy']}: no video self-attention call in this run"
    return (
        f"{stats['strategy']}: {stats['sparse_calls']}/{stats['attention_calls']} attention calls sparse, mean "
        f"density {stats['mean_density']:.2f} over {stats['steps']} steps"
    )


class SparseAttentionAccelerator:
    """One sparse-attention strategy applied to one ComfyUI model (one node's output): the policy (kept across
    runs: its mask plans), the adapter, the engine of the sampling run in progress and the finished runs' stats."""

    def __init__(self, strategy: type[Strategy], config: Any, adapter: ComfyAdapter, diffusion_model: torch.nn.Module):
        self.strategy = strategy
        self.config = config
        self.adapter = adapter
        self.policy = strategy.Policy(config)
        self.diffusion_model = diffusion_model
        self.engine: SparseAttentionEngine | None = None
        self.sigmas: list[float] = []
        self.branch_keys: dict[tuple, str] = {}
        self.history: list[dict[str, Any]] = []
        self.node_id: str | None = None
        #: the attention layer whose block is running and whose self-attention call has not come yet
        self.layer: int | None = None
        #: the attention override that was set before this node (called for every call this one does not take)
        self.previous_override: Callable | None = None

    # ---- the functions installed on the ModelPatcher ---------------------------------------------------------------
    def sample(self, executor: Callable, *args: Any, **kwargs: Any) -> Any:
        """One sampling run (the OUTER_SAMPLE wrapper): fresh run state, then the report."""
        sigmas = args[3] if len(args) > 3 else kwargs.get("sigmas")
        outer = (self.engine, self.sigmas, self.branch_keys, self.layer)
        self.sigmas = [float(s) for s in sigmas.flatten().tolist()] if sigmas is not None else []
        self.branch_keys, self.layer = {}, None
        engine = SparseAttentionEngine(self.diffusion_model, self.adapter, self.policy, None, self.strategy.name)
        engine.reset(max(len(self.sigmas) - 1, 0) or None)
        self.engine = engine
        try:
            return executor(*args, **kwargs)
        finally:
            stats = close_run(engine, self.history, summary_line)
            log_line(f"dynaccel [node {self.node_id if self.node_id is not None else '?'}]: {stats['summary']}")
            self.engine, self.sigmas, self.branch_keys, self.layer = outer

    def diffusion_model_call(self, executor: Callable, *args: Any, **kwargs: Any) -> Any:
        engine = self.engine
        if engine is None:  # called outside a sampling run (e.g. by another node): plain compute
            return executor(*args, **kwargs)
        ctx = pass_context(self.sigmas, lambda opts: branch_of(self.branch_keys, opts), args, kwargs)
        return engine.model_forward(executor, ctx, args, kwargs)

    def block_call(self, layer: int, args: dict, extra: dict) -> Any:
        original = extra["original_block"]
        if self.engine is None or not self.engine.in_pass:
            return original(args)
        outer, self.layer = self.layer, layer
        try:
            return original(args)
        finally:
            self.layer = outer

    def attention(self, func: Callable, *args: Any, **kwargs: Any) -> Any:
        """ComfyUI's ``optimized_attention_override``: the marked self-attention calls through the engine."""
        layer, engine = self.layer, self.engine
        if layer is None or engine is None or not engine.in_pass:
            return self._plain(func, args, kwargs)
        self.layer = None  # only the block's first attention call is its self-attention
        qkv = attention_call(args, kwargs)
        if qkv is None or not engine.sparse_now():
            return self._plain(func, args, kwargs)
        q, k, v = qkv
        out = engine.attend(layer, q, k, v, num_text=self.adapter.self_attention_text, text_first=False,
                            key_padding=None)
        return attention_output(out.type_as(q), args, kwargs)

    def _plain(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        if self.previous_override is not None:
            return self.previous_override(func, *args, **kwargs)
        return func(*args, **kwargs)

    def install(self, m: Any) -> None:
        """Install on ``m`` (a fresh ``model.clone()``): the two wrappers, the block marks, the override."""
        def override(func, *args, **kwargs):
            return self.attention(func, *args, **kwargs)

        add_run_wrappers(m, self)
        for layer, (kind, index) in enumerate(self.adapter.self_attention_blocks()):
            m.set_model_patch_replace(_block_patch(self, layer), "dit", kind, index)
        opts = m.model_options.setdefault("transformer_options", {})
        self.previous_override = opts.get("optimized_attention_override")
        override.dynaccel_accelerator = self
        override.dynaccel_previous = self.previous_override
        opts["optimized_attention_override"] = override

    @property
    def last_stats(self) -> dict[str, Any] | None:
        return self.history[-1] if self.history else None


def _block_patch(acc: SparseAttentionAccelerator, layer: int) -> Callable:
    def block(args, extra):
        return acc.block_call(layer, args, extra)

    return block
