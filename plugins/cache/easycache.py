"""EasyCache (Zhou et al., "Less is Enough: Training-Free Video Diffusion Acceleration via Runtime-Adaptive
Caching", arXiv 2507.02860).

Model-agnostic and applied at the level of the whole transformer call, so it works on any diffusers transformer
whose first argument is the latent input. After the warm-up steps, each fully computed step updates the
*transformation rate* k = mean|o_t - o_p| / mean|x_t - x_p| between the last two computed steps (x input,
o output). At a later step the output change is predicted as k * mean|x_t - x_{t-1}| / mean|o_p| and accumulated;
while the sum stays below ``threshold`` the call is skipped and the cached transformation (o_p - x_p) is added to
the current input. When output and input shapes differ, the cached output itself is reused. The first and last
steps are always computed.

Batch: rates and predicted changes are per sample; a call is skipped only when every sample is below the threshold.
CFG: each branch keeps its own rates and caches. Device sync: one bool read per call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.config import option
from . import kernels
from .engine import CacheConfig, CachePolicy, CacheStrategy, Pass, all_below


@dataclass(frozen=True)
class EasyCacheConfig(CacheConfig):
    threshold: float = option(
        0.05,
        doc="accumulated predicted relative output change below which calls reuse the cache; 0 never skips",
        min=0.0,
        max=2.0,
        step=0.005,
    )
    warmup_steps: int = option(
        3, doc="the first N steps are always computed (the transformation rate needs two)", min=0, max=1000
    )


def _mean_abs_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return kernels.l1_sums(a, b)[:, 0] / a[0].numel()


class _EasyCachePolicy(CachePolicy):
    idle_when_off = True  # threshold 0 never skips
    level = "model"

    def begin(self, p: Pass, x: torch.Tensor) -> None:
        data = p.branch.data
        prev_x = data.get("prev_x")
        data["prev_x"] = x
        forced = (
            p.forced
            or p.step < self.config.warmup_steps
            or data.get("k") is None
            or prev_x is None
            or prev_x.shape != x.shape
        )
        if not forced:
            predicted = data["k"] * _mean_abs_diff(x, prev_x) / data["o_norm"].clamp_min(1e-12)
            acc = data["acc"] + predicted
            if all_below(acc, self.config.threshold):
                data["acc"] = acc
                p.skip = True
                return
        data["acc"] = torch.zeros(x.shape[0], device=x.device, dtype=torch.float32)
        p.skip = False

    def model_computed(self, p: Pass, x: torch.Tensor, out: torch.Tensor) -> None:
        data = p.branch.data
        fx, fo = data.get("full_x"), data.get("full_o")
        if fx is not None and fx.shape == x.shape and fo.shape == out.shape:
            dx = _mean_abs_diff(x, fx)
            do = _mean_abs_diff(out, fo)
            data["k"] = do / dx.clamp_min(1e-12)
        data["full_x"], data["full_o"] = x, out
        data["o_norm"] = kernels.l1_sums(out, out)[:, 1] / out[0].numel()
        data["delta"] = out - x if out.shape == x.shape else out

    def model_skip_output(self, p: Pass, x: torch.Tensor) -> torch.Tensor:
        delta = p.branch.data["delta"]
        if delta.shape == x.shape:
            return kernels.residual_add(x, delta)
        return delta.clone()


class EasyCache(CacheStrategy):
    """EasyCache (arXiv 2507.02860): runtime-adaptive reuse of the whole transformer's transformation, on any
    diffusers transformer.

    Example::

        pipe.enable_accel("easycache", threshold=0.05, warmup_steps=3)
    """

    name = "easycache"
    Policy = _EasyCachePolicy
    Config = EasyCacheConfig
    summary = "model-agnostic: predicted output change from the runtime transformation rate decides reuse"
    paper = "Zhou et al., Less is Enough: Training-Free Video Diffusion Acceleration via Runtime-Adaptive Caching (arXiv 2507.02860)"
    needs_adapter = False
    needs_capabilities = frozenset()
