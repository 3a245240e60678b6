"""``dynaccel calibrate --model tiny-pi0 --strategy S``: a VLA preset chosen by closed-loop success, not PSNR.

The strategy's quality knob (``Config.quality_knob``) is searched over a grid; every candidate runs in closed loop
on *fit* episodes (fit seeds from :data:`FIT_START` on: never used to train the zoo policy, never held out) next to
full compute on the same episodes; the candidate with the lowest median policy latency whose success rate reaches
``min_success`` times full compute's is chosen. The chosen setting and full compute are then judged on held-out
episodes (reported in the preset's provenance; never used to choose). The preset uses the schema of every preset
(name, strategy, config, architecture, model id, provenance), so Hub presets for policies look the same.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..core.errors import ConfigError

#: calibration episodes use fit seeds from here on (tiny-pi0 trains on the first few hundred fit seeds)
FIT_START = 900_000


def knob_grid(field: Any, default: Any, model_steps: int | None = None) -> list[Any]:
    """Candidate values of a quality knob, from the knob's range (most aggressive first is not assumed)."""
    lo = field.min if field.min is not None else 0
    hi = field.max
    if field.type == "int":
        top = int(model_steps or max(int(default) * 2, 2))
        start = max(int(lo), 1)
        return list(range(start, min(int(hi) if hi is not None else top, top) + 1))
    hi = float(hi if hi is not None else max(float(default) * 4, 1.0))
    if hi <= 1.0:
        return [round(x / 10, 2) for x in range(1, 11) if x / 10 <= hi]
    return [round(hi * f, 4) for f in (0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5)]


@dataclass
class VlaCalibration:
    preset: Any
    rows: list[Any]  # fit rows: full compute first, then each candidate
    heldout: list[Any]  # held-out rows: full compute, then the chosen setting
    chosen: Any | None


def calibrate(model: str, strategy: str, *, min_success: float = 0.95, episodes: int = 5,
              heldout_episodes: int = 10, grid: Sequence[Any] | None = None, fixed: dict[str, Any] | None = None,
              threads: int = 1, progress: bool = True, tasks: Sequence[str] | None = None) -> VlaCalibration:
    from ..core.presets import Preset
    from ..core.registry import get_registry
    from ..zoo import robot_tasks as rt
    from ..zoo import train_tiny_pi0 as tp
    from . import bench as b
    from . import bench_vla as bv

    if not 0 < min_success <= 1:
        raise ConfigError(f"min_success must be in (0, 1] (a fraction of full compute's success), got {min_success}")
    cls = get_registry().strategy(strategy)
    knob = cls.Config.quality_knob_field()
    if knob is None:
        raise ConfigError(f"{strategy!r} declares no quality knob to search")
    fixed = dict(fixed or {})
    folder = bv.resolve_policy(model)
    policy = tp.Pi0Policy.from_pretrained(str(folder))
    default = getattr(cls.Config(), knob.name)
    values = list(grid) if grid else knob_grid(knob, default, getattr(policy.model.config, "num_inference_steps", None))
    specs = [bv.RowSpec([])]
    for v in values:
        cfg = cls.Config.from_kwargs(strategy, **{**fixed, knob.name: v})  # validated before anything runs
        specs.append(bv.RowSpec([b.Setting("dynaccel", strategy, {**fixed, knob.name: getattr(cfg, knob.name)})]))
    fit_seeds = rt.fit_seeds(episodes, start=FIT_START)
    rows = bv.run(model, specs, tasks=tasks, seeds=fit_seeds, realtime_episodes=0, threads=threads,
                  progress=progress, policy=policy)
    full = rows[0]
    if full.mean_success <= 0:
        raise bv.BenchError(f"full compute succeeded on none of the {full.episodes} fit episodes: there is no success "
                            "rate to keep (a policy trained on these tasks is needed; more --episodes may help)")
    target = min_success * full.mean_success
    ok = [(r, s) for r, s in zip(rows[1:], specs[1:]) if r.mean_success >= target - 1e-9]
    chosen = min(ok, key=lambda rs: rs[0].latency_ms) if ok else None
    heldout: list[Any] = []
    measured: dict[str, Any] = {}
    if chosen is not None:
        heldout = bv.run(model, [bv.RowSpec([]), chosen[1]], tasks=tasks, episodes=heldout_episodes,
                         realtime_episodes=0, threads=threads, progress=progress, policy=policy)
        measured = {"heldout_success": round(heldout[1].mean_success, 4),
                    "heldout_full_success": round(heldout[0].mean_success, 4),
                    "heldout_episodes": heldout[1].episodes,
                    "latency_speedup": round(heldout[1].speedup, 3),
                    "latency_ms": round(heldout[1].latency_ms, 3),
                    "jerk": round(heldout[1].jerk, 5), "full_jerk": round(heldout[0].jerk, 5)}
    config = chosen[1].settings[0].config if chosen is not None else {}
    name = f"{model}-{strategy.replace('_', '-')}" if model in bv.ROBOT_MODELS else f"{Path(model).name}-{strategy}"
    arch = type(policy.model).__name__
    preset = Preset(
        name=name, strategy=strategy, config=dict(config), architecture=arch,
        model_id=model if model in bv.ROBOT_MODELS else None,
        description=(f"{strategy} calibrated by dynaccel calibrate for closed-loop success >= {min_success:.0%} "
                     "of full compute"),
        provenance={"source": "dynaccel calibrate", "model": model, "date": time.strftime("%Y-%m-%d"),
                    "machine": b.machine(), "min_success": min_success, "searched": knob.name,
                    "grid": values, "fixed": fixed, "fit_seeds": [fit_seeds[0], fit_seeds[-1]],
                    "fit_episodes": full.episodes, "fit_full_success": round(full.mean_success, 4),
                    "fit": {r.label: {"success": round(r.mean_success, 4), "latency_ms": round(r.latency_ms, 3)}
                            for r in rows},
                    "measured": measured})
    return VlaCalibration(preset, rows, heldout, chosen[0] if chosen is not None else None)


def format_result(result: VlaCalibration) -> str:
    from . import bench_vla as bv

    text = "fit episodes:\n" + bv.format_table(result.rows)
    if result.heldout:
        text += "\n\nheld-out episodes:\n" + bv.format_table(result.heldout)
    return text

