"""TaylorSeer (Liu et al., "From Reusing to Forecasting: Accelerating Diffusion Models with TaylorSeers",
ICCV 2025, arXiv 2503.06923).

Instead of reusing the block-stack residual of the last computed step as it is, TaylorSeer forecasts it with a
Taylor expansion in the step index whose derivatives are finite differences over the last computed steps:
r(t) ~ r(t0) + r'(t0) (t - t0) + r''(t0) (t - t0)^2 / 2 (``order`` 0, 1 or 2). The paper forecasts on a fixed
interval; here the interval adapts: a pass is forecast while the forecast's relative change from the last
computed residual stays below ``threshold`` (so 0 never forecasts), for at most ``max_interval`` passes in a row.
The first ``warmup_steps`` (and the first and last steps) are computed, and forecasting starts once ``order + 1``
computed steps give the derivatives.

Batch: the predicted change is measured per sample; a pass is forecast only when every sample is below the
threshold. CFG: each branch has its own derivatives. Device sync: one bool per forecast candidate.
Memory: ``order + 1`` residuals of the block stack per branch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.config import option
from . import kernels
from .engine import CacheConfig, CachePolicy, CacheStrategy, Pass, TaylorForecast, all_below


@dataclass(frozen=True)
class TaylorSeerConfig(CacheConfig):
    threshold: float = option(
        0.15,
        doc="forecast while the forecast residual's relative change from the last computed one stays below this; "
        "0 never forecasts",
        min=0.0,
        max=2.0,
        step=0.01,
    )
    order: int = option(1, doc="Taylor order of the forecast: 0 reuse, 1 linear, 2 quadratic", min=0, max=2)
    max_interval: int = option(3, doc="most passes in a row that may be forecast", min=1, max=50)
    warmup_steps: int = option(2, doc="the first N steps are always computed", min=0, max=1000)


class _TaylorSeerPolicy(CachePolicy):
    idle_when_off = True  # threshold 0 never skips
    level = "blocks"
    anchor = "input"

    def computed(self, p: Pass, residual: torch.Tensor) -> None:
        TaylorForecast.record(p, residual, self.config.order)
        p.branch.data["streak"] = 0

    def begin(self, p: Pass, x) -> None:
        cfg = self.config
        data = p.branch.data
        derivs = data.get("derivs") or []
        p.skip = False
        if p.forced or p.step < cfg.warmup_steps or len(derivs) < cfg.order + 1:
            return
        if data.get("streak", 0) >= cfg.max_interval:
            return
        forecast = self._forecast(p)
        if all_below(kernels.rel_l1(forecast, derivs[0]), cfg.threshold):
            data["streak"] = data.get("streak", 0) + 1
            p.skip = True

    def _forecast(self, p: Pass) -> torch.Tensor:
        return TaylorForecast.forecast(p, self.config.order)

    def residuals(self, p: Pass):
        # a CFG branch following another's decision (cfg_sync) may reuse at a step its own test did not pick
        return self._forecast(p), p.branch.data.get("res_enc")


class TaylorSeer(CacheStrategy):
    """TaylorSeer (arXiv 2503.06923): forecast the block stack's residual with a Taylor expansion over the last
    computed steps instead of reusing it unchanged.

    Example::

        pipe.enable_accel("taylorseer", threshold=0.15, order=1, max_interval=3)
    """

    cap_option = "max_interval"
    name = "taylorseer"
    Policy = _TaylorSeerPolicy
    Config = TaylorSeerConfig
    summary = "forecasts the skipped residual by a Taylor expansion over the last computed steps"
    paper = "Liu et al., From Reusing to Forecasting: Accelerating Diffusion Models with TaylorSeers (arXiv 2503.06923)"
