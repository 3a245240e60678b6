"""An example dynaccel plugin: ``every_n``, a fixed-interval step cache.

Found by dynaccel through the entry point ``[project.entry-points.dynaccel] example = "dynaccel_example"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import dynaccel
from dynaccel import Handle, Strategy, StrategyConfig, option


@dataclass(frozen=True)
class EveryNConfig(StrategyConfig):
    n: int = option(2, doc="compute one call in n (1: compute every call)", min=1, max=10)


class EveryNHandle(Handle):
    """Wraps the model's forward on the instance; removing deletes the wrapper, restoring the class's forward.

    State is kept per CFG branch (keyed by the text-embedding tensor the pipeline passes for that branch) and
    cleared whenever ``run_probe`` reports a new generation.
    """

    def __init__(self, strategy, family, target, config, run_probe):
        super().__init__(strategy, family, target, config)
        self._probe = run_probe
        self._token = None
        self._reset(None)
        original = target.forward

        def forward(hidden_states, *args, **kwargs):
            token = self._probe()[0] if self._probe is not None else None
            if token is not None and token is not self._token:
                self._reset(None)
                self._token = token
            branch = self._branches.setdefault(_branch_key(args, kwargs), {"calls": 0, "last": None})
            branch["calls"] += 1
            self.calls += 1
            last = branch["last"]
            if last is not None and (branch["calls"] - 1) % config.n != 0 and last[0].shape == hidden_states.shape:
                x_prev, out_prev, output = last
                sample = hidden_states + (out_prev - x_prev)
                return (sample,) if isinstance(output, tuple) else type(output)(sample=sample)
            out = original(hidden_states, *args, **kwargs)
            sample = out[0] if isinstance(out, tuple) else out.sample
            branch["last"] = (hidden_states, sample, out)
            self.computed += 1
            return out

        target.forward = forward

    def _remove(self):
        del self.target.forward

    def _reset(self, num_steps):
        self.calls = self.computed = 0
        self._branches = {}

    @property
    def stats(self):
        return {"strategy": self.strategy, "passes": self.calls, "computed": self.computed,
                "skipped": self.calls - self.computed}


def _branch_key(args, kwargs):
    enc = kwargs.get("encoder_hidden_states")
    return enc.data_ptr() if isinstance(enc, torch.Tensor) else None


class EveryN(Strategy):
    """Compute every n-th transformer call and reuse the last change in between (fixed interval, no criterion)."""

    name = "every_n"
    family = "example"
    Config = EveryNConfig
    summary = "example plugin: compute one transformer call in n, reuse the last change in between"
    paper = "fixed-interval reuse, as in FORA (arXiv 2407.01425)"
    needs_adapter = False

    def apply(self, target, config, adapter, run_probe):
        return EveryNHandle(self.name, self.family, target, config, run_probe)


@dynaccel.hookimpl
def register_strategies(register):
    register(EveryN)
