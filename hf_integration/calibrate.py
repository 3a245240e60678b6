"""``dynaccel calibrate``: fit what a cache strategy needs on one pipeline, then search the fastest threshold that
meets a quality target on held-out prompts, and write it as a preset with provenance.

What is fitted:
- ``teacache``: the rescaling polynomial (degree 4, highest power first) from full runs on the fit prompts: the
  relative L1 change of block 0's modulated input (x) against the relative L1 change of the block stack's
  residual (y) between consecutive steps, all CFG branches pooled.
- ``magcache`` / ``smoothcache``: the calibration run's ratios / error profile, saved beside the preset.
- the others: nothing to fit; only the threshold is searched.

The threshold search runs every candidate (a log-spaced grid within the option's range) on the held-out prompts
against full compute with the bench harness, then bisects between the largest passing and the next threshold
(``refine`` times), and keeps, among those whose PSNR over all frames is at least ``min_psnr``, the one that skips
the most work (wall time follows it and is less noisy; the smallest threshold wins ties). None qualifying is an error ("unreachable target"), and nothing is written.

    dynaccel calibrate --model tiny-wan --strategy teacache --min-psnr 30 --out presets/tiny-wan-teacache.json
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.files import atomic_write
from ..core.presets import Preset
from ..core.registry import get_registry
from . import bench

SIDE_FILES = {"magcache": "ratios_path", "smoothcache": "calibration_path"}


@dataclass
class CalibrationResult:
    preset: Preset
    rows: list[bench.Row]
    chosen: bench.Row
    side_file: dict[str, Any] | None = None  # calibration data written beside the preset


def fit_teacache(pipe, prompts: list[str], seeds: list[int], call: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Fitted coefficients as the option string, and the fit's diagnostics."""
    handle = pipe.enable_accel("teacache", threshold=0.0, coefficients="0,0,0,1,0")
    policies = [part.engine.policy for part in handle.parts.values()]
    for pol in policies:
        pol.recorder = []
    try:
        for prompt in prompts:
            for seed in seeds:
                pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed), output_type="latent", **call)
    finally:
        records = [r for pol in policies for r in (pol.recorder or [])]
        pipe.disable_accel("teacache")
    xs_by, ys_by = {}, {}
    run_of: dict[str, int] = {}
    for kind, branch, step, value in records:
        if kind == "in" and step == 1:  # a new generation for this branch
            run_of[branch] = run_of.get(branch, -1) + 1
        key = (branch, run_of.get(branch, 0), step)
        (xs_by if kind == "in" else ys_by)[key] = value
    keys = sorted(set(xs_by) & set(ys_by))
    if len(keys) < 6:
        raise bench.BenchError(f"teacache calibration: only {len(keys)} usable steps; use more steps or prompts")
    x = np.array([xs_by[k] for k in keys])
    y = np.array([ys_by[k] for k in keys])
    coeffs = np.polyfit(x, y, 4)
    fit = np.polyval(coeffs, x)
    r2 = 1 - float(((y - fit) ** 2).sum()) / max(float(((y - y.mean()) ** 2).sum()), 1e-30)
    return ",".join(f"{c:.6e}" for c in coeffs), {"points": len(keys), "r2": round(r2, 4)}


def threshold_grid(strategy: str, n: int = 8) -> list[float]:
    spec = next(f for f in get_registry().strategy(strategy).Config.fields_info() if f.name == "threshold")
    hi = spec.max if spec.max is not None else 1.0
    lo = hi / 250
    return [round(lo * (hi / lo) ** (i / (n - 1)), 4) for i in range(n)]


