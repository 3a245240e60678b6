"""Calibrate every cache strategy on a zoo model and write the built-in presets (core/presets/cache-<model>-*.json).

    python scripts/make_zoo_presets.py --model tiny-wan --min-psnr 30
    python scripts/make_zoo_presets.py --model tiny-wan --retime     # re-measure the speedups only
    python scripts/make_zoo_presets.py --model tiny-wan --last-step  # only the calibrator's last stage (below)
    python scripts/make_zoo_presets.py --model tiny-wan --min-psnr 40 --suffix 40db --strategies magcache
                                                                     # extra presets: cache-tiny-wan-magcache-40db.json
    python scripts/make_zoo_presets.py --model tiny-wan --strategies seacache --ladder 30,35,40,45,50,55,60 \
        --search order=0,1                                           # a quality ladder: -35db ... -60db beside the
                                                                     # 30 dB preset, one joint search for all targets

A ladder searches on six of the zoo's distillation fit prompts (calibrate.search_prompts) and checks each winner on
its twelve held-out prompts (calibrate.check_prompts; recorded as provenance "checked", never used to choose).

Each preset records its provenance (machine, date, prompts, measured speed and quality); a strategy whose target
is unreachable is reported and skipped. ``--retime`` times every existing preset of the model against full compute
in one run (held-out prompts, median of 3) and rewrites only the speed in its provenance: calibration picks by work
skipped, which does not depend on the machine's load, but the speedup it records does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

import dynaccel
from dynaccel.core.files import atomic_write
from dynaccel.core.registry import get_registry
from dynaccel.hf_integration import bench, calibrate

PRESETS = Path(dynaccel.__file__).parent / "core" / "presets"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny-wan")
    ap.add_argument("--min-psnr", type=float, default=30.0)
    ap.add_argument("--strategies", default=",".join(s for s in dynaccel.list_strategies()
                                                      if dynaccel.strategy_info(s)["family"] == "cache"))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--suffix", default="", help="name the presets <model>-<strategy>-<suffix> (extra quality targets)")
    ap.add_argument("--retime", action="store_true", help="only re-measure the speedups of the existing presets")
    ap.add_argument("--last-step", action="store_true",
                    help="only run the calibrator's last stage on the existing presets: try compute_last=False, keep "
                    "it where the preset's target still holds (the threshold search does not depend on it)")
    ap.add_argument("--set", dest="fixed", action="append", default=[],
                    help="key=value held fixed while searching, e.g. --set order=2 (repeatable)")
    ap.add_argument("--ladder", default="", help="comma-separated PSNR targets: one preset each (the lowest without "
                    "a suffix, the others -<N>db), from one joint search on the zoo's search prompts")
    ap.add_argument("--search", dest="searched", action="append", default=[],
                    help="key=v1,v2: another option searched jointly (repeatable; with --ladder)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = bench.resolve_model(args.model)
    pipe = bench.load_pipeline(path)
    call = bench.generation_defaults(args.model, path)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.retime:
        retime(pipe, args.model, args.strategies.split(","), seeds, call)
        return
    if args.last_step:
        last_step(pipe, args.model, args.strategies.split(","), call)
        return
    if args.ladder:
        for strategy in args.strategies.split(","):
            ladder(pipe, args.model, strategy, [float(t) for t in args.ladder.split(",")], args.searched, args.fixed,
                   seeds, call)
        return
    for strategy in args.strategies.split(","):
        fit = bench.default_prompts(args.model)[:2]
        learn = bool(getattr(get_registry().strategy(strategy), "learned_option", None))
        try:  # learned_cache: its predictor is trained first (calibrate --learn) on the model's own fit prompts
            result = calibrate.calibrate(pipe, args.model, strategy, fit, bench.default_prompts(args.model)[2:],
                                         seeds, call, args.min_psnr, PRESETS, progress=False,
                                         base_config=bench.parse_setting(f"{strategy}:{','.join(args.fixed)}").config,
                                         name=f"{args.model}-{strategy}" + (f"-{args.suffix}" if args.suffix else ""),
                                         learn=learn, learn_prompts=calibrate.learn_prompts(args.model, fit))
        except bench.BenchError as exc:
            print(f"{strategy}: skipped: {exc}")
            continue
        written = calibrate.write_preset(result, PRESETS / f"cache-{result.preset.name}.json")
        m = result.preset.provenance["measured"]
        print(f"{strategy}: {result.chosen.label}: {m['speedup']:.2f}x at {m['psnr_db']:.2f} dB -> {written[-1].name}")


def ladder(pipe, model: str, strategy: str, targets: list[float], searched: list[str], fixed: list[str],
           seeds: list[int], call: dict) -> None:
    """One preset per PSNR target from a single joint search (the memo measures each setting once)."""
    search = {}
    for item in searched:
        key, _, values = item.partition("=")
        search[key] = [bench.parse_setting(f"{strategy}:{key}={v}").config[key] for v in values.split(",")]
    fit = bench.default_prompts(model)[:2]
    prompts, checks = calibrate.search_prompts(model), calibrate.check_prompts(model)
    memo: dict = {}
    kept: dict[str, str] = {}  # chosen setting -> the preset that has it (a higher target may pick the same one)
    for i, target in enumerate(sorted(targets)):
        name = f"{model}-{strategy}" + ("" if i == 0 else f"-{target:g}db")
        t0 = time.time()
        try:
            result = calibrate.calibrate(pipe, model, strategy, fit, prompts, seeds, call, target, PRESETS,
                                         progress=False, memo=memo, search=search, check_prompts=checks,
                                         base_config=bench.parse_setting(f"{strategy}:{','.join(fixed)}").config,
                                         name=name)
        except bench.BenchError as exc:
            print(f"{name}: skipped: {exc}", flush=True)
            continue
        same = json.dumps({k: v for k, v in result.preset.config.items() if not k.endswith("_path")}, sort_keys=True)
        if same in kept:
            print(f"{name}: the setting of {kept[same]} already meets {target:g} dB; not written", flush=True)
            continue
        kept[same] = name
        written = calibrate.write_preset(result, PRESETS / f"cache-{name}.json")
        m, c = result.preset.provenance["measured"], result.preset.provenance.get("checked", {})
        print(f"{name}: {result.chosen.label}: {m['speedup']:.2f}x at {m['psnr_db']:.2f} dB on the search prompts, "
              f"{c.get('psnr_db', float('nan')):.2f} dB on the held-out ({m['computed']} computed) -> "
              f"{written[-1].name} [{time.time() - t0:.0f} s]", flush=True)


def _model_presets(model: str, strategies: list[str]) -> dict[str, Path]:
    files = {}
    for f in sorted(PRESETS.glob(f"cache-{model}-*.json")):
        doc = json.loads(f.read_text())
        if doc.get("strategy") in strategies and doc.get("model_id") == model:
            files[doc["name"]] = f
    return files


def last_step(pipe, model: str, strategies: list[str], call: dict) -> None:
    for name, file in _model_presets(model, strategies).items():
        doc = json.loads(file.read_text())
        if "compute_last" in doc["config"]:
            print(f"{name}: compute_last already set")
            continue
        prov = doc["provenance"]
        setting = bench.parse_setting(f"preset:{name}")
        free = dataclasses.replace(setting, config={**setting.config, "compute_last": False}, preset="")
        _, kept_row, row = bench.run_bench(pipe, [setting, free], prov["heldout_prompts"], prov["seeds"], call,
                                           repeats=1, progress=False)
        if round(kept_row.psnr_db, 2) != prov["measured"]["psnr_db"]:
            raise SystemExit(f"{name}: PSNR {kept_row.psnr_db:.2f} differs from the calibrated {prov['measured']['psnr_db']}")
        if calibrate.free_last_step_wins(row, kept_row, prov["min_psnr_db"]):
            doc["config"]["compute_last"] = False
            prov["measured"] = {"speedup": round(row.speedup, 3), "psnr_db": round(row.psnr_db, 2),
                                "psnr_min_db": round(row.psnr_min_db, 2), "ssim": round(row.ssim, 4),
                                "computed": row.computed}
            atomic_write(file, lambda tmp, d=doc: Path(tmp).write_text(json.dumps(d, indent=2, sort_keys=True) + "\n"))
            print(f"{name}: compute_last=False: {row.computed} at {row.psnr_db:.2f} dB (was {kept_row.computed} at "
                  f"{kept_row.psnr_db:.2f}) -> {file.name}")
        else:
            print(f"{name}: keeps the last step ({row.computed} at {row.psnr_db:.2f} dB without it)")


def retime(pipe, model: str, strategies: list[str], seeds: list[int], call: dict) -> None:
    # every preset of the model (extra quality targets included) whose strategy is asked for, in one run
    files = _model_presets(model, strategies)
    settings = [bench.parse_setting(f"preset:{name}") for name in files]
    rows = bench.run_bench(pipe, settings, bench.default_prompts(model)[2:], seeds, call, repeats=3)
    print(bench.format_table(rows))
    for (strategy, file), row in zip(files.items(), rows[1:]):
        doc = json.loads(file.read_text())
        measured = doc["provenance"]["measured"]
        if round(row.psnr_db, 2) != measured["psnr_db"]:
            raise SystemExit(f"{strategy}: PSNR {row.psnr_db:.2f} differs from the calibrated {measured['psnr_db']}")
        measured["speedup"] = round(row.speedup, 3)
        measured["computed"] = row.computed  # per generation, the mean over the held-out prompts
        doc["provenance"]["timing"] = {"repeats": 3, "date": time.strftime("%Y-%m-%d"), "machine": bench.machine(),
                                       "full_compute_s": round(rows[0].time_s, 4), "time_s": round(row.time_s, 4)}
        atomic_write(file, lambda tmp, d=doc: Path(tmp).write_text(json.dumps(d, indent=2, sort_keys=True) + "\n"))
        print(f"{strategy}: {row.speedup:.2f}x -> {file.name}")


if __name__ == "__main__":
    main()
