"""diffusers ``HookRegistry`` hooks shared by the engines that run on diffusers models (cache, sparse attention).

- :func:`run_hook` wraps a model's forward: it hands the engine the pipeline's cache context (a
  ``diffusers.hooks.hooks.CacheContext``: the CFG branch name, and in pipelines that pass them the step index, the
  step count and the timestep), and tells the engine when diffusers resets stateful hooks (the end of every
  pipeline call): ``engine.model_forward(original_forward, context, args, kwargs)`` and ``engine.finish_run()``.
- :func:`block_hook` wraps one block: ``engine.block_forward(index, original_forward, args, kwargs)``.

Hooks are registered under names from :func:`~dynaccel.plugins.engine.base.hook_name` (unique per engine) and
removed by name: removing one engine never touches another's hooks.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from ...core.errors import DynaccelError


@functools.lru_cache(maxsize=1)
def _classes():
    try:
        from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DynaccelError(
            "this strategy hooks models through diffusers; install it with: pip install 'dynaccel[diffusers]'"
        ) from exc

    class _NoState(BaseState):
        def reset(self, *args, **kwargs) -> None:
            pass

    class RunHook(ModelHook):
        """Model-level hook: receives the pipeline's cache context and runs the engine's pass logic."""

        _is_stateful = True  # diffusers sets the cache context on the StateManager attributes of stateful hooks

        def __init__(self, engine: Any):
            super().__init__()
            self.engine = engine
            self.context = StateManager(_NoState)

        def new_forward(self, module, *args, **kwargs):
            try:
                ctx = self.context.context
            except ValueError:  # no cache context set: a bare model call
                ctx = None
            return self.engine.model_forward(self.fn_ref.original_forward, ctx, args, kwargs)

        def reset_state(self, module):
            self.engine.finish_run()
            return module

    class BlockHook(ModelHook):
        def __init__(self, engine: Any, index: int):
            super().__init__()
            self.engine = engine
            self.index = index

        def new_forward(self, module, *args, **kwargs):
            return self.engine.block_forward(self.index, self.fn_ref.original_forward, args, kwargs)

    return HookRegistry, RunHook, BlockHook


def run_hook(engine: Any) -> Any:
    return _classes()[1](engine)


def block_hook(engine: Any, index: int) -> Any:
    return _classes()[2](engine, index)


def add_hook(module: torch.nn.Module, hook: Any, name: str) -> None:
    _classes()[0].check_if_exists_or_initialize(module).register_hook(hook, name)


def remove_hook(module: torch.nn.Module, name: str) -> None:
    """Remove hook ``name`` from ``module`` if it is there (safe after a partial install), wherever it sits.

    ``HookRegistry.remove_hook`` is exact only for the last hook registered: removing one that another hook with a
    ``new_forward`` was registered after overwrites that hook's forward reference, and the later hook then never
    runs its ``new_forward`` (diffusers 0.42). So the hooks registered after ``name`` are taken off first (each
    then the last one), ``name`` is removed, and they are registered again in their order (same hook objects,
    state kept). See docs/engine.md.
    """
    registry = _classes()[0].check_if_exists_or_initialize(module)
    if name not in registry.hooks:
        return
    order = list(registry.hooks)  # insertion order: the order of registration
    later = [(n, registry.get_hook(n)) for n in order[order.index(name) + 1:]]
    for n, _ in reversed(later):
        registry.remove_hook(n, recurse=False)
    registry.remove_hook(name, recurse=False)
    for n, hook in later:
        registry.register_hook(hook, n)


def refresh(model: torch.nn.Module) -> None:
    """Tell the model's registry that hooks of its children changed (its cache of child registries is stale)."""
    _classes()[0].check_if_exists_or_initialize(model).invalidate_child_registries_cache()


def context_fields(ctx: Any) -> tuple[str, int | None, int | None, float | None]:
    """(branch name, step index, step count, timestep) of a cache context (any object with those attributes).

    The timestep is read (one host read) only when the context gives no step index: it is what tells steps apart
    then."""
    if ctx is None:
        return "default", None, None, None
    name = getattr(ctx, "name", None) or "default"
    step = getattr(ctx, "step_index", None)
    n = getattr(ctx, "num_inference_steps", None)
    t = getattr(ctx, "timestep", None) if step is None else None
    if isinstance(t, torch.Tensor):
        t = float(t.flatten()[0]) if t.numel() else None
    return name, (int(step) if step is not None else None), (int(n) if n else None), t
