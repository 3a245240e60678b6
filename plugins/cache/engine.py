"""Shared machinery of the cache strategies: run and CFG-branch tracking, block skipping, residual reuse.

A cache strategy is a *policy* (when to skip, what to measure) run by one :class:`CacheEngine` per model. The
engine hooks the model through diffusers' ``HookRegistry`` (instance-level, under names unique to the engine,
removed exactly by ``remove()``; see :mod:`dynaccel.plugins.engine`):

- a model-level hook tracks the generation and the CFG branch with the shared
  :class:`~dynaccel.plugins.engine.runs.RunTracker` (a new run when the pipeline's scheduler starts new timesteps,
  at a fresh ``step_index == 0``, or after ``handle.reset()``; the branch is the ``cache_context`` name diffusers
  pipelines set: ``cond``, ``uncond`` or ``cond_uncond`` for batched CFG). Every branch keeps its own state.
  With two-pass CFG (``cfg_sync``, on by default) the branch that runs first at a step decides for the step: a
  later branch measures as usual, then takes the first one's decision (per block for per-block policies), so the
  guidance term never combines a freshly computed prediction with a reused one. A branch that cannot reuse (no
  cache yet) computes.
- block hooks (for block-level policies) let block 0 decide, make the remaining blocks pass their inputs through
  when the pass is skipped, and add the cached residual at the last block. The residual is taken over the blocks
  only, so the patch embedding, timestep embedding and output projection always run on the current input.

Batches: policies measure per sample and skip a pass only when every sample in the batch agrees (the batch is
computed when any sample needs it); after a computed pass all samples' accumulators restart together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from ...core.adapters import BLOCKS, ModelAdapter
from ...core.api import AccelWarning
from ...core.config import StrategyConfig, option
from ...core.errors import ConfigError, DynaccelError
from ...core.strategy import RunProbe, Strategy
from ..engine import diffusers_hooks
from ..engine.base import Engine, EngineHandle, apply_engine, hook_name
from ..engine.runs import BranchRun, Run, RunTracker
from . import kernels

logger = logging.getLogger("dynaccel")

#: a schedule of this many steps or fewer is a few-step one (a distilled student, LCM, Lightning...): caches warn
FEW_STEPS = 8



@dataclass(frozen=True)
class CacheConfig(StrategyConfig):
    """Options every cache strategy has. Subclasses redeclare ``threshold`` with their own default and range."""

    quality_knob: ClassVar[str] = "threshold"  # what calibrate searches and the demo sweeps

    threshold: float = option(0.1, doc="skip while the estimated change stays below this; 0 never skips", min=0.0, max=10.0)
    start: float = option(
        0.0, doc="fraction of the steps at the start that are always computed", min=0.0, max=1.0, step=0.01
    )
    end: float = option(
        1.0, doc="fraction of the steps after which every step is computed", min=0.0, max=1.0, step=0.01
    )
    compute_last: bool = option(
        True,
        doc="always compute the last step (as TeaCache does); off: the last step may reuse like any other "
        "(as diffusers' MagCache does)",
    )
    cfg_sync: bool = option(
        True,
        doc="two-pass CFG: the second branch at a step (uncond) takes the first one's (cond) skip decision, so "
        "guidance never mixes a fresh and a reused prediction; off: each branch decides alone",
    )

    def validate(self) -> None:
        if self.start > self.end:
            raise ConfigError(
                f"option 'start': got {self.start!r} with end={self.end!r}; accepted: start <= end"
            )


@dataclass
class BranchState(BranchRun):
    """State of one CFG branch within one generation (``data``: the policy's tensors and counters)."""

    computed: int = 0
    skipped: int = 0
    skipped_steps: list[int] = field(default_factory=list)
    blocks_computed: int = 0  # per-block policies: block calls computed / reused
    blocks_reused: int = 0


@dataclass
class RunState(Run):
    """One generation: its token (from the run probe), step count and branches."""

    branch_cls: type = field(default=BranchState, repr=False)
    #: cfg_sync: step (or (step, block)) -> (branch that decided first, its decision: reuse or not)
    decisions: dict[Any, tuple[str, bool]] = field(default_factory=dict)
    reused_per_block: list[int] = field(default_factory=list)  # per-block policies, all branches together


@dataclass
class Pass:
    """One call of the transformer."""

    branch: BranchState
    step: int
    num_steps: int | None
    forced: bool
    skip: bool | None = None
    anchor_hs: torch.Tensor | None = None
    anchor_enc: torch.Tensor | None = None
    input_hs: torch.Tensor | None = None  # block 0's hidden-states input
    call: tuple | None = None  # the model call's (args, kwargs), for policies that read its inputs (adapter calls)
    sigma: float | None = None  # the noise level the pipeline's cache context gives, if any


class CachePolicy:
    """What a cache strategy decides. Override the callbacks it needs; set ``level`` and ``anchor``."""

    #: "blocks": skip the block stack and reuse its residual (needs an adapter); "model": skip the whole call;
    #: "per_block": each block decides on its own whether to reuse its cached residual
    level = "blocks"
    #: for block level: where the cached residual starts, "input" (of block 0) or "block0" (its output)
    anchor = "input"
    #: True when threshold 0 means "never skips" for this policy: the engine then runs the pass untouched. Off by
    #: default: a policy may skip by a rule of its own at threshold 0 (a fixed schedule), or record every pass there
    #: (a calibration run)
    idle_when_off = False

    def __init__(self, config: CacheConfig, adapter: Any):
        self.config = config
        self.adapter = adapter

    def begin(self, p: Pass, x: torch.Tensor | None) -> None:
        """Start of a pass; may set ``p.skip``. ``x`` is the model's hidden_states input for model-level policies."""

    def before_block0(self, p: Pass, spec: Any, args: tuple, kwargs: dict) -> None:
        """Block 0 is about to run; may set ``p.skip`` (skips every block)."""

    def after_block0(self, p: Pass, hs: torch.Tensor, enc: torch.Tensor | None) -> None:
        """Block 0 ran (anchor "block0"); may set ``p.skip`` (skips the remaining blocks)."""

    def computed(self, p: Pass, residual: torch.Tensor) -> None:
        """A block-level pass was computed in full; ``residual`` is the new cached hidden-states residual."""

    def model_computed(self, p: Pass, x: torch.Tensor, out: torch.Tensor) -> None:
        """A model-level pass was computed in full."""

    def model_skip_output(self, p: Pass, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def residuals(self, p: Pass) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The residuals a skipped block-level pass adds (default: the last computed ones; forecasters override)."""
        return p.branch.data.get("res_hs"), p.branch.data.get("res_enc")

    def pass_finished(self, p: Pass) -> None:
        """A block-level or per-block pass returned (computed or skipped)."""

    def block_reuse(self, p: Pass, i: int, hs: torch.Tensor) -> bool:
        """Per-block policies: whether block ``i`` reuses its cached residual in this pass."""
        return False

    def block_computed(self, p: Pass, i: int, hs_in: torch.Tensor, residual: torch.Tensor) -> None:
        """Per-block policies: block ``i`` was computed; ``residual`` is its new cached hidden-states residual."""

    def run_started(self, run: RunState) -> None:
        """A new generation starts."""

    def run_finished(self, run: RunState) -> None:
        """The generation ended (diffusers resets its stateful hooks at the end of every pipeline call)."""

    def extra_stats(self) -> dict[str, Any]:
        return {}


class TaylorForecast:
    """The block-stack residual of a skipped pass forecast by a Taylor expansion in the step index over the last
    computed steps (TaylorSeer's rule, arXiv 2503.06923): r(t) ~ r(t0) + r'(t0) (t - t0) + r''(t0) (t - t0)^2 / 2,
    the derivatives finite differences over the computed steps (``order`` 0 reuses, 1 extrapolates linearly, 2
    quadratically). Kept per CFG branch in ``p.branch.data``; memory: ``order + 1`` residuals per branch."""

    @staticmethod
    def record(p: Pass, residual: torch.Tensor, order: int) -> None:
        """A computed pass: its residual and the finite differences with the previous computed ones."""
        data = p.branch.data
        old = data.get("derivs") or []
        last = data.get("last_step")
        new = [residual]
        if old and last is not None and old[0].shape == residual.shape and p.step > last:
            dt = float(p.step - last)
            for j in range(min(order, len(old))):
                new.append((new[j] - old[j]) / dt)
        data["derivs"], data["last_step"] = new, p.step
        data.pop("forecast_step", None)

    @staticmethod
    def ready(p: Pass, order: int) -> bool:
        """Enough computed steps for the derivatives of ``order``."""
        return len(p.branch.data.get("derivs") or []) >= order + 1

    @staticmethod
    def forecast(p: Pass, order: int) -> torch.Tensor:
        """The forecast residual at ``p.step`` (memoized per step); the last computed one while too few steps
        were computed for ``order``."""
        data = p.branch.data
        if data.get("forecast_step") != p.step:
            derivs = data["derivs"]
            k = float(p.step - data["last_step"])
            out = derivs[0]
            for j in range(1, min(order, len(derivs) - 1) + 1):
                out = out + derivs[j] * (k**j / math.factorial(j))
            data["forecast"], data["forecast_step"] = out, p.step
        return data["forecast"]


    @staticmethod
    def residuals(p: Pass, order: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """What a skipped pass adds for a policy with an ``order`` option: the forecast hidden-states residual
        once two computed steps give a slope (order >= 1), else the last computed one; the text residual as
        computed."""
        data = p.branch.data
        if not order or not TaylorForecast.ready(p, 1):
            return data.get("res_hs"), data.get("res_enc")
        return TaylorForecast.forecast(p, order), data.get("res_enc")


def all_below(values: torch.Tensor, threshold: float) -> bool:
    """True when every sample's value is below ``threshold``: the one host read a data-driven skip needs."""
    return threshold > 0 and bool((values < threshold).all())


def _hidden_states_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    raise DynaccelError("cache: could not find the model's hidden_states input (first argument)")


def _replace_sample(out: Any, sample: torch.Tensor) -> Any:
    if isinstance(out, torch.Tensor):
        return sample
    if isinstance(out, tuple):
        return (sample,) + tuple(out[1:])
    if dataclasses.is_dataclass(out) and hasattr(out, "sample"):
        return dataclasses.replace(out, sample=sample)
    raise DynaccelError(f"cache: cannot rebuild a model output of type {type(out).__name__}")


def _sample_of(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple):
        return out[0]
    if hasattr(out, "sample"):
        return out.sample
    raise DynaccelError(f"cache: cannot read the sample of a model output of type {type(out).__name__}")


class _Plain(ModelAdapter):
    """The defaults of :class:`ModelAdapter` for a model-level policy on a model without an adapter."""

    name = "plain"
    architectures = ()


class CacheEngine(Engine):
    """Runs one policy on one model.

    ``model_forward`` and ``block_forward`` are the whole policy loop; ``install`` wires them to diffusers hooks.
    Other runners (the ComfyUI nodes) drive the passes themselves and never install: ``start_run(num_steps,
    log=False)`` at the start of their sampling run, then ``model_forward`` / ``block_forward`` from their own hook
    points (``in_pass`` says whether a model pass is in progress), ``finish_run()`` and ``stats()`` at its end.
    """

    def __init__(self, model: torch.nn.Module, policy: CachePolicy, probe: RunProbe | None, strategy: str):
        self.model = model
        self.policy = policy
        self.strategy = strategy
        self.config: CacheConfig = policy.config
        self.current: Pass | None = None
        self.specs = policy.adapter.blocks() if policy.level in ("blocks", "per_block") else []
        #: how model calls read (step context, input, output, skipped blocks): the adapter, or the defaults
        self.io: ModelAdapter = policy.adapter if policy.adapter is not None else _Plain(model)
        self.tracker: RunTracker[RunState] = RunTracker(
            probe,
            make_run=lambda token, n: RunState(token, n, reused_per_block=[0] * len(self.specs)),
            on_start=self._run_started,
            on_finish=self._run_finished,
        )
        self._warned_few_steps = False
        self.run_hook = hook_name("cache", "run")
        self.block_hook = hook_name("cache", "block")
        self.installed = False
        self._attached = False

    def _run_started(self, run: RunState) -> None:
        self.policy.run_started(run)
        n = run.num_steps
        if n is not None and n <= FEW_STEPS and not self._warned_few_steps and self.config.threshold > 0:
            self._warned_few_steps = True  # once per handle: a loop of generations is not a flood of warnings
            forced = 1 + (1 if self.config.compute_last and n > 1 else 0)
            warnings.warn(
                f"{self.strategy} on a {n}-step schedule (a few-step or distilled model): step 0"
                + (f" and step {n - 1} are" if forced == 2 else " is") + f" always computed, so at most {n - forced} "
                f"of {n} passes can be reused, and each step changes the output far more than in a 30-50-step "
                "run, so thresholds tuned at many steps rarely skip here and any skip costs more quality. "
                "Calibrate on this model (dynaccel calibrate --model ...) and compare with its own fewer-steps "
                "rows (dynaccel bench).", AccelWarning, stacklevel=2)

    @property
    def run(self) -> RunState | None:
        """The current (or last finished) generation."""
        return self.tracker.run

    @property
    def in_pass(self) -> bool:
        """True while a model pass runs (block calls outside a pass are plain compute)."""
        return self.current is not None

    # ---- installation -------------------------------------------------------------------------------------------
    def install(self) -> None:
        """Hook the model and its blocks. A failure part-way is undone by :func:`install_or_roll_back`."""
        if self.policy.adapter is not None and (self.specs or self.policy.level == "model"):
            self.policy.adapter.attach()
            self._attached = True
        try:
            diffusers_hooks.add_hook(self.model, diffusers_hooks.run_hook(self), self.run_hook)
            for i, spec in enumerate(self.specs):
                diffusers_hooks.add_hook(spec.module, diffusers_hooks.block_hook(self, i), self.block_hook)
        finally:
            diffusers_hooks.refresh(self.model)
        self.installed = True

    def uninstall(self) -> None:
        """Remove this engine's hooks (by their names: other engines' hooks stay) and detach the adapter."""
        diffusers_hooks.remove_hook(self.model, self.run_hook)
        for spec in self.specs:
            diffusers_hooks.remove_hook(spec.module, self.block_hook)
        diffusers_hooks.refresh(self.model)
        if self._attached:
            self.policy.adapter.detach()
            self._attached = False
        self.tracker.run = None
        self.installed = False

    # ---- runs ---------------------------------------------------------------------------------------------------
    def reset(self, num_steps: int | None = None) -> None:
        """End the current generation; the next pass starts a new one (of ``num_steps`` steps when given)."""
        self.tracker.start(num_steps)

    def finish_run(self) -> None:
        """End the current generation (diffusers calls it at the end of every pipeline call); stats stay readable."""
        self.tracker.finish()

    def _run_finished(self, run: RunState) -> None:
        self.policy.run_finished(run)
        if self.log_summary and logger.isEnabledFor(logging.INFO):
            logger.info(self.summary())
        for b in run.branches.values():
            b.data.clear()  # free cached tensors; keep the counts for stats

    @contextlib.contextmanager
    def record_signals(self):
        """Policies with a ``recorder`` (TeaCache) append ``(kind, branch, step, value)`` per pass within the block."""
        if not hasattr(self.policy, "recorder"):
            yield []
            return
        records: list = []
        self.policy.recorder = records
        try:
            yield records
        finally:
            self.policy.recorder = None

    def _forced(self, step: int, n: int | None) -> bool:
        if step == 0:
            return True
        if n is None:
            if self.config.start > 0 or self.config.end < 1:
                raise DynaccelError(
                    f"{self.strategy}: start/end are fractions of the step count, which is unknown for a bare model; "
                    "call handle.reset(num_steps=N) before each generation (pipelines report it themselves)"
                )
            return False
        if step >= n - 1 and self.config.compute_last:
            return True
        frac = step / n
        return frac < self.config.start or frac >= self.config.end

    # ---- forwards -----------------------------------------------------------------------------------------------
    def model_forward(self, orig: Callable, ctx: Any, args: tuple, kwargs: dict) -> Any:
        if ctx is None:  # no diffusers pipeline: the adapter may know the step (a policy's sampling loop)
            ctx = self.io.call_context(args, kwargs)
        name, ctx_step, ctx_steps, timestep = diffusers_hooks.context_fields(ctx)
        call = self.tracker.observe(name, step=ctx_step, num_steps=ctx_steps, timestep=timestep)
        run, b, step = call.run, call.branch, call.step
        p = Pass(b, step, run.num_steps, self._forced(step, run.num_steps), call=(args, kwargs),
                 sigma=getattr(ctx, "sigma", None))
        if self._idle():  # the off setting: nothing is measured, stored or decided; the pass is only counted
            b.computed += 1
            return orig(*args, **kwargs)
        self.current = p
        try:
            if self.policy.level == "model":
                x = self._model_input(args, kwargs)
                self.policy.begin(p, x)
                self._sync(p)
                if p.skip:
                    out = self._with_sample(b.data["last_output"], self.policy.model_skip_output(p, x))
                else:
                    out = orig(*args, **kwargs)
                    b.data["last_output"] = out
                    self.policy.model_computed(p, x, self._sample(out))
            else:
                self.policy.begin(p, None)
                self._sync(p)
                out = orig(*args, **kwargs)
                self.policy.pass_finished(p)
        finally:
            self.current = None
        if p.skip:
            b.skipped += 1
            b.skipped_steps.append(step)
        else:
            b.computed += 1
        return out

    def _idle(self) -> bool:
        """True for the off setting (threshold 0) of a policy that records nothing: the pass runs untouched, so
        the off setting costs nothing but this check (no block-0 signal, no residual kept)."""
        return (self.config.threshold <= 0 and self.policy.idle_when_off
                and getattr(self.policy, "recorder", None) is None)

    def _model_input(self, args: tuple, kwargs: dict) -> torch.Tensor:
        x = self.io.denoiser_input(args, kwargs)
        return x if x is not None else _hidden_states_arg(args, kwargs)

    def _sample(self, out: Any) -> torch.Tensor:
        sample = self.io.denoiser_output(out)
        return sample if sample is not None else _sample_of(out)

    def _with_sample(self, out: Any, sample: torch.Tensor) -> Any:
        if self.io.denoiser_output(out) is not None:
            return self.io.with_denoiser_output(out, sample)
        return _replace_sample(out, sample)

    def _skipped(self, i: int, args: tuple, kwargs: dict, out: Any) -> Any:
        """Block ``i`` does not run: the adapter settles what it owes besides its output; returns ``out``."""
        self.io.block_skipped(i, args, kwargs)
        return out

    def block_forward(self, i: int, orig: Callable, args: tuple, kwargs: dict) -> Any:
        p = self.current
        if p is None:  # a block called outside a model pass: nothing to decide
            return orig(*args, **kwargs)
        spec = self.specs[i]
        if self.policy.level == "per_block":
            return self._per_block(p, i, spec, orig, args, kwargs)
        last = i == len(self.specs) - 1
        if i == 0:
            hs, enc = spec.inputs(args, kwargs)
            p.anchor_hs, p.anchor_enc, p.input_hs = hs, enc, hs
            if p.skip is None:
                self.policy.before_block0(p, spec, args, kwargs)
                self._sync(p)
            if p.skip:
                return self._skipped(i, args, kwargs,
                                     spec.pack(*self._reuse(p, hs, enc)) if last else spec.pack(hs, enc))
            out = orig(*args, **kwargs)
            if self.policy.anchor == "block0":
                ohs, oenc = spec.outputs(out)
                p.anchor_hs, p.anchor_enc = ohs, oenc
                self.policy.after_block0(p, ohs, oenc)
                self._sync(p)
                if p.skip:
                    return spec.pack(*self._reuse(p, ohs, oenc)) if last else out
            if last:
                self._store(p, *spec.outputs(out))
            return out
        if p.skip:
            hs, enc = spec.inputs(args, kwargs)
            return self._skipped(i, args, kwargs, spec.pack(*self._reuse(p, hs, enc)) if last else spec.pack(hs, enc))
        out = orig(*args, **kwargs)
        if last:
            self._store(p, *spec.outputs(out))
        return out

    def _follow(self, key: Any, branch: str, decision: bool, can_reuse: bool) -> bool:
        """cfg_sync: the first branch to decide ``key`` records its decision; later branches take it (computing
        when they cannot reuse). Returns the decision to apply."""
        run = self.run
        if not self.config.cfg_sync or run is None:
            return decision
        first = run.decisions.get(key)
        if first is None or first[0] == branch:
            run.decisions[key] = (branch, decision)
            return decision
        return first[1] and can_reuse

    def _sync(self, p: Pass) -> None:
        """Apply :meth:`_follow` to a pass-level decision (after the policy set ``p.skip``)."""
        if p.skip is None:
            return
        data = p.branch.data
        can = ("last_output" in data) if self.policy.level == "model" else ("res_hs" in data)
        p.skip = self._follow(p.step, p.branch.name, bool(p.skip), can and not p.forced)

    def _store(self, p: Pass, hs: torch.Tensor, enc: torch.Tensor | None) -> None:
        data = p.branch.data
        data["res_hs"] = hs - p.anchor_hs
        data["res_enc"] = enc - p.anchor_enc if enc is not None and p.anchor_enc is not None else None
        self.policy.computed(p, data["res_hs"])

    def _reuse(self, p: Pass, hs: torch.Tensor, enc: torch.Tensor | None):
        res, res_enc = self.policy.residuals(p)
        if res is None or res.shape != hs.shape:
            raise DynaccelError(f"{self.strategy}: internal error: a pass was skipped with no cached residual")
        new_hs = kernels.residual_add(hs, res)
        new_enc = kernels.residual_add(enc, res_enc) if enc is not None and res_enc is not None else enc
        return new_hs, new_enc

    def _per_block(self, p: Pass, i: int, spec: Any, orig: Callable, args: tuple, kwargs: dict) -> Any:
        hs, enc = spec.inputs(args, kwargs)
        cache = p.branch.data.setdefault("blocks", {})
        cached = cache.get(i)
        usable = cached is not None and cached[0].shape == hs.shape and not p.forced
        reuse = self._follow((p.step, i), p.branch.name, usable and self.policy.block_reuse(p, i, hs), usable)
        if reuse:
            p.branch.blocks_reused += 1
            self.run.reused_per_block[i] += 1
            res_hs, res_enc = cached
            new_enc = kernels.residual_add(enc, res_enc) if enc is not None and res_enc is not None else enc
            return self._skipped(i, args, kwargs, spec.pack(kernels.residual_add(hs, res_hs), new_enc))
        out = orig(*args, **kwargs)
        ohs, oenc = spec.outputs(out)
        res_hs = ohs - hs
        cache[i] = (res_hs, oenc - enc if oenc is not None and enc is not None else None)
        p.branch.blocks_computed += 1
        self.policy.block_computed(p, i, hs, res_hs)
        return out

    # ---- stats --------------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        run = self.run
        branches = run.branches if run is not None else {}
        computed = sum(b.computed for b in branches.values())
        skipped = sum(b.skipped for b in branches.values())
        passes = computed + skipped
        per_block = self.policy.level == "per_block"
        stats: dict[str, Any] = {
            "strategy": self.strategy,
            "num_steps": run.num_steps if run is not None else None,
            "passes": passes,
            "computed": computed,
            "skipped": skipped,
            "pass_speedup": passes / computed if computed else None,
            "branches": {
                name: {
                    "computed": b.computed,
                    "skipped": b.skipped,
                    "skipped_steps": list(b.skipped_steps),
                    **({"blocks_computed": b.blocks_computed, "blocks_reused": b.blocks_reused} if per_block else {}),
                }
                for name, b in branches.items()
            },
        }
        if per_block:
            stats["blocks_computed"] = sum(b.blocks_computed for b in branches.values())
            stats["blocks_reused"] = sum(b.blocks_reused for b in branches.values())
            if run is not None:
                stats["reused_per_block"] = list(run.reused_per_block)
        stats.update(self.policy.extra_stats())
        return stats

    def summary(self) -> str:
        s = self.stats()
        if "blocks_computed" in s:
            total = s["blocks_computed"] + s["blocks_reused"]
            return f"{self.strategy}: computed {s['blocks_computed']}/{total} block calls in {s['passes']} passes"
        parts = ", ".join(f"{n} {b['computed']}/{b['computed'] + b['skipped']}" for n, b in s["branches"].items())
        speed = f", {s['pass_speedup']:.2f}x fewer passes" if s["pass_speedup"] else ""
        return f"{self.strategy}: computed {s['computed']}/{s['passes']} transformer passes ({parts}){speed}"


class CacheHandle(EngineHandle):
    """Handle of a cache strategy on one model (the shared engine handle)."""


def apply_policy(strategy_cls: Any, target: Any, config: CacheConfig, policy: CachePolicy, probe: RunProbe | None):
    """Install ``policy`` on ``target`` and return its handle (used by every cache strategy's ``apply``)."""
    return apply_engine(strategy_cls, target, config, CacheEngine(target, policy, probe, strategy_cls.name), CacheHandle)


class CacheStrategy(Strategy):
    """Base of the cache strategies: a ``Config`` and a ``Policy`` run by the shared engine on the block stack."""

    family = "cache"
    needs_adapter = True
    needs_capabilities = frozenset({BLOCKS})
    comfyui_runner = "cache"  # ComfyUI nodes (comfy_nodes/)
    Policy: ClassVar[type[CachePolicy]]
    #: the Config option capping how many passes in a row may reuse the cache, if any; ``dynaccel calibrate``
    #: searches it along with the threshold
    cap_option: ClassVar[str | None] = None

    def apply(self, target, config, adapter, run_probe):
        return apply_policy(type(self), target, config, self.Policy(config, adapter), run_probe)

    def pipeline_warnings(self, pipe, config):
        sched = getattr(pipe, "scheduler", None)
        name = type(sched).__name__
        algo = str(getattr(getattr(sched, "config", None), "algorithm_type", "") or "")
        if "Ancestral" in name or "SDE" in name or algo.startswith("sde"):
            return [
                f"{self.name}: scheduler {name} injects fresh noise every step, so consecutive steps differ more "
                "than caching assumes; expect fewer skips or artifacts (a deterministic scheduler suits caching)"
            ]
        return []


def polyval(coeffs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Evaluate a polynomial (highest power first, numpy.poly1d order) on a device tensor, no host sync."""
    out = torch.zeros_like(x)
    for c in coeffs:
        out = out * x + c
    return out


