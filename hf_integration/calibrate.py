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
(``refine`` times). Strategies with a skip cap (``cap_option``: the most passes in a row that may reuse the cache,
e.g. TaylorSeer's ``max_interval``) repeat that search for each cap value (the option's default and 2, 3, 4, 6),
because a tight cap can hold a strategy below what its threshold would allow. Among all settings whose PSNR over
all frames is at least ``min_psnr`` it keeps the one that skips the most work (wall time follows it and is less
noisy; the smaller cap, then the smaller threshold wins ties). None qualifying is an error ("unreachable target"),
and nothing is written; so is a winner that, timed, runs no faster than full compute ("no faster setting": a
preset slower than no preset is never written). The chosen setting is then timed again against full compute (median of
``timing_repeats``) for the speedup recorded in the preset.

    dynaccel calibrate --model tiny-wan --strategy teacache --min-psnr 30 --out presets/tiny-wan-teacache.json
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.files import atomic_write, read_bounded
from ..core.presets import MAX_FILE_BYTES, Preset
from ..core.registry import get_registry
from . import bench

SIDE_FILES = {"magcache": "ratios_path", "smoothcache": "calibration_path"}


@dataclass
class CalibrationResult:
    preset: Preset
    rows: list[bench.Row]
    chosen: bench.Row
    side_file: dict[str, Any] | None = None  # calibration data written beside the preset
    learned_file: Path | None = None  # a trained file (learned_cache's predictor) copied beside the preset


