"""TeaCache: Timestep Embedding Aware Cache (Liu et al., "Timestep Embedding Tells: It's Time to Cache for Video
Diffusion Model", CVPR 2025, arXiv 2411.19108).

Before block 0 runs, TeaCache measures the relative L1 change of block 0's timestep-modulated input against the
previous step, rescales it with a model-specific polynomial (published coefficients, chosen from the model's id or
config by the adapter; the identity polynomial as a documented fallback), and accumulates it. While the sum stays
below ``threshold`` the whole block stack is skipped and the residual it produced at the last computed step is
added to the current input; once the sum passes the threshold the step is computed and the sum restarts. The
first and last steps are always computed.

Batch: the change is measured per sample; a pass is skipped only when every sample's accumulated change is below
the threshold. CFG: each branch (cond / uncond, or the batched cond_uncond) has its own accumulator and residual.
Device sync: one bool is read per pass (the decision); the distance, rescaling and accumulation stay on device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...core.adapters import BLOCKS, MODULATED_INPUT
from ...core.config import option
from ...core.errors import ConfigError
from . import coefficients, kernels
from .engine import CacheConfig, CachePolicy, CacheStrategy, Pass, all_below, polyval


@dataclass(frozen=True)
class TeaCacheConfig(CacheConfig):
    threshold: float = option(
        0.1,
        doc="accumulated rescaled relative-L1 change below which steps reuse the cache (Wan2.1-1.3B: 0.08, "
        "FLUX: 0.25-0.8); 0 never skips",
        min=0.0,
        max=5.0,
        step=0.01,
    )
    mode: str = option(
        "normal",
        doc="which signal and coefficients: 'normal', or 'retention' (Wan: timestep projection, with the first "
        "steps kept)",
        choices=("normal", "retention"),
    )
    retention_steps: int = option(
        5, doc="in retention mode, the first N steps are always computed", min=0, max=1000
    )
    coefficients: str = option(
        "",
        doc="5 comma-separated polynomial coefficients, highest power first (e.g. fitted by dynaccel calibrate); "
        "empty: the published set for the model, else the identity fallback",
    )

    def validate(self) -> None:
        super().validate()
        if self.coefficients:
            parse_coefficients(self.coefficients)


def parse_coefficients(text: str) -> list[float]:
    """``"a,b,c,d,e"`` -> 5 finite floats, or ConfigError naming the value."""
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 5 or not all(math.isfinite(v) for v in values):
        raise ConfigError(
            f"option 'coefficients': got {text!r}; accepted: 5 comma-separated finite numbers, highest power first"
        )
    return values


class _TeaCachePolicy(CachePolicy):
    idle_when_off = True  # threshold 0 never skips
    level = "blocks"
    anchor = "input"

    def __init__(self, config: TeaCacheConfig, adapter):
        super().__init__(config, adapter)
        self.profile = adapter.teacache_profile(config.mode)
        if config.coefficients:
            coeffs, self.source = parse_coefficients(config.coefficients), "config"
        else:
            coeffs, self.source = coefficients.lookup(self.profile, config.mode)
        #: when a list (dynaccel calibrate sets one), passes append ("in" | "out", branch, step, relative change)
        self.recorder: list | None = None
        self.coeffs = torch.tensor(coeffs, dtype=torch.float64)
        self._coeffs_on: dict[torch.device, torch.Tensor] = {}

    def _coeffs(self, device: torch.device) -> torch.Tensor:
        if device not in self._coeffs_on:
            self._coeffs_on[device] = self.coeffs.to(device=device, dtype=torch.float32)
        return self._coeffs_on[device]

    def before_block0(self, p: Pass, spec, args, kwargs) -> None:
        cfg = self.config
        signal = self.adapter.modulated_input(args, kwargs, cfg.mode)
        data = p.branch.data
        prev = data.get("prev_signal")
        data["prev_signal"] = signal
        forced = p.forced or (cfg.mode == "retention" and p.step < cfg.retention_steps)
        if self.recorder is not None and prev is not None and prev.shape == signal.shape:
            self.recorder.append(("in", p.branch.name, p.step, float(kernels.rel_l1(signal, prev).mean())))
        if prev is None or prev.shape != signal.shape or forced or "res_hs" not in data:
            data["acc"] = torch.zeros(signal.shape[0], device=signal.device, dtype=torch.float32)
            p.skip = False
            return
        rel = kernels.rel_l1(signal, prev)
        acc = data["acc"] + polyval(self._coeffs(rel.device), rel)
        if all_below(acc, cfg.threshold):
            data["acc"] = acc
            p.skip = True
        else:
            data["acc"] = torch.zeros_like(acc)
            p.skip = False

    def computed(self, p: Pass, residual: torch.Tensor) -> None:
        if self.recorder is not None:
            prev = p.branch.data.get("rec_prev_res")
            if prev is not None and prev.shape == residual.shape:
                self.recorder.append(("out", p.branch.name, p.step, float(kernels.rel_l1(residual, prev).mean())))
            p.branch.data["rec_prev_res"] = residual

    def extra_stats(self):
        return {"coefficients": self.source}


class TeaCache(CacheStrategy):
    """TeaCache (arXiv 2411.19108): skip the transformer blocks while the rescaled change of block 0's
    timestep-modulated input, accumulated over steps, stays below a threshold.

    Example::

        pipe.enable_accel("teacache", threshold=0.08)
    """

    name = "teacache"
    Policy = _TeaCachePolicy
    Config = TeaCacheConfig
    summary = "accumulated, polynomially rescaled change of block 0's modulated input decides when to reuse"
    paper = "Liu et al., Timestep Embedding Tells: It's Time to Cache for Video Diffusion Model (arXiv 2411.19108)"
    needs_capabilities = frozenset({BLOCKS, MODULATED_INPUT})
    fitted_option = "coefficients"

    @classmethod
    def signal_recording_config(cls):
        """Calibration runs compute every pass (threshold 0) and take the change as it is (identity polynomial)."""
        return {"threshold": 0.0, "coefficients": "0,0,0,1,0"}
