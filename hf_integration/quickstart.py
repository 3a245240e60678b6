"""``dynaccel quickstart``: every cache strategy on a tiny Wan pipeline, side by side with full compute.

The pipeline is built from config with random weights (no download, no tokenizer: precomputed prompt
embeddings), so the numbers show the mechanics (passes skipped, output drift, wall time on this machine), not the
quality of a trained model. Trained reference models and ``dynaccel bench`` come with the zoo.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

TEXT_DIM = 32


def tiny_wan_pipeline(seed: int = 0, num_layers: int = 4, dim_heads: int = 2, head_dim: int = 32):
    """A complete ``WanPipeline`` with a tiny transformer and VAE built from config (random weights, eval mode)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=dim_heads, attention_head_dim=head_dim, in_channels=4,
        out_channels=4, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=4 * dim_heads * head_dim, num_layers=num_layers,
        cross_attn_norm=True, rope_max_seq_len=64,
    ).eval()
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def prompt_embeds(batch: int = 1, seed: int = 0, tokens: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, tokens, TEXT_DIM, generator=g), torch.randn(batch, tokens, TEXT_DIM, generator=g)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of ``a`` against reference ``b``, with the reference's value range as peak."""
    mse = float(((a.float() - b.float()) ** 2).mean())
    peak = float(b.float().max() - b.float().min())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(peak**2 / mse)).item()


DEFAULT_SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("teacache", {"threshold": 1.0}),
    ("fbcache", {"threshold": 0.2}),
    ("easycache", {"threshold": 0.2}),
    ("magcache", {"threshold": 0.1}),
    ("adacache", {"threshold": 0.1}),
    ("bwcache", {"threshold": 0.1}),
    ("smoothcache", {"threshold": 0.2}),
    ("taylorseer", {"threshold": 0.2}),
]


def run(steps: int = 20, size: int = 64, frames: int = 9, repeats: int = 3, settings=None, echo=print) -> list[dict]:
    """Time full compute and each setting on the same seed; returns one row per setting."""
    torch.set_num_threads(1)
    pipe = tiny_wan_pipeline()
    pe, ne = prompt_embeds()

    def generate():
        return pipe(prompt_embeds=pe, negative_prompt_embeds=ne, height=size, width=size, num_frames=frames,
                    num_inference_steps=steps, guidance_scale=5.0, output_type="latent",
                    generator=torch.Generator().manual_seed(0)).frames

    def timed():
        generate()  # warm-up (and MagCache's calibration run)
        times, out = [], None
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = generate()
            times.append(time.perf_counter() - t0)
        return out, statistics.median(times)

    base, base_t = timed()
    rows = [{"strategy": "full compute", "settings": "", "computed": f"{2 * steps}/{2 * steps}", "time_s": base_t,
             "speedup": 1.0, "psnr_db": float("inf")}]
    for name, cfg in settings or DEFAULT_SETTINGS:
        handle = pipe.enable_accel(name, **cfg)
        out, t = timed()
        s = handle.stats
        if "blocks_computed" in s:  # per-block strategies: block calls, not passes
            computed = f"{s['blocks_computed']}/{s['blocks_computed'] + s['blocks_reused']} blk"
        else:
            computed = f"{s['computed']}/{s['passes']}"
        rows.append({"strategy": name, "settings": ", ".join(f"{k}={v}" for k, v in cfg.items()),
                     "computed": computed, "time_s": t, "speedup": base_t / t,
                     "psnr_db": psnr(out, base)})
        pipe.disable_accel()
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'strategy':<13} {'settings':<16} {'computed':>12} {'time (s)':>9} {'speedup':>8} {'PSNR (dB)':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['strategy']:<13} {r['settings']:<16} {r['computed']:>12} {r['time_s']:>9.3f} "
                     f"{r['speedup']:>7.2f}x {r['psnr_db']:>10.1f}")
    return "\n".join(lines)