def fit_teacache(pipe, prompts: list[str], seeds: list[int], call: dict[str, Any],
                 strategy: str = "teacache") -> tuple[str, dict[str, Any]]:
    """Fitted coefficients (the strategy's ``fitted_option``) as the option string, and the fit's diagnostics."""
    handle = pipe.enable_accel(strategy, **get_registry().strategy(strategy).signal_recording_config())
    try:
        with handle.record_signals() as records:
            for prompt in prompts:
                for seed in seeds:
                    pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed), output_type="latent", **call)
    finally:
        pipe.disable_accel(strategy)
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
    spec = get_registry().strategy(strategy).Config.quality_knob_field()  # the knob the schema declares
    if spec is None:
        raise bench.BenchError(f"strategy {strategy!r} declares no quality knob to search")
    hi = spec.offered_range()[1] if spec.max is not None else 1.0
    if spec.type == "int":  # an int knob (e.g. a step interval): the distinct whole values of a grid from 1
        lo = max(spec.offered_range()[0] or 1, 1)
        return sorted({int(round(lo * (hi / lo) ** (i / (n - 1)))) for i in range(n)})
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
    caps: list[int] | None = None,
    timing_repeats: int = 3,
    name: str | None = None,
    learn: bool = False,
    learn_prompts: list[str] | None = None,
    search: dict[str, list[Any]] | None = None,
    memo: dict[str, Any] | None = None,
    check_prompts: list[str] | None = None,
) -> CalibrationResult:
    """Fit ``strategy`` and search its knobs on ``heldout_prompts`` (the search prompts) for the setting that skips
    the most work at PSNR >= ``min_psnr``.

    ``search``: other options searched jointly with the threshold and the skip cap, each over the values given
    (e.g. ``{"start": [0.0, 0.1], "order": [0, 1]}``), checked by the schema before any generation.
    ``memo``: pass the same dict to several calls on the same pipeline, prompts and seeds (a quality ladder: one
    call per target) and every measured setting, full compute included, is measured once.
    ``check_prompts``: prompts the search never saw; the chosen setting is run on them too and the result recorded
    in the provenance (``checked``), to show how the quality holds away from the search prompts."""
    reg = get_registry()
    cls = reg.strategy(strategy)
    config = dict(base_config or {})
    search = dict(search or {})
    for key, values in search.items():  # bad names and values fail before any generation
        if not values:
            raise bench.BenchError(f"search {key}: give at least one value")
        if key in config:
            raise bench.BenchError(f"{key} is both fixed and searched; drop one")
        for v in values:
            cls.Config.from_kwargs(strategy, **{**config, key: v})
    learned_option = getattr(cls, "learned_option", None)
    if learn and learned_option is None:
        learnable = sorted(n for n, c in reg.strategies.items() if getattr(c, "learned_option", None))
        raise bench.BenchError(f"--learn: strategy {strategy!r} has nothing to learn; accepted: {', '.join(learnable)}")
    if learn and config.get(learned_option):
        raise bench.BenchError(f"--learn trains {learned_option}; drop it from the fixed options or drop --learn")
    if learned_option and not learn and not config.get(learned_option):
        raise bench.BenchError(f"{strategy} needs a trained {learned_option}: add --learn to train one on the fit "
                               f"prompts, or fix {learned_option}=FILE with --set")
    if not learn:
        cls.Config.from_kwargs(strategy, **config)
    cap_values = _cap_values(cls, config, caps)  # bad caps fail before any generation
    if cls.needs_adapter:
        reg.adapter_for(bench._denoiser(pipe), cls)
    diagnostics: dict[str, Any] = {}
    side_file = None
    learned_file = None
    if learn:
        learned_file = Path(tempfile.mkdtemp(prefix="dynaccel-learn-")) / "predictor.safetensors"
        diagnostics = learn_strategy(pipe, cls, learn_prompts or fit_prompts, seeds, call, learned_file)
        config[learned_option] = str(learned_file)
        cls.Config.from_kwargs(strategy, **config)
    if cls.fitted_option and cls.fitted_option not in config:
        config[cls.fitted_option], diagnostics = fit_teacache(pipe, fit_prompts, seeds, call, strategy)
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
        side_file = json.loads(read_bounded(tmp, MAX_FILE_BYTES))
        config[option] = str(tmp)
    grid = thresholds or threshold_grid(strategy)
    knob = cls.Config.quality_knob_field().name
    memo = memo if memo is not None else {}
    baseline: dict[str, Any] = memo.setdefault("__baseline__", {})
    tried: list[tuple[bench.Setting, bench.Row]] = []
    full_row: list[bench.Row] = memo.setdefault("__full__", [])

    def measure(candidates: list[bench.Setting]) -> list[bench.Row]:
        """Rows of ``candidates`` (search prompts, one timing), each measured once per ``memo``."""
        keys = [_memo_key(strategy, c.config) for c in candidates]
        todo = [c for c, k in zip(candidates, keys) if k not in memo]
        if todo:
            full, *rows = bench.run_bench(pipe, todo, heldout_prompts, seeds, call, repeats=1, progress=progress,
                                          baseline=baseline)
            if not full_row:
                full_row.append(full)
            for c, r in zip(todo, rows):
                memo[_memo_key(strategy, c.config)] = r
        return [memo[k] for k in keys]

    combos = [dict(zip(search, values)) for values in itertools.product(*search.values())] or [{}]
    variants = [({**config, **combo} if cap is None else {**config, **combo, cls.cap_option: cap})
                for cap in cap_values for combo in combos]
    for cfg in variants:
        candidates = [bench.Setting("dynaccel", strategy, {**cfg, knob: t}) for t in grid]
        rows = measure(candidates)
        tried += list(zip(candidates, rows))
        # refine: bisect (geometrically) between the largest passing threshold and the next one, which failed
        passing = [i for i, r in enumerate(rows) if r.psnr_db >= min_psnr]
        if passing and passing[-1] + 1 < len(grid) and not thresholds:
            lo, hi = grid[passing[-1]], grid[passing[-1] + 1]
            for _ in range(refine):
                mid = round(math.sqrt(lo * hi), 4)
                if isinstance(lo, int):  # an int knob: whole values only, until none is left between
                    mid = int(round(mid))
                    if mid in (lo, hi):
                        break
                setting = bench.Setting("dynaccel", strategy, {**cfg, knob: mid})
                row = measure([setting])[0]
                tried.append((setting, row))
                lo, hi = (mid, hi) if row.psnr_db >= min_psnr else (lo, mid)
    ok = [(s, r) for s, r in tried if r.psnr_db >= min_psnr and _skipped(r)]
    if not ok:
        best = max((r for _, r in tried), key=lambda r: r.psnr_db if _skipped(r) else -math.inf)
        raise bench.BenchError(
            f"unreachable quality target: no {strategy} threshold that skips work reaches PSNR >= {min_psnr} dB on the "
            f"held-out prompts (best with skipping: {best.label} at {best.psnr_db:.2f} dB); lower --min-psnr or use "
            f"more steps"
        )
    # most work skipped (robust against timing noise); among equals the best PSNR, then the smallest cap, then the
    # smallest threshold: the safest of the equally fast settings
    chosen_setting, chosen = max(ok, key=lambda sr: (round(_work_skipped(sr[1]), 6), sr[1].psnr_db,
                                                     -sr[0].config.get(cls.cap_option or "", 0),
                                                     -sr[0].config[knob]))
    if "compute_last" not in config and chosen_setting.config.get("compute_last", True):
        # the last step is computed by default; try letting it reuse too, and keep that when the target still holds
        setting = bench.Setting("dynaccel", strategy, {**chosen_setting.config, "compute_last": False})
        row = measure([setting])[0]
        tried.append((setting, row))
        if free_last_step_wins(row, chosen, min_psnr):
            chosen_setting, chosen = setting, row
    if timing_repeats > 1:  # the search timed each setting once; time the winner (and full compute) properly
        timed = bench.run_bench(pipe, [chosen_setting], heldout_prompts, seeds, call, repeats=timing_repeats,
                                progress=progress)[1]
        chosen = dataclasses.replace(chosen, time_s=timed.time_s, speedup=timed.speedup)
        if chosen.speedup <= 1.0:  # a preset slower than no preset is worse than none: write nothing
            raise bench.BenchError(
                f"no faster setting: the fastest {strategy} setting that reaches PSNR >= {min_psnr} dB "
                f"({chosen.label}, {chosen.computed} computed) ran at {chosen.speedup:.2f}x full compute's speed, so "
                "its skipped work does not pay for its own cost; lower --min-psnr (nothing written)")
    checked = None
    if check_prompts:  # quality away from the search prompts: recorded, never used to choose
        check = bench.run_bench(pipe, [chosen_setting], check_prompts, seeds, call, repeats=1, progress=progress)[1]
        checked = {"prompts": list(check_prompts), "psnr_db": round(check.psnr_db, 2),
                   "psnr_min_db": round(check.psnr_min_db, 2), "ssim": round(check.ssim, 4),
                   "computed": check.computed}
    final = dict(chosen_setting.config)
    if strategy in SIDE_FILES:
        final[SIDE_FILES[strategy]] = f"{Path(model).name}-{strategy}-calibration.json"
    if learned_file is not None:
        final[learned_option] = f"{name or f'{Path(model).name}-{strategy}'}-predictor.safetensors"
    transformer = bench._denoiser(pipe)
    preset = Preset(
        name=name or f"{Path(model).name}-{strategy}",
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
            "fit_prompts": (learn_prompts or fit_prompts) if learn else fit_prompts,
            "heldout_prompts": heldout_prompts,
            "seeds": seeds,
            "min_psnr_db": min_psnr,
            "measured": {"speedup": round(chosen.speedup, 3), "psnr_db": round(chosen.psnr_db, 2),
                         "psnr_min_db": round(chosen.psnr_min_db, 2), "ssim": round(chosen.ssim, 4),
                         "computed": chosen.computed},
            "fit": diagnostics,
            **({"searched": {k: list(v) for k, v in search.items()}} if search else {}),
            **({"checked": checked} if checked else {}),
        },
    )
    return CalibrationResult(preset, full_row + [r for _, r in tried], chosen, side_file, learned_file)


