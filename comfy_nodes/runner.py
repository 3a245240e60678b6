"""Run a cache strategy's policy inside ComfyUI, through the ModelPatcher only.

The diffusers path runs a strategy's :class:`~dynaccel.plugins.cache.engine.CachePolicy` with a
:class:`~dynaccel.plugins.cache.engine.CacheEngine` hooked by diffusers' HookRegistry. Here the *same* policy and
the *same* engine logic (``model_forward`` / ``block_forward``) are driven by ComfyUI's own extension points, on a
``model.clone()``:

- ``WrappersMP.OUTER_SAMPLE``: once per sampling run. A fresh engine (run state) is made for every run, with the
  step count of that run's sigmas, so two samplers with different step counts never share state; at the end the
  run is finished, a log line like ``dynaccel [node 3]: teacache: computed 9/20 steps (cond 9/20, uncond 9/20),
  2.22x`` is written (on its own line, also while a progress bar is drawn) and the stats are kept for the stats
  node. A calibrated strategy's first run (MagCache, SmoothCache: every step computed to calibrate) says so; its
  calibration is kept per diffusion model and strategy, so a node that runs again (another option, a reloaded
  workflow) starts calibrated, unless its ``keep_calibration`` input is off.
- ``WrappersMP.DIFFUSION_MODEL``: around every diffusion-model call. The step is the position of the call's sigma
  in the run's sigmas; the CFG branch comes from ``cond_or_uncond`` (``cond``, ``uncond``, or ``cond_uncond`` when
  ComfyUI batches both), so every branch has its own accumulators and residuals, as with diffusers' cache context.
- block replace patches (``set_model_patch_replace(fn, "dit", "double_block" | "single_block", i)``) for the block
  level strategies: the engine decides at block 0, passes skipped blocks through and adds the cached residual at
  the last block, exactly as its diffusers block hooks do.

Strategies name their runner with ``comfyui_runner``: ``"cache"`` is this module's :class:`Accelerator`;
``"sparse_attention"`` is :class:`~dynaccel.comfy_nodes.attention_runner.SparseAttentionAccelerator` (the attention
override), made by the same :func:`make_accelerator` / :func:`accelerate`.

Everything stored in ``model_options`` is a plain function (ComfyUI deep-copies model options on ``clone()``; a
function is shared, so the accelerator behind it is too). Nothing in ComfyUI is rebound or mocked. ComfyUI itself
is imported only inside :func:`accelerate` (``comfy.patcher_extension``), when ComfyUI is running.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..core.adapters import ModelAdapter
from ..core.errors import ConfigError, UnsupportedModelError
from ..core.registry import get_registry
from ..core.strategy import Strategy
from ..plugins.cache.calibration import CalibratedPolicy
from ..plugins.cache.engine import CacheEngine, CachePolicy
from .adapters import ComfyAdapter
from .presets import RUNNERS, runnable

logger = logging.getLogger("dynaccel")

KEY = "dynaccel"
_BRANCH = {0: "cond", 1: "uncond"}
#: calibrations of the calibrated strategies, per diffusion model (weakly: they go with the model) and strategy
_CALIBRATIONS: "weakref.WeakKeyDictionary[torch.nn.Module, dict[str, Any]]" = weakref.WeakKeyDictionary()


def calibrated(policy: Any) -> bool:
    """Whether the policy calibrates itself from one full run (MagCache, SmoothCache)."""
    return isinstance(policy, CalibratedPolicy)


def log_line(text: str) -> None:
    """Log ``text`` (already prefixed) on a line of its own: while a tqdm bar is being drawn (the sampler's), the
    bar's line is ended first, so the message never continues it."""
    try:
        from tqdm import tqdm

        drawing = any(not getattr(bar, "disable", True) for bar in list(getattr(tqdm, "_instances", ())))
    except ImportError:  # ComfyUI always has tqdm; outside it there is no bar to care about
        drawing = False
    logger.info(("\n" if drawing else "") + text)


@dataclass
class _Ctx:
    """What the engine reads from a diffusers cache context: the branch name, the step and the step count."""

    name: str
    step_index: int | None
    num_inference_steps: int | None


def transformer_options_of(args: tuple, kwargs: dict) -> dict:
    """The ``transformer_options`` dict of a diffusion-model call (last positional argument, or a keyword)."""
    opts = kwargs.get("transformer_options")
    if isinstance(opts, dict):
        return opts
    for a in reversed(args):
        if isinstance(a, dict):
            return a
    return {}


def step_of(sigma: Any, sigmas: list[float]) -> int | None:
    """Index of the step whose sigma is closest to ``sigma`` among the run's sigmas (the last one is the end)."""
    if sigma is None or len(sigmas) < 2:
        return None
    s = float(sigma.flatten()[0]) if isinstance(sigma, torch.Tensor) else float(sigma)
    starts = sigmas[:-1]
    return min(range(len(starts)), key=lambda i: abs(starts[i] - s))


def branch_name(cond_or_uncond: list[int] | None) -> str:
    """``[0]`` -> ``cond``, ``[1]`` -> ``uncond``, ``[0, 1]`` -> ``cond_uncond`` (batched CFG), ``None`` -> default."""
    if not cond_or_uncond:
        return "default"
    return "_".join(_BRANCH.get(c, f"c{c}") for c in cond_or_uncond)


def branch_of(branch_keys: dict[tuple, str], opts: dict) -> str:
    """The run's name for the CFG branch of a call's ``transformer_options`` (``branch_keys``: the names given so
    far in this run, by ``cond_or_uncond`` and ``uuids``; two different batches of the same kind get ``#2``...)."""
    cou = opts.get("cond_or_uncond")
    key = (tuple(cou or ()), tuple(str(u) for u in opts.get("uuids") or ()))
    name = branch_keys.get(key)
    if name is None:
        base = branch_name(cou)
        taken = set(branch_keys.values())
        name, k = base, 2
        while name in taken:  # e.g. two positive conds with areas, batched separately
            name, k = f"{base}#{k}", k + 1
        branch_keys[key] = name
    return name


class Accelerator:
    """One strategy applied to one ComfyUI model (one node's output). Holds the policy (which keeps calibrations
    across runs), the adapter, the engine of the sampling run in progress and the stats of the finished runs."""

    def __init__(self, strategy: type[Strategy], config: Any, policy: CachePolicy, diffusion_model: torch.nn.Module):
        self.strategy = strategy
        self.config = config
        self.policy = policy
        self.adapter = policy.adapter
        self.diffusion_model = diffusion_model
        self.engine: CacheEngine | None = None
        self.sigmas: list[float] = []
        self.branch_keys: dict[tuple, str] = {}
        self.history: list[dict[str, Any]] = []
        self.node_id: str | None = None  # the ComfyUI node that made it (for the log line)
        self.keep_calibration = True
        self.calibration_run: bool | None = None  # for calibrated strategies: whether the current run calibrates

    # ---- around each sampling run: calibration state and the report --------------------------------------------
    def sample(self, executor: Callable, *args: Any, **kwargs: Any) -> Any:
        """One sampling run (the OUTER_SAMPLE wrapper): :meth:`outer_sample`, knowing whether it calibrates."""
        outer = self.calibration_run
        self.calibration_run = getattr(self.policy, "calibration", None) is None if calibrated(self.policy) else None
        try:
            return self.outer_sample(executor, *args, **kwargs)
        finally:
            self.calibration_run = outer

    def report(self, stats: dict[str, Any]) -> None:
        """Add the calibration state to a finished run's stats and summary, keep a new calibration for the model,
        and log the summary as ``dynaccel [node ID]: ...``."""
        if self.calibration_run is not None:
            done = getattr(self.policy, "calibration", None) is not None
            if self.calibration_run:
                stats["calibration"] = "calibrated in this run" if done else "calibration run interrupted"
                stats["summary"] += (
                    f" (calibration run: every step computed to calibrate {self.strategy.name}; later runs on this "
                    "model use it)" if done else " (calibration run interrupted: the next run calibrates again)"
                )
            else:
                stats["calibration"] = "calibrated"
            if done and self.keep_calibration:
                _CALIBRATIONS.setdefault(self.diffusion_model, {})[self.strategy.name] = self.policy.calibration
        log_line(f"dynaccel [node {self.node_id if self.node_id is not None else '?'}]: {stats['summary']}")

    # ---- the functions installed on the ModelPatcher ---------------------------------------------------------------
    def outer_sample(self, executor: Callable, *args: Any, **kwargs: Any) -> Any:
        sigmas = args[3] if len(args) > 3 else kwargs.get("sigmas")
        outer = (self.engine, self.sigmas, self.branch_keys)
        self.sigmas = [float(s) for s in sigmas.flatten().tolist()] if sigmas is not None else []
        self.branch_keys = {}
        engine = CacheEngine(self.diffusion_model, self.policy, None, self.strategy.name)
        engine.start_run(max(len(self.sigmas) - 1, 0) or None, log=False)  # this runner logs its own line below
        self.engine = engine
        try:
            return executor(*args, **kwargs)
        finally:
            self.report(close_run(engine, self.history, summary_line))
            self.engine, self.sigmas, self.branch_keys = outer

    def diffusion_model_call(self, executor: Callable, *args: Any, **kwargs: Any) -> Any:
        engine = self.engine
        if engine is None:  # called outside a sampling run (e.g. by another node): plain compute
            return executor(*args, **kwargs)
        ctx = pass_context(self.sigmas, self._branch, args, kwargs)
        self.adapter.begin_call(args, kwargs)
        return engine.model_forward(executor, ctx, args, kwargs)

    def block_call(self, i: int, args: dict, extra: dict) -> Any:
        engine = self.engine
        original = extra["original_block"]
        if engine is None or not engine.in_pass:
            return original(args)
        if self.adapter.inplace_blocks and (i <= 1 or self.policy.level == "per_block"):
            # the block adds into its input tensors in place: it runs on copies, so that the tensors the engine keeps
            # (block 0's input or output as anchor, a block's input for its own residual and reuse test) keep their
            # values
            original = _on_copies(original)
        return engine.block_forward(i, original, (args,), {})

    def _branch(self, opts: dict) -> str:
        return branch_of(self.branch_keys, opts)

    @property
    def last_stats(self) -> dict[str, Any] | None:
        return self.history[-1] if self.history else None


def close_run(engine: Any, history: list[dict[str, Any]], summarise: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """End a sampling run (any family's engine): its stats with a ``summary`` line, kept in ``history`` (the last 32
    runs, for the Stats node)."""
    engine.finish_run()
    stats = engine.stats()
    stats["summary"] = summarise(stats)
    history.append(stats)
    del history[:-32]
    return stats


def summary_line(stats: dict[str, Any]) -> str:
    """``teacache: computed 9/20 steps (cond 9/20, uncond 9/20), 2.22x`` (per-block strategies: block calls)."""
    name = stats["strategy"]
    if "blocks_computed" in stats:
        total = stats["blocks_computed"] + stats["blocks_reused"]
        speed = total / stats["blocks_computed"] if stats["blocks_computed"] else float("nan")
        return f"{name}: computed {stats['blocks_computed']}/{total} block calls in {stats['passes']} passes, {speed:.2f}x"
    branches = stats["branches"]
    if not branches:
        return f"{name}: no diffusion-model call in this run"
    steps_total = max(b["computed"] + b["skipped"] for b in branches.values())
    steps_computed = max(b["computed"] for b in branches.values())
    parts = ", ".join(f"{n} {b['computed']}/{b['computed'] + b['skipped']}" for n, b in branches.items())
    speed = stats["pass_speedup"] or 1.0
    detail = f" ({parts})" if len(branches) > 1 else ""
    return f"{name}: computed {steps_computed}/{steps_total} steps{detail}, {speed:.2f}x"


def make_accelerator(model: Any, strategy_name: str, options: dict[str, Any], *, keep_calibration: bool = True,
                     node_id: str | None = None) -> Accelerator:
    """Validate everything for ``model`` (a ModelPatcher) before touching it: strategy, options, adapter, policy.

    ``keep_calibration``: a calibrated strategy starts from the calibration an earlier node run made on the same
    diffusion model (kept per model and strategy), and keeps its own; off: it calibrates afresh and keeps nothing.

    Raises ConfigError / UnsupportedModelError / UnknownStrategyError with a message naming what was wrong.
    """
    reg = get_registry()
    cls = reg.strategy(strategy_name)
    kind = getattr(cls, "comfyui_runner", None)
    if not runnable(cls):
        raise ConfigError(
            f"strategy {strategy_name!r} ({cls.family}) has no ComfyUI runner; the nodes run the strategies whose "
            f"family declares one of: {', '.join(RUNNERS)}"
        )
    cfg = cls.Config.from_kwargs(strategy_name, **options)
    dm = diffusion_model_of(model, strategy_name)
    if kind == "sparse_attention":
        from .attention_runner import SparseAttentionAccelerator

        acc = SparseAttentionAccelerator(cls, cfg, adapter_for(cls, dm, strategy_name), dm)
        acc.node_id = node_id
        return acc
    if cls.needs_adapter:
        adapter = adapter_for(cls, dm, strategy_name)
    else:  # a model-level strategy: the model's ComfyUI adapter if it has one, else one that is told of calls only
        adapter = reg.find_adapter(dm, among=ComfyAdapter) or _ModelOnly(dm)
    policy = cls.Policy(cfg, adapter)
    if calibrated(policy) and getattr(policy, "calibration", None) is None:
        if keep_calibration:
            policy.calibration = _CALIBRATIONS.get(dm, {}).get(strategy_name)
        else:
            _CALIBRATIONS.get(dm, {}).pop(strategy_name, None)
    acc = Accelerator(cls, cfg, policy, dm)
    acc.node_id, acc.keep_calibration = node_id, keep_calibration
    return acc


def diffusion_model_of(model: Any, strategy_name: str) -> torch.nn.Module:
    """The diffusion model of a ComfyUI MODEL (a ModelPatcher); UnsupportedModelError without one."""
    dm = getattr(getattr(model, "model", None), "diffusion_model", None)
    if not isinstance(dm, torch.nn.Module):
        raise UnsupportedModelError(
            f"strategy {strategy_name!r}: the MODEL input has no diffusion model (got {type(model).__name__})"
        )
    return dm


def adapter_for(cls: type[Strategy], dm: torch.nn.Module, strategy_name: str) -> ComfyAdapter:
    """The ComfyUI adapter of ``dm`` (the registry's choice among the ComfyUI adapters) answering what ``cls``
    needs, or an UnsupportedModelError naming the model and the ComfyUI models the strategy supports."""
    reg = get_registry()
    adapter = reg.find_adapter(dm, among=ComfyAdapter)
    if not reg.supports(adapter, cls):
        supported = reg.supported_architectures(cls, among=ComfyAdapter)
        hint = (" The 'dynaccel EasyCache' node needs no adapter (it wraps the whole diffusion-model call); or remove "
                "this node" if getattr(cls, "comfyui_runner", None) == "cache" else " Remove this node for this model")
        raise UnsupportedModelError(
            f"{strategy_name}: this model ({type(dm).__module__}.{type(dm).__name__}) is not supported; supported "
            f"ComfyUI models: {', '.join(supported) or '(none)'}.{hint}"
        )
    return adapter


class _ModelOnly(ModelAdapter):
    """The adapter of a model-level strategy on a model without an adapter: it is told of calls and nothing else
    (the base class's answers: no step context, the model's own input and output)."""

    name = "comfy-model-only"
    architectures = ()
    inplace_blocks = False

    def begin_call(self, args: tuple, kwargs: dict) -> None:
        pass

    def blocks(self) -> list:
        return []


def accelerate(model: Any, strategy_name: str, options: dict[str, Any], *, keep_calibration: bool = True,
               node_id: str | None = None) -> tuple[Any, Accelerator]:
    """A clone of ComfyUI ``model`` (ModelPatcher) running the strategy; ``model`` itself is left unchanged.

    Everything is validated first (:func:`make_accelerator`), so a bad input raises before anything is patched.
    """
    acc = make_accelerator(model, strategy_name, options, keep_calibration=keep_calibration, node_id=node_id)
    m = fresh_clone(model)
    if not isinstance(acc, Accelerator):  # the sparse-attention runner
        acc.install(m)
        return m, acc

    add_run_wrappers(m, acc)
    if acc.policy.level in ("blocks", "per_block"):
        for i, spec in enumerate(acc.adapter.blocks()):
            m.set_model_patch_replace(_block_patch(acc, i), "dit", spec.kind, spec.index)
    return m, acc


def pass_context(sigmas: list[float], branch: Callable[[dict], str], args: tuple, kwargs: dict) -> "_Ctx":
    """What an engine needs of one diffusion-model call: its CFG branch, its step among the run's ``sigmas`` and the
    step count, read from ComfyUI's ``transformer_options``."""
    opts = transformer_options_of(args, kwargs)
    n = len(sigmas) - 1 if len(sigmas) > 1 else None
    return _Ctx(branch(opts), step_of(opts.get("sigmas"), sigmas), n)


def add_run_wrappers(m: Any, acc: Any) -> None:
    """The two wrappers every runner puts on ``m``: once per sampling run (``acc.sample``, which the Stats node finds
    through the wrapper) and around every diffusion-model call (``acc.diffusion_model_call``)."""
    import comfy.patcher_extension as pe  # ComfyUI is running when a node calls this

    def outer_sample(executor, *args, **kwargs):
        return acc.sample(executor, *args, **kwargs)

    def diffusion_model(executor, *args, **kwargs):
        return acc.diffusion_model_call(executor, *args, **kwargs)

    outer_sample.dynaccel_accelerator = acc  # read by the stats node
    m.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, KEY, outer_sample)
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, KEY, diffusion_model)


