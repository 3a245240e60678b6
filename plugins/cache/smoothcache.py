"""SmoothCache (Liu et al., "SmoothCache: A Universal Inference Acceleration Technique for Diffusion
Transformers", arXiv 2411.10510).

A static, layer-wise schedule calibrated from representation errors: one full calibration generation records,
for every block and step, the relative L1 change of the block's residual from the previous step. At run time,
block i at step t reuses its cached residual while the calibrated errors accumulated since it was last computed
stay below ``threshold`` (at most ``max_reuse`` passes in a row). The schedule depends only on the step, the
block and the branch, so decisions need no device sync and work inside compiled graphs.

Calibration as in MagCache: from ``calibration_path`` when that file exists, else the first generation runs in
full, records the profile per CFG branch, and writes it there when the path is set. Profiles are resampled
linearly when the step count differs.

Batch: the schedule is shared by the batch (calibrated on the batch mean). CFG: one profile per branch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.config import option
from . import calibration, kernels
from .engine import CacheConfig, CachePolicy, CacheStrategy, Pass

CALIBRATION_FORMAT = "dynaccel.smoothcache.errors/1"


@dataclass(frozen=True)
class SmoothCacheConfig(CacheConfig):
    threshold: float = option(
        0.15,
        doc="a block reuses its residual while the calibrated error accumulated since it was computed stays below "
        "this; 0 never reuses",
        min=0.0,
        max=5.0,
        step=0.01,
    )
    max_reuse: int = option(2, doc="most passes in a row a block may reuse its residual", min=1, max=100)
    calibration_path: str = option(
        "", doc="JSON with the calibrated error profile: read when it exists, else written after the calibration run"
    )

    def validate(self) -> None:
        super().validate()
        calibration.check_path(self.calibration_path, CALIBRATION_FORMAT, "calibration_path")


class _SmoothCachePolicy(calibration.CalibratedPolicy, CachePolicy):
    level = "per_block"
    calibration_format = CALIBRATION_FORMAT
    calibration_option = "calibration_path"

    def __init__(self, config: SmoothCacheConfig, adapter):
        super().__init__(config, adapter)
        self.init_calibration(config)
        self._resampled: dict[tuple[str, int], list[list[float]]] = {}

    def _errors(self, branch: str, n: int | None) -> list[list[float]]:
        """Per step, per block calibrated errors for a run of ``n`` steps."""
        key = (branch, n or 0)
        if key not in self._resampled:
            rows = self.profile(branch)
            if n is not None and n != len(rows):
                cols = [calibration.resample([r[i] for r in rows], n) for i in range(len(rows[0]))]
                rows = [list(r) for r in zip(*cols)]
            self._resampled[key] = rows
        return self._resampled[key]

    def block_reuse(self, p: Pass, i: int, hs: torch.Tensor) -> bool:
        if self.calibrating:
            return False
        state = p.branch.data.setdefault("smooth", {}).setdefault(i, {"acc": 0.0, "streak": 0})
        rows = self._errors(p.branch.name, p.num_steps)
        err = rows[p.step][i] if p.step < len(rows) and i < len(rows[p.step]) else float("inf")
        acc = state["acc"] + err
        if self.config.threshold > 0 and acc < self.config.threshold and state["streak"] < self.config.max_reuse:
            state.update(acc=acc, streak=state["streak"] + 1)
            return True
        return False

    def block_computed(self, p: Pass, i: int, hs_in: torch.Tensor, residual: torch.Tensor) -> None:
        data = p.branch.data
        data.setdefault("smooth", {})[i] = {"acc": 0.0, "streak": 0}
        if not self.calibrating:
            return
        prev = data.setdefault("cal_prev", {}).get(i)
        err = float(kernels.rel_l1(residual, prev).mean()) if prev is not None and prev.shape == residual.shape else 0.0
        data.setdefault("cal_row", {})[i] = err
        data["cal_prev"][i] = residual

    def pass_finished(self, p: Pass) -> None:
        if self.calibrating:
            row = p.branch.data.pop("cal_row", {})
            self.record(p.branch.name, p.step, [row.get(i, 0.0) for i in range(len(self.adapter.blocks()))])


class SmoothCache(CacheStrategy):
    """SmoothCache (arXiv 2411.10510): a static per-block reuse schedule calibrated from representation errors.

    Example::

        handle = pipe.enable_accel("smoothcache", threshold=0.15, calibration_path="smooth.json")
        pipe(prompt)   # first call: full compute, calibrates and saves the profile
        pipe(prompt)   # later calls: accelerated
    """

    cap_option = "max_reuse"
    name = "smoothcache"
    Policy = _SmoothCachePolicy
    Config = SmoothCacheConfig
    summary = "static per-block schedule calibrated from representation errors; no device sync"
    paper = "Liu et al., SmoothCache: A Universal Inference Acceleration Technique for Diffusion Transformers (arXiv 2411.10510)"