def search_prompts(model: str, count: int = 6) -> list[str]:
    """The prompts a zoo model's threshold search runs by default: ``count`` of its distillation fit prompts, spread
    over them (never its held-out ones nor the bench's four); else the last two of the bench's default prompts."""
    from .. import zoo

    if model in zoo.available():
        fit = zoo.distill_prompts(model)[0]
        if fit:
            return [fit[round(i * (len(fit) - 1) / max(count - 1, 1))] for i in range(min(count, len(fit)))]
    return bench.default_prompts(model)[2:]


def check_prompts(model: str) -> list[str]:
    """Prompts no preset is calibrated on, for the check after the search: a zoo model's held-out prompts without
    the bench's four (12 for tiny-wan and tiny-flux); none for other models."""
    from .. import zoo

    if model not in zoo.available():
        return []
    return [p for p in zoo.distill_prompts(model)[1] if p not in bench.default_prompts(model)]


def _memo_key(strategy: str, config: dict[str, Any]) -> str:
    """A setting's identity for the memo: its options, without the temporary path of a calibration file (each call
    recalibrates into a new temporary file, from the same deterministic full-compute run)."""
    side = SIDE_FILES.get(strategy)
    return json.dumps({"strategy": strategy, **{k: v for k, v in config.items() if k != side}}, sort_keys=True,
                      default=str)


def learn_prompts(model: str, fit: list[str], count: int = 12) -> list[str]:
    """Prompts to learn from by default: the zoo model's distillation fit prompts (``count`` of them; never its
    held-out ones nor the bench's), else the calibration's fit prompts."""
    from .. import zoo

    try:
        return zoo.distill_prompts(model)[0][:count] or fit
    except ValueError:  # not a zoo name (a local folder): the fit prompts
        return fit


