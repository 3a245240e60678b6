"""Shared machinery of the sparse-attention strategies: processors in, steps tracked, masks run through the kernel.

A strategy is a *policy* that, for one attention call, returns the passes to run: each pass is a token order of the
video tokens and a block mask over ``[video in that order] x [video in that order, text]`` (see :mod:`.masks`).
The :class:`SparseAttentionEngine` installs the adapter's sparse processor on every self-attention module
(``set_processor``; the originals are put back by ``remove()``), reads the video token grid, the CFG branch and
the denoising step in a model-level diffusers hook (the shared one of :mod:`dynaccel.plugins.engine`), and runs
the passes:

- text query rows (the prompt's own attention, a few hundred rows) run dense with ``scaled_dot_product_attention``;
- video query rows run :func:`.kernels.block_sparse_attention` once per pass, on the reordered tokens; the outputs
  of passes (disjoint per head) are added;
- text padding (HunyuanVideo) becomes a per-sample key length: text follows the video in the reordered keys.
- ``remainder="pooled"`` (every strategy): the key blocks a mask skips still enter each query row's softmax through
  one pooled key each (mean key and value, weighted by the token count; see :mod:`.kernels`); the share of blocks
  computed exactly (``mean_density``) is unchanged, ``mean_work`` adds the pooled rows (``1 / block_size`` of the
  skipped part).

When a policy says a call is dense (warm-up steps, a full mask, density 1), the processor calls the module's
original processor before computing anything, so dense settings are bit-identical to the plain model.

Runs, steps and CFG branches follow the shared :class:`~dynaccel.plugins.engine.runs.RunTracker`: the branch is the
pipeline's cache-context name (``cond`` / ``uncond``; ``default`` for a bare model) and each branch counts its own
steps and keeps its own policy state (``policy.state``: e.g. PASA's trajectory); the step is the context's step
index, else it advances when the model's ``timestep`` argument changes (one host read per model call); a new
generation starts when the pipeline's scheduler starts new timesteps (the run probe), at the end of a pipeline
call, when a branch's step index restarts at 0 or (without step indices) its timestep goes up, or after
``handle.reset()``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ...core.adapters import SELF_ATTENTION
from ...core.config import StrategyConfig, option
from ...core.errors import ConfigError, DynaccelError
from ...core.strategy import RunProbe, Strategy
from ..engine import diffusers_hooks
from ..engine.base import Engine, EngineHandle, apply_engine, hook_name
from ..engine.runs import Run, RunTracker
from . import kernels
from .masks import MaskPlan


@dataclass(frozen=True)
class SparseAttentionConfig(StrategyConfig):
    """Options every sparse-attention strategy has."""

    block_size: int = option(
        64, doc="tokens per block of the block-sparse kernel (GPU: 64 or 128; tiny models: 16, or 8 for a finer "
        "selection: the torch path only, 'auto' picks it)", choices=(8, 16, 32, 64, 128),
    )
    dense_steps: int = option(
        0, doc="the first N denoising steps run dense attention (warm-up); a value >= the step count keeps it dense",
        min=0, max=10000,
    )
    backend: str = option(
        "auto", doc="attention kernel: 'auto' (Triton on CUDA, else the torch path), 'triton' or 'torch'",
        choices=("auto", "triton", "torch"),
    )
    remainder: str = option(
        "drop", doc="key blocks the mask skips: 'drop' them, or 'pooled': each still adds its mean key and value "
        "as one key row weighted by its token count (about 1/block_size of the skipped work)",
        choices=kernels.REMAINDERS,
    )

    def validate(self) -> None:
        if self.backend == "triton" and self.block_size < kernels.TRITON_MIN_BLOCK:
            raise ConfigError(
                f"option 'block_size': got {self.block_size!r} with backend='triton'; accepted: block_size >= "
                f"{kernels.TRITON_MIN_BLOCK} for the Triton kernel (its tl.dot tiles), or backend 'torch' or 'auto'"
            )


@dataclass
class CallInfo:
    """What a policy sees of one attention call (video part only)."""

    index: int  # which attention module
    step: int
    grid: tuple[int, int, int]
    num_text: int
    block_size: int
    q: torch.Tensor  # (B, Nv, H, D) video queries, raster order
    k: torch.Tensor  # (B, Nv + Nt, H, D) keys [video raster, text]
    v: torch.Tensor
    kv_len: torch.Tensor | None  # (B,) valid keys in [video, text] order, or None


@dataclass
class Pass:
    plan: MaskPlan
    block_mask: torch.Tensor  # (B or 1, H or 1, nQ, nK)
    #: set for masks that repeat across calls (static patterns): the engine then keeps the mask's device copy and
    #: index lists under this key instead of rebuilding them every call
    cache_key: Any = None
    #: (B or 1, H) bool: the heads this pass answers for (passes that split the heads between them); the pass's
    #: output is zeroed elsewhere, which matters with ``remainder="pooled"`` (an all-refused row is not empty)
    heads: torch.Tensor | None = None


class SparsePolicy:
    """What a sparse-attention strategy decides. Subclasses implement :meth:`passes` and :meth:`full`."""

    def __init__(self, config: SparseAttentionConfig):
        self.config = config
        self._plans: dict[tuple, MaskPlan] = {}
        #: the state of the CFG branch whose model call is in progress (a dict kept per branch and generation by
        #: the engine; policies that follow a trajectory keep it here)
        self.state: dict[str, Any] = {}

    def plan(self, key: tuple, make) -> MaskPlan:
        if key not in self._plans:
            self._plans[key] = make()
        return self._plans[key]

    def full(self, grid: tuple[int, int, int], step: int) -> bool:
        """True when every call at this grid and step is dense (the processors then skip the engine)."""
        raise NotImplementedError

    def passes(self, call: CallInfo) -> list[Pass]:
        raise NotImplementedError

    def step_started(self, step: int, latent: torch.Tensor) -> None:
        """A new denoising step of the current branch (``self.state``): ``latent`` is the model's hidden_states
        input."""

    def run_started(self) -> None:
        """A new generation."""

    def extra_stats(self) -> dict[str, Any]:
        return {}


_MAX_RUNS = 1000


@dataclass
class _Stats:
    sparse_calls: int = 0
    dense_calls: int = 0
    density_sum: float = 0.0
    pooled_sum: float = 0.0  # pooled key rows per call, as a share of the video key rows (remainder="pooled")
    steps: int = 0
    per_step_density: dict[int, list[float]] = field(default_factory=dict)


class SparseAttentionEngine(Engine):
    """Runs one policy on one model (the router the adapter's processors call)."""

    def __init__(self, model, adapter, policy: SparsePolicy, probe: RunProbe | None, strategy: str):
        self.model = model
        self.adapter = adapter
        self.policy = policy
        self.strategy = strategy
        self.config = policy.config
        self.modules = list(adapter.self_attention_modules())
        self.originals: list[Any] = []
        self.run_hook = hook_name("sparse_attention", "run")
        self.grid: tuple[int, int, int] | None = None
        self.step = 0
        self._calls_in_progress = 0
        self.tracker: RunTracker[Run] = RunTracker(probe, on_start=self._run_started)
        self.counts = _Stats()
        #: (mean density, mean work) of each earlier generation since apply, oldest first (at most _MAX_RUNS)
        self.past_runs: list[tuple[float, float]] = []
        self._prepared: dict[Any, kernels.BlockIndex] = {}
        params = list(inspect.signature(model.forward).parameters)
        self._timestep_pos = params.index("timestep") if "timestep" in params else None

    # ---- installation -----------------------------------------------------------------------------------------
    def install(self) -> None:
        if not self.modules:
            raise DynaccelError(f"{self.strategy}: the adapter {self.adapter.name!r} found no self-attention modules")
        procs = [
            self.adapter.sparse_attention_processor(m, m.processor, self, i) for i, m in enumerate(self.modules)
        ]  # built before anything changes
        for m, p in zip(self.modules, procs):
            self.originals.append(m.processor)
            m.set_processor(p)
        diffusers_hooks.add_hook(self.model, diffusers_hooks.run_hook(self), self.run_hook)

    def uninstall(self) -> None:
        """Put the original processors back and remove this engine's hook; safe after a partial install."""
        for m, orig in zip(self.modules, self.originals):
            m.set_processor(orig)
        self.originals.clear()
        diffusers_hooks.remove_hook(self.model, self.run_hook)

    def reset(self, num_steps: int | None = None) -> None:
        """The next model call starts a new generation."""
        self.tracker.start(num_steps)

    def finish_run(self) -> None:
        """End the generation (diffusers calls it at the end of every pipeline call)."""
        self.tracker.finish()

    # ---- steps ------------------------------------------------------------------------------------------------
    def _run_started(self, run: Run) -> None:
        if self.counts.sparse_calls + self.counts.dense_calls:  # keep the finished generation's means
            done = self._means(self.counts)
            self.past_runs = (self.past_runs + [done])[-_MAX_RUNS:]
        self.counts = _Stats()
        self.policy.run_started()

    def model_forward(self, orig, ctx, args: tuple, kwargs: dict):
        self.grid = tuple(int(g) for g in self.adapter.token_grid(args, kwargs))
        branch, step, num_steps, t_val = diffusers_hooks.context_fields(ctx)
        if step is None and t_val is None:
            t = kwargs.get("timestep")
            if t is None and self._timestep_pos is not None and self._timestep_pos < len(args):
                t = args[self._timestep_pos]
            t_val = float(t.flatten()[0]) if isinstance(t, torch.Tensor) else (float(t) if t is not None else None)
        call = self.tracker.observe(branch, step=step, num_steps=num_steps, timestep=t_val)
        self.step = call.step
        self.policy.state = call.branch.data
        if call.new_step:
            self.counts.steps = max(self.counts.steps, call.step + 1)
            hs = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            self.policy.step_started(call.step, hs)
        self._calls_in_progress += 1
        try:
            return orig(*args, **kwargs)
        finally:
            self._calls_in_progress -= 1

    @property
    def in_pass(self) -> bool:
        return self._calls_in_progress > 0

    # ---- router protocol --------------------------------------------------------------------------------------
    def sparse_now(self) -> bool:
        if self.grid is None or self.step < self.config.dense_steps or self.policy.full(self.grid, self.step):
            self.counts.dense_calls += 1
            self.counts.per_step_density.setdefault(self.step, []).append(1.0)
            return False
        return True

    def attend(self, index, q, k, v, *, num_text: int, text_first: bool, key_padding) -> torch.Tensor:
        b, s, h, d = q.shape
        nv = s - num_text
        grid = self.grid
        if grid is None or grid[0] * grid[1] * grid[2] != nv:
            raise DynaccelError(
                f"{self.strategy}: attention call with {nv} video tokens, but the token grid {grid} holds "
                f"{None if grid is None else grid[0] * grid[1] * grid[2]}; this model layout is not supported"
            )
        if text_first:  # bring the joint sequence to [video, text]
            q, k, v = (torch.cat([x[:, num_text:], x[:, :num_text]], dim=1) for x in (q, k, v))
            if key_padding is not None:
                key_padding = torch.cat([key_padding[:, num_text:], key_padding[:, :num_text]], dim=1)
        kv_len = None
        if key_padding is not None:
            kv_len = key_padding.sum(1)
            prefix = torch.arange(s, device=q.device)[None, :] < kv_len[:, None]
            if not torch.equal(prefix, key_padding.to(prefix.device)) or bool((kv_len < nv).any()):
                raise DynaccelError(
                    f"{self.strategy}: the attention mask is not a padding of the text tokens; not supported"
                )
        out = torch.empty_like(q)
        if num_text:
            out[:, nv:] = self._dense_rows(q[:, nv:], k, v, kv_len)
        call = CallInfo(index, self.step, grid, num_text, self.config.block_size, q[:, :nv], k, v, kv_len)
        passes = self.policy.passes(call)
        video = None
        density = 0.0  # kept on the device (a tensor) until stats are read: no sync per call
        for p in passes:
            o = self._run_pass(p, q[:, :nv], k, v, nv, kv_len)
            video = o if video is None else video + o
            nkv = nv // p.plan.block_size  # key blocks holding video only
            density = density + (p.block_mask[..., :nkv].float().mean() if nkv else 1.0)
        out[:, :nv] = video
        self.counts.sparse_calls += 1
        self.counts.density_sum += density
        if self.config.remainder == "pooled":  # one pooled key row per skipped block of block_size keys
            self.counts.pooled_sum += (1.0 - density) / self.config.block_size
        self.counts.per_step_density.setdefault(self.step, []).append(density)
        if text_first:
            out = torch.cat([out[:, nv:], out[:, :nv]], dim=1)
        return out

    def _dense_rows(self, q, k, v, kv_len):
        mask = None
        if kv_len is not None:
            mask = (torch.arange(k.shape[1], device=q.device)[None, :] < kv_len[:, None])[:, None, None, :]
        o = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
        )
        return o.transpose(1, 2)

    def _run_pass(self, p: Pass, qv, k, v, nv, kv_len):
        order = p.plan.order.to(qv.device)
        keys = torch.cat([order, torch.arange(nv, k.shape[1], device=qv.device)])
        qo = qv.index_select(1, order).transpose(1, 2)
        ko = k.index_select(1, keys).transpose(1, 2)
        vo = v.index_select(1, keys).transpose(1, 2)
        if p.cache_key is not None:
            key = (p.cache_key, qv.device)
            if key not in self._prepared:
                self._prepared[key] = kernels.block_index(p.block_mask.to(qv.device))
            mask = self._prepared[key]
        else:
            mask = p.block_mask.to(qv.device)
        o = kernels.block_sparse_attention(
            qo, ko, vo, mask, p.plan.block_size, kv_len=kv_len, backend=self.config.backend,
            remainder=self.config.remainder,
        )
        if p.heads is not None:
            o = o * p.heads.to(device=o.device, dtype=o.dtype)[:, :, None, None]
        res = torch.empty_like(qv)
        res[:, order] = o.transpose(1, 2)
        return res

    # ---- stats ------------------------------------------------------------------------------------------------
    @staticmethod
    def _means(st: _Stats) -> tuple[float, float]:
        """(mean density, mean work) of one generation's calls (dense calls count 1)."""
        calls = st.sparse_calls + st.dense_calls
        mean = (float(st.density_sum) + st.dense_calls) / calls
        # attention work as a share of dense: exact blocks plus the pooled key rows of the skipped ones
        work = (float(st.density_sum) + float(st.pooled_sum) + st.dense_calls) / calls
        return mean, work

    def stats(self) -> dict[str, Any]:
        st = self.counts
        calls = st.sparse_calls + st.dense_calls
        mean, work = self._means(st) if calls else (None, None)
        runs = self.past_runs + ([(mean, work)] if calls else [])
        return {
            "strategy": self.strategy,
            "steps": st.steps,
            "attention_calls": calls,
            "sparse_calls": st.sparse_calls,
            "dense_calls": st.dense_calls,
            "mean_density": mean,
            "attention_sparsity": None if mean is None else 1.0 - mean,
            "remainder": self.config.remainder,
            "mean_work": work,
            # one entry per generation since apply (this one last; at most the last 1000): budgets that adapt
            # to the trajectory (pasa) give each prompt its own density
            "density_per_run": [r[0] for r in runs],
            "work_per_run": [r[1] for r in runs],
            "density_per_step": {s: float(sum(v)) / len(v) for s, v in sorted(st.per_step_density.items())},
            **self.policy.extra_stats(),
        }

    def summary(self) -> str:
        s = self.stats()
        if not s["attention_calls"]:
            return f"{self.strategy}: no attention call yet"
        return (
            f"{self.strategy}: {s['sparse_calls']}/{s['attention_calls']} attention calls sparse, mean density "
            f"{s['mean_density']:.2f} over {s['steps']} steps"
        )


class SparseAttentionHandle(EngineHandle):
    """Handle of a sparse-attention strategy on one model (the shared engine handle)."""


class SparseAttentionStrategy(Strategy):
    """Base of the sparse-attention strategies: a ``Config`` and a ``Policy`` run by the shared engine."""

    family = "sparse_attention"
    needs_adapter = True
    needs_capabilities = frozenset({SELF_ATTENTION})
    comfyui_runner = "sparse_attention"  # ComfyUI nodes (comfy_nodes/)
    Policy: ClassVar[type[SparsePolicy]]

    def apply(self, target, config, adapter, run_probe):
        engine = SparseAttentionEngine(target, adapter, self.Policy(config), run_probe, self.name)
        return apply_engine(self, target, config, engine, SparseAttentionHandle)
