"""GPU benchmark of the cache strategies on a Wan2.1-T2V-1.3B-sized transformer (random weights), one run.

Builds a ``WanPipeline`` whose transformer has the published Wan2.1-T2V-1.3B config (30 layers, 12 heads x 128,
ffn 8960) with random bf16 weights, a tiny VAE (latent output, never decoded) and random prompt embeddings; then
times full compute and each setting on the same seed: warm-up run first (MagCache calibrates there), median of
``--repeats`` runs, CUDA synchronised. Reports transformer passes computed, wall-time speedup against full compute
in the same process, and PSNR of the final latents against full compute. Random weights: the speed numbers are
real, the PSNR only measures drift of this untrained model. Peer row: diffusers' own FirstBlockCache.

    python scripts/gpu_bench_cache.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def build(device: str, dtype: torch.dtype):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(0)
    with torch.device(device):
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
            text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True, eps=1e-6,
            rope_max_seq_len=1024,
        ).to(dtype).eval()
        vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True]).eval()
    transformer.register_to_config(_name_or_path="Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    mse = float(((a - b) ** 2).mean())
    peak = float(b.max() - b.min())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(peak**2 / mse)).item()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="gpu_bench_cache.json")
    ap.add_argument("--settings", default="", help='JSON list of [strategy, {options}] pairs (default: a built-in list)')
    ap.add_argument("--no-peers", action="store_true", help="skip the diffusers FirstBlockCache rows")
    ap.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a smoke test of this script)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_bench_cache.py needs a CUDA GPU (or --device cpu for a smoke test)")
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    import dynaccel  # noqa: F401  (adds pipe.enable_accel)

    dev, dtype = args.device, torch.bfloat16
    pipe = build(dev, dtype)
    g = torch.Generator().manual_seed(1)
    pe = torch.randn(1, 64, 4096, generator=g).to(dev, dtype)
    ne = torch.randn(1, 64, 4096, generator=g).to(dev, dtype)
    tokens = ((args.frames - 1) // 4 + 1) * (args.height // 16) * (args.width // 16)

    def generate():
        return pipe(prompt_embeds=pe, negative_prompt_embeds=ne, height=args.height, width=args.width,
                    num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=5.0,
                    output_type="latent", generator=torch.Generator().manual_seed(0)).frames

    def timed():
        generate()
        sync()
        times, out = [], None
        for _ in range(args.repeats):
            sync()
            t0 = time.perf_counter()
            out = generate()
            sync()
            times.append(time.perf_counter() - t0)
        return out, statistics.median(times)

    base, base_t = timed()
    rows = [dict(strategy="full compute", settings="", computed=2 * args.steps, passes=2 * args.steps,
                 time_s=base_t, speedup=1.0, psnr_db=float("inf"))]
    device_name = torch.cuda.get_device_name() if dev == "cuda" else "CPU"
    print(f"{device_name} | torch {torch.__version__} | {tokens} video tokens | "
          f"{args.steps} steps, CFG 5.0 | full compute {base_t:.2f} s", flush=True)
    settings = [
        ("teacache", {"threshold": 0.08}), ("teacache", {"threshold": 0.15}),
        ("fbcache", {"threshold": 0.05}), ("fbcache", {"threshold": 0.1}),
        ("easycache", {"threshold": 0.05}), ("easycache", {"threshold": 0.1}),
        ("magcache", {"threshold": 0.12}), ("magcache", {"threshold": 0.24}),
    ]
    if args.settings:
        settings = [tuple(x) for x in json.loads(args.settings)]
    for name, cfg in settings:
        handle = pipe.enable_accel(name, **cfg)
        out, t = timed()
        s = handle.stats
        rows.append(dict(strategy=name, settings=json.dumps(cfg), computed=s["computed"], passes=s["passes"],
                         blocks_computed=s.get("blocks_computed"), blocks_reused=s.get("blocks_reused"),
                         time_s=t, speedup=base_t / t, psnr_db=psnr(out, base)))
        pipe.disable_accel()
        print(rows[-1], flush=True)
    from diffusers.hooks import FirstBlockCacheConfig

    for thr in () if args.no_peers else (0.05, 0.1):
        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=thr))
        out, t = timed()
        rows.append(dict(strategy="diffusers:fbcache", settings=json.dumps({"threshold": thr}), computed=None,
                         passes=2 * args.steps, time_s=t, speedup=base_t / t, psnr_db=psnr(out, base)))
        pipe.transformer.disable_cache()
        print(rows[-1], flush=True)

    print("\n| strategy | settings | passes computed | time (s) | speedup | PSNR vs full (dB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        comp = "-" if r["computed"] is None else f"{r['computed']}/{r['passes']}"
        if r.get("blocks_computed") is not None:
            comp = f"{r['blocks_computed']}/{r['blocks_computed'] + r['blocks_reused']} block calls"
        print(f"| {r['strategy']} | {r['settings']} | {comp} | {r['time_s']:.2f} | {r['speedup']:.2f}x | {r['psnr_db']:.1f} |")
    meta = dict(device=device_name, torch=torch.__version__, tokens=tokens, steps=args.steps,
                height=args.height, width=args.width, frames=args.frames, repeats=args.repeats,
                date=time.strftime("%Y-%m-%d"))
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
