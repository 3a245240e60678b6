"""An example dynaccel plugin: ``every_n``, a fixed-interval step cache.

Found by dynaccel through the entry point ``[project.entry-points.dynaccel] example = "dynaccel_example"``.
It is a cache strategy (``family = "cache"``), so ``dynaccel bench`` runs it in its default rows and enabling it
replaces another cache strategy, with no edit in dynaccel.

It installs through diffusers' hook API (``HookRegistry`` / ``ModelHook``), never by rebinding ``forward``:
hooks compose with other libraries' hooks, and removing one restores exactly what was there. diffusers is imported
when the strategy is applied, so ``import dynaccel`` stays light with this plugin installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import dynaccel
from dynaccel import Handle, Strategy, StrategyConfig, option

HOOK_NAME = "dynaccel_example.every_n"


@dataclass(frozen=True)
class EveryNConfig(StrategyConfig):
    n: int = option(2, doc="compute one call in n (1: compute every call)", min=1, max=10)


def _branch_key(args, kwargs):
    enc = kwargs.get("encoder_hidden_states")
    return enc.data_ptr() if isinstance(enc, torch.Tensor) else None


class EveryNHandle(Handle):
    """A diffusers ``ModelHook`` on the model; removing it (``remove_hook``) restores the plain forward.

    State is kept per CFG branch (keyed by the text-embedding tensor the pipeline passes for that branch) and
    cleared whenever ``run_probe`` reports a new generation.
    """

    def __init__(self, strategy, family, target, config, run_probe):
        from diffusers.hooks import HookRegistry, ModelHook

        super().__init__(strategy, family, target, config)
        self._probe = run_probe
        self._token = None
        self._reset(None)
        handle = self

        class EveryNHook(ModelHook):
            def new_forward(self, module, hidden_states, *args, **kwargs):
                return handle._forward(self.fn_ref.original_forward, hidden_states, *args, **kwargs)

        self._registry = HookRegistry.check_if_exists_or_initialize(target)
        self._registry.register_hook(EveryNHook(), HOOK_NAME)

    def _forward(self, forward, hidden_states, *args, **kwargs):
        token = self._probe()[0] if self._probe is not None else None
        if token is not None and token is not self._token:
            self._reset(None)
            self._token = token
        branch = self._branches.setdefault(_branch_key(args, kwargs), {"calls": 0, "last": None})
        branch["calls"] += 1
        self.calls += 1
        last = branch["last"]
        if last is not None and (branch["calls"] - 1) % self.config.n != 0 and last[0].shape == hidden_states.shape:
            x_prev, out_prev, output = last
            sample = hidden_states + (out_prev - x_prev)
            return (sample,) if isinstance(output, tuple) else type(output)(sample=sample)
        out = forward(hidden_states, *args, **kwargs)
        sample = out[0] if isinstance(out, tuple) else out.sample
        branch["last"] = (hidden_states, sample, out)
        self.computed += 1
        return out

    def _remove(self):
        self._registry.remove_hook(HOOK_NAME, recurse=False)

    def _reset(self, num_steps):
        self.calls = self.computed = 0
        self._branches = {}

    @property
    def stats(self):
        return {"strategy": self.strategy, "passes": self.calls, "computed": self.computed,
                "skipped": self.calls - self.computed}


class EveryN(Strategy):
    """Compute every n-th transformer call and reuse the last change in between (fixed interval, no criterion)."""

    name = "every_n"
    family = "cache"
    Config = EveryNConfig
    summary = "example plugin: compute one transformer call in n, reuse the last change in between"
    paper = "fixed-interval reuse, as in FORA (arXiv 2407.01425)"
    needs_adapter = False

    def apply(self, target, config, adapter, run_probe):
        return EveryNHandle(self.name, self.family, target, config, run_probe)


@dynaccel.hookimpl
def register_strategies(register):
    register(EveryN)
