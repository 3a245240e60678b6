"""AdaCache (Kahatapitiya et al., "Adaptive Caching for Faster Video Generation with Diffusion Transformers",
arXiv 2411.02397).

Content-adaptive schedule: each time the block stack is computed, the rate of change of its residual since the
previous computed step (relative L1 distance per step) decides how many of the following passes reuse it: a
slowly changing video gets long reuse stretches, a fast-changing one short ones. Here the rate r maps to
``floor(threshold / r)`` reused passes, capped at ``max_interval`` (the paper uses a small codebook of rate
intervals; the reciprocal mapping is its continuous form). ``threshold`` 0 never reuses. The first and last steps
are computed, as are the steps outside ``start``/``end``.

Batch: the fastest-changing sample sets the schedule of the batch. CFG: each branch has its own schedule.
Device sync: one number read per computed pass; reused passes need none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...core.config import option
from . import kernels
from .engine import CacheConfig, CachePolicy, CacheStrategy, Pass


@dataclass(frozen=True)
class AdaCacheConfig(CacheConfig):
    threshold: float = option(
        0.1,
        doc="reuse budget: after a computed pass, floor(threshold / rate) passes reuse the residual, rate being its "
        "relative change per step; 0 never reuses",
        min=0.0,
        max=5.0,
        step=0.01,
    )
    max_interval: int = option(4, doc="most passes in a row that may reuse the cache", min=1, max=50)


class _AdaCachePolicy(CachePolicy):
    idle_when_off = True  # threshold 0 never skips
    level = "blocks"
    anchor = "input"

    def computed(self, p: Pass, residual: torch.Tensor) -> None:
        data = p.branch.data
        prev, last = data.get("prev_res"), data.get("last_step")
        data["prev_res"], data["last_step"], data["reuse_left"] = residual, p.step, 0
        if prev is None or prev.shape != residual.shape or last is None or p.step <= last:
            return
        rate = float(kernels.rel_l1(residual, prev).max()) / (p.step - last)
        data["rate"] = rate
        if self.config.threshold > 0:
            budget = self.config.max_interval if rate <= 0 else math.floor(self.config.threshold / rate)
            data["reuse_left"] = max(0, min(self.config.max_interval, budget))

    def begin(self, p: Pass, x) -> None:
        data = p.branch.data
        left = data.get("reuse_left", 0)
        p.skip = bool(left > 0 and not p.forced and "res_hs" in data)
        if p.skip:
            data["reuse_left"] = left - 1


class AdaCache(CacheStrategy):
    """AdaCache (arXiv 2411.02397): the residual's rate of change at each computed step sets how many of the
    next passes reuse it.

    Example::

        pipe.enable_accel("adacache", threshold=0.1, max_interval=4)
    """

    cap_option = "max_interval"
    name = "adacache"
    Policy = _AdaCachePolicy
    Config = AdaCacheConfig
    summary = "content-adaptive schedule: the residual's rate of change sets how long to reuse it"
    paper = "Kahatapitiya et al., Adaptive Caching for Faster Video Generation with Diffusion Transformers (arXiv 2411.02397)"
