"""Every built-in cache preset of a zoo model and its fewer-steps rows on prompts that no preset was calibrated on
and learned_cache's predictor was not trained on (zoo.distill_prompts held-out minus the bench's four), seed 0,
one timing each (the table's computed passes and PSNR are what to compare; the times are one noisy run).

    python scripts/heldout_cache_bench.py tiny-wan     # -> docs/results/cpu-learned-cache/tiny-wan-heldout.txt
"""
import sys, json, torch
torch.set_num_threads(1)
from dynaccel import zoo
from dynaccel.hf_integration import bench as b
model = sys.argv[1]
path = b.resolve_model(model); pipe = b.load_pipeline(path); call = b.generation_defaults(model, path)
fit, held = zoo.distill_prompts(model)
prompts = [p for p in held if p not in zoo.default_prompts(model)]
from dynaccel.core.registry import get_registry
names = sorted(n for n, p in get_registry().presets.items() if p.model_id == model and p.strategy in
               [s for s, c in get_registry().strategies.items() if c.family == "cache"])
settings = [b.parse_setting(f"preset:{n}") for n in names] + b.fewer_steps_settings(int(call["num_inference_steps"]))
rows = b.run_bench(pipe, settings, prompts, [0], call, repeats=1, progress=False)
print(f"{len(prompts)} prompts:", prompts)
print(b.format_table(rows))
