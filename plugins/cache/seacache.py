"""SeaCache (arXiv 2602.18993, "Spectral-Evolution-Aware Cache"): decide reuse from how much the *content* of the
noisy latent changed between steps, not its raw values.

At noise level sigma, most of a latent's high-frequency content is noise. Before comparing two consecutive steps'
latents, each is passed through a spectral filter that keeps what the clean signal plausibly holds: the latent's
FFT over its grid (frames, rows, columns) is multiplied by a Wiener-style gain per axis,
g(f) = (1 - sigma) P(f) / ((1 - sigma)^2 P(f) + sigma^2) with a power-law clean spectrum P(f) = 1 / |f|^p
(``power_exp`` p; 3 for video features, as the paper uses), the product normalized to unit mean. The relative L1
change of the filtered latent from the previous step is accumulated; while the sum stays below ``threshold`` the
block stack is skipped and its residual forecast (``order`` 1: linearly from the last two computed steps, as the
paper does; 0: reused), for at most ``max_consecutive`` passes in a row; a computed pass resets the sum.

Written for dynaccel's cache engine from the paper's description: any transformer whose adapter gives its latent
grid (``latent_grid``: Wan's 5-D input; Flux's packed tokens put back on their ``img_ids`` grid) and noise level
(``noise_level``, or the pipeline's cache context; else the step fraction stands in for sigma). A latent without a
grid is compared unfiltered.

Batch: the change is measured per sample; a pass is skipped only when every sample is below the threshold (one
host read per pass). CFG: each branch keeps its own history (``cfg_sync`` lets the second take the first's
decision). Memory: the previous filtered latent and ``order + 1`` residuals per branch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.config import option
from . import kernels
from .engine import CacheConfig, CachePolicy, CacheStrategy, Pass, TaylorForecast, all_below


@dataclass(frozen=True)
class SeaCacheConfig(CacheConfig):
    threshold: float = option(
        0.25, doc="accumulated relative change of the spectrally filtered latent below which passes are skipped; "
        "0 never skips", min=0.0, max=2.0, step=0.01,
    )
    max_consecutive: int = option(2, doc="most passes in a row that may be skipped", min=1, max=100)
    order: int = option(1, doc="what a skipped pass adds: 0 the last computed residual, 1 its linear forecast "
                        "from the last two computed steps, 2 quadratic", min=0, max=2)
    power_exp: float = option(3.0, doc="exponent p of the clean signal's power spectrum 1/|f|^p (3: video)",
                              min=0.1, max=8.0, step=0.1)
    warmup_steps: int = option(1, doc="the first N steps are always computed", min=0, max=1000)


def sea_filter(latent: torch.Tensor, sigma: float, power_exp: float) -> torch.Tensor:
    """``latent`` (B, C, *grid) filtered over its grid dimensions by the spectral gain for noise level ``sigma``."""
    dims = tuple(range(2, latent.ndim))
    x = latent.float()
    sigma = min(max(float(sigma), 1e-6), 1.0 - 1e-6)
    signal, noise = 1.0 - sigma, sigma
    gain = None
    for k, d in enumerate(dims):
        freq = torch.fft.fftfreq(x.shape[d], device=x.device).abs()
        power = 1.0 / (freq.pow(power_exp) + 1e-16)
        axis = signal * power / (signal**2 * power + noise**2 + 1e-16)
        shape = [1] * len(dims)
        shape[k] = -1
        axis = axis.reshape(shape)
        gain = axis if gain is None else gain * axis
    gain = gain / gain.mean().clamp_min(1e-30)
    return torch.fft.ifftn(torch.fft.fftn(x, dim=dims) * gain, dim=dims).real


class _SeaCachePolicy(CachePolicy):
    idle_when_off = True  # threshold 0 never skips
    level = "blocks"
    anchor = "input"

    def _indicator(self, p: Pass) -> torch.Tensor | None:
        args, kwargs = p.call or ((), {})
        grid = self.adapter.latent_grid(args, kwargs) if self.adapter is not None else None
        if grid is None:
            x = kwargs.get("hidden_states", args[0] if args else None)
            return x.float() if isinstance(x, torch.Tensor) else None
        sigma = p.sigma
        if sigma is None:
            sigma = self.adapter.noise_level(args, kwargs)
        if sigma is None:  # the step fraction stands in: sigma runs from 1 to 0 over the schedule
            sigma = 1.0 - p.step / p.num_steps if p.num_steps else 0.5
        return sea_filter(grid, float(sigma), self.config.power_exp)

    def begin(self, p: Pass, x) -> None:
        cfg = self.config
        data = p.branch.data
        ind = self._indicator(p)
        prev, data["prev_ind"] = data.get("prev_ind"), ind
        p.skip = False
        usable = ind is not None and prev is not None and prev.shape == ind.shape
        if (p.forced or p.step < cfg.warmup_steps or not usable or "res_hs" not in data
                or data.get("streak", 0) >= cfg.max_consecutive):
            data["acc"] = None
            return
        change = kernels.rel_l1(ind, prev)
        acc = change if data.get("acc") is None else data["acc"] + change
        if all_below(acc, cfg.threshold):
            data["acc"], data["streak"] = acc, data.get("streak", 0) + 1
            p.skip = True
        else:
            data["acc"] = None

    def computed(self, p: Pass, residual: torch.Tensor) -> None:
        TaylorForecast.record(p, residual, self.config.order)
        p.branch.data["streak"] = 0
        p.branch.data["acc"] = None

    def residuals(self, p: Pass):
        return TaylorForecast.residuals(p, self.config.order)


class SeaCache(CacheStrategy):
    """SeaCache (arXiv 2602.18993): skip the block stack while the spectrally filtered latent (its probable clean
    content at this noise level) barely changes, forecasting the skipped residual linearly.

    Example::

        pipe.enable_accel("seacache", threshold=0.25, max_consecutive=2)
    """

    cap_option = "max_consecutive"
    name = "seacache"
    Policy = _SeaCachePolicy
    Config = SeaCacheConfig
    summary = "spectrally filtered latent change (clean content at this noise level) decides reuse; linear forecast"
    paper = "SeaCache: Spectral-Evolution-Aware Cache for diffusion transformers (arXiv 2602.18993)"