def fresh_clone(model: Any) -> Any:
    """``model.clone()`` without what an earlier dynaccel node installed on it (a dynaccel node replaces the one
    before it, it does not stack): its wrappers, and its attention override (the override that was there before it
    is put back). Its block replace patches stay: with their accelerator's wrappers gone they call the original
    block, and a new node's patches replace them."""
    import comfy.patcher_extension as pe

    m = model.clone()
    for kind in (pe.WrappersMP.OUTER_SAMPLE, pe.WrappersMP.DIFFUSION_MODEL):
        m.remove_wrappers_with_key(kind, KEY)
    opts = m.model_options.get("transformer_options", {})
    override = opts.get("optimized_attention_override")
    if getattr(override, "dynaccel_accelerator", None) is not None:
        previous = getattr(override, "dynaccel_previous", None)
        if previous is None:
            del opts["optimized_attention_override"]
        else:
            opts["optimized_attention_override"] = previous
    return m


def _on_copies(block: Callable) -> Callable:
    """``block`` (a ComfyUI ``original_block``) called with copies of its ``img``/``txt`` input tensors."""

    def run(args: dict) -> Any:
        return block({k: (v.clone() if k in ("img", "txt") and isinstance(v, torch.Tensor) else v) for k, v in args.items()})

    return run


def _block_patch(acc: Accelerator, i: int) -> Callable:
    def block(args, extra):
        return acc.block_call(i, args, extra)

    return block


def accelerator_of(model: Any) -> Accelerator | None:
    """The accelerator a dynaccel node installed on ``model`` (or on a model it was cloned from), if any."""
    import comfy.patcher_extension as pe

    for fn in getattr(model, "wrappers", {}).get(pe.WrappersMP.OUTER_SAMPLE, {}).get(KEY, []):
        acc = getattr(fn, "dynaccel_accelerator", None)
        if acc is not None:
            return acc
    return None
