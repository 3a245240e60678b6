"""Calibrate every cache strategy on a zoo model and write the built-in presets (core/presets/cache-<model>-*.json).

    python scripts/make_zoo_presets.py --model tiny-wan --min-psnr 30
    python scripts/make_zoo_presets.py --model tiny-wan --retime     # re-measure the speedups only

Each preset records its provenance (machine, date, prompts, measured speed and quality); a strategy whose target
is unreachable is reported and skipped. ``--retime`` times every existing preset of the model against full compute
in one run (held-out prompts, median of 3) and rewrites only the speed in its provenance: calibration picks by work
skipped, which does not depend on the machine's load, but the speedup it records does.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import dynaccel
from dynaccel.core.files import atomic_write
from dynaccel.hf_integration import bench, calibrate

PRESETS = Path(dynaccel.__file__).parent / "core" / "presets"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny-wan")
    ap.add_argument("--min-psnr", type=float, default=30.0)
    ap.add_argument("--strategies", default=",".join(s for s in dynaccel.list_strategies()
                                                      if dynaccel.strategy_info(s)["family"] == "cache"))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--retime", action="store_true", help="only re-measure the speedups of the existing presets")
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = bench.resolve_model(args.model)
    pipe = bench.load_pipeline(path)
    call = bench.generation_defaults(args.model, path)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.retime:
        retime(pipe, args.model, args.strategies.split(","), seeds, call)
        return
    for strategy in args.strategies.split(","):
        try:
            result = calibrate.calibrate(pipe, args.model, strategy, bench.default_prompts(args.model)[:2],
                                         bench.default_prompts(args.model)[2:],
                                         seeds, call, args.min_psnr, PRESETS, progress=False)
        except bench.BenchError as exc:
            print(f"{strategy}: skipped: {exc}")
            continue
        written = calibrate.write_preset(result, PRESETS / f"cache-{args.model}-{strategy}.json")
        m = result.preset.provenance["measured"]
        print(f"{strategy}: {result.chosen.label}: {m['speedup']:.2f}x at {m['psnr_db']:.2f} dB -> {written[-1].name}")


def retime(pipe, model: str, strategies: list[str], seeds: list[int], call: dict) -> None:
    files = {s: PRESETS / f"cache-{model}-{s}.json" for s in strategies}
    files = {s: f for s, f in files.items() if f.exists()}
    settings = [bench.parse_setting(f"preset:{model}-{s}") for s in files]
    rows = bench.run_bench(pipe, settings, bench.default_prompts(model)[2:], seeds, call, repeats=3)
    print(bench.format_table(rows))
    for (strategy, file), row in zip(files.items(), rows[1:]):
        doc = json.loads(file.read_text())
        measured = doc["provenance"]["measured"]
        if round(row.psnr_db, 2) != measured["psnr_db"]:
            raise SystemExit(f"{strategy}: PSNR {row.psnr_db:.2f} differs from the calibrated {measured['psnr_db']}")
        measured["speedup"] = round(row.speedup, 3)
        doc["provenance"]["timing"] = {"repeats": 3, "date": time.strftime("%Y-%m-%d"), "machine": bench.machine(),
                                       "full_compute_s": round(rows[0].time_s, 4), "time_s": round(row.time_s, 4)}
        atomic_write(file, lambda tmp, d=doc: Path(tmp).write_text(json.dumps(d, indent=2, sort_keys=True) + "\n"))
        print(f"{strategy}: {row.speedup:.2f}x -> {file.name}")


if __name__ == "__main__":
    main()
