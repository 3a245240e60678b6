"""Calibrate every cache strategy on a zoo model and write the built-in presets (core/presets/cache-<model>-*.json).

    python scripts/make_zoo_presets.py --model tiny-wan --min-psnr 30

Each preset records its provenance (machine, date, prompts, measured speed and quality); a strategy whose target
is unreachable is reported and skipped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import dynaccel
from dynaccel.hf_integration import bench, calibrate

PRESETS = Path(dynaccel.__file__).parent / "core" / "presets"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny-wan")
    ap.add_argument("--min-psnr", type=float, default=30.0)
    ap.add_argument("--strategies", default=",".join(s for s in dynaccel.list_strategies()))
    ap.add_argument("--seeds", default="0")
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = bench.resolve_model(args.model)
    pipe = bench.load_pipeline(path)
    call = bench.generation_defaults(args.model, path)
    seeds = [int(s) for s in args.seeds.split(",")]
    for strategy in args.strategies.split(","):
        try:
            result = calibrate.calibrate(pipe, args.model, strategy, bench.DEFAULT_PROMPTS[:2], bench.DEFAULT_PROMPTS[2:],
                                         seeds, call, args.min_psnr, PRESETS, progress=False)
        except bench.BenchError as exc:
            print(f"{strategy}: skipped: {exc}")
            continue
        written = calibrate.write_preset(result, PRESETS / f"cache-{args.model}-{strategy}.json")
        m = result.preset.provenance["measured"]
        print(f"{strategy}: {result.chosen.label}: {m['speedup']:.2f}x at {m['psnr_db']:.2f} dB -> {written[-1].name}")


if __name__ == "__main__":
    main()