def learn_strategy(pipe, cls, prompts: list[str], seeds: list[int], call: dict[str, Any], out: Path) -> dict[str, Any]:
    """Full-compute runs on ``prompts`` x ``seeds`` recording what the strategy learns from, then its training
    (``cls.learn_from``) into ``out``. Returns the training diagnostics (with the recording and training time)."""
    from tqdm.auto import tqdm

    start = time.time()
    handle = pipe.enable_accel(cls.name, **cls.recording_config())
    try:
        with handle.record_signals() as records:
            for prompt in tqdm(prompts, desc="learn: full-compute runs", unit="prompt"):
                for seed in seeds:
                    pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed), output_type="latent", **call)
    finally:
        pipe.disable_accel(cls.name)
    recorded = time.time() - start
    bar = tqdm(total=1, desc="learn: training", unit="it")

    def progress(i, n, err):
        if i % 25 and i != n:
            return
        bar.total = n
        bar.n = i
        bar.set_postfix(error=f"{err:.4f}", refresh=False)
        bar.refresh()

    try:
        diag = cls.learn_from(records, out, bench._denoiser(pipe), progress=progress)
    finally:
        bar.close()
    return {**diag, "record_s": round(recorded, 1), "train_s": round(time.time() - start - recorded, 1),
            "learn_prompts": len(prompts), "learn_seeds": len(seeds)}


def _cap_values(cls, config: dict[str, Any], caps: list[int] | None) -> list[int | None]:
    """The skip-cap values to search: ``caps`` if given, else the option's default and 2, 3, 4, 6 within its range;
    ``[None]`` (keep the config as is) for a strategy without a cap or when the config already sets it."""
    name = getattr(cls, "cap_option", None)
    if name is None or name in config:
        if caps:
            raise bench.BenchError(f"strategy {cls.name!r} has no skip cap to search" if name is None else
                                   f"{name} is set in the base config; drop it or the caps to search")
        return [None]
    spec = next(f for f in cls.Config.fields_info() if f.name == name)
    values = caps or sorted({spec.default, 2, 3, 4, 6})
    bad = [v for v in values if (spec.min is not None and v < spec.min) or (spec.max is not None and v > spec.max)]
    if bad:
        raise bench.BenchError(f"{name}: got {bad[0]!r}; accepted: {spec.min} to {spec.max}")
    return sorted(set(values))


def free_last_step_wins(free: bench.Row, kept: bench.Row, min_psnr: float) -> bool:
    """Keep ``compute_last=False`` (row ``free``) over the computed last step (row ``kept``): it still meets the
    target and skips more work."""
    return free.psnr_db >= min_psnr and _work_skipped(free) > _work_skipped(kept)


def _work_skipped(row: bench.Row) -> float:
    """Share of the work skipped, averaged over the held-out generations."""
    s = row.stats
    per = s.get("computed_per_generation")
    total = s["blocks_computed"] + s["blocks_reused"] if "blocks_computed" in s else s.get("passes")
    if per and total:
        return 1 - statistics.mean(per) / total
    if "blocks_computed" in s:
        return s["blocks_reused"] / max(1, s["blocks_computed"] + s["blocks_reused"])
    return s.get("skipped", 0) / max(1, s.get("passes", 1))


def _skipped(row: bench.Row) -> bool:
    s = row.stats
    return (s.get("skipped", 0) + s.get("blocks_reused", 0)) > 0 if s else False


def write_preset(result: CalibrationResult, out: Path) -> list[Path]:
    """The preset JSON (and its calibration or trained file beside it), each written atomically."""
    written = []
    if result.learned_file is not None:
        option = get_registry().strategy(result.preset.strategy).learned_option
        dest = out.parent / result.preset.config[option]
        data = result.learned_file.read_bytes()
        atomic_write(dest, lambda tmp: Path(tmp).write_bytes(data))
        written.append(dest)
    if result.side_file is not None:
        option = SIDE_FILES[result.preset.strategy]
        side = out.parent / result.preset.config[option]
        atomic_write(side, lambda tmp: Path(tmp).write_text(json.dumps(result.side_file, indent=1)))
        written.append(side)
    atomic_write(out, lambda tmp: Path(tmp).write_text(result.preset.to_json() + "\n"))
    written.append(out)
    return written
