"""MagCache (Ma et al., "MagCache: Fast Video Generation with Magnitude-Aware Cache", arXiv 2506.09045).

The magnitude ratio of successive block-stack residuals, r_t = mean over tokens of ||res_t|| / ||res_{t-1}||, is
stable across prompts, so it is calibrated once from one full run and saved. At run time the decision uses only
these calibrated numbers: while skipping, the accumulated ratio g = prod r and the error sum |1 - g| grow; a pass
is skipped while the error stays below ``threshold`` and at most ``max_skip_steps`` passes in a row were skipped;
then a full pass resets both. The skipped passes add the last computed residual to block 0's input, or with
``order`` 1 or 2 its Taylor forecast over the last computed steps (TaylorSeer's rule, arXiv 2503.06923: the
residual keeps drifting while the magnitude test skips, and a linear forecast follows it; one or two extra residuals
per CFG branch in memory). ``order`` is a dynaccel option; 0 is the paper's method.

Calibration: if ``ratios_path`` names an existing JSON file the ratios are read from it; otherwise the first
generation after ``enable_accel`` runs in full, records the ratios per CFG branch, and (when ``ratios_path`` is
set) writes them there; later generations use them. The ratios are resampled linearly over the step fraction when
the step count differs from the calibration run. ``handle.engine.policy.calibration`` holds them.

Batch and CFG: the decision depends only on the step and branch, so the whole batch skips together, no device
sync at all; each CFG branch has its own ratios and accumulators.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.config import option
from . import calibration
from .engine import CacheConfig, CachePolicy, CacheStrategy, Pass, TaylorForecast

CALIBRATION_FORMAT = "dynaccel.magcache.ratios/2"


@dataclass(frozen=True)
class MagCacheConfig(CacheConfig):
    threshold: float = option(
        0.12, doc="accumulated magnitude-ratio error below which passes reuse the cache; 0 never skips", min=0.0, max=2.0, step=0.01
    )
    max_skip_steps: int = option(2, doc="most passes in a row that may reuse the cache", min=1, max=100)
    start: float = option(
        0.2, doc="fraction of the steps at the start that are always computed (MagCache's retention ratio)", min=0.0, max=1.0, step=0.01
    )
    order: int = option(
        0,
        doc="what a skipped pass adds: 0 the last computed residual (MagCache's reuse), 1 its linear forecast from "
        "the last two computed steps, 2 quadratic (TaylorSeer's rule)",
        min=0,
        max=2,
    )
    ratios_path: str = option(
        "", doc="JSON file with calibrated ratios: read when it exists, else written after the calibration run"
    )

    def validate(self) -> None:
        super().validate()
        calibration.check_path(self.ratios_path, CALIBRATION_FORMAT, "ratios_path")


class _MagCachePolicy(calibration.CalibratedPolicy, CachePolicy):
    level = "blocks"
    anchor = "input"
    calibration_format = CALIBRATION_FORMAT
    calibration_option = "ratios_path"

    def __init__(self, config: MagCacheConfig, adapter):
        super().__init__(config, adapter)
        self.init_calibration(config)

    def _ratio(self, branch: str, step: int, n: int | None) -> float:
        ratios = self.profile(branch)
        if n is not None:
            ratios = calibration.resample(ratios, n)
        return ratios[step] if step < len(ratios) else 1.0

    def begin(self, p: Pass, x) -> None:
        data = p.branch.data
        if self.calibrating or p.forced or "res_hs" not in data:
            data.update(gamma=1.0, err=0.0, streak=0)
            p.skip = False
            return
        gamma = data["gamma"] * self._ratio(p.branch.name, p.step, p.num_steps)
        err = data["err"] + abs(1.0 - gamma)
        streak = data["streak"] + 1
        if self.config.threshold > 0 and err < self.config.threshold and streak <= self.config.max_skip_steps:
            data.update(gamma=gamma, err=err, streak=streak)
            p.skip = True
        else:
            data.update(gamma=1.0, err=0.0, streak=0)
            p.skip = False

    def computed(self, p: Pass, residual: torch.Tensor) -> None:
        if self.config.order:
            TaylorForecast.record(p, residual, self.config.order)
        if not self.calibrating:
            return
        data = p.branch.data
        prev = data.get("cal_prev")
        ratio = 1.0
        if prev is not None and prev.shape == residual.shape:
            cur_n = torch.linalg.vector_norm(residual.float(), dim=-1)
            prev_n = torch.linalg.vector_norm(prev.float(), dim=-1).clamp_min(1e-12)
            ratio = float((cur_n / prev_n).mean())
        self.record(p.branch.name, p.step, ratio)
        data["cal_prev"] = residual


    def residuals(self, p: Pass):
        return TaylorForecast.residuals(p, self.config.order)


class MagCache(CacheStrategy):
    """MagCache (arXiv 2506.09045): skip the block stack while the error predicted from calibrated residual
    magnitude ratios stays small; decisions need no device sync.

    Example::

        handle = pipe.enable_accel("magcache", threshold=0.12, ratios_path="wan_ratios.json")
        pipe(prompt)   # first call: full compute, calibrates and saves the ratios
        pipe(prompt)   # later calls: accelerated
    """

    cap_option = "max_skip_steps"
    name = "magcache"
    Policy = _MagCachePolicy
    Config = MagCacheConfig
    summary = "calibrated residual magnitude ratios predict the error of reuse; decisions without device sync"
    paper = "Ma et al., MagCache: Fast Video Generation with Magnitude-Aware Cache (arXiv 2506.09045)"
