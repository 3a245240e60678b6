"""``denoise_steps``: fewer flow-matching steps for a policy's action expert.

π0 (Black et al., "π0: A Vision-Language-Action Flow Model for General Robot Control", arXiv 2410.24164) samples
an action chunk by integrating the expert's velocity field from noise (time 1) to actions (time 0) with Euler steps,
10 by default; each step is one pass of the action expert over the cached prefix. Fewer steps cut the expert's
cost proportionally at the price of a coarser integration; whether the task still succeeds is what the closed-loop
bench measures (the distillation work trains students for very few steps; this is the training-free baseline every
other strategy must beat). ``steps=0`` keeps the model's own count (``config.num_inference_steps``) and runs the
library's code unchanged. The strategy sets the sampling call's ``num_steps`` argument, overriding a value the
caller passed.

    policy.enable_accel("denoise_steps", steps=4)
    chunk = policy.sample_actions(**inputs)       # 4 Euler steps instead of 10
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...core.adapters import FLOW_POLICY
from ...core.config import StrategyConfig, option
from ...core.strategy import Strategy
from ..engine.base import apply_engine
from ..engine.policy_calls import PolicyCall
from .engine import PolicyEngine, PolicyHandle


@dataclass(frozen=True)
class DenoiseStepsConfig(StrategyConfig):
    quality_knob: ClassVar[str] = "steps"

    steps: int = option(5, doc="flow-matching (Euler) steps per action chunk; 0 keeps the model's own count",
                        min=0, max=100)


class DenoiseStepsEngine(PolicyEngine):
    def before(self, call: PolicyCall) -> None:
        if self.config.steps > 0:
            call.kwargs["num_steps"] = int(self.config.steps)

    def extra_stats(self) -> dict[str, Any]:
        return {"steps": self.config.steps or self.adapter.default_steps(),
                "model_steps": self.adapter.default_steps()}


class DenoiseSteps(Strategy):
    """Fewer flow-matching steps for the action expert (π0, arXiv 2410.24164: 10 Euler steps by default)."""

    name = "denoise_steps"
    family = "vla_steps"
    Config = DenoiseStepsConfig
    summary = "fewer flow-matching steps for a policy's action expert (0 keeps the model's own count)"
    paper = "π0, arXiv 2410.24164 (flow matching, Euler integration of the action chunk)"
    needs_capabilities = frozenset({FLOW_POLICY})

    def apply(self, target, config, adapter, run_probe):
        return apply_engine(self, target, config, DenoiseStepsEngine(target, adapter, config, self.name), PolicyHandle)
