"""The diffusers path and the ComfyUI path on one shared tiny Wan 2.1 model: same skip decisions.

Run with ComfyUI's Python (ComfyUI's folder and this repo, as ``dynaccel``, on sys.path; diffusers installed there); prints one JSON
line. Used by ``test_comfyui_integration.py::test_diffusers_and_comfyui_paths_make_the_same_decisions``.

A tiny diffusers ``WanTransformer3DModel`` (1 head of 128, so that ComfyUI's model detection accepts it) is built
from config, its weights renamed to the original Wan layout ComfyUI uses, saved, and loaded with ComfyUI's own
``comfy.sd.load_diffusion_model``. For each strategy and threshold, ComfyUI samples through ``comfy.sample.sample``
(euler, simple schedule, cfg 1) with the dynaccel node's ``accelerate``; the diffusers model runs the same Euler
steps on the same sigmas and noise with ``enable_accel``. The decisions (skipped steps) of both are reported, with
the two paths' outputs and the plain models' agreement.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile

import torch

STEPS = 12
SEED = 3
CASES = [
    ("teacache", t) for t in (0.0, 0.5, 1.0, 2.0)
] + [("fbcache", t) for t in (0.0, 0.1, 0.2)] + [("taylorseer", t) for t in (0.0, 0.1, 0.3)] + [
    ("easycache", t) for t in (0.0, 0.3)
] + [("adacache", t) for t in (0.0, 0.3, 1.0)] + [("bwcache", t) for t in (0.0, 0.1, 0.3)]

# diffusers WanTransformer3DModel key -> original Wan (ComfyUI) key
RENAMES = [
    (r"^scale_shift_table$", "head.modulation"),
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^proj_out\.", "head.head."),
    (r"\.scale_shift_table$", ".modulation"),
    (r"\.attn1\.to_out\.0\.", ".self_attn.o."),
    (r"\.attn1\.to_([qkv])\.", r".self_attn.\1."),
    (r"\.attn1\.norm_", ".self_attn.norm_"),
    (r"\.attn2\.to_out\.0\.", ".cross_attn.o."),
    (r"\.attn2\.to_([qkv])\.", r".cross_attn.\1."),
    (r"\.attn2\.norm_", ".cross_attn.norm_"),
    (r"\.norm2\.", ".norm3."),
    (r"\.ffn\.net\.0\.proj\.", ".ffn.0."),
    (r"\.ffn\.net\.2\.", ".ffn.2."),
]


def to_comfy_keys(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        for pat, rep in RENAMES:
            k = re.sub(pat, rep, k)
        out[k] = v.contiguous()
    return out


def side_by_side(shape: tuple[int, ...], steps: int, seed: int):
    """One tiny diffusers Wan model and the same weights loaded by ComfyUI; returns ``(comfy_run, diffusers_run)``,
    each ``run(strategy=None, options=None) -> (output latent, stats)`` over the same sigmas, noise and text."""
    from comfy.cli_args import args

    args.cpu = True
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    from diffusers import WanTransformer3DModel
    from safetensors.torch import save_file

    import dynaccel
    from dynaccel.comfy_nodes.runner import accelerate

    torch.manual_seed(0)
    dmodel = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=1, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=256, num_layers=3, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=1e-6,
    ).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/shared_wan.safetensors"
        save_file(to_comfy_keys(dmodel.state_dict()), path)
        patcher = comfy.sd.load_diffusion_model(path)

    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(*shape, generator=g)
    cond = torch.randn(1, 8, 4096, generator=g)
    latent = torch.zeros(*shape)
    sampling = patcher.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", steps).float()
    base_model = patcher.model

    def comfy_run(strategy=None, options=None):
        m, acc = (patcher, None) if strategy is None else accelerate(patcher, strategy, options)
        out = comfy.sample.sample(
            m, noise, steps, 1.0, "euler", "simple", [[cond, {}]], [[cond, {}]], latent, denoise=1.0,
            disable_pbar=True, seed=seed,
        )
        return out, acc.last_stats if acc is not None else None

    def diffusers_run(strategy=None, options=None):
        handle = None
        if strategy is not None:
            handle = dynaccel.enable_accel(dmodel, strategy, **options)
            handle.reset(num_steps=steps)
        x = sampling.noise_scaling(sigmas[0], noise, base_model.process_latent_in(latent))
        with torch.no_grad():
            for i in range(steps):
                s = sigmas[i]
                v = dmodel(hidden_states=x, timestep=(s * 1000).reshape(1), encoder_hidden_states=cond, return_dict=False)[0]
                x = x + (sigmas[i + 1] - s) * v
        stats = handle.stats if handle is not None else None
        if handle is not None:
            dynaccel.disable_accel(dmodel)
        return base_model.process_latent_out(x), stats

    return comfy_run, diffusers_run


def main() -> None:
    import dynaccel

    comfy_run, diffusers_run = side_by_side((1, 16, 2, 8, 8), STEPS, SEED)

    plain_c, _ = comfy_run()
    plain_d, _ = diffusers_run()
    report = {"dynaccel_file": dynaccel.__file__, "plain_rel_diff": float((plain_c - plain_d).norm() / plain_d.norm()), "cases": []}
    for strategy, threshold in CASES:
        out_c, stats_c = comfy_run(strategy, {"threshold": threshold})
        out_d, stats_d = diffusers_run(strategy, {"threshold": threshold})
        report["cases"].append({
            "strategy": strategy,
            "threshold": threshold,
            "comfy_skipped": stats_c["branches"]["cond"]["skipped_steps"],
            "diffusers_skipped": stats_d["branches"]["default"]["skipped_steps"],
            "comfy_blocks_reused": stats_c.get("blocks_reused"),
            "diffusers_blocks_reused": stats_d.get("blocks_reused"),
            "comfy_reused_per_block": stats_c.get("reused_per_block"),
            "diffusers_reused_per_block": stats_d.get("reused_per_block"),
            "comfy_vs_plain": float((out_c - plain_c).norm() / plain_c.norm()),
            "diffusers_vs_plain": float((out_d - plain_d).norm() / plain_d.norm()),
        })
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
