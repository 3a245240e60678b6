"""Time a π0-sized policy (transformers' default ``PI0Config``: PaliGemma with an 18-layer Gemma 2B LM and a SigLIP
tower, an 18-layer 1024-wide Gemma action expert, chunk 50, 10 flow-matching steps; random weights, bfloat16) with
and without each VLA strategy, on a GPU. Random weights make no policy: this measures latency only (what each
strategy saves on a real-sized model); success rates come from the tiny-pi0 bench on the CPU.

Frames: camera images where a block of patches changes between consecutive inferences (the arm moving; the rest
static), so ``vla_cache`` finds what it would find on a robot. The expert caches are run at thresholds that skip
on this model; their skip counts are printed (random weights: not a quality statement).

    python scripts/gpu_bench_vla.py --out gpu-out/vla.json      # about 2 minutes on an H200
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch


def tiny_config():
    """A small config for a dry run on the CPU (--tiny)."""
    from transformers import PI0Config

    gemma = dict(model_type="gemma", vocab_size=1100, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                 num_key_value_heads=1, head_dim=16)
    vision = dict(model_type="siglip_vision_model", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, image_size=56, patch_size=7, projection_dim=64)
    vlm = dict(model_type="paligemma", vocab_size=1100, image_token_index=1099, projection_dim=64, hidden_size=64,
               text_config={**gemma, "num_hidden_layers": 2}, vision_config=vision)
    return PI0Config(vlm_config=vlm, dit_config={**gemma, "num_hidden_layers": 2}, chunk_size=10)


def build(cameras: int, text_len: int, dtype, device: str = "cuda", tiny: bool = False):
    from transformers import PI0Config, PI0ForConditionalGeneration

    cfg = tiny_config() if tiny else PI0Config()
    with torch.device(device):
        model = PI0ForConditionalGeneration(cfg)
    model = model.to(dtype).eval()
    vision = cfg.vlm_config.vision_config
    tokens = (vision.image_size // vision.patch_size) ** 2
    image_id = cfg.vlm_config.image_token_id
    g = torch.Generator(device=device).manual_seed(0)
    text = torch.randint(2, 1000, (1, text_len), generator=g, device=device)
    ids = torch.cat([torch.full((1, tokens * cameras), image_id, device=device), text], 1)
    base = {
        "input_ids": ids, "attention_mask": torch.ones_like(ids),
        "pixel_attention_mask": torch.ones(1, cameras, dtype=torch.bool, device=device),
        "state": torch.randn(1, cfg.max_state_dim, generator=g, device=device, dtype=dtype),
        "noise": torch.randn(1, cfg.chunk_size, cfg.max_action_dim, generator=g, device=device, dtype=dtype),
    }
    frame = torch.rand(1, cameras, 3, vision.image_size, vision.image_size, generator=g, device=device) * 2 - 1
    return model, base, frame.to(dtype), vision.patch_size


def frames(first: torch.Tensor, n: int, patch: int, moving: int = 6):
    """``n`` frames: a ``moving`` x ``moving``-patch block walks across camera 0, the rest stays."""
    out, f = [], first.clone()
    size = moving * patch
    for i in range(n):
        f = f.clone()
        x = (i * patch) % (f.shape[-1] - size)
        y = min(3 * patch, f.shape[-2] - size)
        f[:, 0, :, y:y + size, x:x + size] = torch.rand_like(f[:, 0, :, y:y + size, x:x + size]) * 2 - 1
        out.append(f)
    return out


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_setting(model, base, seq, repeats: int, warmup: int) -> tuple[float, list[float]]:
    times = []
    for i in range(warmup + repeats):
        inputs = dict(base, pixel_values=seq[i % len(seq)], noise=base["noise"].clone())
        _sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            model.sample_actions(**inputs)
        _sync()
        if i >= warmup:
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times), times


def prefix_share(model, base, seq, repeats: int, warmup: int) -> float:
    """Median wall time of the prefix alone (the PaliGemma call in sample_actions), synchronised around it."""
    spans, start = [], []

    def pre(module, args, kwargs):
        _sync()
        start.append(time.perf_counter())

    def post(module, args, kwargs, output):
        _sync()
        spans.append(1000 * (time.perf_counter() - start.pop()))

    hooks = [model.model.vlm.register_forward_pre_hook(pre, with_kwargs=True),
             model.model.vlm.register_forward_hook(post, with_kwargs=True)]
    try:
        time_setting(model, base, seq, repeats, warmup)
    finally:
        for h in hooks:
            h.remove()
    return statistics.median(spans[warmup:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu-out/vla.json")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--cameras", type=int, default=2)
    ap.add_argument("--text", type=int, default=48)
    ap.add_argument("--tiny", action="store_true", help="a small config on the CPU (a dry run of this script)")
    args = ap.parse_args(argv)
    import dynaccel

    device = "cpu" if args.tiny else "cuda"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    t0 = time.time()
    model, base, first, patch = build(args.cameras, args.text, dtype, device, args.tiny)
    where = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"built π0 ({'tiny config' if args.tiny else 'default PI0Config'}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e9:.3f} B parameters) in {time.time() - t0:.1f} s on {where}",
          flush=True)
    seq = frames(first, args.warmup + args.repeats, patch)
    prefix_ms = prefix_share(model, base, seq, args.repeats, args.warmup)
    print(f"prefix (vision tower + prefix LM, once per inference): median {prefix_ms:.2f} ms", flush=True)
    settings = [
        ("full compute", []),
        ("denoise_steps:steps=5", [("denoise_steps", {"steps": 5})]),
        ("denoise_steps:steps=3", [("denoise_steps", {"steps": 3})]),
        ("vla_cache (defaults)", [("vla_cache", {})]),
        ("vla_cache naive (all static tokens)", [("vla_cache", {"task_relevant": 0.0, "layer_adaptive": False})]),
        ("vla_cache max_reuse=1.0, naive", [("vla_cache", {"max_reuse": 1.0, "task_relevant": 0.0,
                                                           "layer_adaptive": False})]),
        ("prefix_prune:keep_ratio=0.5", [("prefix_prune", {"keep_ratio": 0.5})]),
        ("prefix_prune:keep_ratio=0.25,layer=2", [("prefix_prune", {"keep_ratio": 0.25, "layer": 2})]),
        ("fastv:layer=2,keep_ratio=0.5", [("fastv", {"layer": 2, "keep_ratio": 0.5})]),
        ("visionzip:keep_ratio=0.25", [("visionzip", {"keep_ratio": 0.25})]),
        ("layer_skip (free: the last prefix layer only)", [("layer_skip", {"keep_ratio": 0.99})]),
        ("layer_skip:keep_ratio=0.75", [("layer_skip", {"keep_ratio": 0.75})]),
        ("teacache:threshold=0.3", [("teacache", {"threshold": 0.3})]),
        ("teacache:threshold=2.0", [("teacache", {"threshold": 2.0})]),
        ("fbcache:threshold=0.2", [("fbcache", {"threshold": 0.2})]),
        ("fbcache:threshold=1.0", [("fbcache", {"threshold": 1.0})]),
        ("easycache:threshold=0.2", [("easycache", {"threshold": 0.2})]),
        ("easycache:threshold=1.0", [("easycache", {"threshold": 1.0})]),
        ("taylorseer:threshold=0.2", [("taylorseer", {"threshold": 0.2})]),
        ("taylorseer:threshold=1.0", [("taylorseer", {"threshold": 1.0})]),
        ("vla_cache naive + denoise_steps:steps=5", [("vla_cache", {"task_relevant": 0.0, "layer_adaptive": False}),
                                                     ("denoise_steps", {"steps": 5})]),
        ("vla_cache naive + fbcache:threshold=1.0", [("vla_cache", {"task_relevant": 0.0, "layer_adaptive": False}),
                                                     ("fbcache", {"threshold": 1.0})]),
        ("vla_cache naive + denoise_steps:steps=5 + fbcache:threshold=1.0",
         [("vla_cache", {"task_relevant": 0.0, "layer_adaptive": False}), ("denoise_steps", {"steps": 5}),
          ("fbcache", {"threshold": 1.0})]),
    ]
    rows = []
    full_ms = None
    for label, parts in settings:
        try:
            for name, cfg in parts:
                dynaccel.enable_accel(model, name, **cfg)
            ms, times = time_setting(model, base, seq, args.repeats, args.warmup)
            stats = {k: {kk: vv for kk, vv in v.items() if isinstance(vv, (int, float, str))}
                     for k, v in dynaccel.accel_stats(model).items()}
        except Exception as exc:  # a setting that fails is reported, the others still run
            ms, times, stats = float("nan"), [], {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            dynaccel.disable_accel(model)
        full_ms = ms if full_ms is None else full_ms
        row = {"setting": label, "median_ms": round(ms, 3), "speedup": round(full_ms / ms, 3) if ms == ms else None,
               "times_ms": [round(t, 3) for t in times], "stats": stats}
        rows.append(row)
        print(f"{label:<44} {ms:9.2f} ms  {row['speedup']}x  {json.dumps(stats)[:300]}", flush=True)
    meta = {"device": where, "torch": torch.__version__, "dtype": str(dtype), "prefix_ms": round(prefix_ms, 3),
            "cameras": args.cameras, "text_tokens": args.text, "repeats": args.repeats, "warmup": args.warmup,
            "model": f"PI0ForConditionalGeneration({'tiny config' if args.tiny else 'PI0Config()'}), random weights",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
