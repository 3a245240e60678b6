"""The VLA family's engine: one listener on a policy's inference calls (see
:mod:`dynaccel.plugins.engine.policy_calls`), with the shared handle protocol.

A :class:`PolicyEngine` counts inferences and denoising steps and hands each inference to its strategy's
``before`` / ``after`` callbacks. ``reset()`` clears what the strategy carries from one inference to the next (a new
episode); nothing is kept on the class or between two models.
"""

from __future__ import annotations

from typing import Any

from ..engine.base import Engine, EngineHandle, hook_name
from ..engine.policy_calls import PolicyCall, policy_calls


class PolicyEngine(Engine):
    """Runs one VLA strategy's per-inference callbacks on one policy model. Subclasses override :meth:`before`,
    :meth:`after`, :meth:`clear` and :meth:`extra_stats`."""

    def __init__(self, model: Any, adapter: Any, config: Any, strategy: str):
        self.model, self.adapter, self.config, self.strategy = model, adapter, config, strategy
        self.name = hook_name("vla", strategy)
        self.inferences = 0
        self.steps_run = 0
        self.installed = False

    def install(self) -> None:
        policy_calls(self.model, self.adapter.sample_method).add(self.name, before=self._before, after=self._after)
        self.installed = True

    def uninstall(self) -> None:
        policy_calls(self.model, self.adapter.sample_method).remove(self.name)
        self.installed = False
        self.clear()

    def reset(self, num_steps: int | None = None) -> None:
        self.inferences = 0
        self.steps_run = 0
        self.clear()

    def _before(self, call: PolicyCall) -> None:
        self.before(call)

    def _after(self, call: PolicyCall, result: Any) -> Any:
        self.inferences += 1
        self.steps_run += max(call.step + 1, 0)
        return self.after(call, result)

    # ---- what a strategy overrides ------------------------------------------------------------------------------
    def before(self, call: PolicyCall) -> None:
        """An inference starts (``call.kwargs`` may be changed)."""

    def after(self, call: PolicyCall, result: Any) -> Any:
        """An inference returned ``result``; return a replacement or None."""
        return None

    def clear(self) -> None:
        """Forget what is carried between inferences."""

    def extra_stats(self) -> dict[str, Any]:
        return {}

    def stats(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "inferences": self.inferences, "denoise_steps_run": self.steps_run,
                "steps_per_inference": self.steps_run / self.inferences if self.inferences else None,
                **self.extra_stats()}

    def summary(self) -> str:
        s = self.stats()
        per = f", {s['steps_per_inference']:.1f} denoising steps each" if s["steps_per_inference"] else ""
        return f"{self.strategy}: {s['inferences']} inferences{per}"


class PolicyHandle(EngineHandle):
    """Handle of a VLA strategy on one policy model."""