def calibrate(
    pipe,
    model: str,
    strategy: str,
    fit_prompts: list[str],
    heldout_prompts: list[str],
    seeds: list[int],
    call: dict[str, Any],
    min_psnr: float,
    side_dir: Path,
    thresholds: list[float] | None = None,
    base_config: dict[str, Any] | None = None,
    progress: Any = None,
    refine: int = 3,
) -> CalibrationResult:
    reg = get_registry()
    cls = reg.strategy(strategy)
    config = dict(base_config or {})
    cls.Config.from_kwargs(strategy, **config)
    if cls.needs_adapter:
        reg.adapter_for(bench._denoiser(pipe), cls)
    diagnostics: dict[str, Any] = {}
    side_file = None
    if strategy == "teacache" and "coefficients" not in config:
        config["coefficients"], diagnostics = fit_teacache(pipe, fit_prompts, seeds, call)
    if strategy in SIDE_FILES:
        option = SIDE_FILES[strategy]
        tmp = Path(tempfile.mkdtemp(prefix="dynaccel-cal-")) / "calibration.json"
        handle = pipe.enable_accel(strategy, **{**config, option: str(tmp)})
        try:
            pipe(prompt=fit_prompts[0], generator=torch.Generator().manual_seed(seeds[0]), output_type="latent", **call)
        finally:
            pipe.disable_accel(strategy)
        del handle
        if not tmp.exists():
            raise bench.BenchError(f"{strategy} calibration run wrote no calibration data")
        side_file = json.loads(tmp.read_text())
        config[option] = str(tmp)
    grid = thresholds or threshold_grid(strategy)
    candidates = [bench.Setting("dynaccel", strategy, {**config, "threshold": t}) for t in grid]
    baseline: dict[str, Any] = {}
    rows = bench.run_bench(pipe, candidates, heldout_prompts, seeds, call, repeats=1, progress=progress,
                           baseline=baseline)
    # refine: bisect (geometrically) between the largest passing threshold and the next one, which failed
    passing = [i for i, r in enumerate(rows[1:]) if r.psnr_db >= min_psnr]
    if passing and passing[-1] + 1 < len(grid) and not thresholds:
        lo, hi = grid[passing[-1]], grid[passing[-1] + 1]
        for _ in range(refine):
            mid = round(math.sqrt(lo * hi), 4)
            setting = bench.Setting("dynaccel", strategy, {**config, "threshold": mid})
            row = bench.run_bench(pipe, [setting], heldout_prompts, seeds, call, repeats=1, progress=progress,
                                  baseline=baseline)[1]
            candidates.append(setting)
            rows.append(row)
            lo, hi = (mid, hi) if row.psnr_db >= min_psnr else (lo, mid)
    ok = [r for r in rows[1:] if r.psnr_db >= min_psnr and _skipped(r)]
    if not ok:
        best = max(rows[1:], key=lambda r: r.psnr_db if _skipped(r) else -math.inf)
        raise bench.BenchError(
            f"unreachable quality target: no {strategy} threshold that skips work reaches PSNR >= {min_psnr} dB on the "
            f"held-out prompts (best with skipping: {best.label} at {best.psnr_db:.2f} dB); lower --min-psnr or use "
            f"more steps"
        )
    # most work skipped (robust against timing noise); among equals the smallest threshold, the safest
    chosen = max(ok, key=lambda r: (_work_skipped(r), -candidates[rows.index(r) - 1].config["threshold"]))
    final = dict(candidates[rows.index(chosen) - 1].config)
    if strategy in SIDE_FILES:
        final[SIDE_FILES[strategy]] = f"{Path(model).name}-{strategy}-calibration.json"
    transformer = bench._denoiser(pipe)
    preset = Preset(
        name=f"{Path(model).name}-{strategy}",
        strategy=strategy,
        config=final,
        architecture=type(transformer).__name__,
        model_id=model,
        description=f"{strategy} calibrated by dynaccel calibrate for PSNR >= {min_psnr} dB against full compute",
        provenance={
            "source": "dynaccel calibrate",
            "date": time.strftime("%Y-%m-%d"),
            "model": model,
            "steps": call.get("num_inference_steps"),
            "call": {k: v for k, v in call.items()},
            "scheduler": type(pipe.scheduler).__name__,
            "dtype": str(next(transformer.parameters()).dtype).replace("torch.", ""),
            "machine": bench.machine(),
            "fit_prompts": fit_prompts,
            "heldout_prompts": heldout_prompts,
            "seeds": seeds,
            "min_psnr_db": min_psnr,
            "measured": {"speedup": round(chosen.speedup, 3), "psnr_db": round(chosen.psnr_db, 2),
                         "psnr_min_db": round(chosen.psnr_min_db, 2), "ssim": round(chosen.ssim, 4),
                         "computed": chosen.computed},
            "fit": diagnostics,
        },
    )
    return CalibrationResult(preset, rows, chosen, side_file)


def _work_skipped(row: bench.Row) -> float:
    s = row.stats
    if "blocks_computed" in s:
        return s["blocks_reused"] / max(1, s["blocks_computed"] + s["blocks_reused"])
    return s.get("skipped", 0) / max(1, s.get("passes", 1))


def _skipped(row: bench.Row) -> bool:
    s = row.stats
    return (s.get("skipped", 0) + s.get("blocks_reused", 0)) > 0 if s else False


def write_preset(result: CalibrationResult, out: Path) -> list[Path]:
    """The preset JSON (and its calibration file beside it), each written atomically."""
    written = []
    if result.side_file is not None:
        option = SIDE_FILES[result.preset.strategy]
        side = out.parent / result.preset.config[option]
        atomic_write(side, lambda tmp: Path(tmp).write_text(json.dumps(result.side_file, indent=1)))
        written.append(side)
    atomic_write(out, lambda tmp: Path(tmp).write_text(result.preset.to_json() + "\n"))
    written.append(out)
    return written
